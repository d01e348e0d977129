"""The hosts/README.md commands of the cluster harness, run as written: ``python -m
hosts.cluster up`` makes 3 hosts that answer ssh and print their hostfile, ``down`` removes them.
(After tests/test_cluster.py, whose cluster has the same names.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

from hosts.cluster import Cluster
from tests.processes import ROOT

pytestmark = pytest.mark.cluster


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hosts.cluster", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cluster_up_and_down_by_hand():
    up = _cli("up")
    try:
        if up.returncode != 0:
            pytest.skip(f"no cluster on this machine: {up.stderr.strip()}")
        lines = dict(line.split(":", 1) for line in up.stdout.splitlines())
        hostfile, ssh = lines["hostfile"].strip(), lines["ssh"].split()[0]
        assert open(hostfile).read().split() == [f"{a}:1" for a in Cluster(3).addresses]
        who = subprocess.run([ssh, "root@10.231.0.13", "hostname"], capture_output=True,
                             text=True, timeout=60)
        assert who.stdout.strip() == "node3", who.stderr
    finally:
        down = _cli("down")
    assert down.returncode == 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "byzh" not in listed
