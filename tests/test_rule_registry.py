"""Rules beyond their values: the registry, preconditions and their messages, unknown names and
parameters, defaults; huge and non-finite inputs, tiny shapes, dtypes and devices."""
from __future__ import annotations

import math

import pytest
import torch

from common.aggregation import rules as R
from common.aggregation.tensors import pairwise_sq_distances
from common.errors import ConfigError
from tests.rule_helpers import T, noise_free, randn

# ------------------------------------------------------------------------------------------
# registry, preconditions, errors
# ------------------------------------------------------------------------------------------

def test_registry_names():
    names = R.rule_names()
    for name in ("mean", "oracle", "krum", "multikrum", "cm", "trmean", "rfa", "gm", "cclip",
                 "bulyan", "signmv", "nmedian", "dnc", "signguard", "clippedclustering",
                 "flame"):
        assert name in names and R.RULES[name].name == name
    assert issubclass(R.RULES["gm"], R.RULES["rfa"])
    assert [n for n in names if R.RULES[n].stateful] == ["cclip", "clippedclustering", "fltrust"]


@pytest.mark.parametrize("name,n,f,params,bound", [
    ("krum", 6, 2, {}, "n >= 2f+3, got n=6, f=2"),
    ("multikrum", 4, 1, {}, "n >= 2f+3, got n=4, f=1"),
    ("multikrum", 7, 1, {"m": 8}, "1 <= m <= n"),
    ("krum", 7, 1, {"neighbours": 7}, "neighbours <= n-1"),
    ("trmean", 4, 2, {}, "n > 2b, got n=4, b=2"),
    ("trmean", 9, 1, {"b": 5}, "n > 2b, got n=9, b=5"),
    ("bulyan", 10, 2, {}, "n >= 4f+3, got n=10, f=2"),
    ("rfa", 5, 1, {"iters": 0}, "iters >= 1"),
    ("gm", 5, 1, {"nu": 0}, "nu > 0"),
    ("cclip", 5, 1, {"tau": -1}, "tau > 0"),
    ("cclip", 5, 1, {"iters": 0}, "iters >= 1"),
    ("mean", 0, 0, {}, "n >= 1"),
    ("mean", 5, -1, {}, "f >= 0"),
])
def test_preconditions(name, n, f, params, bound):
    with pytest.raises(ConfigError, match=".*".join(map(_escape, bound.split()))):
        R.make_rule(name, n, f, **params)


def _escape(s):
    import re
    return re.escape(s)


def test_precondition_message_mentions_preaggregation():
    with pytest.raises(ConfigError) as e:
        R.make_rule("krum", 6, 2)
    assert str(e.value) == ("krum needs n >= 2f+3, got n=6, f=2 "
                            "(the rule sees n vectors after pre-aggregation)")


def test_precondition_rechecked_for_other_row_count():
    rule = R.make_rule("krum", 7, 2)
    with pytest.raises(ConfigError, match="n=6"):
        rule(randn(6, 3, 0))


def test_unknown_names_and_params():
    with pytest.raises(ConfigError, match="unknown rule 'kurm'.*krum.*trmean"):
        R.make_rule("kurm", 5, 1)
    with pytest.raises(ConfigError, match="unknown parameter.*tau.*valid parameters: neighbours"):
        R.make_rule("krum", 5, 1, tau=3)
    with pytest.raises(ConfigError, match="integer"):
        R.make_rule("trmean", 5, 1, b=1.5)
    with pytest.raises(ConfigError, match="oracle needs the honest mask"):
        R.make_rule("oracle", 3, 0)(randn(3, 2, 0))


def test_none_params_mean_default():
    x = randn(9, 4, 1)
    assert torch.allclose(R.make_rule("trmean", 9, 2, b=None)(x), R.trimmed_mean(x, 2))
    assert torch.allclose(R.make_rule("rfa", 9, 2, iters=None, nu=None)(x),
                          R.geometric_median(x, 8, 0.1))
    assert torch.allclose(R.make_rule("multikrum", 9, 2, m=None, neighbours=None)(x),
                          R.multikrum(x, 2, 7, 5))
    assert R.make_rule("cclip", 9, 2, tau=None).values == {"tau": 10.0, "iters": 3}
    assert R.make_rule("krum", 9, 2, neighbours="3").values == {"neighbours": 3}


# ------------------------------------------------------------------------------------------
# robustness and edge cases
# ------------------------------------------------------------------------------------------

ROBUST = ["krum", "multikrum", "cm", "trmean", "rfa", "cclip", "bulyan", "nmedian"]


@pytest.mark.parametrize("dtype,huge", [(torch.float32, 1e30), (torch.float64, 1e30),
                                        (torch.float64, 1e200)])
@pytest.mark.parametrize("name", ROBUST)
def test_huge_values_give_finite_output(name, dtype, huge):
    n, f = 11, 2
    x = randn(n, 40, 3, dtype)
    x[3] = huge
    x[7] = -huge
    x[7, ::2] = huge
    out = R.make_rule(name, n, f)(x)
    assert out.dtype == dtype and bool(torch.isfinite(out).all()), name
    # robust rules stay near the honest rows (cclip moves by at most tau per iteration)
    assert float(out.abs().max()) < 31.0, name


def test_huge_values_krum_scores_keep_ranking():
    x = randn(7, 30, 0, torch.float32)
    x[2] = 1e30  # |x|^2 overflows float32
    scores = R.krum_scores(x, 1)
    assert scores.dtype == torch.float64 and not bool(torch.isnan(scores).any())
    assert int(scores.argmax()) == 2


def test_pairwise_distances_nonfinite_rows_are_infinitely_far():
    x = randn(5, 4, 0)
    x[1, 2] = math.nan
    d = pairwise_sq_distances(x)
    assert bool(torch.isinf(d[1, [0, 2, 3, 4]]).all()) and float(d[1, 1]) == 0
    assert bool(torch.isfinite(d[[0, 2, 3, 4]][:, [0, 2, 3, 4]]).all())
    # Krum ignores the bad row
    assert 1 not in R.select_multikrum(x, 1, 4).tolist()


@pytest.mark.parametrize("name", R.tensor_rule_names())
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 1), (4, 1)])
def test_small_shapes(name, shape):
    n, d = shape
    if name in ("krum", "multikrum", "bulyan") and n < 3:
        with pytest.raises(ConfigError):
            R.make_rule(name, n, 0)
        return
    x = randn(n, d, n * 10 + d)
    out = R.make_rule(name, n, 0, **noise_free(name))(x, honest=torch.ones(n, dtype=torch.bool))
    assert out.shape == (d,) and bool(torch.isfinite(out).all())
    if n == 1 and name != "signmv" and name != "cclip":
        assert torch.allclose(out, x[0])


@pytest.mark.parametrize("name", R.tensor_rule_names())
def test_identical_rows(name):
    row = T([1.5, -2.0, 0.0, 3.0])
    x = row.repeat(7, 1)
    out = R.make_rule(name, 7, 1, **({"tau": 100.0} if name == "cclip" else noise_free(name)))(
        x, honest=torch.ones(7, dtype=torch.bool))
    expected = torch.sign(row) if name == "signmv" else row
    assert torch.allclose(out, expected, atol=1e-6), name


@pytest.mark.parametrize("name", R.tensor_rule_names())
def test_dtype_and_device_preserved(name):
    x = randn(7, 5, 0, torch.float32)
    out = R.make_rule(name, 7, 1)(x, honest=torch.ones(7, dtype=torch.bool))
    assert out.dtype == torch.float32 and out.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("name", R.tensor_rule_names())
def test_cuda_matches_cpu(name):
    x = randn(9, 3000, 0, torch.float32)
    cpu = R.make_rule(name, 9, 2)(x, honest=torch.ones(9, dtype=torch.bool))
    gpu = R.make_rule(name, 9, 2)(x.cuda(), honest=torch.ones(9, dtype=torch.bool).cuda())
    assert gpu.is_cuda and torch.allclose(cpu, gpu.cpu(), atol=1e-4)
