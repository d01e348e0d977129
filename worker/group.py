"""A group of k workers: their data, batches, gradients, state and attack, for all k at once.

``main.py`` hosts one group of all n workers; under MPI each worker rank hosts a contiguous
group. What the group sends each round is its protocol's: the protocol's client object
(:meth:`common.protocols.Protocol.clients`) drives the group's capabilities below (the
gradient protocol: :meth:`WorkerGroup.momentum_messages`; election coding: slice gradients and
votes; RSA: gradients at the clients' own models). Gradients come from the fastest path for the
model (:mod:`common.compute.paths`): for models made only of Linear layers one forward/backward
over the whole group plus a batched product per layer (:mod:`common.compute.linear_grads`),
otherwise one ``torch.func`` ``vmap(grad)`` call or a plain per-worker loop (faster for
convolutional models on CPU; measured by ``bench/rounds.py``).

Everything random is keyed by (seed, round, worker) (:mod:`common.seeding`), so a worker's
message does not depend on which group hosts it: one process and many ranks agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from common.aggregation.rules import RULES
from common.attacks import Attack, AttackInput, run_attack, run_defense
from common.compute.linear_grads import linear_layers, per_worker_gradients
from common.compute.linear_steps import LinearSteps, linear_plan
from common.compute.paths import choose_path
from common.data.partition import group_batches, pad_shards
from common.errors import ConfigError
from common.protocols import protocol_of
from common.rows import put_rows, row_block, take_rows
from common.run.config import Config
from common.run.problem import Problem
from common.seeding import round_generator

__all__ = ["WorkerGroup", "make_worker_group"]


class WorkerGroup:
    """Workers ``ids`` (a contiguous range of global worker indices) of one process.

    ``state``: the per-worker tensors the protocol keeps (its ``state_schema``: momenta, RSA's
    models), checkpointed with the attack's state; ``clients``: the protocol's round;
    ``wire``: its message format.
    """

    def __init__(self, cfg: Config, problem: Problem, ids: range, attack: Attack,
                 device: torch.device) -> None:
        self.cfg, self.problem, self.ids, self.attack = cfg, problem, ids, attack
        self.device = device
        self.k = len(ids)
        ds = problem.dataset
        self.x = ds.x_train.to(device)
        self.y = ds.y_train.to(device)
        table, lengths = pad_shards([problem.shards[i] for i in ids])
        self.table, self.lengths = table.to(device), lengths.to(device)
        self.model = problem.model
        self.flat = problem.flat
        self.path = choose_path(cfg, self.model)
        self.layers = linear_layers(self.model) if self.path == "linear" else None
        if self.path == "linear" and self.layers is None:
            raise ConfigError(f"--grad-path linear needs a model whose parameters all belong to "
                              f"Linear layers (softmax, mlp); {cfg.model} has others: use "
                              "auto, vmap or loop")
        protocol = protocol_of(cfg)
        self.state: dict[str, Tensor] = {
            name: torch.zeros(self.k, *shape, dtype=dtype, device=device)
            for name, (shape, dtype) in protocol.state_schema(cfg, problem.dim).items()}
        self._lent: tuple[Tensor, Tensor] | None = None  # (rows, their momenta): see compute()
        self.losses = torch.zeros(self.k)
        self._vgrad = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0))
        self._vgrad_own = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0))
        # per-client SGD steps of the linear path (federated local steps)
        self.stack = (LinearSteps(self.model, self.flat) if self.path == "linear"
                      and linear_plan(self.model) is not None else None)
        self.sampler = attack.batch_sampler(problem, ids, cfg.num_workers, cfg.run_seed, device)
        self.upload = RULES.get(cfg.agg).upload_transform(cfg.rule_values)
        self.wire = protocol.wire(cfg, problem.dim)
        self.clients = protocol.clients(self)

    @property
    def momenta(self) -> Tensor:
        """The workers' momentum buffers (the gradient protocol's state)."""
        return self.state["momenta"]

    # -- gradients -----------------------------------------------------------------------------
    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, params, (x,)), y)

    def batches(self, t: int, step: int = 0, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """This round's (k, b, ...) inputs and (k, b) labels; worker i's batch depends on i only.
        ``step``: the local step (federated mode: each step of a round draws afresh; step 0 is
        the round's one batch of the other protocols); ``rows``: only these group-local workers."""
        gen = round_generator(self.cfg.run_seed, t, "batch", step)
        idx = group_batches(self.table, self.lengths, self.cfg.batch_size, self.cfg.num_workers,
                            self.ids, gen, rows)
        # index_select: 4x faster than advanced indexing self.x[idx] on CPU (measured 0.07 ms
        # against 0.29 ms for 20 x 32 Fashion-MNIST images)
        x = self.x.index_select(0, idx.flatten()).view(*idx.shape, *self.x.shape[1:])
        return x, self.y[idx]

    def round_batches(self, t: int, byz: Tensor, step: int = 0,
                      rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`batches` with the Byzantine rows' data attack applied (the attack's batch
        sampler, e.g. the backdoor's mix, and its labels); ``byz``: the mask of the rows drawn."""
        x, y = self.batches(t, step, rows)
        if byz.any():
            if self.sampler is not None:
                # a plugin's sampler of one round batch needs no step or rows
                more = {} if step == 0 and rows is None else {"step": step, "rows": rows}
                x, y = self.sampler.compose(self.x, self.y, x, y, byz, t, **more)
            y = y.clone()
            y[byz] = self.attack.poison_labels(y[byz])
        return x, y

    def gradients(self, params: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """(m, d) gradients of the mean cross-entropy on each of the m batches in ``x`` (m = k
        per-worker batches, or the slices of an election-coded group, worker/coded.py)."""
        out = torch.empty(x.shape[0], self.flat.dim, device=self.device)
        self.grads_into(params, x, y, out, None)
        return out

    def grads_into(self, params: Tensor, x: Tensor, y: Tensor, out: Tensor,
                    beta: float | None, ema: bool = False, own: bool = False) -> None:
        """Row i of ``out`` (m, d) <- g_i if ``beta`` is None or 0 (``out`` is not read), else
        the momentum update ``beta out_i + g_i`` (``ema``: ``beta out_i + (1 - beta) g_i``),
        written per parameter straight from the autograd/vmap results: no (m, d) gradient
        stack and no extra pass.
        The same arithmetic runs whatever the grouping, so messages stay grouping-independent.
        ``own``: ``params`` is (m, d), row i the parameters batch i's gradient is taken at (one
        ``vmap`` over the stacked parameters, or the loop; the linear path's layers are
        shared, so it takes vmap here).
        """
        # name -> (m, *shape) views into out (.view: fails loudly rather than copy silently)
        views = {name: chunk.view(out.shape[0], *shape) for name, shape, chunk in
                 zip(self.flat.names, self.flat.shapes, out.split(self.flat.numels, dim=1))}

        def update(dst: Tensor, g: Tensor) -> None:
            if not beta:      # None or 0: checkpoints rely on out not being read
                dst.copy_(g)
            elif ema:
                dst.lerp_(g, 1.0 - beta)          # beta dst + (1 - beta) g
            else:
                torch.add(g, dst, alpha=beta, out=dst)  # g + beta dst

        if self.path == "vmap" or (own and self.path == "linear"):
            vgrad = self._vgrad_own if own else self._vgrad
            grads, losses = vgrad(self.flat.views(params), x, y)
            self.losses = losses.detach().cpu()
            for name in self.flat.names:
                update(views[name], grads[name])
            return
        if not own:
            self.flat.load_into(self.model, params)
        if self.path == "linear":
            losses = per_worker_gradients(self.model, self.layers, x, y,
                                          lambda name, rows, g: update(views[name][rows], g))
            self.losses = losses.cpu()
            return
        named = [(name, p) for name, p in self.model.named_parameters()]
        losses = []
        for i in range(x.shape[0]):
            if own:
                self.flat.load_into(self.model, params[i])
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x[i]), y[i])
            loss.backward()
            for name, p in named:
                if p.grad is None:
                    update(views[name][i], torch.zeros_like(p))
                else:
                    update(views[name][i], p.grad)
            losses.append(loss.detach())
        self.losses = torch.stack(losses).cpu()

    def local_steps(self, theta: Tensor, v: Tensor, x: Tensor, y: Tensor, beta: float,
                    ema: bool, lr: float) -> None:
        """S SGD steps of each of m clients at its own parameters, in place (federated local
        steps): ``theta`` (m, d) their parameters, ``v`` (m, d) their momentum buffers
        (untouched when ``beta`` is 0), ``x`` (S, m, b, ...) and ``y`` (S, m, b) the batch of
        every step. ``v <- beta v + g`` (``ema``: ``beta v + (1 - beta) g``), ``theta <- theta -
        lr v``. The linear path's per-client steps (:class:`LinearSteps`), one ``vmap`` over
        the stacked parameters per step, or the loop: each client's steps in the model in turn
        (its parameters stay in cache; faster for convolutions on CPU)."""
        if self.stack is not None:
            self.stack.run(theta, v, x, y, beta, ema, lr)
            return

        def step(param: Tensor, buf: Tensor, g: Tensor) -> None:
            if not beta:
                param.sub_(g, alpha=lr)
                return
            if ema:
                buf.lerp_(g, 1.0 - beta)
            else:
                torch.add(g, buf, alpha=beta, out=buf)
            param.sub_(buf, alpha=lr)

        if self.path != "loop":
            for k in range(x.shape[0]):
                grads, _ = self._vgrad_own(self.flat.views(theta), x[k], y[k])
                ps, bufs = self.flat.views(theta), self.flat.views(v)
                for name in self.flat.names:
                    step(ps[name], bufs[name], grads[name])
            return
        named = list(self.model.named_parameters())
        for i in range(theta.shape[0]):
            self.flat.load_into(self.model, theta[i])
            bufs = self.flat.views(v[i])
            for k in range(x.shape[0]):
                self.model.zero_grad(set_to_none=True)
                F.cross_entropy(self.model(x[k, i]), y[k, i]).backward()
                with torch.no_grad():
                    for name, p in named:
                        step(p, bufs[name], torch.zeros_like(p) if p.grad is None else p.grad)
            theta[i].copy_(self.flat.flatten(self.model))

    def model_gradients(self, thetas: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """(m, d) gradient of client j's minibatch loss at its own model ``thetas[j]``."""
        out = torch.empty(thetas.shape[0], self.flat.dim, device=self.device)
        self.grads_into(thetas, x, y, out, None, own=True)
        return out

    # -- messages ------------------------------------------------------------------------------
    def compute(self, params: Tensor, t: int, byz: Tensor, active: Tensor | None = None) -> Tensor:
        """The group's messages for round t (``byz``: the group's (k,) Byzantine mask), as its
        protocol computes them (:meth:`common.protocols.Protocol.clients`): one row per worker,
        or per worker of the (k,) mask ``active`` when the protocol samples the round's clients."""
        return self.clients.compute(params, t, byz, active)

    def momentum_messages(self, params: Tensor, t: int, byz: Tensor) -> Tensor:
        """The group's (k, d) momentum messages for round t (the gradient protocol's round).

        Honest rows are the workers' momenta (changed before upload where the rule says so:
        :meth:`common.aggregation.rules.Rule.upload_transform`, the noisy median). Byzantine rows
        are already attacked for attacks that need only their own data; for omniscient attacks
        they hold the worker's own momentum (zero where :meth:`rows_to_compute` skipped it) and
        :meth:`craft` replaces them once the honest messages of the round are known.

        The returned tensor *is* the momentum buffer (no (k, d) copy: at ResNet-18 size with
        n = 100 that copy is 4 GiB). Callers may overwrite the Byzantine rows in place (attacks),
        and the server zeroes non-finite rows in place; the Byzantine workers' own momenta are
        lent out and put back at the next call or :meth:`state_dict`. (Where honest uploads are
        transformed, the messages are a copy.)
        """
        h = self.rows_to_compute(byz)
        self._restore_lent(zero=h == self.k)
        x, y = self.round_batches(t, byz)
        losses = torch.full((self.k - h,), math.nan)  # the skipped workers have no loss
        rows = byz.nonzero().flatten()
        raw = self.cfg.byz_raw_gradients and self.cfg.momentum > 0 and h == self.k and len(rows)
        ema = self.cfg.momentum_style == "ema"
        if raw:  # --byz-raw-gradients: a zero momentum makes the update below the gradient
            for r in rows.tolist():
                self.momenta[r].zero_()
        if h > 0:
            self.grads_into(params, x[:h], y[:h], self.momenta[:h], self.cfg.momentum, ema=ema)
            if raw and ema:  # the ema update gave (1 - beta) g
                for r in rows.tolist():
                    self.momenta[r].div_(1.0 - self.cfg.momentum)
            losses = torch.cat([self.losses, losses])
        self.losses = losses
        if self.upload is not None:
            msgs = self.momenta.clone()
            self.upload(msgs, (~byz).nonzero().flatten().tolist(), t, self.ids.start,
                        self.cfg.run_seed)
        else:
            msgs = self.momenta
            if len(rows):
                # rows skipped above hold zero momenta: nothing to save, zeros to put back
                self._lent = (rows, take_rows(self.momenta, rows) if h == self.k else None)
        if len(rows) and not self.attack.omniscient:
            self.attack_rows(msgs, rows, None, t)
        return msgs

    def attack_rows(self, msgs: Tensor, rows: Tensor, honest: Tensor | None, t: int) -> None:
        """Replace the Byzantine rows ``rows`` of ``msgs`` by their attacked messages (written in
        place when the rows are consecutive)."""
        block = row_block(msgs, rows)
        crafted = self.clients.craft(self.own_rows(msgs, rows), honest, t, rows, out=block)
        if block is None:
            put_rows(msgs, rows, crafted)

    def own_rows(self, msgs: Tensor, rows: Tensor) -> Tensor:
        """The Byzantine rows' own messages, for :meth:`craft`: a copy, or a (b, d) view of one
        row when the attack never reads them (``Attack.reads_own`` False: no gather)."""
        if self.attack.reads_own:
            return take_rows(msgs, rows)
        return msgs[int(rows[0])].expand(len(rows), -1)

    def rows_to_compute(self, byz: Tensor) -> int:
        """How many leading rows of the Byzantine mask ``byz`` (of the group's workers, or of
        the round's participants among them, in worker order) need their honest gradient this
        round: all, except when the Byzantine workers stay Byzantine for the whole run
        (``--byz-schedule fixed``: they are the last rows) and their attack never reads their
        own message (``Attack.reads_own``, e.g. ALIE, IPM, mimic): then only the honest prefix.
        The skipped workers' momenta stay zero, in main.py and under MPI alike; the server sees
        the same messages."""
        m, h = len(byz), int((~byz).sum())
        if (h == m or self.attack.reads_own or self.cfg.byz_schedule != "fixed"
                or bool(byz[:h].any())):
            return m
        return h

    def _restore_lent(self, zero: bool = True) -> None:
        """Put back the Byzantine workers' momenta that the last messages lent out. Rows that
        were skipped (nothing saved) become zero again, unless ``zero`` is False: then they are
        skipped again this round and nobody reads them before the attack overwrites them."""
        if self._lent is not None:
            rows, saved = self._lent
            if saved is not None:
                put_rows(self.momenta, rows, saved)
            elif not zero:
                return
            else:
                for r in rows.tolist():
                    self.momenta[r].zero_()
            self._lent = None

    def craft(self, own: Tensor, honest: Tensor | None, t: int, local_rows: Tensor,
              out: Tensor | None = None) -> Tensor:
        """Attacked messages of the group's Byzantine workers ``local_rows`` (own: their own
        messages), as the protocol has the attack act (e.g. RSA: on model displacements)."""
        return self.clients.craft(own, honest, t, local_rows, out)

    def attack_craft(self, own: Tensor, honest: Tensor | None, t: int, local_rows: Tensor,
                     out: Tensor | None = None) -> Tensor:
        """The attack applied to ``own`` (written into ``out`` if given; see
        :meth:`Attack.craft`): one call, or one per worker with its own generator."""
        seed = self.cfg.run_seed
        if self.attack.per_worker_random:
            # One generator per worker keeps random attacks independent of how workers are grouped.
            rows = [self.attack.craft(AttackInput(own=own[j:j + 1], honest=honest,
                                                  n=self.cfg.participants, round=t,
                                                  generator=round_generator(seed, t, "attack",
                                                                            self.ids.start + int(r))))
                    for j, r in enumerate(local_rows.tolist())]
            crafted = torch.cat(rows).to(own.device)
            return crafted if out is None else out.copy_(crafted)
        inp = AttackInput(own=own, honest=honest, n=self.cfg.participants, round=t,
                          generator=round_generator(seed, t, "attack"))
        return self.attack.craft(inp, out).to(own.device)

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The per-worker tensors (on the CPU) and the attack's state."""
        self._restore_lent()
        return {**{k: v.cpu() for k, v in self.state.items()}, "attack": self.attack.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._lent = None
        for k, v in self.state.items():
            v.copy_(d[k].to(self.device))
        self.attack.load_state_dict(d["attack"])


def make_worker_group(cfg: Config, problem: Problem, ids: range, device: torch.device,
                      attack: Attack | None = None) -> WorkerGroup:
    """The worker group of ``ids``, with a fresh attack object unless ``attack`` is given (then
    bound to the run's defense here)."""
    if attack is None:
        attack = run_attack(cfg, problem.dataset.num_classes)   # bound to the run's defense
    else:
        attack.bind(run_defense(cfg))
    return WorkerGroup(cfg, problem, ids, attack, device)
