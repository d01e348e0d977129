"""Input validation: every bad flag value costs one clear line on stderr and exit code 2.

Most cases go through ``main.main(argv)`` in-process (the same wrapper the command line uses,
without paying an interpreter start-up per case); a handful run ``python main.py`` in a
subprocess to check the real exit code and that no traceback reaches the user.
"""
from __future__ import annotations

import os
import subprocess

import pytest

import main as main_mod
from common.errors import ConfigError
from common.run.cli import resolve_run
from common.run.config import Config, validate
from common.run.flags import parse_args
from tests.processes import run_python

# (argv, a substring the one-line message must contain: it names the flag or the bound)
BAD = [
    # wrong types
    ("-n abc", "invalid int value: 'abc'"),
    ("-f x", "invalid int value: 'x'"),
    ("--lr abc", "invalid float value: 'abc'"),
    ("--rounds 1.5", "invalid int value: '1.5'"),
    ("--deterministic maybe", "expected True or False"),
    ("--lr-milestones a,b", "comma-separated integers"),
    ("--byz-schedule foo", "invalid choice: 'foo'"),
    ("--bogus-flag", "unrecognized arguments: --bogus-flag"),
    # out of range
    ("-n 0", "--num_nodes/-n must be >= 1"),
    ("-n 5 -f 5", "0 <= f < n, got f=5, n=5"),
    ("-n 5 -f 7", "0 <= f < n, got f=7, n=5"),
    ("-f -1", "0 <= f < n, got f=-1"),
    ("--defense-f 30", "--defense-f must satisfy 0 <= f < n"),
    ("--pre bucketing:0", "bucketing parameter s must be >= 1"),
    ("--pre bucketing:-1", "bucketing parameter s must be >= 1"),
    ("--pre bucketing:x", "bucketing parameter s must be an integer"),
    ("--bucketing -1", "--bucketing S needs a bucket size S >= 1"),
    ("--pre resampling:0", "resampling parameter s must be >= 1"),
    ("--eps1 2 --eps2 1", "--eps1 < --eps2"),
    ("--eps1 1 --eps2 1", "--eps1 < --eps2"),
    ("--redundancy 0", "--redundancy r"),
    ("--redundancy 0.5", "must be in [1, n] = [1, 20]"),
    ("-n 5 -f 1 --redundancy 6", "must be in [1, n] = [1, 5]"),
    ("--lr -1", "--lr must be a positive number"),
    ("--lr 0", "--lr must be a positive number"),
    ("--lr nan", "--lr must be a finite number"),
    ("--lr inf", "--lr must be a finite number"),
    ("--momentum 1", "--momentum must be in [0, 1)"),
    ("--momentum -0.1", "--momentum must be in [0, 1)"),
    ("--server-momentum 1", "--server-momentum must be in [0, 1)"),
    ("--eval-every 0", "--eval-every must be >= 1"),
    ("--rounds 0", "--rounds must be >= 1"),
    ("--batch_size 0", "--batch_size must be >= 1"),
    ("--checkpoint-every 0", "--checkpoint-every must be >= 1"),
    ("--round-timeout -1", "--round-timeout must be >= 0"),
    ("--markov-p 2", "--markov-p must be in [0, 1]"),
    ("--markov-p nan", "--markov-p must be a finite number"),
    ("--markov-k 0", "--markov-k must be >= 1"),
    ("--cclip-tau 0", "tau"),
    ("--cclip-iters 0", "iters"),
    ("--rfa-iters 0", "--rfa-iters must be >= 1"),
    ("--rfa-nu 0", "--rfa-nu must be > 0"),
    ("--nmedian-std -1", "--nmedian-std must be >= 0"),
    ("--warmup-rounds -1", "--warmup-rounds must be >= 0"),
    ("--krum-neighbours 0", "--krum-neighbours must be >= 1"),
    ("--multikrum-m -1", "--multikrum-m must be >= 1"),
    ("--trmean-b -1", "--trmean-b must be >= 0"),
    ("--trmean-beta 0.5", "--trmean-beta must be in [0, 0.5)"),
    ("--gaussian-std -1", "--gaussian-std must be >= 0"),
    ("--mimic-warmup 0", "--mimic-warmup must be >= 1"),
    ("--share-frac 0", "--share-frac must be in (0, 1]"),
    ("--share-frac 2", "--share-frac must be in (0, 1]"),
    ("--weight-decay -1", "--weight-decay must be >= 0"),
    ("--lr-gamma 0", "--lr-gamma must be in (0, 1]"),
    ("--seed -1", "--seed and --trial_idx must be >= 0"),
    ("--lr-schedule step", "--lr-milestones"),
    ("--device tpu", "--device must be cpu, cuda"),
    ("--trmean-b 100 --agg trmean", "trmean needs n > 2b"),
    ("-n 3 -f 1 --agg krum --pre none", "krum needs n >= 2f+3"),
    ("-n 6 -f 1 --agg bulyan --pre none", "bulyan needs n >= 4f+3"),
    ("--agg oracle --bucketing 2", "cannot follow a pre-aggregator"),
    ("--attack gaussian --gaussian-std -1", "std must be >= 0"),
    ("--attack alie --alie-z nan", "--alie-z must be a finite number"),
    ("--eps2 inf", "--eps2 must be a finite number"),
    ("--gaussian-std inf", "--gaussian-std must be a finite number"),
    # unknown names list the valid choices
    ("--partition foo", "valid forms: iid, noniid, dirichlet:ALPHA"),
    ("--partition dirichlet:-1", "ALPHA must be a positive number"),
    ("--partition dirichlet:abc", "ALPHA must be a positive number"),
    ("--dataset foo", "choose one of: cifar10"),
    ("--model foo", "choose one of:"),
    ("--agg foo", "unknown rule 'foo'; choose one of:"),
    ("--attack foo", "unknown attack 'foo'; choose one of:"),
    ("--pre foo", "unknown pre-aggregator 'foo'; choose one of: arc, bucketing, clip, nnm, resampling"),
    # missing files
    ("--config /nonexistent/c.json", "cannot read --config"),
]


def _one_clear_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,needle", BAD, ids=[a for a, _ in BAD])
def test_bad_flag_gives_config_error(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse_args(argv.split())
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


@pytest.mark.parametrize("argv,needle", BAD[:12] + BAD[-8:])
def test_main_prints_one_line_and_exits_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main_mod.main(argv.split())
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert needle in _one_clear_line(err) and out == ""


def test_missing_data_dir_fails_before_any_download(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ConfigError, match=r"--data-dir .*no/such is not a directory"):
        parse_args(["--dataset", "mnist", "--data-dir", str(missing)])
    # validation must not create it (torchvision would, on its way to the network)
    assert not missing.exists() and not (tmp_path / "no").exists()


def test_resume_of_missing_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_mod.main(["--resume", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "no checkpoint.pt and config.json" in _one_clear_line(capsys.readouterr().err)


def test_resume_with_corrupt_config(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"num_workers": 5, "bogus": 1}')
    with pytest.raises(SystemExit) as e:
        main_mod.main(["--resume", str(tmp_path)])
    assert e.value.code == 2
    assert "unknown keys: bogus" in _one_clear_line(capsys.readouterr().err)


def test_resume_with_damaged_files(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"num_workers": 5')  # torn JSON
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SystemExit) as e:
        main_mod.main(["--resume", str(tmp_path)])
    assert e.value.code == 2
    assert "config.json is not valid JSON" in _one_clear_line(capsys.readouterr().err)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main_mod.main(["--resume", str(tmp_path)])
    assert e.value.code == 2
    assert "checkpoint.pt is unreadable" in _one_clear_line(capsys.readouterr().err)
    import torch

    torch.save({"something": "else"}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="does not hold a run's state"):
        resolve_run(["--resume", str(tmp_path)], "main.py")


class _Planted:
    """A malicious checkpoint payload: unpickling it calls open(path, "w"), creating ``path``
    (any callable would do: os.system, subprocess.Popen, ...)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_resume_of_a_tampered_checkpoint_runs_no_code(tmp_path, capsys):
    """A genuine run directory whose checkpoint.pt gets a pickle that executes code on load:
    resuming must not run it (torch.load weights_only=True) and must say so in one line, exit 2,
    for main.py and for rank 0 of MPI_main.py."""
    import torch

    import MPI_main

    d, marker = tmp_path / "run", tmp_path / "PWNED"
    main_mod.main(["-n", "3", "-f", "1", "--model", "softmax", "--agg", "cm", "--pre", "none",
                   "--rounds", "1", "--no-progress", "-o", str(d)])
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    ck["server"]["momentum"] = _Planted(marker)
    torch.save(ck, d / "checkpoint.pt")
    # the payload is live: an unsafe load runs it
    torch.load(d / "checkpoint.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    r = run_python("main.py", "--resume", d, "--rounds", "2", timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    line = _one_clear_line(r.stderr)
    assert line == (f"error: --resume {d}: checkpoint.pt holds code (io.open), not only "
                    "tensors: refused without running it; it was tampered with or not written "
                    "by main.py/MPI_main.py"), line
    assert not marker.exists()
    capsys.readouterr()
    assert MPI_main._resolve(["--resume", str(d)], 3)[:2] == (MPI_main.EXIT, 2)  # rank 0's path
    assert "checkpoint.pt holds code" in _one_clear_line(capsys.readouterr().err)
    assert not marker.exists()


@pytest.mark.parametrize("text,needle", [
    ('{"num_workers": "abc"}', "config key num_workers must be of type int, got 'abc'"),
    ('{"lr": "0.1"}', "config key lr must be of type float"),
    ('{"progress": 1}', "config key progress must be of type bool"),
    ('{"defense_f": 1.5}', "config key defense_f must be of type int"),
    ('{"lr_milestones": [1, "a"]}', "config key lr_milestones must be of type tuple"),
    ('[1, 2]', "must be a JSON object"),
    ('{"lr": 1e999}', "--lr must be a finite number"),
])
def test_config_file_with_wrong_types(tmp_path, text, needle):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse_args(["--config", str(p)])
    assert needle in str(e.value)


def test_config_file_with_bad_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        parse_args(["--config", str(p)])


def test_defaults_and_boundaries_are_accepted():
    validate(Config())
    for argv in (["-n", "5", "-f", "4", "--pre", "none", "--agg", "mean"],  # f = n - 1
                 ["--momentum", "0"], ["--redundancy", "20"], ["--redundancy", "1"],
                 ["--bucketing", "0"], ["--round-timeout", "0"], ["--markov-p", "1"],
                 ["--eps1", "0", "--eps2", "1e-9"], ["--share-frac", "1"]):
        parse_args(argv)


# -- the hostfile: mpiexec reads it before any Python starts, so users check it first with
# python -m hosts.check (hosts/check.py); these run it as users do, in a subprocess (stdlib only,
# no torch import: about 0.1 s each)

def _check_hosts(*args):
    return run_python("-m", "hosts.check", *args, timeout=60)


GOOD_HOSTFILE = ("# the server's node first\n"
                 "\n"
                 "localhost:2\n"
                 "   # an indented comment\n"
                 "127.0.0.1:3 user=root\n"
                 "localhost\n")


def test_hostfile_good_file_prints_one_summary_line(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text(GOOD_HOSTFILE)
    r = _check_hosts(hf)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    # 2 distinct hosts, 2 + 3 + 1 slots (no count = 1), rank 0 on the first entry
    assert lines[0].startswith(f"{hf}: 2 hosts, 6 slots (localhost:2, 127.0.0.1:3, localhost:1)")
    assert "rank 0 (the server) runs on localhost" in lines[0]
    r = _check_hosts(hf, "-n", 6)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.rstrip().endswith("; -n 6 fits")


def test_hostfile_more_ranks_than_slots_is_a_warning(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text(GOOD_HOSTFILE)
    r = _check_hosts(hf, "-n", 7)
    assert r.returncode == 0, r.stderr
    [warning] = r.stderr.splitlines()
    assert warning.startswith(f"warning: {hf}: -n 7 is more than its 6 slots")
    assert "oversubscribes" in warning
    assert len(r.stdout.splitlines()) == 1 and "fits" not in r.stdout


def test_hostfile_missing_or_a_directory(tmp_path):
    r = _check_hosts(tmp_path / "nope")
    assert r.returncode == 2 and r.stdout == ""
    assert _one_clear_line(r.stderr) == f"error: {tmp_path / 'nope'}: no such file"
    # mpiexec -f DIR silently runs every rank on the launch node: the check refuses it
    r = _check_hosts(tmp_path)
    assert r.returncode == 2
    assert _one_clear_line(r.stderr) == f"error: {tmp_path}: is a directory, not a hostfile"


def test_hostfile_without_read_permission(tmp_path, monkeypatch, capsys):
    hf = tmp_path / "hosts"
    hf.write_text(GOOD_HOSTFILE)
    hf.chmod(0)
    if os.geteuid() != 0:
        r = _check_hosts(hf)
        assert r.returncode == 2
        assert _one_clear_line(r.stderr) == f"error: {hf}: permission denied (cannot read it)"
        return
    # root reads a mode-000 file anyway, so the denial is simulated where the checker opens it
    from hosts import check

    assert _check_hosts(hf).returncode == 0          # really readable by root
    real_open = open

    def denying_open(path, *a, **kw):
        if str(path) == str(hf):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(check, "open", denying_open, raising=False)
    assert check.main([str(hf)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and _one_clear_line(err) == f"error: {hf}: permission denied (cannot read it)"


@pytest.mark.parametrize("entry,needle", [
    ("node1:0", "slot count 0 is out of range"),                   # hydra: SIGFPE
    ("node1:-1", "slot count '-1' is not a whole number >= 1"),    # hydra: spins forever
    ("node1:2x", "slot count '2x' is not a whole number >= 1"),    # hydra: silently 2
    ("node1:abc", "slot count 'abc' is not a whole number >= 1"),
    ("node1:", "':' without a slot count"),
    (":4", "':4' has no host name"),
    ("fe80::1", "more than one ':'"),
    ("root@node1:2", "write 'node1 user=root'"),
    ("-oProxyCommand=x", "is not a host name or IPv4 address"),
    ("localhost:2 # rank 0", "comment after the entry ('#')"),     # hydra: 8-line trace
    ("localhost:2 slots=2", "unexpected token 'slots=2'"),         # Open MPI syntax
    ("localhost user=", "'user=' has no value"),
    ("localhost user=a user=b", "user= given twice"),
])
def test_hostfile_malformed_line(tmp_path, entry, needle):
    hf = tmp_path / "hosts"
    hf.write_text(f"# cluster\nlocalhost:2\n{entry}\nlocalhost:1\n")
    r = _check_hosts(hf, "--no-resolve")      # syntax alone must catch it
    assert r.returncode == 2 and r.stdout == ""
    line = _one_clear_line(r.stderr)
    assert line.startswith(f"error: {hf}:3: ") and needle in line, line


def test_hostfile_every_bad_line_is_reported_once(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("node1:0\nlocalhost:2\nnode2 foo\n")
    r = _check_hosts(hf, "--no-resolve")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert [ln.split(": ")[1] for ln in lines] == [f"{hf}:1", f"{hf}:3"], r.stderr
    assert all(ln.startswith("error: ") for ln in lines) and "Traceback" not in r.stderr


def test_hostfile_without_hosts(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("# nothing but comments\n\n   \n")
    r = _check_hosts(hf)
    assert r.returncode == 2
    assert "no hosts in it" in _one_clear_line(r.stderr)


def test_hostfile_unresolvable_host(tmp_path):
    hf = tmp_path / "hosts"
    # .invalid never resolves (RFC 2606); reported once, at its first line
    hf.write_text("localhost:1\nno-such-node.invalid:4\nno-such-node.invalid:1\n")
    r = _check_hosts(hf, "-n", 3)
    assert r.returncode == 2 and r.stdout == ""
    line = _one_clear_line(r.stderr)
    assert line.startswith(f"error: {hf}:2: cannot resolve host 'no-such-node.invalid'"), line
    r = _check_hosts(hf, "--no-resolve")
    assert r.returncode == 0 and "2 hosts, 6 slots" in r.stdout


def test_hostfile_bad_arguments():
    r = _check_hosts("hosts/hostfile.localhost", "-n", "0")
    assert r.returncode == 2 and "-n must be >= 1" in _one_clear_line(r.stderr)
    r = _check_hosts()
    assert r.returncode == 2 and "required: hostfile" in _one_clear_line(r.stderr)


def test_hostfile_examples_in_the_repository_pass():
    r = _check_hosts("hosts/hostfile", "--no-resolve", "-n", "9")   # EC2 names: syntax only
    assert r.returncode == 0 and "3 hosts, 9 slots" in r.stdout and r.stderr == "", r.stderr
    r = _check_hosts("hosts/hostfile.localhost", "-n", "6")
    assert r.returncode == 0 and "1 host, 64 slots" in r.stdout and r.stderr == "", r.stderr


@pytest.mark.mpi
def test_hostfile_check_agrees_with_mpiexec(tmp_path):
    """What the check accepts, Hydra runs; what it rejects because Hydra does, Hydra rejects
    (only cases where mpiexec fails cleanly: node:0 crashes it and node:-1 hangs it)."""
    import shutil

    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not on PATH")
    cases = [(GOOD_HOSTFILE, True), ("localhost:2 # rank 0 here\n", False),
             ("localhost:2 slots=2\n", False)]
    for i, (text, ok) in enumerate(cases):
        hf = tmp_path / f"hosts{i}"
        hf.write_text(text)
        assert (_check_hosts(hf).returncode == 0) == ok, text
        r = subprocess.run(["mpiexec", "-f", str(hf), "-n", "2", "true"], capture_output=True,
                           text=True, timeout=60)
        assert (r.returncode == 0) == ok, (text, r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("argv,needle", [
    ("-n 5 -f 5", "0 <= f < n"),
    ("--dataset mnist --data-dir {tmp}/missing", "is not a directory"),
])
def test_subprocess_exit_code_2_without_traceback(argv, needle, tmp_path):
    args = argv.format(tmp=tmp_path).split()
    r = run_python("main.py", *args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert needle in _one_clear_line(r.stderr)
    assert r.stdout == ""


def _typed_actions():
    from common.run.flags import build_parser

    for a in build_parser()._actions:
        if a.option_strings and a.type in (int, float):
            yield a


@pytest.mark.parametrize("action", list(_typed_actions()), ids=lambda a: a.option_strings[-1])
def test_every_numeric_flag_rejects_text_and_nonfinite(action):
    opt = action.option_strings[-1]
    with pytest.raises(ConfigError) as e:
        parse_args([opt, "abc"])
    assert "invalid" in str(e.value) and "'abc'" in str(e.value)
    if action.type is float:
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError, match="must be"):
                parse_args([f"{opt}={bad}"])  # "=": argparse reads a bare -inf as an option


def test_every_choice_flag_lists_its_choices():
    from common.run.flags import build_parser

    for a in build_parser()._actions:
        if a.option_strings and a.choices:
            with pytest.raises(ConfigError) as e:
                parse_args([a.option_strings[-1], "bogus"])
            assert "invalid choice: 'bogus'" in str(e.value)
            assert all(repr(c) in str(e.value) for c in a.choices)
