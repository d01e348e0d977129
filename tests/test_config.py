"""The command line contract (DESIGN.md): both flag styles, --help/--list, unknown names and
violated preconditions fail at start-up with one clear line, --config round trip, --resume.

Parsing runs in-process (``parse_args``); the user-facing behaviour (exit code 2, one line on
stderr, no traceback, the text of --help/--list) is checked through ``python main.py`` in a
subprocess, as a user would see it.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from common import attacks
from common.aggregation import preagg, rules
from common.data import datasets as data
from common.data import models
from common.errors import ConfigError
from common.run.config import Config
from common.run.flags import parse_args
from tests.processes import run_python


def run_main(*args: str) -> subprocess.CompletedProcess:
    return run_python("main.py", *args, timeout=120)


# -- the two flag styles ----------------------------------------------------------------------

def test_election_coding_style_flags():
    argv = ("--num_nodes 5 --num_Byz_nodes 1 --redundancy 3.8 --deterministic True "
            "--batch_size 120 --trial_idx 1").split()
    cfg, _ = parse_args(argv)
    assert (cfg.num_workers, cfg.num_byzantine, cfg.batch_size, cfg.trial_idx) == (5, 1, 120, 1)
    assert cfg.rule_values["redundancy"] == 3.8
    assert cfg.rule_values["deterministic"] is True
    assert cfg.run_seed == cfg.seed + 1


@pytest.mark.parametrize("text,value", [("True", True), ("False", False), ("false", False),
                                        ("0", False), ("1", True)])
def test_deterministic_parses_booleans_correctly(text, value):
    # argparse's type=bool would turn the string 'False' into True.
    cfg, _ = parse_args(["--num_nodes", "5", "--num_Byz_nodes", "1", "--deterministic", text])
    assert cfg.rule_values["deterministic"] is value


def test_bucketing_style_flags():
    argv = "-n 25 -f 5 --agg cclip --attack alie --noniid --bucketing 2 --momentum 0.9".split()
    cfg, _ = parse_args(argv)
    assert (cfg.num_workers, cfg.num_byzantine, cfg.agg, cfg.attack) == (25, 5, "cclip", "alie")
    assert cfg.pre == "bucketing:2"
    assert cfg.partition == "noniid"
    assert cfg.momentum == 0.9
    cfg, _ = parse_args(["--iid", "--bucketing", "0", "--bucketing", "3"])
    assert (cfg.partition, cfg.pre) == ("iid", "bucketing:3")
    cfg, _ = parse_args(["--bucketing", "0"])
    assert cfg.pre == "none"


# -- --help and --list ------------------------------------------------------------------------

def _every_name() -> list[str]:
    # the project's own (a plugin another test imported into this process is not the CLI's)
    own = [name for reg in (rules.RULES, attacks.ATTACKS, preagg.PREAGGREGATORS)
           for name, cls in reg.items() if cls.__module__.startswith("common.")]
    return own + list(data.dataset_names()) + list(models.model_names())


@pytest.mark.parametrize("flag", ["--help", "--list"])
def test_help_and_list_name_every_choice(flag):
    r = run_main(flag)
    assert r.returncode == 0, r.stderr
    words = set(r.stdout.replace(",", " ").replace(":", " ").split())
    missing = [name for name in _every_name() if name not in words]
    assert not missing, f"{flag} does not mention {missing}"
    if flag == "--help":
        for option in ("--num_nodes", "--num_Byz_nodes", "--redundancy", "--deterministic",
                       "--batch_size", "--trial_idx", "--agg", "--attack", "--noniid",
                       "--bucketing", "--momentum", "--pre", "--partition", "--resume"):
            assert option in r.stdout


# -- unknown names and violated preconditions -------------------------------------------------

def _error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


UNKNOWN = [
    ("--agg", "nosuchrule", rules.rule_names()),
    ("--attack", "nosuchattack", attacks.attack_names()),
    ("--dataset", "nosuchdata", data.dataset_names()),
    ("--model", "nosuchmodel", models.model_names()),
    ("--pre", "nosuchpre", preagg.preaggregator_names()),
    ("--partition", "nosuchpartition", ["iid", "noniid", "dirichlet", "longtail"]),
]


@pytest.mark.parametrize("flag,value,choices", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unknown_name_lists_the_choices(flag, value, choices):
    with pytest.raises(ConfigError) as e:
        parse_args([flag, value])
    msg = str(e.value)
    assert value in msg and "\n" not in msg
    for c in choices:
        assert c in msg, f"'{c}' missing from: {msg}"


def test_unknown_names_exit_2_in_one_line_subprocess():
    # One interpreter per case costs seconds; one case covers the wrapper (the rest is in-process).
    for flag, value, choices in (UNKNOWN[0],):
        line = _error_line(run_main(flag, value))
        assert line.startswith("error: ") and value in line
        assert all(c in line for c in choices)


PRECONDITIONS = [
    # krum after bucketing:2 sees ceil(10/2) = 5 vectors; 5 < 2*2+3
    ("-n 10 -f 2 --agg krum --pre bucketing:2", "krum needs n >= 2f+3, got n=5, f=2"),
    ("-n 6 -f 2 --agg krum --pre none", "krum needs n >= 2f+3, got n=6, f=2"),
    ("-n 10 -f 2 --agg bulyan --pre none", "bulyan needs n >= 4f+3, got n=10, f=2"),
    ("-n 6 -f 3 --agg trmean --pre none", "trmean needs n > 2b, got n=6, b=3"),
    ("-n 10 -f 1 --agg trmean --trmean-b 5 --pre none", "trmean needs n > 2b, got n=10, b=5"),
    ("-n 5 -f 5 --agg mean --pre none", "0 <= f < n, got f=5, n=5"),
    ("-n 5 -f 6 --agg mean --pre none", "0 <= f < n, got f=6, n=5"),
]


@pytest.mark.parametrize("argv,bound", PRECONDITIONS, ids=[p[0] for p in PRECONDITIONS])
def test_violated_precondition_names_the_bound(argv, bound):
    with pytest.raises(ConfigError) as e:
        parse_args(argv.split())
    assert bound in str(e.value)


def test_boundary_cases_are_accepted():
    parse_args("-n 7 -f 2 --agg krum --pre none".split())           # n = 2f+3
    parse_args("-n 14 -f 2 --agg krum --pre bucketing:2".split())   # 7 after bucketing
    parse_args("-n 11 -f 2 --agg bulyan --pre none".split())        # n = 4f+3
    parse_args("-n 7 -f 3 --agg trmean --pre none".split())         # n = 2b+1


def test_precondition_exits_2_in_one_line_subprocess():
    line = _error_line(run_main(*"-n 10 -f 2 --agg bulyan --pre none".split()))
    assert "bulyan needs n >= 4f+3" in line


# -- --config and --resume --------------------------------------------------------------------

def test_config_json_round_trip(tmp_path):
    argv = ("-n 12 -f 3 --agg trmean --attack ipm --partition dirichlet:0.5 --pre nnm "
            "--lr-schedule step --lr-milestones 5,9 --seed 7 --momentum-style ema").split()
    cfg, _ = parse_args(argv)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again, _ = parse_args(["--config", str(path)])
    assert again == cfg
    assert again.lr_milestones == (5, 9) and again.partition == "dirichlet:0.5"
    # a flag on the command line overrides the file; the rest comes from the file
    over, _ = parse_args(["--config", str(path), "--seed", "9"])
    assert over.seed == 9 and over.agg == "trmean" and over.num_workers == 12
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_config_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"num_workers": 5, "num_wrokers": 4}))
    with pytest.raises(ConfigError, match="unknown keys: num_wrokers"):
        parse_args(["--config", str(path)])


def test_resume_missing_dir_is_a_clear_error(tmp_path):
    line = _error_line(run_main("--resume", str(tmp_path / "missing_run")))
    assert "--resume" in line and "missing_run" in line and "checkpoint.pt" in line
