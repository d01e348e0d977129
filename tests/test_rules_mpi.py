"""Every rule and pre-aggregator beyond the seed papers under ``mpiexec`` ends with the same
parameters as main.py, on digits and on Fashion-MNIST (ten cells cover the twelve names)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import main as main_mod
from tests.processes import final_params, run_mpi

CELLS = [("meamed", "clip:2"), ("monna", "arc"), ("caf", "none"), ("smea", "none"),
         ("mda", "arc"), ("dnc", "none"), ("signguard", "none"), ("clippedclustering", "none"),
         ("flame", "none"), ("fltrust", "clip:2")]
FMNIST = "/usr/share/datasets/fashion-mnist"

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")]


@pytest.mark.parametrize("dataset", ["digits", "fashionmnist"])
@pytest.mark.parametrize("agg,pre", CELLS)
def test_under_mpi_equals_main(dataset, agg, pre, tmp_path):
    if dataset == "fashionmnist" and not os.path.isdir(FMNIST):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    flags = ["--dataset", dataset, "--model", "mlp", "-n", "10", "-f", "2", "--agg", agg,
             "--pre", pre, "--attack", "alie", "--partition", "noniid", "--momentum", "0",
             "--rounds", "4", "--eval-every", "4", "--no-progress"]
    p = run_mpi(3, *flags, "-o", str(tmp_path / "mpi"))
    assert p.returncode == 0, p.stderr[-3000:]
    main_mod.main([*flags, "-o", str(tmp_path / "main")])
    torch.testing.assert_close(final_params(tmp_path / "mpi"), final_params(tmp_path / "main"),
                               atol=1e-5, rtol=0)
