"""Per-worker gradients of a model whose parameters all belong to ``nn.Linear`` layers
(``softmax``, ``mlp``) from one forward and one backward pass over all k x b samples.

Forward hooks keep every Linear layer's input ``A`` (k b, in) and output ``Z`` (k b, out);
autograd gives ``dZ`` for the sum of the k per-worker mean losses (no weight gradients are
formed); worker w's gradients are then ``dW_w = dZ_w^T A_w`` (one batched product per layer)
and ``db_w = sum over its batch of dZ_w``. This is the per-example-gradient trick of Opacus and
BackPACK, applied per worker instead of per sample. The weight gradients are formed a few
workers at a time in a buffer of at most ``CHUNK_BYTES``, so they are consumed (copied or added
into the momentum) while still in cache: at n = 100, 15 ms instead of 22 ms for the first layer.

Why not ``torch.func.vmap(grad)``: on the MLP this path takes 9.2 ms against 10.7 ms (n = 20)
and 48 ms against 52 ms (n = 100), on softmax 1.0 against 1.7 ms (``bench/rounds.py --part
paths``), and torch.func imports ``torch._dynamo`` on its first call, 0.7 s per process.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK_BYTES = 4 << 20


def linear_layers(model: nn.Module) -> dict[str, tuple[nn.Linear, str]] | None:
    """{parameter name: (its Linear layer, "weight" or "bias")} if every parameter of ``model``
    belongs to an ``nn.Linear`` layer, else None."""
    owner = {}
    for prefix, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            if not isinstance(module, nn.Linear):
                return None
            owner[f"{prefix}.{pname}" if prefix else pname] = (module, pname)
    return owner


def per_worker_gradients(model: nn.Module, layers: dict[str, tuple[nn.Linear, str]], x: Tensor,
                         y: Tensor, update: Callable[[str, slice, Tensor], None]) -> Tensor:
    """Gradients of worker w's mean cross-entropy on its batch ``(x[w], y[w])`` for every w.

    ``model`` must already hold the parameters; ``layers`` is :func:`linear_layers` of it.
    Calls ``update(name, rows, g)`` with ``g`` the gradients of the workers ``rows`` (a slice of
    range(k)) for parameter ``name``, shape (len(rows), *shape); ``g`` is a temporary (copy what
    must be kept). Every (name, worker) pair is covered exactly once. Returns the (k,) losses.
    """
    k, b = y.shape
    linears = list(dict.fromkeys(layer for layer, _ in layers.values()))
    seen: dict[nn.Linear, tuple[Tensor, Tensor]] = {}

    def keep(layer: nn.Module, inputs: tuple, output: Tensor) -> None:
        if layer in seen:
            raise RuntimeError(f"{layer} runs twice in one forward pass; use --grad-path vmap")
        seen[layer] = (inputs[0].detach(), output)

    hooks = [layer.register_forward_hook(keep) for layer in linears]
    try:
        with torch.enable_grad():
            logits = model(x.reshape(k * b, *x.shape[2:]))
            losses = F.cross_entropy(logits, y.reshape(-1), reduction="none").view(k, b).mean(1)
            outputs = [seen[layer][1] for layer in linears]
            grads = dict(zip(linears, torch.autograd.grad(losses.sum(), outputs)))
    finally:
        for h in hooks:
            h.remove()
    for name, (layer, kind) in layers.items():
        dz = grads[layer].view(k, b, -1)
        if kind == "weight":
            a = seen[layer][0]
            if a.shape[0] != k * b or a.dim() != 2:
                raise RuntimeError(f"{layer} got input of shape {tuple(a.shape)}, expected "
                                   f"({k * b}, features); use --grad-path vmap")
            a = a.view(k, b, -1)
            c = max(1, CHUNK_BYTES // (dz.shape[2] * a.shape[2] * dz.element_size()))
            buf = dz.new_empty(min(c, k), dz.shape[2], a.shape[2])
            for s in range(0, k, c):
                rows = slice(s, min(k, s + c))
                g = buf[:rows.stop - s]
                torch.bmm(dz[rows].transpose(1, 2), a[rows], out=g)
                update(name, rows, g)
        else:
            update(name, slice(0, k), dz.sum(dim=1))
    return losses.detach()
