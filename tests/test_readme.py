"""Every command README.md shows, run by a test so that none can rot.

Training commands run as written plus ``--rounds 2 --eval-every 1 -o TMP --no-progress`` (later
flags win); the ones naming data this machine does not hold must end with the one-line how-to
(exit 2). ``bash run.sh`` grids run with ``--dry-run`` (every command line of the grid checked
by main.py's validation; the smoke grid trains for real in test_experiments.py), ``pytest``
commands collect, the report and publish commands run on a small experiment of their own, and a
hostfile launch runs on a hostfile of this machine.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.processes import ROOT, process_env, run_python

README = os.path.join(ROOT, "README.md")
REDUCED = ["--rounds", "2", "--eval-every", "1", "--no-progress"]
MISSING_DATA = ("mnist", "cifar10", "cifar100")  # never on this machine (no internet)

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """Every command of README.md's ``bash`` blocks (comments dropped, ``&&`` chains split)."""
    text = open(README).read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            line = re.split(r"\s#", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                out += [c.strip() for c in line.split("&&")]
    return out


def _kind(cmd: str) -> str:
    words = shlex.split(cmd)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if words[:2] == ["pip", "install"]:
        return "pip"
    if words[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if words[:2] == ["python", "main.py"]:
        return "main"
    if words[0] == "mpiexec":
        return "mpi"
    if words[:2] == ["bash", "run.sh"]:
        return "grid"
    if words[:2] == ["python", "-m"]:
        return words[2]
    raise AssertionError(f"README command of no known kind: {cmd}")


COMMANDS = readme_commands()


def test_the_readme_starts_with_setup_and_the_test_command():
    assert COMMANDS[0].startswith("pip install -r requirements.txt")
    assert COMMANDS[1].startswith("python main.py")  # the same line runs the main job
    assert COMMANDS[2] == "python -m pytest -q"
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "pip install -q -r requirements.txt" in ci and "\npython -m pytest -q\n" in ci
    kinds = {_kind(c) for c in COMMANDS}  # every command is of a kind a test below runs
    assert kinds <= {"pip", "pytest", "main", "mpi", "grid", "hosts.check",
                     "experiments.report", "experiments.publish", "experiments.archive"}, kinds


def _data_dir_args(words: list[str], tmp_path) -> list[str]:
    """``--data-dir ~/data`` -> an empty directory of the test's (the data is absent here)."""
    out = list(words)
    if "--data-dir" in out:
        empty = tmp_path / "data"
        empty.mkdir(exist_ok=True)
        out[out.index("--data-dir") + 1] = str(empty)
    return out


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _kind(c) == "main"])
def test_every_main_py_command_runs(cmd, tmp_path):
    words = _data_dir_args(shlex.split(cmd)[2:], tmp_path)
    r = run_python("main.py", *words, *REDUCED, "-o", str(tmp_path / "run"),
                   env={"PYTHONPATH": ROOT})
    dataset = words[words.index("--dataset") + 1] if "--dataset" in words else "digits"
    if dataset in MISSING_DATA:
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "--data-dir" in errors[0]  # says where to put the files
        return
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run: python main.py " in r.stdout and "final test accuracy" in r.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _kind(c) == "mpi"])
def test_every_mpiexec_command_runs(cmd, tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not on PATH")
    words = shlex.split(cmd)
    if "-f" in words[:words.index("python")]:  # a cluster's hostfile: this machine's instead
        hostfile = tmp_path / "hostfile"
        hostfile.write_text("localhost:8\n")
        words[words.index("-f") + 1] = str(hostfile)
    words = [sys.executable if w == "python" else w for w in words]
    r = subprocess.run([*words, *REDUCED, "-o", str(tmp_path / "run")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=process_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run: mpiexec -n" in r.stdout and "final test accuracy" in r.stdout


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _kind(c) == "grid"])
def test_every_run_sh_command_checks_its_grid(cmd, tmp_path):
    words = shlex.split(cmd)
    env = {}
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    extra = ["--dry-run", "--out", str(tmp_path)] if len(words) > 2 else []
    r = run_python("-m", "experiments.runner", *words[2:], *extra,
                   env={**env, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    if extra:
        plans = [ln for ln in r.stdout.splitlines() if ln.startswith("== ")]
        assert plans and all("all command lines check" in p for p in plans), r.stdout
    else:
        assert "experiments:" in r.stdout and "attacks" in r.stdout


def test_the_pytest_commands_collect():
    for cmd in (c for c in COMMANDS if _kind(c) == "pytest"):
        # collected over one file: the command's flags and marker expression are what is checked
        r = run_python(*shlex.split(cmd)[1:], "--collect-only", "-p", "no:cacheprovider",
                       "tests/test_defaults.py")
        assert r.returncode == 0, (cmd, r.stdout[-1000:])
        assert re.search(r"\d+(/\d+)? tests? (collected|selected)", r.stdout), r.stdout[-500:]


def test_the_hostfile_check_command_reports_the_example_hosts():
    (cmd,) = [c for c in COMMANDS if _kind(c) == "hosts.check"]
    r = run_python(*shlex.split(cmd)[1:])
    # the example's hosts are placeholders (EC2 private names): one line per host, exit 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: hosts/hostfile:")]
    assert r.returncode == 2 and len(errors) == 3 and "cannot resolve host" in errors[0]


def test_the_report_publish_and_restore_commands_run(tmp_path):
    """Run in a directory of the test's holding ``outputs/<experiment>`` (the smoke grid's runs),
    so publish writes its ``docs/results/`` there, not over the committed results; then restore
    puts the published runs back into a fresh ``outputs/<experiment>``."""
    from experiments import grids, runner

    exp_dir = runner.run_experiment(grids.get("smoke"), rounds=2, out_root=str(tmp_path / "tmp"),
                                    quiet=True)
    kinds = ("experiments.report", "experiments.publish", "experiments.archive")
    cmds = [c for c in COMMANDS if _kind(c) in kinds]
    assert [_kind(c) for c in cmds] == list(kinds)
    name = os.path.basename(shlex.split(cmds[0])[-1])
    target = tmp_path / "outputs" / name
    shutil.copytree(exp_dir, target)
    (target / "report.md").unlink()
    outputs = {}
    for cmd in cmds:
        if _kind(cmd) == "experiments.archive":
            shutil.rmtree(target)
        words = shlex.split(cmd)
        r = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env=process_env(PYTHONPATH=ROOT))
        assert r.returncode == 0, r.stderr[-2000:]
        outputs[_kind(cmd)] = r.stdout
    published = tmp_path / "docs" / "results" / name
    assert (published / "report.md").is_file() and list(published.glob("*.png"))
    assert "4 runs restored" in outputs["experiments.archive"]
    assert len(list(target.glob("*/summary.json"))) == 4
