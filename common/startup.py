"""Process settings that must be in place before torch is imported: import this module first.

``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch's CPU allocator back large tensors with transparent
huge pages (read once, at torch's first allocation). Without it, every (n, d) buffer above
glibc's mmap threshold (32 MiB) is a fresh mapping whose 4 KiB pages fault in one at a time:
measured 40 ms of page faults per 100 MiB on the project machine, which made bucketing,
resampling and the sign vote at (25, 1e6) 2.5x slower than their arithmetic. A value the user
set in the environment is kept.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
