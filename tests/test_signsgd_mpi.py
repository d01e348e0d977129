"""Election-coded signSGD under MPI: packed votes travel as raw uint8 buffers (one per worker
rank, size-checked on rank 0) and the run equals the in-process one bit for bit; a rank whose
buffer has the wrong size leaves its nodes abstaining."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from common.protocols.sign import code_for
from common.run.config import Config
from common.run.io import read_metrics
from common.run.problem import build_problem
from common.wire.formats import VoteWire
from tests.processes import final_params, run_mpi

SEED_CMD = "--trial_idx 1 --num_nodes 5 --num_Byz_nodes 1 --batch_size 120".split()

pytestmark = [pytest.mark.mpi, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")]


@pytest.mark.parametrize("ranks,code", [
    (6, ["--deterministic", "True", "--redundancy", "3.8"]),  # one node per rank; 1 bit, reverse
    (3, ["--redundancy", "2.5", "--attack", "random", "--byz-schedule", "random"]),  # 1 and 2 bits
], ids=["paper-r3.8", "bernoulli-r2.5"])
def test_mpi_run_equals_in_process_run(tmp_path, ranks, code):
    import main as main_mod

    flags = [*SEED_CMD, *code, "--rounds", "4", "--eval-every", "2", "--no-progress"]
    p = run_mpi(ranks, *flags, "-o", str(tmp_path / "mpi"))
    assert p.returncode == 0, p.stderr[-3000:]
    mpi = read_metrics(tmp_path / "mpi" / "metrics.jsonl")
    main_mod.main([*flags, "-o", str(tmp_path / "inp")])
    inp = read_metrics(tmp_path / "inp" / "metrics.jsonl")
    assert torch.equal(final_params(tmp_path / "mpi"), final_params(tmp_path / "inp"))
    for a, b in zip(mpi, inp, strict=True):
        assert a["rule"] == b["rule"] and a["wire"] == b["wire"] and a["byzantine"] == b["byzantine"]
        assert "faults" not in a
    assert mpi[-1]["test_accuracy"] == inp[-1]["test_accuracy"]


def test_wrong_size_vote_buffer_makes_its_nodes_abstain(tmp_path):
    # 2 worker ranks: rank 1 hosts nodes 0-2 and sends one byte short every round
    flags = [*SEED_CMD, "--deterministic", "True", "--redundancy", "3.8", "--rounds", "2",
             "--eval-every", "2", "--no-progress", "--inject-fault", "wrongsize:1"]
    p = run_mpi(3, *flags, "-o", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr[-3000:]
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    cfg = Config.from_dict(json.load(open(tmp_path / "run" / "config.json")))
    nb = int(VoteWire(code_for(cfg), build_problem(cfg).dim).nbytes[0])
    for r in recs:
        assert r["faults"] == {"0": "wrongsize", "1": "wrongsize", "2": "wrongsize"}
        assert r["rule"]["abstained"] == [0, 1, 2]
        assert r["wire"]["vote_bytes"] == [0, 0, 0, nb, nb]
    assert torch.isfinite(final_params(tmp_path / "run")).all()
