"""A model's parameters as one flat float32 vector: the unit that travels between server and workers.

The server holds the model as a d-vector; workers unflatten it into views for
``torch.func.functional_call`` (no copies) and flatten their gradients back into rows of an
(n, d) stack.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FlatParams:
    """Layout of a module's parameters inside a flat vector (names, shapes, offsets)."""

    def __init__(self, module: nn.Module) -> None:
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.numels: list[int] = []
        for name, p in module.named_parameters():
            self.names.append(name)
            self.shapes.append(p.shape)
            self.numels.append(p.numel())
        self.dim = sum(self.numels)

    def flatten(self, module: nn.Module) -> Tensor:
        """The module's current parameters as a new d-vector."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def views(self, vec: Tensor) -> dict[str, Tensor]:
        """Named views into ``vec`` (d,) or a stack ``vec`` (k, d): no copy."""
        lead = vec.shape[:-1]
        out = {}
        for name, shape, chunk in zip(self.names, self.shapes, vec.split(self.numels, dim=-1)):
            out[name] = chunk.reshape(*lead, *shape)
        return out

    def load_into(self, module: nn.Module, vec: Tensor) -> None:
        """Copy ``vec`` into the module's parameters in place."""
        with torch.no_grad():
            for p, chunk in zip(module.parameters(), vec.split(self.numels)):
                p.copy_(chunk.view_as(p))

    def flatten_grads(self, module: nn.Module, out: Tensor) -> Tensor:
        """Write the module's ``.grad`` into the preallocated d-vector ``out``."""
        offset = 0
        for p, k in zip(module.parameters(), self.numels):
            if p.grad is None:
                out[offset:offset + k].zero_()
            else:
                out[offset:offset + k].copy_(p.grad.reshape(-1))
            offset += k
        return out

    def flatten_dict(self, tensors: dict[str, Tensor], lead: int) -> Tensor:
        """Concatenate a dict of per-parameter stacks (lead, *shape) into (lead, d)."""
        return torch.cat([tensors[n].reshape(lead, -1) for n in self.names], dim=1)
