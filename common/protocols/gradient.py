"""The gradient protocol: every worker sends one float32 message per round (its gradient, or its
momentum), the server runs the pre-aggregator chain and the robust rule, and steps."""
from __future__ import annotations

from common.aggregation.rules import RULES
from common.errors import ConfigError
from common.protocols.base import PROTOCOLS, Protocol

__all__ = ["Gradient", "GRADIENT"]


class Gradient(Protocol):
    """One float32 gradient (or momentum) message per worker; any rule after any chain."""

    name = "gradient"

    def validate(self, cfg, chain) -> None:
        n = cfg.participants   # the rows of a round: every worker's, or the sampled clients'
        n_in = chain.out_count(n)
        rule = RULES.get(cfg.agg)
        if rule.per_worker and n_in != n:
            raise ConfigError(f"{rule.name} needs one message per worker; it cannot follow a "
                              "pre-aggregator (use --pre none)")
        # The defense's precondition is checked on what the rule will see after pre-aggregation.
        rule(n_in, cfg.f, **cfg.agg_params)


GRADIENT = PROTOCOLS.register(Gradient())
