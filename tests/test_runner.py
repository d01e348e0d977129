"""The grid runner's run control: a signal stops the grid (one process or ``-j N`` workers) with
every run in flight checkpointed, and the same command resumes the stopped cells."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from common.run.io import read_json
from experiments import grids, runlogs, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_signal_stops_the_grid_not_only_the_run(tmp_path, monkeypatch, capsys):
    # A run stopped by SIGTERM/Ctrl-C exits 130 from main; the runner must stop there instead
    # of counting it as one failed configuration and starting the next (found when a SIGTERM
    # to `bash run.sh` only moved the grid on to its next run).
    calls = []

    def interrupted(argv):
        calls.append(argv)
        raise SystemExit(130)

    monkeypatch.setattr(runner, "main_py", interrupted)
    assert runner.main(["smoke", "--size", "digits", "--rounds", "2",
                        "--out", str(tmp_path)]) == 130
    assert len(calls) == 1
    assert "stopped by a signal" in capsys.readouterr().err


def test_a_stopped_cell_is_resumed_from_its_checkpoint_not_rerun(tmp_path, capsys):
    # A grid stopped mid-cell (a signal, a reboot) continues that cell where its checkpoint
    # left it; a checkpoint that cannot be resumed gets the cell rerun from the start.
    exp = grids.get("smoke")
    exp_dir = runner.run_experiment(exp, rounds=3, out_root=str(tmp_path), quiet=True)
    cells = sorted(d for d in os.listdir(exp_dir) if os.path.isdir(os.path.join(exp_dir, d)))
    stopped, broken = (os.path.join(exp_dir, c) for c in cells[:2])
    metrics = open(os.path.join(stopped, "metrics.jsonl")).read()
    first_cpu = read_json(os.path.join(stopped, "summary.json"))["cpu_seconds"]
    for d in (stopped, broken):
        os.remove(os.path.join(d, "summary.json"))
    with open(os.path.join(broken, "checkpoint.pt"), "wb") as fh:
        fh.write(b"not a checkpoint")
    capsys.readouterr()
    runner.run_experiment(exp, rounds=3, out_root=str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("skipped") == len(cells) - 2
    assert f"{cells[0]}  final" in out and out.count("resumed from its checkpoint") == 1, out
    assert f"{broken}: not resumable; running it again from the start" in out
    assert open(os.path.join(stopped, "metrics.jsonl")).read() == metrics  # not trained again
    for d in (stopped, broken):
        assert read_json(os.path.join(d, "summary.json"))["rounds"] == 3
    # the resumed cell's CPU time counts its first session too (the checkpoint's count)
    resumed = read_json(os.path.join(stopped, "summary.json"))["cpu_seconds"]
    assert resumed >= first_cpu > 0
    assert runlogs.cpu_seconds(exp_dir)[cells[0]] >= first_cpu


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm-to-runner", "ctrl-c-to-group"])
def test_a_signal_stops_a_parallel_grid_and_its_runs_checkpoint(tmp_path, ctrl_c):
    # Found running `bash run.sh NAME -j 2` in the background: a SIGTERM to the runner alone
    # killed it and left both pool workers training on, unseen. Ctrl-C in a terminal reaches
    # every process of the group: the runner waits for its workers' own checkpoints.
    proc = subprocess.Popen([sys.executable, "-m", "experiments.runner", "smoke", "--size",
                             "digits", "-j", "2", "--rounds", "100000", "--out", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    exp_dir = tmp_path / "smoke-digits"

    def training():  # a round logged: the run's own signal handlers are in place
        return [p for p in exp_dir.glob("*/metrics.jsonl") if p.stat().st_size]

    deadline = time.time() + 120
    while time.time() < deadline and len(training()) < 2:
        time.sleep(0.2)
    assert len(training()) == 2, "the two runs never started"
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], text=True,
                                              capture_output=True).stdout.split()]
    if ctrl_c:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.count("checkpoint saved. Continue with: --resume") == 2, out  # each run's own
    assert "stopped by a signal" in err
    for pid in workers:  # the workers (and multiprocessing's resource tracker) are gone too
        deadline = time.time() + 30
        while time.time() < deadline and "zombie" not in _proc_state(pid):
            time.sleep(0.2)
        assert "zombie" in _proc_state(pid), _proc_state(pid, "cmdline")
    for d in exp_dir.glob("*/metrics.jsonl"):  # each stopped run left a checkpoint to resume
        assert (d.parent / "checkpoint.pt").exists() and not (d.parent / "summary.json").exists()


def _proc_state(pid: int, what: str = "status") -> str:
    """/proc/PID/status (or another file of it), lower-cased; "zombie" once PID has gone."""
    try:
        with open(f"/proc/{pid}/{what}") as fh:
            return fh.read().lower()
    except OSError:
        return "zombie"
