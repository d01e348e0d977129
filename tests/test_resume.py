"""Checkpoint and resume: an interrupted run ends with the same model as an uninterrupted one.

Each stateful case runs 2k rounds straight, and k rounds then ``--resume DIR --rounds 2k``; the
server parameters in ``checkpoint.pt`` must be equal bit for bit (same process, same order of
operations), and ``metrics.jsonl`` must hold every round exactly once with the same records.
Runs go through ``main.main`` in-process (no interpreter start-up per run); the SIGTERM and
SIGINT (Ctrl-C) test uses a real subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import main as main_mod
from common.run import io as cio
from common.run.io import read_metrics
from tests.processes import final_params, running, timeless_metrics

K = 3
BASE = ["-n", "6", "-f", "1", "--model", "softmax", "--eval-every", str(K), "--no-progress",
        "--checkpoint-every", "1", "--batch_size", "16"]


CASES = {
    # CClip center (rule state) + worker momentum 0.9 + bucketing permutations + ALIE
    "cclip_momentum": ["--agg", "cclip", "--pre", "bucketing:2", "--attack", "alie",
                       "--momentum", "0.9"],
    # mimic's direction estimate (attack state) + server momentum buffer
    "mimic_server_momentum": ["-n", "7", "--agg", "cm", "--pre", "none", "--attack", "mimic",
                              "--mimic-warmup", "2", "--momentum", "0.5",
                              "--server-momentum", "0.9"],
    # the Markov Byzantine schedule's counters (schedule state)
    "markov": ["--agg", "trmean", "--pre", "none", "--attack", "signflip", "--byz-schedule",
               "markov", "--markov-p", "0.3", "--markov-k", "2", "--momentum", "0.9"],
    "diversefl": ["--agg", "diversefl", "--pre", "none", "--attack", "signflip",
                  "--momentum", "0", "--byz-schedule", "random"],
    # RSA: every client keeps its own model (worker-side state)
    "rsa": ["--agg", "rsa", "--pre", "none", "--attack", "signflip", "--momentum", "0"],
    # election-coded signSGD: server momentum on majority votes, Bernoulli code
    "signmv": ["-n", "5", "--agg", "signmv", "--pre", "none", "--attack", "reverse",
               "--redundancy", "2", "--deterministic", "False", "--batch_size", "40",
               "--server-momentum", "0.9"],
    # opt-alie against CClip: the attacker's replica of the center (attack state)
    "opt_alie_cclip": ["--agg", "cclip", "--pre", "none", "--attack", "opt-alie",
                       "--opt-alie-evals", "4"],
    # Clipped Clustering's norm history (rule state)
    "clippedclustering": ["--agg", "clippedclustering", "--pre", "none", "--attack", "ipm"],
    # FLTrust: the server's g0 momentum buffer; the root set is redrawn the same on resume
    "fltrust": ["--agg", "fltrust", "--pre", "none", "--attack", "alie", "--momentum", "0.9",
                "--root-size", "50"],
    # FLAME's noise and DnC's coordinates come from the per-round rule generator
    "flame": ["--agg", "flame", "--flame-lam", "0.01", "--pre", "none", "--attack", "alie"],
    "dnc": ["--agg", "dnc", "--dnc-sub-dim", "100", "--pre", "none", "--attack", "alie"],
    # federated mode: K local steps, a sample of 4 clients per round (redrawn the same after
    # the resume), the clients' local momenta (per-client state), backdoor local training
    "federated": ["--agg", "cm", "--pre", "none", "--attack", "backdoor", "--local-steps", "3",
                  "--clients-per-round", "4", "--local-momentum", "0.9", "--byz-schedule",
                  "random"],
    # ... without momentum: the checkpoint holds one zero for the clients' momenta
    "federated_no_momentum": ["--agg", "cm", "--pre", "none", "--attack", "alie",
                              "--local-steps", "2", "--clients-per-round", "4"],
    # ... and FLTrust: the server's own K-step update on its root set, its momentum buffer
    "federated_fltrust": ["--agg", "fltrust", "--pre", "none", "--attack", "alie",
                          "--local-steps", "2", "--clients-per-round", "4",
                          "--local-momentum", "0.9", "--root-size", "50"],
}


def run(argv):
    return main_mod.main([str(a) for a in argv])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_equals_uninterrupted(case, tmp_path):
    flags = BASE + CASES[case]
    full, part = tmp_path / "full", tmp_path / "part"
    s_full = run(flags + ["--rounds", 2 * K, "-o", full])
    run(flags + ["--rounds", K, "-o", part])
    assert torch.load(part / "checkpoint.pt", weights_only=True)["round"] == K
    s_part = run(["--resume", part, "--rounds", 2 * K, "--no-progress"])
    assert torch.equal(final_params(full), final_params(part)), case
    assert s_part["rounds"] == 2 * K
    assert s_part["final_test_accuracy"] == s_full["final_test_accuracy"]
    m_part = read_metrics(part / "metrics.jsonl")
    assert [r["round"] for r in m_part] == list(range(2 * K))
    assert timeless_metrics(part / "metrics.jsonl") == timeless_metrics(full / "metrics.jsonl")


@pytest.mark.parametrize("momentum, stored", [("0", "one zero"), ("0.9", "every row")])
def test_checkpoint_keeps_momentum_rows_only_when_read(momentum, stored, tmp_path):
    # at beta = 0 each round overwrites the momentum rows before reading them: a checkpoint of
    # n rows (20 MB for the MLP at n = 25; 43 GB over the worstcase grid) would hold nothing
    run(BASE + ["--agg", "cm", "--attack", "alie", "--momentum", momentum, "--rounds", 1,
                "-o", tmp_path])
    m = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["workers"]["momenta"]
    assert m.shape[0] == 6
    if stored == "one zero":
        assert m.untyped_storage().nbytes() == 4 and not m.any()
    else:
        assert m.untyped_storage().nbytes() == m.numel() * 4 and m.any()


def test_resume_truncates_rounds_logged_after_the_checkpoint(tmp_path):
    # A crash after round 4 was logged but before its checkpoint: the checkpoint says round 3
    # (next round to run), metrics.jsonl has rounds 0..4 and a torn last line.
    d = tmp_path / "run"
    run(BASE + ["--agg", "cm", "--pre", "none", "--attack", "none", "--rounds", K, "-o", d])
    with open(d / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"round": K, "lr": 0.1}) + "\n")
        fh.write('{"round": 4, "lr"')  # torn write
    run(["--resume", d, "--rounds", K + 2, "--no-progress"])
    rounds = [r["round"] for r in read_metrics(d / "metrics.jsonl")]
    assert rounds == list(range(K + 2))
    # the new target is the run's: config.json says K + 2, and a bare --resume has nothing to do
    assert json.loads((d / "config.json").read_text())["rounds"] == K + 2
    assert run(["--resume", d, "--no-progress"])["rounds"] == K + 2
    assert len(read_metrics(d / "metrics.jsonl")) == K + 2


def test_crash_during_write_keeps_previous_files(tmp_path, monkeypatch):
    d = tmp_path / "run"
    run(BASE + ["--agg", "cm", "--pre", "none", "--attack", "none", "--rounds", 2, "-o", d])
    ck_before = (d / "checkpoint.pt").read_bytes()
    summary_before = (d / "summary.json").read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.os, "replace", boom)
    with pytest.raises(OSError):
        cio.save_torch(str(d / "checkpoint.pt"), {"round": 99})
    with pytest.raises(OSError):
        cio.write_json(str(d / "summary.json"), {"final_test_accuracy": -1})
    # a whole run whose writes fail leaves the old files readable too, and says so in one line
    with pytest.raises(SystemExit) as e:
        run(["--resume", d, "--rounds", 4, "--no-progress"])
    assert e.value.code == 2
    monkeypatch.undo()
    assert (d / "checkpoint.pt").read_bytes() == ck_before
    assert (d / "summary.json").read_bytes() == summary_before
    assert not [p for p in os.listdir(d) if p.startswith(".tmp-")]  # no temp files left behind
    assert torch.load(d / "checkpoint.pt", weights_only=True)["round"] == 2


def test_signal_mid_round_checkpoints_a_consistent_state(tmp_path, monkeypatch):
    """SIGTERM delivered while a round is being computed (after the workers updated their
    momenta): the run must finish that round, checkpoint, exit 130, and resume to the same model
    as an uninterrupted run."""
    from master import transport as tmod

    flags = BASE + CASES["cclip_momentum"]
    full, part = tmp_path / "full", tmp_path / "part"
    run(flags + ["--rounds", 2 * K, "-o", full])

    orig = tmod.InProcessTransport.round

    def round_with_signal(self, p, t, byz, clients=None):
        res = orig(self, p, t, byz, clients)
        if t == K - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    monkeypatch.setattr(tmod.InProcessTransport, "round", round_with_signal)
    with pytest.raises(SystemExit) as e:
        run(flags + ["--rounds", 2 * K, "-o", part])
    assert e.value.code == 130
    monkeypatch.undo()
    ck = torch.load(part / "checkpoint.pt", weights_only=True)
    assert ck["round"] == K
    assert [r["round"] for r in read_metrics(part / "metrics.jsonl")] == list(range(K))
    run(["--resume", part, "--no-progress"])  # no --rounds: the original 2k
    assert torch.equal(final_params(full), final_params(part))
    assert timeless_metrics(part / "metrics.jsonl") == timeless_metrics(full / "metrics.jsonl")


def send_like_a_user(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """SIGTERM as ``kill PID`` sends it; SIGINT as Ctrl-C in a terminal does: to the whole
    foreground process group (``proc`` must lead its own session: ``start_new_session=True``)."""
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_subprocess_then_resume(sig, tmp_path):
    d = tmp_path / "run"
    flags = BASE + ["--agg", "cclip", "--pre", "bucketing:2", "--attack", "alie"]
    cmd = [sys.executable, "main.py", *flags, "--rounds", "100000", "-o", str(d)]
    with running(cmd, d, timeout=120, start_new_session=True) as proc:
        send_like_a_user(proc, sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"{sig.name}: finishing this round" in err and "Traceback" not in err, err
    assert "checkpoint saved" in out and f"--resume {d}" in out
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    done = ck["round"]
    assert done >= 2 and [r["round"] for r in read_metrics(d / "metrics.jsonl")] == list(range(done))
    summary = run(["--resume", d, "--rounds", done + 2, "--no-progress"])
    assert summary["rounds"] == done + 2
    assert [r["round"] for r in read_metrics(d / "metrics.jsonl")] == list(range(done + 2))
    # and the interrupted run equals an uninterrupted one of done + 2 rounds
    ref = tmp_path / "ref"
    run(flags + ["--rounds", done + 2, "-o", ref])
    assert torch.equal(final_params(ref), final_params(d))


def _strict_loads(text):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_outputs_are_strict_json(tmp_path):
    # NaN/Inf (e.g. the mean loss of a round in which every worker timed out) are written as
    # null, never as the NaN/Infinity tokens strict readers reject
    log = cio.MetricsLog(str(tmp_path / "metrics.jsonl"))
    log.write({"round": 0, "train_loss": float("nan"), "rule": {"norm": float("inf"),
                                                                 "v": [1.5, float("-inf")]}})
    log.close()
    cio.write_json(str(tmp_path / "summary.json"), {"final_test_loss": float("inf"), "x": 2.0})
    rec = _strict_loads((tmp_path / "metrics.jsonl").read_text())
    assert rec == {"round": 0, "train_loss": None, "rule": {"norm": None, "v": [1.5, None]}}
    assert _strict_loads((tmp_path / "summary.json").read_text()) == {
        "final_test_loss": None, "x": 2.0}
