"""Native CPU kernels for the heaviest steps of the rules, pre-aggregators and attacks, with torch
fallbacks.

- :func:`gram`: ``x x^T`` (distances for Krum, Multi-Krum, Bulyan, NNM), or the centered
  ``(x - z)(x - z)^T`` (CClip's iterations for few rows, with :func:`gram_rounding`);
- :func:`sq_distances_to`: every row's squared distance to one point (CClip, RFA);
- :func:`weighted_sum_and_sq_distances`: one CClip/Weiszfeld step and the next distances;
- :func:`mean_var`: column means and variances or standard deviations (ALIE);
- :func:`group_means`: means of groups of rows (bucketing, resampling, NNM's averages);
- :func:`network_reduce`: a sorting network per column (median, trimmed mean, Bulyan);
- :func:`clip_rows_to`, :func:`scale_rows`: rows clipped or scaled (clip, ARC).

They run the C kernels of ``common/aggregation/kernels/`` for float32 CPU tensors whose rows are
contiguous, and torch everywhere else (CUDA, other dtypes, machines without a C compiler).
torch's generic kernels run these shapes (n << d) far below what the CPU can do; measured at
(25, 1e6) on one thread of the project machine (``python bench/rules.py``), before -> after:
the Gram matrix 32 -> 8 ms, NNM's averages 26 -> 6 ms (the mixing product W @ x before; now
rows shared by the neighbourhoods are summed once), the distances to a point 8 -> 3.6 ms, the
sorting network for the median 45 -> 15 ms (a memory pass: 4 ms); every rule before and after
in bench/README.md.

The C files are compiled on first use with ``$CC`` (else ``cc``, ``gcc`` or ``clang``) and
``-O3 -march=native -fno-math-errno`` (about 1 s; the last flag lets square roots vectorise)
into one library in a cache directory, one per source, compiler, flags and CPU, so a home directory
shared by a heterogeneous cluster holds one build per kind of node (if that directory is not
writable, the temporary directory). If building fails, one warning says why and torch runs
instead. The work is split over ``torch.get_num_threads()`` threads by column ranges (ctypes
releases the GIL).

Environment: ``BYZROBUST_NATIVE=0`` turns the kernels off; ``BYZROBUST_CFLAGS`` replaces the
compiler flags; ``BYZROBUST_CACHE`` sets the cache directory (default
``$XDG_CACHE_HOME/byzrobust`` or ``~/.cache/byzrobust``).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from common.cachedir import cache_dir, cache_dirs

__all__ = ["gram", "gram_rounding", "sq_distances_to", "weighted_sum_and_sq_distances",
           "mean_var", "group_means", "network_reduce", "clip_rows_to", "scale_rows", "library",
           "SOURCES"]

KERNELS = Path(__file__).with_name("kernels")
# the library's sources, and the header they share (part of the build key)
SOURCES = sorted(KERNELS.glob("*.c"))
_BUILD_INPUTS = SOURCES + sorted(KERNELS.glob("*.h"))
DEFAULT_CFLAGS = "-O3 -march=native -fno-math-errno"
_L2_CHUNK_BYTES = 400 * 1024  # a Gram column chunk of all n rows (measured best at n = 25)
_CENTERED_CHUNK = 2048        # columns per chunk of a centered Gram matrix: see gram_rounding
_MIN_SPLIT = 1 << 18          # elements per thread below which one thread does all the work
_ALIGN = 64                   # thread column boundaries, in floats (whole vectors and lines)
_STREAM_BYTES = 16 << 20      # outputs above this bypass the cache (they cannot stay in it)

_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
# argument and result types of the functions of the kernels
_SIGNATURES = {
    "gram_f32": ((_P, _L, _L, _P, _L, _L, _L, _P), None),
    "vector_width": ((), _I),
    "sqdist_to_f32": ((_P, _L, _L, _P, _L, _L, _P), None),
    "wsum_sqdist_f32": ((_P, _L, _L, _P, _F, _P, _L, _L, _L, _P, _P), None),
    "group_mean_f32": ((_P, _L, _P, _L, _P, _P, _P, _P, _P, _L, _L, _L, _P, _L, _I), None),
    "mean_var_f32": ((_P, _L, _L, _L, _L, _P, _P, _I), None),
    "sortnet_f32": ((_P, _L, _L, _L, _L, _P, _L, _P, _L, _I, _L, _P), _I),
    "clip_row_f32": ((_P, _L, _F, _P), _F),
    "scale_row_f32": ((_P, _L, _F, _P), None),
}
_lock = threading.Lock()
_state: dict[str, object] = {}
# a forked child has the pool object but not its threads: it starts its own
os.register_at_fork(after_in_child=lambda: _state.pop("pool", None))


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_key() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines()
             if ln.startswith(("flags", "Features", "model name"))]
    return "\n".join(sorted(set(lines)))


def _build(cc: str, flags: list[str]) -> Path:
    key = hashlib.sha256(b"\0".join([*(p.read_bytes() for p in _BUILD_INPUTS), cc.encode(),
                                     " ".join(flags).encode(), platform.machine().encode(),
                                     _cpu_key().encode()]))
    name = f"kernels-{key.hexdigest()[:16]}.so"
    for folder in cache_dirs():
        target = folder / name
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # build beside the target and rename: concurrent processes (MPI ranks, test
            # workers) never load a half-written library
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        except OSError:  # not writable: try the next folder
            continue
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES)],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target
    raise RuntimeError(f"no writable cache directory (tried {cache_dir()} and the temporary "
                       "directory; set BYZROBUST_CACHE)")


def _load() -> ctypes.CDLL | None:
    if os.environ.get("BYZROBUST_NATIVE", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    flags = os.environ.get("BYZROBUST_CFLAGS", DEFAULT_CFLAGS).split()
    lib = ctypes.CDLL(str(_build(cc, flags)))
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on the first call), or None if they are off or unavailable."""
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load()
            except Exception as e:  # noqa: BLE001 -- any build failure: warn once, use torch
                _state["lib"] = None
                warnings.warn(f"native kernels unavailable ({e}); the rules run on torch "
                              "only (Krum and the median about 3x slower at d = 1e6)",
                              RuntimeWarning, stacklevel=3)
        return _state["lib"]  # type: ignore[return-value]


def _native_ok(*ts: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2
               and t.stride(1) == 1 for t in ts)


def _ranges(n: int, d: int) -> list[tuple[int, int]]:
    """Column ranges, one per thread, with boundaries on whole cache lines."""
    parts = max(1, min(torch.get_num_threads(), (n * d) // _MIN_SPLIT))
    step = max(1, -(-d // parts))
    step = -(-step // _ALIGN) * _ALIGN
    return [(s, min(d, s + step)) for s in range(0, d, step)] or [(0, 0)]


def _run(jobs: list) -> None:
    if len(jobs) == 1:
        jobs[0]()
        return
    with _lock:
        size, pool = _state.get("pool", (0, None))
        if size < len(jobs):
            if pool is not None:
                pool.shutdown(wait=False)
            size, pool = _state["pool"] = (len(jobs), ThreadPoolExecutor(len(jobs)))
    for fut in [pool.submit(job) for job in jobs]:
        fut.result()


def _over_columns(n: int, d: int, call: Callable[[int, int, int | None], None],
                  sums: tuple[int, ...] | None = None) -> Tensor | None:
    """Run ``call(start, stop, acc)`` on each thread's column range [start, stop) of an (n, d)
    input. With ``sums``, each call adds into its own zeroed float64 tensor of that shape
    (``acc`` is its address) and their sum is returned; otherwise ``acc`` is None."""
    ranges = _ranges(n, d)
    parts = [torch.zeros(sums, dtype=torch.float64) for _ in ranges] if sums else []
    _run([functools.partial(call, s, e, parts[j].data_ptr() if parts else None)
          for j, (s, e) in enumerate(ranges)])
    return functools.reduce(torch.add, parts) if parts else None


def _chunk(n: int, budget: int) -> int:
    """Columns per chunk such that a chunk of all n float32 rows takes ``budget`` bytes."""
    return max(_ALIGN, budget // (4 * n) // _ALIGN * _ALIGN)


def gram(x: Tensor, z: Tensor | None = None) -> Tensor:
    """``y y^T`` for an (n, d) tensor y = x, or y = x - z (every row minus the d-vector z), as
    a symmetric (n, n) float64 tensor.

    float32 CPU input with contiguous rows: the native kernel (float32 vectors within a column
    chunk, float64 across chunks; x - z formed in registers). Otherwise ``y @ y.T`` in
    x's dtype (float32 for half types), converted to float64.
    """
    lib = library() if _native_ok(x) and (z is None or _native_ok(z[None])) else None
    if lib is None:
        y = x if z is None else x - z
        y = y if y.dtype in (torch.float32, torch.float64) else y.float()
        return (y @ y.T).double()
    n, d = x.shape
    chunk = _chunk(n, _L2_CHUNK_BYTES) if z is None else _CENTERED_CHUNK
    zp = None if z is None else z.data_ptr()

    g = _over_columns(n, d, lambda s, e, acc: lib.gram_f32(x.data_ptr(), n, x.stride(0), zp, s,
                                                           e, chunk, acc), sums=(n, n))
    upper = torch.triu(g)
    return upper + torch.triu(g, diagonal=1).T


def gram_rounding(x: Tensor, z: Tensor | None = None) -> float | None:
    """A bound on ``|error of G_ij| / (||y_i|| ||y_j||)`` for ``gram(x, z)`` by the kernel: each
    vector lane sums at most chunk / width float32 products before the float64 sum, plus the
    rounding of y = x - z. None where the kernel does not run on x and z."""
    lib = library() if _native_ok(x) and (z is None or _native_ok(z[None])) else None
    if lib is None:
        return None
    chunk = _chunk(x.shape[0], _L2_CHUNK_BYTES) if z is None else _CENTERED_CHUNK
    return 2.0 ** -24 * (chunk // lib.vector_width() + 3)


def sq_distances_to(x: Tensor, z: Tensor) -> Tensor:
    """``||x_i - z||^2`` for every row of an (n, d) tensor x and a d-vector z, as float64 (n,).

    float32 CPU input with contiguous rows: the native kernel (one read of x; float32 vectors
    within a column chunk, float64 across chunks). Otherwise one difference into a reused
    buffer and one norm per row, in x's dtype. Overflow gives +inf, a NaN entry NaN.
    """
    lib = library() if _native_ok(x) and _native_ok(z[None]) else None
    n, d = x.shape
    if lib is None:
        out = torch.empty(n, dtype=torch.float64, device=x.device)
        buf = torch.empty_like(z)
        for i in range(n):
            torch.sub(x[i], z, out=buf)
            out[i] = torch.linalg.vector_norm(buf).double().square()
        return out
    return _over_columns(n, d, lambda s, e, acc: lib.sqdist_to_f32(
        x.data_ptr(), n, x.stride(0), z.data_ptr(), s, e, acc), sums=(n,))


def weighted_sum_and_sq_distances(w: Tensor, x: Tensor, v: Tensor | None = None,
                                  alpha: float = 0.0, distances: bool = False
                                  ) -> tuple[Tensor, Tensor | None] | None:
    """``out = sum_{i: w_i != 0} w_i x_i + alpha v`` (v may be None when alpha is 0) and, if
    ``distances``, ``||x_i - out||^2`` for every row (float64), in one read of the rows of
    nonzero weight by the native kernel; None where the kernel does not apply (the caller then
    runs the steps in torch)."""
    if v is None:
        if alpha != 0.0:
            raise ValueError("alpha != 0 needs v")
        v = x[0]  # never read
    lib = library() if _native_ok(x) and _native_ok(v[None]) else None
    if lib is None:
        return None
    n, d = x.shape
    w = w.to(torch.float32).contiguous()
    out = torch.empty(d, dtype=x.dtype)
    # with distances, a chunk's rows stay in L2 for the second sweep; without, longer chunks
    # give the rows' memory streams longer runs
    chunk = _chunk(n, _L2_CHUNK_BYTES if distances else 16 * _L2_CHUNK_BYTES)
    sq = _over_columns(n, d, lambda s, e, acc: lib.wsum_sqdist_f32(
        x.data_ptr(), n, x.stride(0), w.data_ptr(), float(alpha), v.data_ptr(), s, e, chunk,
        out.data_ptr(), acc), sums=(n,) if distances else None)
    return out, sq


def group_means(x: Tensor, core: list[int], parts: list[tuple[list[int], list[int]]],
                m: int, out: Tensor | None = None) -> Tensor | None:
    """Means of row groups that share the members ``core``, by the native kernel in one pass;
    None where the kernel does not apply.

    ``parts`` lists, per distinct group, its other members and the output rows it goes to: row
    r of the (m, d) result is ``(x[core_0] + x[core_1] + ... + x[rest_0] + ...) / count``,
    summed in that order and divided by the group's size (not at all for size 1), the same
    float32 values as those adds and that divide in torch.
    """
    lib = library() if _native_ok(x) else None
    if lib is None:
        return None
    d = x.shape[1]

    def ints(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int32)

    def starts(lists: list[list[int]]) -> Tensor:
        return ints([0] + [len(v) for v in lists]).cumsum(0, dtype=torch.int32)

    rests, rows = [p[0] for p in parts], [p[1] for p in parts]
    c, idx, start = ints(core or [0]), ints([j for r in rests for j in r] or [0]), starts(rests)
    orow, ostart = ints([r for rs in rows for r in rs]), starts(rows)
    count = torch.tensor([len(core) + len(r) for r in rests], dtype=torch.float32)
    out = torch.empty(m, d, dtype=x.dtype) if out is None else out
    stream = int(out.numel() * out.element_size() > _STREAM_BYTES)
    _over_columns(x.shape[0], d, lambda s, e, _: lib.group_mean_f32(
        x.data_ptr(), x.stride(0), c.data_ptr(), len(core), idx.data_ptr(), start.data_ptr(),
        count.data_ptr(), orow.data_ptr(), ostart.data_ptr(), len(parts), s, e, out.data_ptr(),
        d, stream))
    return out


def mean_var(x: Tensor, std: bool = False) -> tuple[Tensor, Tensor]:
    """Column means and unbiased variances (divisor n - 1; zeros when n = 1) of an (n, d)
    tensor, in x's dtype; with ``std``, standard deviations (their square roots) instead.

    float32 CPU input with contiguous rows: the native kernel (two-pass formula over column
    chunks that stay in cache: one read of x). Otherwise ``x.mean(0)`` and a two-pass variance
    one row at a time (``Tensor.var(dim=0)`` over an (n, d) stack measured 10-20x slower than a
    memory pass on CPU).
    """
    n, d = x.shape
    lib = library() if _native_ok(x) else None
    if lib is None:
        mu = x.mean(dim=0)
        acc = torch.zeros_like(mu)
        diff = torch.empty_like(mu)
        for row in x:
            torch.sub(row, mu, out=diff)
            acc.addcmul_(diff, diff)
        acc.div_(max(n - 1, 1))
        return mu, (acc.sqrt_() if std else acc)
    mu, var = torch.empty(d, dtype=x.dtype), torch.empty(d, dtype=x.dtype)
    _over_columns(n, d, lambda s, e, _: lib.mean_var_f32(x.data_ptr(), n, x.stride(0), s, e,
                                                         mu.data_ptr(), var.data_ptr(), int(std)))
    return mu, var


_COMBINE_KINDS = {"pick": 0, "halves": 1, "mean": 2, "window": 3}
# the kernel's 16 KiB block holds at least two vectors per row up to n = 128 (one vector per row
# measured 20x slower: each comparator then reads what the one before it just wrote)
_SORT_MAX_N = 128


def network_reduce(x: Tensor, comps: tuple[tuple[int, int], ...], positions: tuple[int, ...],
                   spec: tuple) -> Tensor | None:
    """The sorting network ``comps`` and combine ``spec`` of :mod:`common.aggregation.sortnet` over the
    columns of x by the native kernel (blocks of all n rows held in L1), or None where the
    kernel does not apply (not float32 CPU with contiguous rows, n > 128, kernels off)."""
    n, d = x.shape
    lib = library() if _native_ok(x) and n <= _SORT_MAX_N else None
    if lib is None:
        return None
    pairs = torch.tensor(comps, dtype=torch.int32).reshape(-1)
    pos = torch.tensor(positions, dtype=torch.int32)
    kind, beta = _COMBINE_KINDS[spec[0]], int(spec[1]) if spec[0] == "window" else 0
    out = torch.empty(d, dtype=x.dtype)
    _over_columns(n, d, lambda s, e, _: lib.sortnet_f32(
        x.data_ptr(), n, x.stride(0), s, e, pairs.data_ptr(), len(comps), pos.data_ptr(),
        len(positions), kind, beta, out.data_ptr()))
    return out


def _over_rows(n: int, d: int, call: Callable[[int], None]) -> None:
    """Run ``call(i)`` for every row i, the rows split over the threads."""
    parts = max(1, min(torch.get_num_threads(), n, (n * d) // _MIN_SPLIT))
    _run([functools.partial(lambda rows: [call(i) for i in rows], range(j, n, parts))
          for j in range(parts)])


def clip_rows_to(x: Tensor, limits: Tensor, out: Tensor) -> Tensor | None:
    """``out_i = x_i min(1, limits_i / ||x_i||)`` and the norms ``||x_i||`` (float32, as
    ``distances_to(x, 0)``), each row read from memory once; a norm is -1 where the squared norm
    overflowed or is NaN and that row of out was not written (the caller's overflow-safe path).
    None where the kernel does not apply (not float32 CPU with contiguous rows, kernels off)."""
    lib = library() if _native_ok(x) and _native_ok(out) else None
    if lib is None:
        return None
    n, d = x.shape
    lim = limits.to(torch.float32).tolist()
    norms = torch.empty(n, dtype=torch.float32)

    def row(i: int) -> None:
        norms[i] = lib.clip_row_f32(x[i].data_ptr(), d, lim[i], out[i].data_ptr())

    _over_rows(n, d, row)
    return norms


def scale_rows(x: Tensor, scales: Tensor, out: Tensor) -> bool:
    """``out_i = scales_i x_i`` (a zero scale writes a zero row, also for infinite entries) by the
    kernel; False where it does not apply (then the caller multiplies in torch)."""
    lib = library() if _native_ok(x) and _native_ok(out) else None
    if lib is None:
        return False
    n, d = x.shape
    s = scales.to(torch.float32).tolist()
    _over_rows(n, d, lambda i: lib.scale_row_f32(x[i].data_ptr(), d, s[i], out[i].data_ptr()))
    return True
