"""Local SGD steps of many clients, each at its own parameters, for models that are a
``Sequential`` of ``Flatten`` (first), ``Linear`` and ``ReLU`` layers (``softmax``, ``mlp``):
the linear gradient path (:mod:`common.compute.linear_grads`) generalised to per-client weights.

The clients' parameters are stacked per layer, (c, out, in) and (c, out); a step runs the
forward pass of all c clients as one ``baddbmm`` per layer, the cross-entropy and ReLU
backward by hand, and never forms a weight gradient: ``W <- W - lr dZ^T A`` is one
``baddbmm_`` into the weights (with momentum, ``v <- beta v + dZ^T A`` into the buffer, then
``W <- W - lr v``). The same arithmetic as autograd's, up to float rounding.

Why not ``vmap(grad)``: its per-client gradients are a fresh (c, d) stack per step, read again
for the update, and every client's parameters stream through memory once per step. Why
chunks: clients are stepped :data:`CHUNK_BYTES` of parameters at a time, all steps of a chunk
before the next, so their weights stay in cache across the steps (on the 2x200 MLP at n = 20,
K = 5, b = 32: 77 ms in chunks of 4 clients, 81 ms all at once, 131 ms with ``vmap`` and 135
ms for a plain per-client loop; bench/README.md, "Federated local steps").
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CHUNK_BYTES", "linear_plan", "LinearSteps"]

CHUNK_BYTES = 4 << 20


def linear_plan(model: nn.Module) -> list[str] | None:
    """The layers of ``model`` as ``["1", "relu", "3", ...]`` (a Linear layer's name, or relu) if
    it is a Sequential of an optional leading Flatten, then Linear and ReLU layers; else None."""
    if not isinstance(model, nn.Sequential):
        return None
    plan = []
    for i, (name, layer) in enumerate(model.named_children()):
        if isinstance(layer, nn.Flatten) and i == 0 and layer.start_dim == 1 and layer.end_dim == -1:
            continue
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            plan.append(name)
        elif isinstance(layer, nn.ReLU):
            plan.append("relu")
        else:
            return None
    return plan if plan and plan[-1] != "relu" else None


class LinearSteps:
    """SGD steps of clients at their own parameters for a model :func:`linear_plan` accepts
    (``flat``: its :class:`common.data.flat.FlatParams`)."""

    def __init__(self, model: nn.Module, flat) -> None:
        plan = linear_plan(model)
        if plan is None:
            raise ValueError("LinearSteps needs a Sequential of Flatten, Linear and ReLU layers")
        self.plan, self.flat = plan, flat

    def run(self, theta: Tensor, v: Tensor | None, x: Tensor, y: Tensor, beta: float,
            ema: bool, lr: float) -> None:
        """S steps for each of the c clients, in place: ``theta`` (c, d) their parameters,
        ``v`` (c, d) their momentum buffers (None or ``beta = 0``: plain SGD, ``v`` untouched),
        ``x`` (S, c, b, ...) and ``y`` (S, c, b) the batch of every step and client. Step:
        ``v <- beta v + g`` (``ema``: ``beta v + (1 - beta) g``), ``theta <- theta - lr v``."""
        c = theta.shape[0]
        per = max(1, CHUNK_BYTES // (4 * self.flat.dim))
        for s in range(0, c, per):
            rows = slice(s, min(c, s + per))
            params = {k: t.contiguous() for k, t in self.flat.views(theta[rows]).items()}
            buf = ({k: t.contiguous() for k, t in self.flat.views(v[rows]).items()}
                   if beta and v is not None else None)
            for k in range(x.shape[0]):
                self._step(params, buf, x[k, rows], y[k, rows], beta, ema, lr)
            for k, t in self.flat.views(theta[rows]).items():
                t.copy_(params[k])
            if buf is not None:
                for k, t in self.flat.views(v[rows]).items():
                    t.copy_(buf[k])

    def _step(self, params: dict[str, Tensor], buf: dict[str, Tensor] | None, x: Tensor,
              y: Tensor, beta: float, ema: bool, lr: float) -> None:
        c, b = y.shape
        h = x.reshape(c, b, -1)
        inputs, outputs = [], []       # each Linear's input; each ReLU's output
        for op in self.plan:
            if op == "relu":
                h = h.relu_()
                outputs.append(h)
            else:
                inputs.append(h)
                h = torch.baddbmm(params[f"{op}.bias"].unsqueeze(1), h,
                                  params[f"{op}.weight"].transpose(1, 2))
        # d(mean cross-entropy)/d logits = (softmax - onehot(y)) / b
        dz = torch.softmax(h, dim=2)
        dz.scatter_add_(2, y.unsqueeze(2), torch.full((c, b, 1), -1.0, dtype=dz.dtype,
                                                      device=dz.device))
        dz.div_(b)
        for op in reversed(self.plan):
            if op == "relu":
                dz.mul_(outputs.pop() > 0)
                continue
            w, bias, a = params[f"{op}.weight"], params[f"{op}.bias"], inputs.pop()
            da = torch.bmm(dz, w) if inputs else None    # before w moves; none for the input
            if buf is None:
                w.baddbmm_(dz.transpose(1, 2), a, alpha=-lr)
                bias.sub_(dz.sum(1), alpha=lr)
            else:
                keep, take = (beta, 1.0 - beta) if ema else (beta, 1.0)
                vw, vb = buf[f"{op}.weight"], buf[f"{op}.bias"]
                vw.baddbmm_(dz.transpose(1, 2), a, beta=keep, alpha=take)
                vb.mul_(keep).add_(dz.sum(1), alpha=take)
                w.sub_(vw, alpha=lr)
                bias.sub_(vb, alpha=lr)
            dz = da
