"""Run directories and hostile input: a resume never mixes two runs or two configurations, one
writer per directory, and no input gives a traceback (docs/SECURITY.md, README "Security and
faults").

Each test reproduces a way the paths around the trainer broke before this was built: a second
run in a directory holding another run, an edited config.json, flags silently ignored on resume,
two writers at once, temporary files of a killed writer, I/O errors, and inputs that crashed
(huge seeds, deep or binary config files, /dev/zero, 100000 threads, a batch larger than the data).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import main as main_mod
from common.run.config import Config
from common.run.rundir import claim
from tests.processes import ROOT, final_params, process_env, run_mpi, run_python

FAST = ["--agg", "cm", "--pre", "none", "--attack", "none", "-n", "5", "-f", "1", "--model",
        "softmax", "--momentum", "0", "--eval-every", "100", "--no-progress"]


def _run(tmp_path, *flags, name="run"):
    """main.py in this process into ``tmp_path/name``: its summary."""
    return main_mod.main([*FAST, "-o", str(tmp_path / name), *map(str, flags)])


def _fails(capsys, argv) -> str:
    """main.py ``argv`` must exit 2 with exactly one line ``error: ...`` on stderr."""
    with pytest.raises(SystemExit) as e:
        main_mod.main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------
# a run never replaces another one's files
# ------------------------------------------------------------------------------------------

def test_a_run_that_fails_before_writing_leaves_nothing(tmp_path, monkeypatch):
    from common.data import datasets

    monkeypatch.setattr(datasets, "_unreachable", lambda host: "offline (test)")
    (tmp_path / "empty").mkdir()
    (tmp_path / "mine").mkdir()
    for out in ("new", "mine"):
        with pytest.raises(SystemExit) as e:
            main_mod.main(["--dataset", "mnist", "--data-dir", str(tmp_path / "empty"),
                           "--rounds", "1", "-o", str(tmp_path / out), "--no-progress"])
        assert e.value.code == 2
    assert not (tmp_path / "new").exists()  # created by the claim: removed
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_a_second_run_into_a_run_directory_is_refused_and_the_first_kept(tmp_path, capsys):
    _run(tmp_path, "--rounds", 2)
    d = tmp_path / "run"
    before = {p: (d / p).read_bytes() for p in ("checkpoint.pt", "config.json", "summary.json")}
    line = _fails(capsys, [*FAST, "-o", d, "--rounds", 3, "--lr", 0.5])
    assert "holds another run" in line and "--resume" in line and "--overwrite" in line
    assert {p: (d / p).read_bytes() for p in before} == before
    # --overwrite replaces it: a killed new run can no longer resume the old checkpoint
    main_mod.main([*FAST, "-o", str(d), "--rounds", "3", "--lr", "0.5", "--overwrite"])
    assert json.loads((d / "config.json").read_text())["lr"] == 0.5


def test_overwrite_removes_the_old_checkpoint_before_the_new_run_starts(tmp_path):
    _run(tmp_path, "--rounds", 2)
    d = str(tmp_path / "run")
    lock = claim(d, resume=False, overwrite=True)
    try:  # the state right after start-up: nothing of the old run is left to resume from
        assert not os.path.exists(os.path.join(d, "checkpoint.pt"))
        assert not os.path.exists(os.path.join(d, "summary.json"))
    finally:
        lock.release()


def test_default_names_differ_with_the_configuration():
    from common.run.cli import default_run_dir

    a, b = Config(lr=0.1), Config(lr=0.05)
    assert default_run_dir(a) != default_run_dir(b)
    assert default_run_dir(a) == default_run_dir(Config(lr=0.1))
    assert default_run_dir(a) == default_run_dir(Config(lr=0.1, rounds=7, progress=False))


# ------------------------------------------------------------------------------------------
# resume: fingerprint, flags
# ------------------------------------------------------------------------------------------

def test_resume_after_config_json_was_edited_is_refused(tmp_path, capsys):
    _run(tmp_path, "--rounds", 2)
    path = tmp_path / "run" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["num_workers"] = 3
    path.write_text(json.dumps(cfg))
    line = _fails(capsys, ["--resume", tmp_path / "run", "--rounds", 4])
    assert "config.json does not describe the run of checkpoint.pt" in line
    assert "num_workers 3 (checkpoint: 5)" in line


def test_mpi_resume_after_config_json_was_edited_is_refused(tmp_path):
    _run(tmp_path, "--rounds", 2)
    path = tmp_path / "run" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["num_workers"] = 4
    path.write_text(json.dumps(cfg))
    r = run_mpi(3, "--resume", str(tmp_path / "run"), "--rounds", "4", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "num_workers 4 (checkpoint: 5)" in r.stderr


def test_resume_refuses_flags_that_define_the_run_by_name(tmp_path, capsys):
    _run(tmp_path, "--rounds", 2)
    d = tmp_path / "run"
    before = (d / "config.json").read_bytes()
    line = _fails(capsys, ["--resume", d, "--lr", 5, "--agg", "mean", "-n", 3])
    assert "--agg, --lr, --num_nodes cannot change on resume" in line
    assert "--rounds" in line.split("may change:")[1]
    line = _fails(capsys, ["--resume", d, "--rounds", 1])
    assert "--rounds 1 is below the checkpoint's round 2" in line
    assert (d / "config.json").read_bytes() == before


def test_resume_applies_the_flags_it_may_change_and_records_them(tmp_path):
    _run(tmp_path, "--rounds", 2)
    d = tmp_path / "run"
    summary = main_mod.main(["--resume", str(d), "--rounds", "4", "--eval-every", "2",
                             "--checkpoint-every", "3"])
    assert summary["rounds"] == 4
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["rounds"], cfg["eval_every"], cfg["checkpoint_every"]) == (4, 2, 3)
    recs = [json.loads(line) for line in open(d / "metrics.jsonl")]
    assert [r["round"] for r in recs] == [0, 1, 2, 3]
    assert "test_accuracy" in recs[3] and "test_accuracy" not in recs[2]


def test_a_checkpoint_of_other_shapes_is_refused_before_loading(tmp_path, capsys):
    """Same config.json and fingerprint, but the checkpoint's tensors have other shapes (e.g. a
    dataset file replaced): one line naming the tensor, exit 2."""
    import torch

    _run(tmp_path, "--rounds", 2)
    path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    ck["server"]["params"] = torch.zeros(7)
    ck["fingerprint"]["shapes"]["server.params"] = [7]
    torch.save(ck, path)
    line = _fails(capsys, ["--resume", tmp_path / "run", "--rounds", 3])
    assert "checkpoint.pt does not fit this run" in line and "server.params has shape [7]" in line


# ------------------------------------------------------------------------------------------
# one writer per run directory
# ------------------------------------------------------------------------------------------

HOLD = ("import sys, time; sys.path.insert(0, '.'); from common.run.rundir import claim; "
        "claim(sys.argv[1], resume=False); print('held', flush=True); time.sleep(60)")


@contextlib.contextmanager
def _holder(run_dir):
    """A process that has claimed ``run_dir`` and sleeps."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, env=process_env())
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()


def test_a_second_writer_gets_one_line_and_exit_2(tmp_path):
    d = tmp_path / "run"
    with _holder(d) as p:
        r = run_python("main.py", *FAST, "-o", str(d), "--rounds", "2", timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"is in use by process {p.pid} on" in r.stderr
    assert not os.path.exists(d / "metrics.jsonl")


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    d = tmp_path / "run"
    with _holder(d) as p:
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert (d / ".lock").exists()           # the file stays, the kernel dropped the lock
        summary = main_mod.main([*FAST, "-o", str(d), "--rounds", "2"])
    assert summary["rounds"] == 2


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    _run(tmp_path, "--rounds", 2)
    d = tmp_path / "run"
    stale = d / ".tmp-abc123checkpoint.pt"      # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"\0" * 4096)
    main_mod.main(["--resume", str(d), "--rounds", "3"])
    assert not stale.exists()


def test_two_runs_at_once_in_one_directory_cannot_both_write(tmp_path):
    """The second of two simultaneous runs is refused (even with --overwrite); the first goes on
    and logs each round once."""
    d = tmp_path / "run"
    cmd = [sys.executable, "main.py", *FAST, "-o", str(d), "--rounds", "1000000"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=process_env())
    try:
        deadline = time.time() + 60
        while not (d / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run_python("main.py", *FAST, "-o", str(d), "--rounds", "300", "--overwrite",
                            timeout=120)
        assert second.returncode == 2 and "is in use by process" in second.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 130
    finally:
        first.kill()
        first.wait()
    rounds = [json.loads(line)["round"] for line in open(d / "metrics.jsonl")]
    assert len(rounds) > 0 and rounds == list(range(len(rounds)))


# ------------------------------------------------------------------------------------------
# I/O errors: one line, before the data is loaded
# ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(where, *options):
    """A tmpfs mounted at ``where`` (root only; the test is skipped elsewhere)."""
    os.makedirs(where, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options or ("size=1m",)),
                        "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory):
    with contextlib.suppress(OSError), open(os.path.join(directory, "filler"), "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)


def test_output_on_a_full_disk_is_one_line(tmp_path, capsys):
    with _tmpfs(tmp_path / "mnt", "size=256k") as mnt:
        _fill(mnt)
        line = _fails(capsys, [*FAST, "-o", mnt / "run", "--rounds", 2])
        assert "No space left on device (errno 28)" in line


def test_mpi_output_on_a_full_disk_ends_at_once(tmp_path):
    with _tmpfs(tmp_path / "mnt", "size=256k") as mnt:
        _fill(mnt)
        r = run_mpi(2, *FAST, "-o", str(mnt / "run"), "--rounds", "2", timeout=120)
        # exit 2 with the error line: not the traceback and MPI abort rank 0 gave before
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "errno 28" in r.stderr


def test_read_only_output_is_one_line_before_the_data_loads(tmp_path, capsys, monkeypatch):
    from common.run import problem

    def no_data(*a, **k):
        raise AssertionError("the data was loaded before the output was checked")

    monkeypatch.setattr(problem, "load_dataset", no_data)
    with _tmpfs(tmp_path / "mnt", "ro", "size=64k") as mnt:
        line = _fails(capsys, [*FAST, "-o", mnt / "run", "--rounds", 2])
        assert "Read-only file system (errno 30)" in line


def test_output_naming_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "passwd"
    f.write_text("root:x:0:0\n")
    line = _fails(capsys, [*FAST, "-o", f, "--rounds", 2])
    assert "is a file, not a directory" in line
    assert f.read_text() == "root:x:0:0\n"


def test_a_full_disk_mid_run_keeps_the_previous_checkpoint_and_says_so(tmp_path, capsys,
                                                                         monkeypatch):
    from common.run import io as cio

    real, calls = cio.save_torch, []

    def save(path, obj):
        calls.append(obj["round"])
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(cio, "save_torch", save)
    monkeypatch.setattr("master.trainer.save_torch", save)
    line = _fails(capsys, [*FAST, "-o", tmp_path / "run", "--rounds", 6, "--checkpoint-every", 2])
    assert "No space left on device" in line
    assert "the checkpoint of round 2 is kept: continue with --resume" in line
    monkeypatch.undo()
    assert int(final_params(tmp_path / "run").numel()) > 0
    summary = main_mod.main(["--resume", str(tmp_path / "run")])
    assert summary["rounds"] == 6


# ------------------------------------------------------------------------------------------
# inputs that crashed
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--seed", "99999999999999999999999"], "below 2**32"),
    (["--threads", "100000"], "--threads must be in [0, 1024]"),
])
def test_out_of_range_numbers_are_one_line(capsys, argv, needle):
    assert needle in _fails(capsys, [*FAST, *argv])


def test_threads_100000_no_longer_crashes_the_process():
    r = run_python("main.py", *FAST, "--threads", "100000", timeout=120)
    assert r.returncode == 2 and "--threads" in r.stderr, (r.returncode, r.stderr)


def test_batch_larger_than_the_training_set_is_one_line(tmp_path, capsys):
    line = _fails(capsys, [*FAST, "-o", tmp_path / "run", "--batch_size", 100000])
    assert "--batch_size 100000 exceeds the 1438 training samples of digits" in line


@pytest.mark.parametrize("kind", ["deep", "binary", "huge", "devzero"])
def test_hostile_config_files_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / "cfg.json"
    if kind == "deep":
        path.write_text("[" * 100000 + "]" * 100000)
        needle = "nests too deeply"
    elif kind == "binary":
        path.write_bytes(b'{"lr": 0.1, "\xff\xfe": 1}')
        needle = "is not UTF-8"
    elif kind == "huge":
        path.write_text('{"lr": 0.1, "pad": "' + "x" * (2 << 20) + '"}')
        needle = "larger than 1 MiB"
    else:
        path = "/dev/zero"
        needle = "larger than 1 MiB"
    assert needle in _fails(capsys, ["--config", path])


# ------------------------------------------------------------------------------------------
# accepted but meaningless: one warning line
# ------------------------------------------------------------------------------------------

def _warnings(capsys, argv) -> list[str]:
    from common.run.flags import parse_args

    parse_args([str(a) for a in argv])
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]


def test_bucket_size_above_n_warns(capsys):
    w = _warnings(capsys, ["-n", 10, "-f", 1, "--attack", "signflip", "--agg", "cm",
                           "--bucketing", 100])
    assert len(w) == 1 and "bucketing:100 with 10 messages puts them all in one bucket" in w[0]
    assert _warnings(capsys, ["-n", 10, "-f", 1, "--attack", "signflip", "--agg", "cm",
                              "--bucketing", 2]) == []


def test_a_byzantine_majority_warns_with_the_bound(capsys):
    w = _warnings(capsys, ["-n", 5, "-f", 3, "--attack", "signflip"])
    assert len(w) == 1 and "f=3 of n=5 workers are Byzantine" in w[0] and "n > 2f" in w[0]
    assert _warnings(capsys, ["-n", 5, "-f", 2, "--attack", "signflip"]) == []


def test_an_attack_without_attackers_and_attackers_without_an_attack_warn(capsys):
    w = _warnings(capsys, ["--attack", "alie"])
    assert len(w) == 1 and "--attack alie with -f 0: no worker is Byzantine" in w[0]
    w = _warnings(capsys, ["-f", 2])
    assert len(w) == 1 and "-f 2 without --attack: the Byzantine workers send honest" in w[0]
    # an explicit --attack none with f > 0 is a choice (e.g. honest workers drawing iid data)
    assert _warnings(capsys, ["-f", 2, "--attack", "none"]) == []
    assert _warnings(capsys, ["-f", 2, "--attack", "alie"]) == []


def test_milestones_out_of_order_warn(capsys):
    w = _warnings(capsys, ["--lr-schedule", "step", "--lr-milestones", "5,3"])
    assert len(w) == 1 and "--lr-milestones 5,3 are not strictly increasing" in w[0]


def test_duplicate_keys_in_a_config_file_warn(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{"lr": 0.1, "rounds": 5, "lr": 0.2}')
    w = _warnings(capsys, ["--config", path])
    assert len(w) == 1 and "gives lr more than once; the last value is used" in w[0]


def test_a_data_dir_without_the_data_warns(tmp_path, capsys):
    from common.data import datasets

    if not os.path.isdir(datasets.FASHION_MNIST_SYSTEM_DIR):
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    datasets.load_dataset("fashionmnist", str(tmp_path))
    err = capsys.readouterr().err
    assert f"--data-dir {tmp_path} holds no fashionmnist IDX files" in err
    datasets.load_dataset("digits", str(tmp_path))
    assert "--data-dir" in capsys.readouterr().err
