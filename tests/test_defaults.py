"""The command line means what its flags say: omitted options are off, the learning rate's
default follows the momentum, every run prints (and records) its explicit command, which parses
back to the same configuration, and ``--help`` / ``--list`` / flag errors answer before torch
loads."""
from __future__ import annotations

import contextlib
import io
import shlex

import pytest

import main as main_mod
from common.protocols import protocol_of
from common.run.cli import default_run_dir
from common.run.command import explicit_command
from common.run.config import Config, default_lr
from common.run.flags import parse_args
from tests.processes import run_python

ELECTION_SEEDS = [  # the election-coding seed project's three commands, verbatim
    "--trial_idx 1 --deterministic True --redundancy 1.0 --num_nodes 5 --num_Byz_nodes 1 --batch_size 120",
    "--trial_idx 1 --deterministic True --redundancy 3.8 --num_nodes 5 --num_Byz_nodes 1 --batch_size 120",
    "--trial_idx 1 --redundancy 2.5 --num_nodes 5 --num_Byz_nodes 1 --batch_size 120",
]


def test_omitted_flags_are_off():
    cfg, _ = parse_args([])
    assert (cfg.partition, cfg.pre, cfg.attack, cfg.agg) == ("iid", "none", "none", "mean")
    assert (cfg.num_byzantine, cfg.momentum, cfg.server_momentum, cfg.weight_decay) == (0, 0, 0, 0)
    assert cfg.lr == 0.1 and cfg.defense_f is None
    # each switch turns exactly its own setting on
    cfg, _ = parse_args(["--noniid", "--bucketing", "2", "--momentum", "0.9", "-f", "2",
                         "--attack", "alie"])
    assert (cfg.partition, cfg.pre, cfg.momentum, cfg.num_byzantine, cfg.attack) == (
        "noniid", "bucketing:2", 0.9, 2, "alie")
    assert cfg.agg == "mean"


def test_the_learning_rate_default_follows_the_momentum():
    # heavy ball sums the gradients to g / (1 - beta): the default keeps plain SGD's step at 0.1
    assert parse_args(["--momentum", "0.9"])[0].lr == pytest.approx(0.01)
    assert parse_args(["--momentum", "0.5"])[0].lr == pytest.approx(0.05)
    assert parse_args(["--momentum", "0.9", "--momentum-style", "ema"])[0].lr == 0.1
    assert parse_args(["--momentum", "0.9", "--lr", "0.3"])[0].lr == 0.3  # given: kept
    assert default_lr(0.0, "heavyball") == default_lr(0.0, "ema") == 0.1
    # the Python API resolves it too, and records the value
    from common.run.config import validate

    cfg = Config(momentum=0.9)
    validate(cfg)
    assert cfg.lr == pytest.approx(0.01) and cfg.to_dict()["lr"] == pytest.approx(0.01)


def test_methods_that_need_a_setting_get_it():
    for agg, proto in (("diversefl", "diversefl"), ("rsa", "model"), ("signmv", "sign")):
        cfg, _ = parse_args(["--agg", agg])
        assert protocol_of(cfg).name == proto and cfg.pre == "none" and cfg.momentum == 0
    cfg, _ = parse_args(["--agg", "signmv"])
    assert (cfg.attack, cfg.server_momentum, cfg.weight_decay, cfg.lr) == ("reverse", 0.9, 1e-4, 1e-3)


@pytest.mark.slow
def test_diversefl_runs_with_no_other_flag(tmp_path, capsys):
    summary = main_mod.main(["--agg", "diversefl", "--rounds", "3", "--eval-every", "3",
                             "--no-progress", "-o", str(tmp_path / "d")])
    assert summary["rounds"] == 3 and summary["config"]["agg"] == "diversefl"


@pytest.mark.parametrize("argv", [
    [],
    ["--noniid", "-f", "4", "--attack", "ipm", "--agg", "rfa", "--bucketing", "2"],
    ["-n", "25", "-f", "5", "--agg", "cclip", "--attack", "alie", "--noniid", "--momentum", "0.9",
     "--cclip-tau", "0.5", "--alie-z", "1.5", "--lr-schedule", "step", "--lr-milestones", "5,9"],
    ["--agg", "krum", "-n", "9", "-f", "2", "--attack", "gaussian", "--gaussian-std", "3",
     "--defense-f", "3", "--byz-schedule", "random", "--partition", "dirichlet:0.5"],
    shlex.split(ELECTION_SEEDS[1]),
    ["--agg", "cm", "--attack", "opt-alie", "-f", "2", "--root-size", "50",
     "--opt-alie-evals", "5", "--model", "softmax", "--weight-decay", "0.001"],
])
def test_the_explicit_command_parses_back_to_the_run(argv):
    cfg, _ = parse_args(argv)
    line = explicit_command(cfg)
    words = shlex.split(line)
    assert words[:2] == ["python", "main.py"]
    again, _ = parse_args(words[2:])
    assert again.to_dict() == cfg.to_dict(), line
    for flag in ("--dataset", "-n", "-f", "--partition", "--agg", "--pre", "--attack", "--lr",
                 "--momentum", "--rounds", "--seed"):
        assert flag in words  # spelled out even at its default
    assert explicit_command(cfg, "MPI_main.py", "mpiexec -n 3").startswith(
        "mpiexec -n 3 python MPI_main.py --dataset")


def test_a_run_prints_its_command_and_records_it(tmp_path, capsys):
    summary = main_mod.main(["--rounds", "2", "--eval-every", "2", "--no-progress", "-o",
                             str(tmp_path / "r")])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("run: "))
    assert line[len("run: "):] == summary["command"]
    assert "--agg mean --pre none --attack none" in line
    assert summary["execution"]["entry"] == "main.py" and summary["execution"]["processes"] == 1


def test_the_election_seed_commands_get_distinct_directories():
    dirs = {default_run_dir(parse_args(shlex.split(c))[0]) for c in ELECTION_SEEDS}
    assert len(dirs) == 3


def _torch_imported(stderr: str) -> bool:
    """Whether ``python -X importtime`` logged an import of torch."""
    return any(line.split("|")[-1].strip() == "torch" for line in stderr.splitlines()
               if line.startswith("import time:"))


@pytest.mark.slow
def test_help_list_and_flag_errors_answer_before_torch_loads(tmp_path):
    env = {"BYZROBUST_CACHE": str(tmp_path)}
    # the first call takes the full path (torch) and leaves the catalog for these sources
    first = run_python("-X", "importtime", "main.py", "--help", env=env)
    assert first.returncode == 0 and _torch_imported(first.stderr)
    assert list(tmp_path.glob("cli-main_py-*.json"))
    slow_help = first.stdout
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        main_mod.main(["--list"])
    for args, code, needle in ((["--help"], 0, None), (["--list"], 0, None),
                               (["--agg", "nosuch"], 2, "error: unknown rule 'nosuch'; choose one of"),
                               (["--attack", "nosuch"], 2, "error: unknown attack 'nosuch'"),
                               (["--rounds", "x"], 2, "error: argument --rounds/--iterations: invalid int"),
                               (["--no-such-flag"], 2, "error: unrecognized arguments: --no-such-flag")):
        r = run_python("-X", "importtime", "main.py", *args, env=env)
        assert r.returncode == code, (args, r.stderr[-500:])
        assert not _torch_imported(r.stderr), args
        if args == ["--help"]:
            assert r.stdout == slow_help  # the same text as the full parser's
        if args == ["--list"]:
            assert r.stdout == buf.getvalue()
        if needle:
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1 and errors[0].startswith(needle), r.stderr[-500:]
    # a command line that parses goes on to the full path (which then runs or checks it)
    r = run_python("-X", "importtime", "main.py", "-n", "3", "-f", "1", "--agg", "krum", env=env)
    assert r.returncode == 2 and "krum needs n >= 2f+3" in r.stderr and _torch_imported(r.stderr)
    # a plugin (or a config file), even abbreviated, takes the full path: it may add names
    r = run_python("-X", "importtime", "main.py", "--plug", "examples.my_rule", "--agg", "my_rule",
                   "--rounds", "x", env=env)
    assert r.returncode == 2 and "invalid int value: 'x'" in r.stderr and _torch_imported(r.stderr)
    # MPI_main.py keeps its own catalog (its prog name is in the usage line)
    run_python("MPI_main.py", "--help", env=env)
    r = run_python("-X", "importtime", "MPI_main.py", "--help", env=env)
    assert r.returncode == 0 and r.stdout.startswith("usage: MPI_main.py")
    assert not _torch_imported(r.stderr)


@pytest.mark.slow
def test_a_damaged_catalog_falls_back_to_the_full_parser_and_is_replaced(tmp_path):
    env = {"BYZROBUST_CACHE": str(tmp_path)}
    assert run_python("main.py", "--help", env=env).returncode == 0  # writes the catalog
    (path,) = tmp_path.glob("cli-main_py-*.json")
    for damage in ('{"parser": {"prog": "main.py"}}', "[1, 2]", "not json"):
        path.write_text(damage)
        r = run_python("-X", "importtime", "main.py", "--help", env=env)
        assert r.returncode == 0 and r.stdout.startswith("usage: main.py"), r.stderr[-500:]
        assert _torch_imported(r.stderr) and "Traceback" not in r.stderr
        assert '"groups"' in path.read_text()  # the full path wrote a good one back
