"""Robust rules: one module per rule (or family), each registering itself in :data:`RULES`.

Importing this package imports every module in it and re-exports each module's ``__all__``
(the pure functions and classes), so a rule added as a new module here is registered, listed by
``--list``, usable as ``--agg NAME`` and importable as ``common.aggregation.rules.NAME_FUNCTION``
without editing any other file.
"""
from common.aggregation.rules.base import RULES, Rule, make_rule, rule_names, tensor_rule_names
from common.params import discover

__all__ = ["RULES", "Rule", "make_rule", "rule_names", "tensor_rule_names"]

__all__ += discover(__name__, __path__, globals())
