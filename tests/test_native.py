"""The native CPU kernels (common/aggregation/kernels/ via native.py) against torch in float64, and
the torch fallbacks they replace: ragged shapes, strided rows, several threads, NaN/inf, every
vector-width build, and a machine without a compiler."""
from __future__ import annotations

import platform

import pytest
import torch

from common.aggregation import native, rules, sortnet
from common.aggregation.preagg.mixing import group_means, group_plan
from tests.processes import run_python

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler")

SHAPES = [(1, 1), (2, 17), (3, 16), (4, 15), (5, 100), (7, 4097), (13, 333), (25, 20000),
          (40, 1000)]


@pytest.fixture
def torch_only(monkeypatch):
    """Run the code under test with the kernels switched off (the torch fallbacks)."""
    monkeypatch.setitem(native._state, "lib", None)


@pytest.fixture(params=[1, 2])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _strided(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """An (n, d) float32 view whose rows are d + 3 apart (contiguous rows, not a contiguous
    tensor)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d + 3, generator=g)[:, 1:d + 1]


@pytest.mark.parametrize("n,d", SHAPES)
def test_gram_matches_float64(n, d, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)  # split even tiny inputs over the threads
    x = _strided(n, d)
    g = native.gram(x)
    ref = x.double() @ x.double().T
    assert g.dtype == torch.float64 and torch.equal(g, g.T)
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-6 * d)


@pytest.mark.parametrize("n,d", SHAPES)
def test_centered_gram_matches_float64(n, d, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x, z = _strided(n, d) + 3.0, torch.randn(d) + 3.0
    g = native.gram(x, z)
    y = x.double() - z.double()
    assert torch.equal(g, g.T)
    # within the rounding bound the Gram-space CClip relies on
    scale = y.norm(dim=1)[:, None] * y.norm(dim=1)[None, :]
    assert bool(((g - y @ y.T).abs() <= native.gram_rounding(x, z) * scale + 1e-12).all())
    with monkeypatch.context() as m:
        m.setitem(native._state, "lib", None)
        assert native.gram_rounding(x, z) is None
        torch.testing.assert_close(native.gram(x, z), g, rtol=1e-5, atol=1e-4)


def test_gram_of_a_huge_entry_overflows_like_float32():
    x = torch.ones(3, 5000)
    x[1, 7] = 1e20  # its square overflows float32: the caller's float64 fallback takes over
    assert torch.isinf(native.gram(x)[1, 1])


@pytest.mark.parametrize("n,d", SHAPES)
def test_sq_distances_to_matches_float64(n, d, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x, z = _strided(n, d), torch.randn(d)
    ref = (x.double() - z.double()).square().sum(1)
    torch.testing.assert_close(native.sq_distances_to(x, z), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_weighted_sum_and_distances_match_float64(n, d, alpha, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x, v = _strided(n, d), torch.randn(d)
    w = torch.rand(n, generator=torch.Generator().manual_seed(2))
    w[0] = 0.0
    x[0, 0] = float("inf")  # a zero-weight row never enters the sum: no 0 * inf
    out, sq = native.weighted_sum_and_sq_distances(w, x, v, alpha, True)
    x64 = x.double()
    ref = (w.double()[1:, None] * x64[1:]).sum(0) + alpha * v.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    ref_sq = (x64 - out.double()).square().sum(1)
    torch.testing.assert_close(sq[1:], ref_sq[1:], rtol=1e-6, atol=1e-9)
    assert sq[0] == float("inf")
    assert native.weighted_sum_and_sq_distances(w, x, v, alpha, False)[1] is None


@pytest.mark.parametrize("n,d", SHAPES)
def test_mean_var_matches_torch(n, d, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x = _strided(n, d) * 3 + 5
    mu, var = native.mean_var(x)
    ref_var = x.double().var(0) if n > 1 else torch.zeros(d, dtype=torch.float64)
    torch.testing.assert_close(mu.double(), x.double().mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-5)
    mu2, std = native.mean_var(x, std=True)
    assert torch.equal(mu2, mu)
    # the kernel's square root is correctly rounded (torch.sqrt may differ by one ulp)
    torch.testing.assert_close(std.double(), var.double().sqrt(), rtol=1e-7, atol=0)


GROUPS = [
    [[3], [0, 1], [2, 4, 5], [6, 0], [1, 2]],            # bucketing/resampling-like: no core
    [[0, 1, 2, 4], [2, 1, 0, 3], [0, 2, 1, 4], [1, 0, 2]],  # core 0, 1, 2; rows 0 and 2 alike
    [[5, 4, 2, 1, 6, 3, 0]],                              # one group: summed in its own order
]


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("d", [1, 17, 5000, 210000])  # the last: streaming stores (> 16 MiB)
def test_group_means_equal_torch_adds_then_divide(groups, d, threads, monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x = _strided(7, d) if d != 210000 else torch.randn(30, d)
    x[2, 0] = float("nan")  # spoils only the groups holding row 2
    out = group_means(x, groups)
    with monkeypatch.context() as m:
        m.setitem(native._state, "lib", None)
        ref = group_means(x, groups)
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())
    assert torch.equal(out[:, 0].isnan(), torch.tensor([2 in g for g in groups]))
    x64 = x.double()
    means = torch.stack([x64[g].mean(0) for g in groups])
    torch.testing.assert_close(out[:, 1:].double(), means[:, 1:], rtol=1e-5, atol=1e-5)


def test_group_plan_sums_shared_members_once_and_equal_groups_once():

    core, parts = group_plan(GROUPS[1])
    assert core == [0, 1, 2]  # in the first group's order
    assert parts == [([4], [0, 2]), ([3], [1]), ([], [3])]
    assert group_plan(GROUPS[0]) == ([], [([3], [0]), ([0, 1], [1]), ([2, 4, 5], [2]),
                                           ([6, 0], [3]), ([1, 2], [4])])


def test_group_means_write_into_a_given_buffer():
    x = torch.randn(6, 300)
    buf = torch.full((2, 300), 7.0)
    out = native.group_means(x, [0, 1], [([2], [0]), ([3, 4], [1])], 2, buf)
    assert out is buf
    torch.testing.assert_close(buf, torch.stack([x[:3].mean(0), x[[0, 1, 3, 4]].mean(0)]))


@pytest.mark.parametrize("n,d", SHAPES)
def test_fallbacks_agree_with_the_kernels(n, d, monkeypatch):
    x, z = _strided(n, d), torch.randn(d)
    fast = (native.gram(x), native.sq_distances_to(x, z), native.mean_var(x))
    bound = native.gram_rounding(x)
    monkeypatch.setitem(native._state, "lib", None)
    slow = (native.gram(x), native.sq_distances_to(x, z), native.mean_var(x))
    for a, b in zip(fast[1:2] + fast[2], slow[1:2] + slow[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # Gram entries: each within its own rounding bound of the float64 product, relative to
    # ||x_i|| ||x_j|| (entries near zero have absolute errors far above 1e-4 at d = 20000; the
    # summation order, hence the error, differs between CPUs). torch's float32 matmul: the
    # classic bound d u of a d-term dot product, whatever order MKL sums in.
    exact = x.double() @ x.double().T
    norms = x.double().norm(dim=1)
    scale = norms[:, None] * norms[None, :]
    assert bool(((fast[0] - exact).abs() <= bound * scale + 1e-30).all())
    assert bool(((slow[0] - exact).abs() <= d * 2.0 ** -24 * scale + 1e-30).all())


NETWORKS = [  # (n, positions, spec, symmetric): the median, trimmed mean and Bulyan combines
    (25, (12,), ("pick",), False),
    (10, (4, 5), ("halves",), True),
    (25, tuple(range(5, 20)), ("mean",), True),
    (13, tuple(range(13)), ("window", 5), False),
    (100, (49, 50), ("halves",), True),
    (128, (64,), ("pick",), False),
]


def _eager(x, positions, spec, symmetric, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(native._state, "lib", None)
        return sortnet.network_reduce(x, positions, spec, symmetric=symmetric)


@pytest.mark.parametrize("n,positions,spec,symmetric", NETWORKS)
@pytest.mark.parametrize("d", [2048, 2049 + 127, 9000])
def test_network_equals_the_eager_torch_network(n, positions, spec, symmetric, d, threads,
                                                monkeypatch):
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x = _strided(n, d)
    x[:, 3] = 1.0  # all-equal column
    x[0, 4], x[-1, 4] = float("inf"), float("-inf")
    comps = sortnet.pruned_network(n, positions, symmetric)
    out = native.network_reduce(x, comps, positions, spec)
    assert torch.equal(out, _eager(x, positions, spec, symmetric, monkeypatch))


def test_network_propagates_nan_like_torch_minimum(monkeypatch):
    x = _strided(25, 4000)
    x[3, 10] = float("nan")   # one NaN column; every other column takes the fast path
    x[7, 3000] = float("nan")
    for positions, spec, sym in [((12,), ("pick",), False),
                                 (tuple(range(5, 20)), ("mean",), True)]:
        comps = sortnet.pruned_network(25, positions, sym)
        out = native.network_reduce(x, comps, positions, spec)
        ref = _eager(x, positions, spec, sym, monkeypatch)
        assert torch.equal(torch.isnan(out), torch.isnan(ref))
        assert torch.isnan(out[[10, 3000]]).all()
        ok = ~torch.isnan(ref)
        assert torch.equal(out[ok], ref[ok])


def test_network_declines_what_it_cannot_hold():
    x = torch.randn(300, 4096)
    comps = sortnet.pruned_network(300, (150,))
    assert native.network_reduce(x, comps, (150,), ("pick",)) is None      # n > 128
    assert native.network_reduce(x[:5].double(), comps, (2,), ("pick",)) is None  # float64


@pytest.mark.parametrize("n,d", SHAPES)
def test_clip_rows_match_float64(n, d, threads, monkeypatch):
    """Rows clipped to their limits (some bind, some not) with the norms, written into a view
    whose rows start unaligned, several threads."""
    monkeypatch.setattr(native, "_MIN_SPLIT", 1)
    x = _strided(n, d)
    ref_norms = x.double().norm(dim=1)
    limits = (ref_norms * torch.linspace(0.5, 1.5, n, dtype=torch.float64)).float()
    out = torch.full((n, d + 5), 7.0)[:, 1:d + 1]
    norms = native.clip_rows_to(x, limits, out)
    torch.testing.assert_close(norms.double(), ref_norms, rtol=1e-6, atol=0)
    scale = torch.clamp(limits.double() / ref_norms, max=1.0)
    torch.testing.assert_close(out.double(), x.double() * scale[:, None], rtol=2e-6, atol=1e-7)
    s = torch.linspace(0, 2, n)
    assert native.scale_rows(x, s, out)
    assert torch.equal(out, x * s[:, None])


def test_clip_rows_special_rows_and_fallback_agree(monkeypatch):
    """A zero row, a NaN row, an infinite entry (both: zero rows) and a row whose squared norm
    overflows float32 (the kernel leaves it to the safe path) give what the torch path gives."""
    from common.aggregation.preagg.clipping import arc, clip
    x = torch.randn(6, 5000, generator=torch.Generator().manual_seed(1))
    x[1] = 0.0
    x[2, 7] = float("nan")
    x[3, 9] = float("inf")
    x[4] *= 1e25  # finite, squares overflow float32
    got = clip(x, 2.0), arc(x, 2)
    monkeypatch.setitem(native._state, "lib", None)
    want = clip(x, 2.0), arc(x, 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert torch.equal(got[0][1], x[1]) and not got[0][2:4].any()
    torch.testing.assert_close(got[0][4].norm(), torch.tensor(2.0), rtol=1e-6, atol=0)


def test_rules_on_the_kernels_equal_rules_on_torch(monkeypatch):
    """Krum's choice, NNM, CClip (clipping and not), RFA, ALIE, the median: same results with
    and without the kernels."""
    from common import attacks
    from common.aggregation import preagg
    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 30000, generator=g)
    x[:3] += 4.0  # three outliers

    def run():
        return (rules.krum(x, 3), preagg.nnm(x, 3), rules.centered_clip(x, torch.zeros(30000)),
                rules.centered_clip(x, x[5], tau=0.5), rules.geometric_median(x),
                attacks.alie_vector(x, 1.5), rules.coordinate_median(x))

    fast = run()
    monkeypatch.setitem(native._state, "lib", None)
    for a, b in zip(fast, run()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


ISA_FLAGS = ["-O3 -march=x86-64-v3",  # AVX2: 8 floats, 16 registers (3x3 Gram tiles)
             "-O3 -march=x86-64"]     # SSE2: 4 floats


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags")
@pytest.mark.parametrize("flags", ISA_FLAGS)
def test_every_vector_width_build_is_correct(flags, tmp_path):
    """The kernels built for narrower vector units (other tile sizes, no AVX-512 intrinsics)
    give the same results as float64 torch."""
    code = """
import torch
from common.aggregation import native
from common.aggregation import preagg
from common.aggregation.preagg.mixing import group_means
from common.aggregation import sortnet
assert native.library() is not None
g = torch.Generator().manual_seed(0)
for n, d in [(1, 3), (5, 37), (11, 3001), (26, 5000)]:
    x = torch.randn(n, d, generator=g)
    x64 = x.double()
    torch.testing.assert_close(native.gram(x), x64 @ x64.T, rtol=1e-6, atol=1e-6 * d)
    w = torch.rand(n + 1, n, generator=g)
    z = torch.randn(d, generator=g)
    torch.testing.assert_close(native.sq_distances_to(x, z), (x64 - z.double()).square().sum(1),
                               rtol=1e-6, atol=1e-9)
    out, sq = native.weighted_sum_and_sq_distances(w[0], x, z, 0.5, True)
    ref = (w[0].double()[:, None] * x64).sum(0) + 0.5 * z.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sq, (x64 - out.double()).square().sum(1), rtol=1e-6, atol=1e-9)
    mu, var = native.mean_var(x)
    torch.testing.assert_close(mu.double(), x64.mean(0), rtol=1e-6, atol=1e-6)
    if n > 1:
        torch.testing.assert_close(var.double(), x64.var(0), rtol=1e-5, atol=1e-5)
    groups = [list(range(n)), [n - 1], [0, n - 1]]
    means = group_means(x, groups)
    torch.testing.assert_close(means.double(), torch.stack([x64[g].mean(0) for g in groups]),
                               rtol=1e-5, atol=1e-6)
    groups = [list(range(n)), list(range(n - 1, -1, -1)), list(range(n))]  # all core
    means = group_means(x, groups)
    torch.testing.assert_close(means.double(), torch.stack([x64[g].mean(0) for g in groups]),
                               rtol=1e-5, atol=1e-6)
    if n >= 3:
        pos = ((n - 1) // 2,)  # torch.median: the lower middle value
        out = native.network_reduce(x, sortnet.pruned_network(n, pos), pos, ("pick",))
        assert torch.equal(out, x.median(0).values)
    lim = torch.full((n,), 0.5 * d ** 0.5)
    out = torch.empty(n, d + 1)[:, 1:]  # unaligned rows
    norms = native.clip_rows_to(x, lim, out)
    torch.testing.assert_close(norms.double(), x64.norm(dim=1), rtol=1e-6, atol=0)
    scale = torch.clamp(lim.double() / x64.norm(dim=1), max=1.0)
    torch.testing.assert_close(out.double(), x64 * scale[:, None], rtol=2e-6, atol=1e-7)
print("ok")
"""
    env = {"BYZROBUST_CFLAGS": flags, "BYZROBUST_CACHE": str(tmp_path)}
    proc = run_python("-c", code, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1


def test_no_compiler_warns_once_and_falls_back(tmp_path):
    code = """
import warnings
import torch
from common.aggregation import native
from common.aggregation import rules
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(9, 5000)
    assert rules.krum_scores(x, 2).shape == (9,)
    rules.krum(x, 2)
msgs = [str(w.message) for w in caught if "native kernels" in str(w.message)]
assert len(msgs) == 1, msgs
assert "no C compiler" in msgs[0] or "failed" in msgs[0], msgs[0]
assert native.library() is None
print("ok")
"""
    env = {"CC": "/nonexistent/cc", "BYZROBUST_CACHE": str(tmp_path)}
    proc = run_python("-c", code, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_native_can_be_switched_off(tmp_path):
    code = "from common.aggregation import native; print(native.library() is None)"
    proc = run_python("-c", code, env={"BYZROBUST_NATIVE": "0",
                                       "BYZROBUST_CACHE": str(tmp_path)}, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr
    assert not list(tmp_path.glob("*.so"))


def test_an_unwritable_cache_falls_back_to_the_temporary_directory():
    code = "from common.aggregation import native; print(native.library() is not None)"
    proc = run_python("-c", code, env={"BYZROBUST_CACHE": "/dev/null/cache"}, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr
    assert "native kernels unavailable" not in proc.stderr
