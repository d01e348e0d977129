"""Hostile worker ranks under MPI, and the rule that rank 0 never deserialises worker bytes.

The fault matrix runs ``mpiexec -n 3 python MPI_main.py`` with one worker rank injecting a fault
(``wrongsize``, ``nan``, ``inf``, ``huge``, ``randombytes``, ``stall``, ``flood``) and checks
that rank 0 finishes the run, logs the fault per round in ``metrics.jsonl`` and ends with a
finite model. ``stallstate`` (a rank that answers a checkpoint's state request only after rank
0 has given up) checks that its workers keep their state from the previous checkpoint.
"""
from __future__ import annotations

import ast
import os

import pytest

from tests.processes import ROOT

# mpi4py's lowercase calls pickle their payload; on rank 0 they must never receive from workers.
PICKLING_RECEIVES = {"recv", "irecv", "gather", "allgather", "alltoall", "sendrecv", "reduce",
                     "allreduce", "scan", "exscan", "mprobe", "improbe", "mrecv"}


def _rank0_sources() -> list[str]:
    """Every module rank 0 runs: the entry points, master/ and common/ (worker/ is excluded:
    workers trust rank 0)."""
    paths = [os.path.join(ROOT, p) for p in ("main.py", "MPI_main.py")
             if os.path.exists(os.path.join(ROOT, p))]
    for pkg in ("master", "common"):
        for folder, _, names in sorted(os.walk(os.path.join(ROOT, pkg))):
            paths += [os.path.join(folder, name) for name in sorted(names) if name.endswith(".py")]
    assert len(paths) > 40, paths  # the subpackages are scanned too
    return paths


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def deserialisation_sites(source: str) -> list[str]:
    """Calls in ``source`` that could turn received bytes into objects."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names
                    if a.name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve")]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "pickle", "dill", "marshal", "shelve"):
            bad.append(f"from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        line = f"line {node.lineno}: {owner + '.' if owner else ''}{name}(...)"
        if name in ("eval", "exec") and isinstance(f, ast.Name):
            bad.append(line)
        elif name in PICKLING_RECEIVES and isinstance(f, ast.Attribute) and owner not in (
                "torch", "np", "numpy", "functools", "operator", "itertools"):
            bad.append(line)
        elif name == "load" and owner == "torch":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(line + " without weights_only=True")
        elif name == "load" and owner in ("np", "numpy"):
            ap = _kw(node, "allow_pickle")
            if isinstance(ap, ast.Constant) and ap.value is True or ap is not None and not (
                    isinstance(ap, ast.Constant)):
                bad.append(line + " with allow_pickle")
        elif name == "frombuffer" and owner == "pickle":
            bad.append(line)
    return bad


def test_audit_finds_what_it_should():
    src = ("import pickle\nx = comm.recv(source=1)\ny = comm.gather(v, root=0)\n"
           "torch.load(p)\nnp.load(p, allow_pickle=True)\neval(s)\n"
           "comm.Recv(buf, source=1)\ncomm.Gatherv(a, b)\ntorch.load(p, weights_only=True)\n"
           "torch.gather(t, 1, i)\n")
    found = deserialisation_sites(src)
    assert len(found) == 6, found
    assert not any("Recv" in f or "Gatherv" in f or "torch.gather" in f for f in found)


def test_rank0_never_deserialises_worker_bytes():
    problems = {}
    for path in _rank0_sources():
        with open(path) as fh:
            bad = deserialisation_sites(fh.read())
        if bad:
            problems[os.path.relpath(path, ROOT)] = bad
    assert not problems, problems


# ------------------------------------------------------------------------------------------
# the MPI fault matrix
# ------------------------------------------------------------------------------------------

ROUNDS = 2
STALL_TIMEOUT = 3.0  # seconds; the stalled rank answers after 2x this (worker/mpi_worker.py)

# kind -> what rank 0 must log for the faulty worker each round (None: nothing, the values are
# finite and go to the rule; "nonfinite?": random bytes may or may not decode to NaN/Inf)
EXPECTED = {
    "wrongsize": "wrongsize",
    "wrongdtype": "wrongsize",   # float64 instead of float32: twice the bytes, truncated
    "nan": "nonfinite",
    "inf": "nonfinite",
    "huge": None,
    "randombytes": "nonfinite?",
    "stall": "timeout",
    "flood": None,               # the strays are dropped; its real message is used
}


def _mpi_ready() -> str | None:
    import shutil

    if not os.path.exists(os.path.join(ROOT, "MPI_main.py")):
        return "MPI_main.py does not exist"
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    from common.run.flags import build_parser

    if "--inject-fault" not in build_parser().format_help():
        return "MPI_main.py has no --inject-fault flag"
    return None


@pytest.mark.mpi
@pytest.mark.parametrize("kind", [
    "wrongsize", "nan", "huge", "randombytes", "stall", "flood",
    pytest.param("inf", marks=pytest.mark.slow),
    pytest.param("wrongdtype", marks=pytest.mark.slow),
])
def test_fault_matrix(kind, tmp_path):
    """Rank 2 hosts worker 2 of n = 3 (ranks: 0 server, 1 workers 0-1, 2 worker 2) and corrupts
    everything it sends; cm with f = 1 is the defense. ``flood``: rank 2's real message is
    well-formed, but each round it also sends 501 messages no receive wants (wrong tags, random
    sizes, one above rank 0's 1 MiB drain scratch); rank 0 drops them (logged per round under
    ``stray``), uses the real message, and ends with exactly the model of ``main.py``."""
    import json

    import torch

    from common.run.io import read_metrics
    from tests.processes import final_params, run_mpi

    why = _mpi_ready()
    if why:
        pytest.skip(why)
    out = tmp_path / "run"
    flags = ["-n", "3", "-f", "1", "--agg", "cm", "--pre", "none", "--attack", "none",
             "--model", "softmax", "--rounds", str(ROUNDS), "--eval-every", str(ROUNDS),
             "--no-progress"]
    stall = ["--round-timeout", str(STALL_TIMEOUT)] if kind == "stall" else []
    r = run_mpi(3, *flags, "--inject-fault", f"{kind}:2", "-o", str(out), *stall)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final test accuracy" in r.stdout

    records = read_metrics(out / "metrics.jsonl")
    assert [rec["round"] for rec in records] == list(range(ROUNDS))
    expected = EXPECTED[kind]
    for rec in records:
        faults = rec.get("faults", {})
        if expected is None:
            assert faults == {}, rec
        elif expected == "nonfinite?":
            assert faults in ({}, {"2": "nonfinite"}), rec
        elif kind == "stall":
            # under heavy load an honest rank may miss the deadline too; the staller always does
            assert faults.get("2") == "timeout" and set(faults.values()) == {"timeout"}, rec
        else:
            assert faults == {"2": expected}, rec
        # messages no receive wanted: only the flooding rank's, or the staller's late answers
        if kind in ("flood", "stall"):
            assert set(rec.get("stray", {})) <= {"2"}, rec
        else:
            assert "stray" not in rec, rec
    if kind == "flood":
        from worker.faults import FLOOD_MESSAGES

        dropped = sum(rec.get("stray", {}).get("2", 0) for rec in records)
        # Rank 2 cannot answer round 1 before rank 0 has drained round 0's oversized stray (its
        # send completes only when received), so at least that one is logged; the rest may be
        # dropped during the final checkpoint exchange.
        assert 1 <= dropped <= ROUNDS * (FLOOD_MESSAGES + 1), records

    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    params = ck["server"]["params"]
    if kind == "flood":
        # the flooding rank's real message was used each round, not zeroed: same model as the
        # in-process run of the same config
        import main as main_mod

        ref = tmp_path / "ref"
        main_mod.main(flags + ["-o", str(ref)])
        assert torch.equal(params, final_params(ref))
    assert ck["round"] == ROUNDS and bool(torch.isfinite(params).all())
    # cm over {h0, h1, bad} is inside [min(h0, h1), max(h0, h1)] per coordinate: even 1e30 or
    # random huge floats cannot blow the model up
    assert float(params.abs().max()) < 100.0
    with open(out / "summary.json") as fh:
        summary = json.load(fh)
    assert summary["rounds"] == ROUNDS and summary["final_test_accuracy"] is not None


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_mpi_signal_then_resume_matches_main(sig, tmp_path):
    """SIGTERM to mpiexec (``kill``), or SIGINT to its process group (Ctrl-C in a terminal;
    Hydra starts the ranks in sessions of their own, so only mpiexec gets it, and forwards it
    to every rank): worker ranks ignore it, rank 0 finishes the round, gathers the workers'
    state into a checkpoint and exits 130; an MPI resume then ends with exactly the parameters
    of an uninterrupted in-process run."""
    import signal

    import torch

    import main as main_mod
    from common.run.io import read_metrics
    from tests.processes import final_params, mpi_cmd, run_mpi, running

    why = _mpi_ready()
    if why:
        pytest.skip(why)
    flags = ["-n", "4", "-f", "1", "--model", "softmax", "--agg", "cclip", "--pre", "bucketing:2",
             "--attack", "alie", "--eval-every", "3", "--no-progress"]
    d = tmp_path / "mpi"
    cmd = mpi_cmd(3, *flags, "--rounds", "1000000", "-o", str(d))
    with running(cmd, d, timeout=300, start_new_session=True) as proc:
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    # one signal reached rank 0 (a second would have stopped it without a new checkpoint)
    assert err.count(f"{sig}: finishing this round") == 1 and "second signal" not in out, err
    assert "checkpoint saved" in out
    done = torch.load(d / "checkpoint.pt", weights_only=True)["round"]
    assert [r["round"] for r in read_metrics(d / "metrics.jsonl")] == list(range(done))

    r = run_mpi(3, "--resume", str(d), "--rounds", str(done + 2), "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rec["round"] for rec in read_metrics(d / "metrics.jsonl")] == list(range(done + 2))
    ref = tmp_path / "ref"
    main_mod.main(flags + ["--rounds", str(done + 2), "-o", str(ref)])
    assert torch.equal(final_params(d), final_params(ref))


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["wrongsize", "randombytes"])
def test_vote_fault_matrix(kind, tmp_path):
    """Election-coded signSGD over MPI: n = 4 nodes with the all-ones code (every node votes on
    all 4 slices: an even weight, so 2-bit ternary votes), rank 2 hosts nodes 2 and 3 and
    corrupts its packed votes. Random bytes are (almost surely: each of the 650 coordinates is
    invalid with probability 1/4) undecodable ternary votes; a wrong size is discarded. Either
    way nodes 2 and 3 abstain, are logged, and the run finishes with a finite model."""
    import torch

    from common.run.io import read_metrics
    from tests.processes import final_params, run_mpi

    why = _mpi_ready()
    if why:
        pytest.skip(why)
    out = tmp_path / "run"
    r = run_mpi(3, "-n", "4", "-f", "1", "--agg", "signmv", "--redundancy", "4", "--deterministic",
                "True", "--batch_size", "40", "--attack", "none", "--model", "softmax", "--rounds",
                str(ROUNDS), "--eval-every", str(ROUNDS), "--no-progress", "--inject-fault",
                f"{kind}:2", "-o", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [rec["round"] for rec in records] == list(range(ROUNDS))
    reason = "wrongsize" if kind == "wrongsize" else "undecodable"
    for rec in records:
        assert rec["faults"] == {"2": reason, "3": reason}, rec
        assert rec["rule"].get("abstained" if kind == "wrongsize" else "invalid") == [2, 3]
        # the faulty rank's trailer (losses) is not averaged into train_loss
        assert rec["train_loss"] is not None and 0 < rec["train_loss"] < 10
    assert bool(torch.isfinite(final_params(out)).all())


# ------------------------------------------------------------------------------------------
# a worker rank that misses a checkpoint: its workers keep their last checkpointed state
# ------------------------------------------------------------------------------------------

CK_FLAGS = ["-n", "3", "-f", "1", "--agg", "cm", "--pre", "none", "--attack", "none", "--model",
            "softmax", "--momentum", "0.9", "--checkpoint-every", "2", "--eval-every", "4",
            "--no-progress"]


@pytest.mark.mpi
def test_mpi_checkpoint_keeps_a_silent_ranks_state(tmp_path):
    """``stallstate:2``: rank 2 (worker 2) answers the round-2 checkpoint's state request, but
    that of the final round-4 checkpoint only after rank 0 gave up (``--state-timeout 2``) and
    sent STOP. Rank 0 finishes; worker 2's momenta in the round-4 checkpoint are exactly those
    of the round-2 checkpoint (not zeros), workers 0 and 1 hold their round-4 momenta. The
    references are in-process runs of the same config (MPI equals main.py bit for bit, checked
    here on workers 0-1 and the parameters). ``--round-timeout 0``: no round can time out,
    however loaded the machine, so only the state exchange is faulty."""
    import torch

    import main as main_mod
    from common.run.io import load_torch
    from tests.processes import final_params, run_mpi

    why = _mpi_ready()
    if why:
        pytest.skip(why)
    out = tmp_path / "mpi"
    r = run_mpi(3, *CK_FLAGS, "--rounds", "4", "--round-timeout", "0", "--state-timeout", "2",
                "--inject-fault", "stallstate:2", "-o", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("warning: checkpoint of round 4: no state arrived from workers 2; they keep their "
            "state from the checkpoint of round 2") in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("warning: checkpoint of round") == 1, r.stderr[-3000:]

    refs = {}
    for rounds in (2, 4):
        main_mod.main(CK_FLAGS + ["--rounds", str(rounds), "-o", str(tmp_path / f"main{rounds}")])
        refs[rounds] = load_torch(str(tmp_path / f"main{rounds}" / "checkpoint.pt"))
    ck = load_torch(str(out / "checkpoint.pt"))
    assert ck["round"] == 4 and set(ck["workers"]) == {"momenta", "attack"}
    momenta = ck["workers"]["momenta"]
    old, new = refs[2]["workers"]["momenta"], refs[4]["workers"]["momenta"]
    assert torch.equal(momenta[:2], new[:2])
    assert torch.equal(momenta[2], old[2])
    assert old[2].abs().sum() > 0 and not torch.equal(old[2], new[2])
    assert torch.equal(final_params(out), final_params(tmp_path / "main4"))


def test_checkpoint_without_an_earlier_one_starts_from_zeros(tmp_path, capsys):
    """In process, with a transport that loses worker 1's state at the first checkpoint
    (round 2) and worker 0's at the second (round 4). The directory already holds a
    ``checkpoint.pt`` of another run claiming round 2; it is never read: worker 1 starts from
    zeros (and it says so), then worker 0 keeps its state of this run's round-2 checkpoint."""
    import torch

    import main as main_mod
    from common.protocols import protocol_of
    from common.run.flags import parse_args
    from common.run.io import load_torch, save_torch
    from common.run.problem import build_problem
    from master.trainer import Trainer
    from master.transport import InProcessTransport
    from worker.group import make_worker_group

    class Lossy(InProcessTransport):
        lose = [[1], [0]]

        def state_dict(self):
            d = {k: v.clone() if isinstance(v, torch.Tensor) else v
                 for k, v in super().state_dict().items()}
            gone = self.lose.pop(0)
            d["momenta"][gone] = 0
            return {**d, "missing": gone}

    run = tmp_path / "run"
    run.mkdir()
    save_torch(str(run / "checkpoint.pt"), {"round": 2, "workers": {
        "momenta": torch.ones(3, 650), "attack": {}}})
    cfg, _ = parse_args(CK_FLAGS + ["--rounds", "4", "-o", str(run)])
    problem = build_problem(cfg, "cpu")
    group = make_worker_group(cfg, problem, range(cfg.num_workers), torch.device("cpu"))
    Trainer(cfg, problem, Lossy(group, protocol_of(cfg)), str(run), torch.device("cpu")).run()
    err = capsys.readouterr().err
    assert ("warning: checkpoint of round 2: no state arrived from workers 1; they start from "
            "zeros (there is no earlier checkpoint of this run)") in err, err
    assert ("warning: checkpoint of round 4: no state arrived from workers 0; they keep their "
            "state from the checkpoint of round 2") in err, err

    main_mod.main(CK_FLAGS + ["--rounds", "2", "-o", str(tmp_path / "main2")])
    main_mod.main(CK_FLAGS + ["--rounds", "4", "-o", str(tmp_path / "main4")])
    old = load_torch(str(tmp_path / "main2" / "checkpoint.pt"))["workers"]["momenta"]
    new = load_torch(str(tmp_path / "main4" / "checkpoint.pt"))["workers"]["momenta"]
    momenta = load_torch(str(run / "checkpoint.pt"))["workers"]["momenta"]
    assert torch.equal(momenta[0], old[0]) and torch.equal(momenta[1:], new[1:])
