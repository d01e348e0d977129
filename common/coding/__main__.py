"""``python -m common.coding``: see :mod:`common.coding.cli`."""
import sys

from common.coding.cli import main

sys.exit(main())
