"""common.run.startup: glibc's malloc keeps a round's few-MiB temporaries on the heap, where a freed
buffer is reused without new page faults, instead of a fresh mapping per buffer; a threshold the
user set in the environment is kept."""
from __future__ import annotations

import pytest

from tests.processes import run_python

# Bytes held in mmap'ed chunks (glibc mallinfo2().hblkhd) while a 12 MB tensor is alive.
_SNIPPET = """
import ctypes, common.run.startup, torch

class Info(ctypes.Structure):
    _fields_ = [(k, ctypes.c_size_t) for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
a = torch.empty(3_000_000)
print(mallinfo2().hblkhd)
"""


def _mapped_bytes(**env: str) -> int:
    out = run_python("-c", _SNIPPET, timeout=120, env=env)
    if "mallinfo2" in out.stderr:
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_a_round_sized_buffer_lives_on_the_heap_unless_the_user_says_otherwise():
    assert _mapped_bytes() < 12_000_000                                  # on the heap
    assert _mapped_bytes(MALLOC_MMAP_THRESHOLD_="131072") >= 12_000_000  # its own mapping
