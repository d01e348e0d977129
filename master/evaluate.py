"""Test-set evaluation of a flat parameter vector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.run.problem import Problem


@torch.no_grad()
def evaluate(problem: Problem, params: Tensor, device: torch.device, batch_size: int = 1000,
             metric: tuple[str, int, int] | None = None) -> dict[str, float]:
    """Accuracy (percent) and mean cross-entropy of ``params`` on the test set.

    ``metric = (name, source, target)`` (an attack's :meth:`~common.attacks.Attack.test_metric`,
    e.g. the backdoor's) also reports ``name``: the percentage of test samples of class source
    classified as target (when the test set has any of class source).
    """
    model, ds = problem.model, problem.dataset
    problem.flat.load_into(model, params.to(next(model.parameters()).device))
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(ds.y_test)
    hits, count = 0, 0
    source, target = (metric[1], metric[2]) if metric else (-1, -1)
    for start in range(0, n, batch_size):
        x = ds.x_test[start:start + batch_size].to(device)
        y = ds.y_test[start:start + batch_size].to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        pred = out.argmax(1)
        correct += int((pred == y).sum())
        if metric:
            of_source = y == source
            count += int(of_source.sum())
            hits += int((pred[of_source] == target).sum())
    model.train()
    res = {"test_accuracy": 100.0 * correct / n, "test_loss": loss_sum / n}
    if metric and count:
        res[metric[0]] = 100.0 * hits / count
    return res
