"""The benchmark scripts run end to end at toy sizes and print their tables (their numbers are
not checked here: speed lives in bench/, never in tests). A bench that stopped running would
otherwise go unnoticed until someone needs its figures."""
from __future__ import annotations

import os
import re

import pytest

from common.data.datasets import FASHION_MNIST_SYSTEM_DIR
from tests.processes import run_python


def bench(*args: str) -> str:
    out = run_python(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_rules_bench_prints_every_rule():
    text = bench("bench/rules.py", "--sizes", "5x4096", "--reps", "1", "--no-byzfl",
                 "--threads", "1")
    for rule in ("mean", "krum", "multikrum", "cm", "trmean", "rfa", "cclip", "bulyan",
                 "signmv", "bucketing:2", "resampling:2", "nnm", "cm+compile", "clip:2", "arc",
                 "meamed", "monna", "mda", "caf", "smea", "dnc", "signguard",
                 "clippedclustering", "flame", "fltrust(g0=x0)"):
        assert re.search(rf"^{re.escape(rule)}\S*\s+\d+\.\d", text, re.M), (rule, text)


def test_exact_search_bench_says_the_largest_n_for_each_rule_and_f():
    text = bench("bench/exact_search.py", "--d", "64", "--budget", "0.02", "--reps", "1")
    for rule in ("mda", "smea"):
        for f in ("f = n // 5", "f = 2"):
            assert re.search(rf"^{rule}\s+\({re.escape(f)}\): largest n within 0.02 s: \d+",
                             text, re.M), (rule, f, text)


def test_attacks_bench_times_every_message_attack():
    text = bench("bench/attacks.py", "--sizes", "10x4096", "--reps", "1")
    for attack in ("alie", "ipm", "nm", "mimic", "minmax", "minsum", "fang", "inf", "gaussian",
                   "signflip", "opt-alie", "opt-ipm"):
        assert re.search(rf"^{attack}\s+\d+\.\d+\s+\d+\.\d+", text, re.M), (attack, text)
    assert re.search(r"^minmax\s.*gamma=\d", text, re.M), text
    assert re.search(r"^opt-alie\s.*k=20 rule calls, factor=\d", text, re.M), text


def test_opt_search_bench_scores_each_search_setting():
    text = bench("bench/opt_search.py", "--dataset", "digits", "--rounds", "5", "--partitions",
                 "noniid", "--defenses", "nnm/krum@3")
    for name in ("opt-alie", "opt-ipm"):
        for spec in ("nnm/krum@3", "ALL"):
            assert re.search(rf"^{name}\s+{re.escape(spec)}\s+20/0/10: [01]\.\d\d/[01]\.\d\d .*"
                             r"10/0/0\.5: [01]\.\d\d/[01]\.\d\d$", text, re.M), (name, text)


def test_mpi_bench_prints_one_row_per_rank_count_and_size():
    text = bench("bench/mpi.py", "--ranks", "3", "--dims", "1000", "--reps", "2")
    assert re.search(r"^\s+3\s+2\s+1e\+03\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", text, re.M), text


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_rounds_bench_times_every_gradient_path():
    text = bench("bench/rounds.py", "--part", "paths", "--reps", "1", "--threads", "1")
    rows = {m.group(1) + m.group(2): m.group(0) for m in
            re.finditer(r"^(\w+)\s+(\d+)\s.*$", text, re.M)}
    assert re.search(r"\s[\d.]+\s+[\d.]+\s+[\d.]+\s+\w+\s+linear$", rows["mlp20"]), rows
    assert re.search(r"\s-\s+[\d.]+\s+[\d.]+\s+\w+\s+loop$", rows["cnn25"]), rows


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_rounds_bench_times_federated_local_steps():
    text = bench("bench/rounds.py", "--part", "local", "--reps", "1", "--threads", "1",
                 "--local-steps", "2", "--local-models", "softmax:4,mlp:4:8")
    for model, n, b in (("softmax", 4, 32), ("mlp", 4, 8)):
        assert re.search(rf"^{model}\s+{n}\s+{b}\s+linear(\s+\d+){{5}}(\s+[\d.]+){{2}}$", text,
                         re.M), (model, text)


def test_rounds_bench_times_the_readmes_first_command():
    from tests.test_readme import COMMANDS

    text = bench("bench/rounds.py", "--part", "default")
    timed = re.search(r"== `(python main\.py[^`]*)`: [\d.]+ s wall including start-up\n"
                      r"\s+final test accuracy [\d.]+%", text)
    assert timed and timed.group(1) == COMMANDS[1], text  # the README's first command
