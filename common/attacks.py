"""Attacks: what the Byzantine workers send (spec: the "Attacks" table of ALGORITHMS.md).

Every attack is a pure tensor function plus a thin class around it. The worker code builds one
object per run with :func:`make_attack` and each round calls

* ``attack.poison_labels(y)`` on the labels of a Byzantine worker's batch (data-level attacks;
  identity for the others), then computes that worker's honest message on the poisoned batch, and
* ``attack.craft(AttackInput(own, honest, n, round, generator))`` to turn the ``(b, d)`` stack of
  those messages into the ``(b, d)`` messages actually sent.

Omniscient attacks (``attack.omniscient``: ``nm``, ``alie``, ``ipm``, ``mimic``) also need the
honest messages of the round (``AttackInput.honest``, shape ``(h, d)``), which reach them through
the transport. Notation: n workers this round, f Byzantine (the f given to the constructor),
H the honest set (the rows of ``honest``), mu = mean over H.

Conventions shared by every attack:

* outputs live on the device (and have the dtype) of ``own``; inputs are never modified in place;
* ``b = 0`` gives an empty ``(0, d)`` tensor; ``h = 1`` is handled (e.g. ALIE uses sigma = 0);
* colluding attacks (``nm``, ``alie``, ``ipm``, ``mimic``) send the same vector on every
  Byzantine row; ``bitflip``/``signflip``/``labelflip``/``backdoor``/``reverse`` transform each
  worker's own row and ``gaussian``/``random`` draw independent rows;
* randomness comes only from ``AttackInput.generator`` (a CPU generator), so runs are
  reproducible and independent of the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar

import torch
from torch import Tensor

from common import native
from common.errors import ConfigError, unknown_name

__all__ = [
    "AttackInput",
    "Attack",
    "ATTACKS",
    "attack_names",
    "make_attack",
    # pure functions
    "negate",
    "flip_labels",
    "backdoor_labels",
    "gaussian_rows",
    "nm_vector",
    "alie_z",
    "alie_vector",
    "ipm_vector",
    "mimic_power_step",
    "mimic_pick",
    "reverse_votes",
    "directional_votes",
    "random_votes",
    "ALIE_P_EPS",
]


# --------------------------------------------------------------------------------------------
# Input record
# --------------------------------------------------------------------------------------------


@dataclass
class AttackInput:
    """Everything an attack may look at in one round.

    own:       (b, d) what each Byzantine worker would honestly send this round (its momentum or
               gradient, computed on its possibly poisoned batch).
    honest:    (h, d) the honest workers' messages of this round (omniscient attacks only; may be
               None for the others).
    n:         total number of workers this round.
    round:     round index (0-based).
    generator: CPU generator for randomised attacks.
    """

    own: Tensor
    honest: Tensor | None
    n: int
    round: int
    generator: torch.Generator


# --------------------------------------------------------------------------------------------
# Pure tensor functions
# --------------------------------------------------------------------------------------------


def _repeat_rows(vec: Tensor, b: int, like: Tensor, out: Tensor | None = None) -> Tensor:
    """b identical rows equal to ``vec``: written into ``out`` if given, else a fresh contiguous
    tensor on ``like``'s device/dtype."""
    vec = vec.to(device=like.device, dtype=like.dtype)
    if out is None:
        return vec.unsqueeze(0).repeat(b, 1)
    return out.copy_(vec.expand(b, -1))


def negate(own: Tensor) -> Tensor:
    """Bit-flip / sign-flip: every Byzantine worker sends ``-own`` (a new tensor)."""
    return -own


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Label flip: ``y -> C - 1 - y`` (``9 - y`` for 10 classes). Returns a new tensor."""
    return (num_classes - 1) - y


def backdoor_labels(y: Tensor, source: int = 4, target: int = 9) -> Tensor:
    """Backdoor relabelling: every label equal to ``source`` becomes ``target`` (new tensor)."""
    return torch.where(y == source, torch.full_like(y, target), y)


def gaussian_rows(b: int, d: int, std: float, generator: torch.Generator,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """(b, d) independent N(0, std^2) entries, drawn on the CPU with ``generator``.

    Drawing on the CPU keeps the values identical whatever the target device.
    """
    x = torch.randn(b, d, generator=generator, dtype=torch.float32)
    return (x * std).to(device=device, dtype=dtype)


def nm_vector(honest: Tensor) -> Tensor:
    """Normalized-mean attack vector: ``-sum_{i in H} x_i / ||x_i||``; zero-norm rows add 0."""
    norms = honest.norm(dim=1, keepdim=True)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    unit = torch.where(norms > 0, honest / safe, torch.zeros_like(honest))
    return -unit.sum(dim=0)


#: ALIE clamps its quantile level p into [ALIE_P_EPS, 1 - ALIE_P_EPS] (so |z| <= 3.09).
ALIE_P_EPS = 1e-3


def alie_z(n: int, f: int) -> float:
    """ALIE's z = Phi^-1((n - f - s) / (n - f)) with s = floor(n/2 + 1) - f (ALGORITHMS.md).

    The level p = (n - f - s)/(n - f) = (n - floor(n/2 + 1))/(n - f) leaves (0, 1) in corner
    cases (p = 0 for n <= 2; p >= 1 when f >= floor(n/2 + 1), i.e. a Byzantine majority), where
    Phi^-1 would be infinite; p is then clamped into [ALIE_P_EPS, 1 - ALIE_P_EPS] (|z| <= 3.09).
    Requires n - f >= 1.

    Note: many implementations write z_max = Phi^-1((n - s)/n) instead; this project follows
    ALGORITHMS.md.
    """
    if n - f < 1:
        raise ValueError(f"ALIE needs at least one honest worker (n={n}, f={f})")
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f)
    p = min(max(p, ALIE_P_EPS), 1.0 - ALIE_P_EPS)
    return NormalDist().inv_cdf(p)


def alie_vector(honest: Tensor, z: float) -> Tensor:
    """ALIE vector: per coordinate ``mu - z * sigma`` over the honest rows.

    sigma is the unbiased standard deviation (divisor h - 1); with a single honest row sigma = 0.
    """
    mu, sigma = native.mean_var(honest, std=True)
    return sigma.mul_(-z).add_(mu)  # in place: mu - z sigma, the same values


def ipm_vector(honest: Tensor, eps: float = 0.1) -> Tensor:
    """Inner-product-manipulation vector: ``-eps * mu``."""
    return -eps * honest.mean(dim=0)


def mimic_power_step(honest: Tensor, mu: Tensor, z: Tensor, steps: int = 1) -> Tensor | None:
    """``steps`` power-iteration steps ``z <- normalise(sum_i (x_i - mu)(x_i - mu)^T z)``.

    Computed as ``X_c^T (X_c z)`` with X_c the centred rows (never forms the d x d matrix).
    Returns None when the centred rows are all zero along z (no direction to learn).
    """
    xc = honest - mu.unsqueeze(0)
    for _ in range(steps):
        v = xc.t() @ (xc @ z)
        nv = v.norm()
        if not torch.isfinite(nv) or nv <= 0:
            return None
        z = v / nv
    return z


def mimic_pick(honest: Tensor, z: Tensor) -> int:
    """Index of the honest row maximising ``<x_i, z>`` (first one on ties)."""
    return int(torch.argmax(honest @ z).item())


def reverse_votes(own: Tensor) -> Tensor:
    """Reverse vote attack: ``-sign(own)`` (values in {-1, 0, 1})."""
    return -torch.sign(own)


def directional_votes(b: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Directional vote attack: every entry -1."""
    return torch.full((b, d), -1.0, device=device, dtype=dtype)


def random_votes(b: int, d: int, generator: torch.Generator, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Random vote attack: independent uniform +-1 entries drawn on the CPU with ``generator``."""
    bits = torch.randint(0, 2, (b, d), generator=generator)
    return (bits * 2 - 1).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Parameter validation helpers
# --------------------------------------------------------------------------------------------


def _as_float(attack: str, key: str, value: Any, *, min_value: float | None = None) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"attack '{attack}': parameter {key} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"attack '{attack}': parameter {key} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"attack '{attack}': parameter {key} must be finite, got {value!r}")
    if min_value is not None and x < min_value:
        raise ConfigError(f"attack '{attack}': parameter {key} must be >= {min_value}, got {value!r}")
    return x


def _as_int(attack: str, key: str, value: Any, *, min_value: int | None = None,
            max_value: int | None = None) -> int:
    bad = ConfigError(f"attack '{attack}': parameter {key} must be an integer, got {value!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        x = value
    else:
        try:
            xf = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(xf) or xf != int(xf):
            raise bad
        x = int(xf)
    if min_value is not None and x < min_value:
        raise ConfigError(f"attack '{attack}': parameter {key} must be >= {min_value}, got {value!r}")
    if max_value is not None and x > max_value:
        raise ConfigError(f"attack '{attack}': parameter {key} must be <= {max_value}, got {value!r}")
    return x


# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------


class Attack:
    """Base class: honest behaviour (identity labels, ``craft`` returns ``own``).

    Subclasses declare ``name``, ``omniscient`` and ``defaults`` (parameter name -> default
    value); ``__init__`` rejects unknown parameters and calls :meth:`_setup` to validate values.
    A parameter passed as None takes its default.
    """

    name: ClassVar[str] = "none"
    omniscient: ClassVar[bool] = False
    # Whether craft reads the values of ``own`` (not only its shape). When it does not and the
    # Byzantine workers never turn honest, their honest gradients are not computed at all
    # (worker/group.py: WorkerGroup._rows_to_compute).
    reads_own: ClassVar[bool] = True
    # Rows drawn at random: the worker calls craft once per Byzantine worker with a generator
    # keyed by the worker's index, so messages do not depend on how workers are grouped.
    per_worker_random: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, n: int, f: int, num_classes: int, **params: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"attack '{self.name}': number of workers must be >= 1, got {n!r}")
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= n:
            raise ConfigError(f"attack '{self.name}': number of Byzantine workers must be in "
                              f"[0, n={n}], got {f!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"attack '{self.name}': number of classes must be >= 1, got {num_classes!r}")
        unknown = sorted(k for k in params if k not in self.defaults)
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"attack '{self.name}': unknown parameter(s) {', '.join(unknown)}; "
                              f"valid parameters: {valid}")
        if self.omniscient and f > 0 and n - f < 1:
            raise ConfigError(f"attack '{self.name}' copies or combines honest messages and needs at "
                              f"least one honest worker, but n={n}, f={f}")
        self.n = n
        self.f = f
        self.num_classes = num_classes
        merged = dict(self.defaults)
        merged.update({k: v for k, v in params.items() if v is not None})
        self.params: dict[str, Any] = merged
        self.info: dict = {}
        self._setup(**merged)

    def _setup(self, **params: Any) -> None:
        """Validate and store parameters (override)."""

    # -- data level ----------------------------------------------------------------------
    def poison_labels(self, y: Tensor) -> Tensor:
        """Labels the Byzantine worker trains on (identity unless the attack poisons data)."""
        return y

    # -- message level -------------------------------------------------------------------
    def craft(self, inp: AttackInput, out: Tensor | None = None) -> Tensor:
        """(b, d) messages the Byzantine workers send: a fresh tensor, or written into ``out``
        (a (b, d) tensor, e.g. the rows of the stack they go to: one copy less) and returned."""
        self.info = {}
        own = self._check_own(inp)
        if own.shape[0] == 0:
            return own.new_empty((0, own.shape[1]))
        res = self._craft(inp, own, out)
        return res if out is None or res is out else out.copy_(res)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        """The messages (fresh, or ``out`` written; :meth:`craft` copies other results there)."""
        return own.clone()

    def _check_own(self, inp: AttackInput) -> Tensor:
        own = inp.own
        if own.dim() != 2:
            raise ValueError(f"attack '{self.name}': own must have shape (b, d), got {tuple(own.shape)}")
        return own

    def _honest(self, inp: AttackInput) -> Tensor:
        h = inp.honest
        d = inp.own.shape[1]
        if h is None or h.dim() != 2 or h.shape[0] == 0 or h.shape[1] != d:
            shape = None if h is None else tuple(h.shape)
            raise ValueError(f"attack '{self.name}' is omniscient and needs the honest messages "
                             f"of the round as an (h >= 1, d={d}) tensor, got {shape}")
        return h.to(inp.own.device)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}(n={self.n}, f={self.f}{', ' if ps else ''}{ps})"


class NoAttack(Attack):
    """``none``: honest behaviour, ``craft`` returns ``own``. For f = 0 or clean baselines."""

    name = "none"


class BitFlip(Attack):
    """``bitflip``: each Byzantine worker sends minus its own honest message, ``-own``.

    Per-worker rows (each negates its own gradient/momentum). No parameters.
    Reference: the "bit flipping" attack of Karimireddy, He, Jaggi (ICML 2021, ICLR 2022).
    """

    name = "bitflip"

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return negate(own)


class SignFlip(BitFlip):
    """``signflip``: same behaviour as ``bitflip`` (``-own``); the DiverseFL paper's name."""

    name = "signflip"


class LabelFlip(Attack):
    """``labelflip``: train honestly on labels ``y -> C - 1 - y`` (``9 - y`` for C = 10).

    ``craft`` returns ``own`` unchanged: the message was already computed on flipped labels.
    Per-worker rows. No parameters. Reference: Allen-Zhu et al. 2020; Karimireddy et al. 2021.
    """

    name = "labelflip"

    def poison_labels(self, y: Tensor) -> Tensor:
        return flip_labels(y, self.num_classes)


class Gaussian(Attack):
    """``gaussian``: each Byzantine row is independent N(0, std^2 I) noise.

    Parameter: ``std`` (default 200, >= 0). Drawn on the CPU with ``AttackInput.generator``,
    so the same seed gives the same messages on any device.
    """

    name = "gaussian"
    reads_own = False
    per_worker_random = True
    defaults = {"std": 200.0}

    def _setup(self, std: Any) -> None:
        self.std = _as_float(self.name, "std", std, min_value=0.0)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return gaussian_rows(b, d, self.std, inp.generator, device=own.device, dtype=own.dtype)


class NormalizedMean(Attack):
    """``nm`` (normalized-mean attack, omniscient).

    Every Byzantine row = ``-sum_{i in H} x_i / ||x_i||`` (honest rows of zero norm contribute 0).
    Aimed at the normalized-mean rule (RFA with T = 1), which it drives backwards as f grows.
    Reference: the resampling paper (Karimireddy, He, Jaggi 2020, arXiv:2006.09365v1).
    No parameters.
    """

    name = "nm"
    reads_own = False
    omniscient = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return _repeat_rows(nm_vector(self._honest(inp)), own.shape[0], own, out)


class ALIE(Attack):
    """``alie`` ("A little is enough", Baruch, Baruch, Goldberg, NeurIPS 2019; omniscient).

    Every Byzantine row = ``mu - z * sigma`` per coordinate, mu and sigma (unbiased std; 0 when
    there is a single honest row) over the honest messages of the round, and
    ``z = Phi^-1((n - f - s) / (n - f))``, ``s = floor(n/2 + 1) - f`` (ALGORITHMS.md; n from
    ``AttackInput.n``, f from the constructor). When the level leaves (0, 1) it is clamped into
    ``[1e-3, 1 - 1e-3]`` (see :func:`alie_z`).

    Parameter: ``z`` (default None = the formula above) overrides z.
    ``info = {"z": z used}``.
    """

    name = "alie"
    reads_own = False
    omniscient = True
    defaults = {"z": None}

    def _setup(self, z: Any) -> None:
        self.z = None if z is None else _as_float(self.name, "z", z)

    def current_z(self, n: int) -> float:
        return self.z if self.z is not None else alie_z(n, self.f)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        honest = self._honest(inp)
        z = self.current_z(inp.n)
        self.info = {"z": float(z)}
        return _repeat_rows(alie_vector(honest, z), own.shape[0], own, out)


class IPM(Attack):
    """``ipm`` (inner product manipulation, Xie, Koyejo, Gupta, UAI 2019; omniscient).

    Every Byzantine row = ``-eps * mu``, mu the mean of the honest messages.
    Parameter: ``eps`` (default 0.1; any finite number).
    """

    name = "ipm"
    reads_own = False
    omniscient = True
    defaults = {"eps": 0.1}

    def _setup(self, eps: Any) -> None:
        self.eps = _as_float(self.name, "eps", eps)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return _repeat_rows(ipm_vector(self._honest(inp), self.eps), own.shape[0], own, out)


class Mimic(Attack):
    """``mimic`` (Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets
    via bucketing", ICLR 2022; omniscient). Every Byzantine row = ``honest[i*]``.

    Warmup (the first ``warmup`` rounds this object sees): estimate the top principal direction z
    of the centred honest messages with the online power method of the paper:

    * first round: mu = mean of the honest rows, z_0 a random unit vector drawn with the
      generator (CPU), then ``z <- normalise((sum_i (x_i - mu)(x_i - mu)^T)^k z)`` with
      k = ``power_steps``;
    * later warmup rounds t = 1, 2, ...: mu <- t/(t+1) mu + 1/(t+1) mean_t (running mean), and
      ``z <- normalise(t/(t+1) z + 1/(t+1) u)``, u the power step(s) above on this round's
      messages (an online estimate of the top eigenvector of the covariance summed over rounds).

    In each warmup round the target is ``i* = argmax_i <x_i, z>`` by the current z; after warmup
    i* (a position within the rows of ``honest``) stays fixed. If a later round has fewer honest
    rows than i* + 1, the target is re-picked by z. When the centred messages carry no
    direction (h = 1 or identical rows) z is left unchanged.

    Parameters: ``warmup`` (default 1, >= 1), ``power_steps`` (default 3, >= 1).
    ``info = {"target": i*}``; ``state_dict`` holds z, mu, i* and the rounds seen. The state is
    updated whenever honest messages are given, even with b = 0, so every replica stays in sync.
    """

    name = "mimic"
    reads_own = False
    omniscient = True
    defaults = {"warmup": 1, "power_steps": 3}

    def _setup(self, warmup: Any, power_steps: Any) -> None:
        self.warmup = _as_int(self.name, "warmup", warmup, min_value=1)
        self.power_steps = _as_int(self.name, "power_steps", power_steps, min_value=1)
        self.t = 0
        self.z: Tensor | None = None
        self.mu: Tensor | None = None
        self.target: int | None = None

    def _update(self, honest: Tensor, generator: torch.Generator) -> None:
        x = honest.detach().to(torch.float32)
        mean = x.mean(dim=0)
        if self.t == 0 or self.z is None or self.mu is None:
            self.mu = mean
            z0 = torch.randn(x.shape[1], generator=generator, dtype=torch.float32)
            n0 = z0.norm()
            z0 = z0 / n0 if n0 > 0 else z0
            z0 = z0.to(x.device)
            u = mimic_power_step(x, self.mu, z0, self.power_steps)
            self.z = z0 if u is None else u
        else:
            t = self.t
            mu = self.mu.to(x.device)
            z = self.z.to(x.device)
            mu = t / (t + 1) * mu + mean / (t + 1)
            u = mimic_power_step(x, mu, z, self.power_steps)
            if u is not None:
                z = t / (t + 1) * z + u / (t + 1)
                nz = z.norm()
                if nz > 0:
                    z = z / nz
            self.mu, self.z = mu, z
        self.target = mimic_pick(x, self.z)

    def craft(self, inp: AttackInput, out: Tensor | None = None) -> Tensor:
        self.info = {}
        own = self._check_own(inp)
        b, d = own.shape
        if b == 0 and inp.honest is None:
            return own.new_empty((0, d))
        honest = self._honest(inp)
        if self.t < self.warmup:
            self._update(honest, inp.generator)
        elif self.target is None or self.target >= honest.shape[0]:
            z = self.z.to(device=honest.device, dtype=torch.float32)
            self.target = mimic_pick(honest.to(torch.float32), z)
        self.t += 1
        self.info = {"target": int(self.target)}
        if b == 0:
            return own.new_empty((0, d))
        return _repeat_rows(honest[self.target], b, own, out)

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "target": self.target,
            "z": None if self.z is None else self.z.detach().cpu().clone(),
            "mu": None if self.mu is None else self.mu.detach().cpu().clone(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.t = int(d.get("t", 0))
        tgt = d.get("target")
        self.target = None if tgt is None else int(tgt)
        z, mu = d.get("z"), d.get("mu")
        self.z = None if z is None else torch.as_tensor(z, dtype=torch.float32).clone()
        self.mu = None if mu is None else torch.as_tensor(mu, dtype=torch.float32).clone()


class Mimic2(Attack):
    """``mimic2``: the two-dataset layout attack of the resampling paper
    (Karimireddy, He, Jaggi 2020, arXiv:2006.09365v1).

    The data layout does the work: half the honest workers share dataset A, the other half
    dataset B, and the Byzantine workers also hold A (``common/partition.py``:
    ``mimic2_layout``). The Byzantine workers then behave honestly -- ``craft`` returns ``own``,
    the gradient of A -- which tips the majority to A so that median-like rules sit on A and
    ignore B. Needs no honest messages (``omniscient = False``). No parameters.
    """

    name = "mimic2"


class Backdoor(Attack):
    """``backdoor`` (model replacement, Bagdasaryan et al. 2020, as used by DiverseFL).

    ``poison_labels``: every label ``source`` becomes ``target`` (4 -> 9 by default); the worker's
    sampler composes the batch (roughly half of it ``source`` examples) -- not done here.
    ``craft``: each row = ``scale * own`` (per worker).
    Parameters: ``source`` (default 4), ``target`` (default 9), both in [0, C); ``scale``
    (default 4).
    """

    name = "backdoor"
    defaults = {"source": 4, "target": 9, "scale": 4.0}

    def _setup(self, source: Any, target: Any, scale: Any) -> None:
        c = self.num_classes
        classes = []
        for key, val in (("source", source), ("target", target)):
            v = _as_int(self.name, key, val)
            if not 0 <= v < c:
                raise ConfigError(f"attack 'backdoor': parameter {key}={v} is not a class of this "
                                  f"dataset (valid 0..{c - 1}); set backdoor source/target")
            classes.append(v)
        self.source, self.target = classes
        self.scale = _as_float(self.name, "scale", scale)

    def poison_labels(self, y: Tensor) -> Tensor:
        return backdoor_labels(y, self.source, self.target)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return own * self.scale


class ReverseVote(Attack):
    """``reverse`` vote attack for sign protocols: each row = ``-sign(own)`` (values -1, 0, 1).

    Reference: Sohn et al. (Election coding, NeurIPS 2020); Bernstein et al. (signSGD, 2019).
    """

    name = "reverse"

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return reverse_votes(own)


class DirectionalVote(Attack):
    """``directional`` vote attack: every entry -1 (all Byzantine nodes push the same way)."""

    name = "directional"

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return directional_votes(b, d, device=own.device, dtype=own.dtype)


class RandomVote(Attack):
    """``random`` vote attack: independent uniform +-1 entries per Byzantine row (generator)."""

    name = "random"
    per_worker_random = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return random_votes(b, d, inp.generator, device=own.device, dtype=own.dtype)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (NoAttack, BitFlip, SignFlip, LabelFlip, Gaussian, NormalizedMean, ALIE, IPM,
                Mimic, Mimic2, Backdoor, ReverseVote, DirectionalVote, RandomVote)
}


def attack_names() -> list[str]:
    """Sorted names of every registered attack."""
    return sorted(ATTACKS)


def make_attack(name: str, n: int, f: int, num_classes: int, **params: Any) -> Attack:
    """Build attack ``name``; unknown names and parameters raise :class:`ConfigError`.

    A parameter given as None takes its default.
    """
    cls = ATTACKS.get(name)
    if cls is None:
        raise unknown_name("attack", name, ATTACKS)
    return cls(n, f, num_classes, **params)
