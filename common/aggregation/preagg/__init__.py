"""Pre-aggregators: one module per stage, each registering itself in :data:`PREAGGREGATORS`.

Importing this package imports every module in it and re-exports each module's ``__all__``,
so a stage added as a new module here composes in any ``--pre`` chain without editing any
other file.
"""
from common.aggregation.preagg.base import (
                                            PREAGGREGATORS,
                                            Chain,
                                            PreAggregator,
                                            make_chain,
                                            parse_chain,
                                            preaggregator_names,
)
from common.params import discover

__all__ = ["PREAGGREGATORS", "Chain", "PreAggregator", "make_chain", "parse_chain",
           "preaggregator_names"]

__all__ += discover(__name__, __path__, globals())
