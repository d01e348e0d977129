"""The Python API (``main.train``), plugins (``--plugin MODULE``) and old configuration files.

* ``train(Config(...))`` runs in process and returns the summary, the final parameters and the
  model; the README's Python example runs as written.
* ``examples/my_rule.py`` registers a rule and an attack from outside the project: their flags,
  ``--list`` entries and checks come from their declarations; main.py and ``mpiexec`` runs end
  with the same parameters; ``config.json`` records the plugin, so ``--resume`` works.
* A ``config.json`` written before parameters moved into sections still loads.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest
import torch

import main as main_mod
from common.errors import ConfigError
from common.run.config import Config
from common.run.flags import parse_args
from tests.processes import ROOT, final_params, run_mpi, run_python


@pytest.fixture(autouse=True)
def _forget_plugins():
    """Whatever a test here registers in this process (the example plugin) is unregistered
    afterwards, so the other test modules see the project's own registries."""
    from common.data import datasets, models
    from common.params import registries
    from common.run import plugins

    modules = set(sys.modules)
    saved = [(reg, dict(reg._entries)) for reg in registries()]
    rest = (dict(datasets.DATASETS), dict(models.MODELS), dict(models.FAST_PATH),
            list(plugins._LOADED))
    yield
    for reg, entries in saved:
        reg._entries.clear()
        reg._entries.update(entries)
    for live, old in zip((datasets.DATASETS, models.MODELS, models.FAST_PATH), rest[:3]):
        live.clear()
        live.update(old)
    plugins._LOADED[:] = rest[3]
    for name in set(sys.modules) - modules:  # imported again (and registered) when used again
        if name.startswith("examples"):
            del sys.modules[name]


PLUGIN = ["--plugin", "examples.my_rule", "--agg", "my_rule", "--attack", "my_attack"]
SMALL = ["-n", "6", "-f", "1", "--pre", "none", "--model", "softmax", "--rounds", "4",
         "--eval-every", "2", "--no-progress"]


def test_train_returns_summary_parameters_and_model(tmp_path):
    cfg = Config(num_workers=6, num_byzantine=1, agg="krum", pre="none", attack="bitflip",
                 model="softmax", rounds=4, eval_every=2, progress=False)
    result = main_mod.train(cfg, output=str(tmp_path / "run"))
    assert result.summary["rounds"] == 4 and result.run_dir == str(tmp_path / "run")
    assert torch.equal(result.params, final_params(tmp_path / "run"))
    flat = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
    assert torch.equal(flat, result.params)
    # the same run from the command line ends with the same parameters
    argv = ["-n", "6", "-f", "1", "--agg", "krum", "--pre", "none", "--attack", "bitflip",
            "--model", "softmax", "--rounds", "4", "--eval-every", "2", "--no-progress"]
    main_mod.main(argv + ["-o", str(tmp_path / "cli")])
    assert torch.equal(result.params, final_params(tmp_path / "cli"))


def test_train_takes_a_dict_with_flat_parameter_keys_and_checks_it(tmp_path):
    result = main_mod.train({"num_workers": 5, "num_byzantine": 1, "agg": "cclip",
                             "cclip_tau": 0.5, "pre": "none", "model": "softmax", "rounds": 2,
                             "progress": False}, output=str(tmp_path / "d"))
    assert result.summary["config"]["agg_params"] == {"tau": 0.5, "iters": 3}
    with pytest.raises(ConfigError, match="cclip parameter tau must be > 0"):
        main_mod.train(Config(agg="cclip", agg_params={"tau": -1.0}))
    with pytest.raises(ConfigError, match="unknown parameter.*bogus.*valid parameters: iters, tau"):
        main_mod.train(Config(agg="cclip", agg_params={"bogus": 1}))


def _readme_python_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    """Run in a fresh directory (its outputs land there) with the project on the path."""
    code = _readme_python_example()
    assert "train(" in code and "examples.my_rule" in code
    r = run_python("-c", f"import os; os.chdir({str(tmp_path)!r})\n" + code,
                   env={"PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final test accuracy" in r.stdout
    assert os.path.isdir(tmp_path / "outputs")


def test_plugin_flags_list_and_checks_come_from_its_declarations(capsys):
    cfg, _ = parse_args(PLUGIN + ["--my-rule-keep", "0.25", "--my-attack-scale", "2"])
    assert cfg.agg_params == {"keep": 0.25} and cfg.attack_params == {"scale": 2.0}
    assert cfg.plugins == ("examples.my_rule",)
    with pytest.raises(ConfigError, match=r"--my-rule-keep must be in \(0, 1\], got '2'"):
        parse_args(PLUGIN + ["--my-rule-keep", "2"])
    assert main_mod.main(["--plugin", "examples.my_rule", "--list"]) is None
    out = capsys.readouterr().out
    assert "my_rule" in out and "--my-rule-keep" in out and "my_attack" in out


def test_an_unknown_plugin_is_one_line_and_exit_2():
    r = run_python("main.py", "--plugin", "examples.nosuch", "--rounds", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: --plugin examples.nosuch: no module named "
                                f"examples.nosuch (give a module on the Python path, e.g. "
                                f"examples.my_rule, run from the project directory or with "
                                f"PYTHONPATH set; sys.path[0] = {ROOT})")


@pytest.mark.slow
def test_plugin_run_resumes_from_its_config(tmp_path):
    d = tmp_path / "run"
    main_mod.main(PLUGIN + SMALL + ["-o", str(d)])
    assert json.load(open(d / "config.json"))["plugins"] == ["examples.my_rule"]
    # a new process that was not told about the plugin: config.json brings it
    r = run_python("main.py", "--resume", d, "--rounds", "6", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    full = tmp_path / "full"
    main_mod.main(PLUGIN + SMALL[:-5] + ["--rounds", "6", "--eval-every", "2", "--no-progress",
                                         "-o", str(full)])
    assert torch.equal(final_params(d), final_params(full))


@pytest.mark.mpi
@pytest.mark.slow
def test_plugin_under_mpiexec_equals_main(tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not on PATH")
    r = run_mpi(3, *PLUGIN, *SMALL, "-o", str(tmp_path / "mpi"))
    assert r.returncode == 0, r.stderr[-3000:]
    main_mod.main(PLUGIN + SMALL + ["-o", str(tmp_path / "ref")])
    assert torch.equal(final_params(tmp_path / "mpi"), final_params(tmp_path / "ref"))


# An earlier version's config.json: every rule's and attack's parameter as a top-level key.
OLD_CONFIG = {
    "num_workers": 6, "num_byzantine": 1, "defense_f": None, "byz_schedule": "fixed",
    "markov_p": 0.5, "markov_k": 5, "dataset": "digits", "data_dir": None, "partition": "noniid",
    "model": "softmax", "batch_size": 32, "agg": "cclip", "pre": "bucketing:2",
    "krum_neighbours": None, "multikrum_m": None, "trmean_b": None, "trmean_beta": None,
    "rfa_iters": 8, "rfa_nu": 0.1, "cclip_tau": 0.5, "cclip_iters": 2, "nmedian_std": 0.01,
    "attack": "alie", "gaussian_std": 200.0, "alie_z": 1.5, "ipm_eps": 0.1, "mimic_warmup": 1,
    "backdoor_scale": 4.0, "redundancy": 1.0, "deterministic": False, "share_frac": 0.01,
    "eps1": 0.5, "eps2": 2.0, "rsa_delta": 0.2635, "rounds": 3, "lr": 0.1,
    "lr_schedule": "constant", "lr_milestones": [], "lr_gamma": 0.1, "warmup_rounds": 0,
    "warmup_start": 0.0, "momentum": 0.9, "momentum_style": "heavyball", "server_momentum": 0.0,
    "weight_decay": 0.0, "eval_every": 3, "seed": 0, "trial_idx": 0, "output": None,
    "checkpoint_every": 50, "device": "cpu", "server_device": None, "grad_path": "auto",
    "compile_rules": "auto", "round_timeout": 0.0, "state_timeout": None, "inject_fault": "",
    "threads": 0, "progress": False,
}


def test_an_old_flat_config_json_still_loads(tmp_path):
    cfg = Config.from_dict(OLD_CONFIG)
    assert cfg.agg_params == {"tau": 0.5, "iters": 2} and cfg.attack_params == {"z": 1.5}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(OLD_CONFIG))
    summary = main_mod.main(["--config", str(path), "-o", str(tmp_path / "run")])
    assert summary["config"]["agg_params"] == {"tau": 0.5, "iters": 2}
    flags = ["-n", "6", "-f", "1", "--model", "softmax", "--noniid", "--agg", "cclip",
             "--bucketing", "2", "--attack", "alie", "--momentum", "0.9", "--lr", "0.1",
             "--cclip-tau", "0.5", "--cclip-iters", "2", "--alie-z", "1.5", "--rounds", "3",
             "--eval-every", "3", "--no-progress"]
    main_mod.main(flags + ["-o", str(tmp_path / "flags")])
    assert torch.equal(final_params(tmp_path / "run"), final_params(tmp_path / "flags"))


def _readme_plugin_commands() -> list[list[str]]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].split() for line in block.splitlines() if line.strip()]


@pytest.mark.mpi
@pytest.mark.slow
def test_the_readme_plugin_commands_run_and_the_rule_resists_the_attack(tmp_path):
    """The README's plugin commands, as written (plus an output directory): the plugin's rule
    holds under the plugin's attack, which breaks the mean; under mpiexec the same parameters."""
    cmds = _readme_plugin_commands()
    assert [c[:2] for c in cmds] == [["python", "main.py"]] * 2 + [["mpiexec", "-n"]]
    acc = {}
    for i, cmd in enumerate(cmds[:2]):
        r = run_python(*cmd[1:], "--no-progress", "-o", tmp_path / f"m{i}")
        assert r.returncode == 0, r.stderr[-2000:]
        acc[cmd[cmd.index("--agg") + 1]] = json.load(
            open(tmp_path / f"m{i}" / "summary.json"))["final_test_accuracy"]
    assert acc["my_rule"] > 50.0 and acc["mean"] < 20.0, acc
    mpi = cmds[2]
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not on PATH")
    r = run_mpi(int(mpi[2]), *mpi[5:], "-o", str(tmp_path / "mpi"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.equal(final_params(tmp_path / "mpi"), final_params(tmp_path / "m0"))
