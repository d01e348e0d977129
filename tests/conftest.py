"""Suite-wide settings: one torch thread per process (tests and the subprocesses they start).

The suite runs many small models and multi-rank MPI jobs on 2 cores; one thread per process
avoids oversubscription, which otherwise slows small kernels down by an order of magnitude.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import common.run.startup  # noqa: E402,F401  (before torch)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)
