"""Which gradient path a group of per-batch gradients takes for a model.

``linear``: models made of Linear layers only (softmax, MLP), one forward/backward over the whole
group plus a batched product per layer (:mod:`common.compute.linear_grads`); ``vmap``: one
``torch.func`` ``vmap(grad)`` call; ``loop``: a per-batch loop of forward/backward (faster for
convolutional models on CPU, where vmap's batched convolutions lose to the native kernels).
``bench/rounds.py --part paths`` measures them.
"""
from __future__ import annotations

from torch import nn

from common.compute.linear_grads import linear_layers
from common.data.models import FAST_PATH

__all__ = ["FAST_PATH", "GRAD_PATHS", "choose_path"]

GRAD_PATHS = ("auto", "linear", "vmap", "loop")


def choose_path(cfg, model: nn.Module) -> str:
    """``cfg.grad_path``, or for ``auto`` the model's :data:`FAST_PATH` entry (loop for a model
    not listed), with vmap in place of the linear path when ``model`` has parameters outside
    Linear layers."""
    if cfg.grad_path != "auto":
        return cfg.grad_path
    path = FAST_PATH.get(cfg.model, "loop")
    return "vmap" if path == "linear" and linear_layers(model) is None else path
