"""Worked examples of extending the project from outside it (``--plugin examples.my_rule``)."""
