"""A cluster on one machine: hosts as network namespaces, each with its own hostname and sshd, so
``mpiexec -f HOSTFILE -launcher ssh`` starts ranks on them and MPI traffic crosses real TCP
sockets (veth links to a bridge) instead of shared memory.

    python -m hosts.cluster up      # 3 hosts; prints the hostfile and the mpiexec prefix
    python -m hosts.cluster down    # removes everything ``up`` made

Each host is a network namespace ``byzh<i>`` with a veth link (``byzv<i>`` on this side) to the
bridge ``byzbr`` (10.231.0.1/24, this machine's end), the address 10.231.0.1<i>, no route
anywhere else, and an sshd listening only on that address, started in a UTS namespace whose
hostname is ``node<i>``, and its own native-kernel cache (``BYZROBUST_CACHE``, set by its sshd
for every session, so mpiexec must not be given one). Keys are made for the cluster and live in
its work directory with the hostfile and ``ssh.sh`` (ssh with those keys, host keys not
recorded). Needs root (namespaces),
iproute2 and Debian's openssh-server; :class:`ClusterUnavailable` says which is missing.

Faults: :meth:`Cluster.degrade` (a host's outgoing traffic rate-limited with tc tbf and TCP
packets dropped at random with nftables), :meth:`Cluster.link` (link down/up),
:meth:`Cluster.kill` (SIGKILL every process of a host but its sshd), and
:meth:`Cluster.firewall` (security groups: only given TCP ports let in).
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["Cluster", "ClusterUnavailable", "BRIDGE", "SUBNET"]

BRIDGE = "byzbr"
SUBNET = "10.231.0"
_NS, _VETH, _FIREWALL = "byzh", "byzv", "byzfw"


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the cluster (the message says why, in one line)."""


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise ClusterUnavailable(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r


class Cluster:
    """``hosts`` hosts on this machine (use as a context manager: torn down on exit, even when
    the body fails). ``addresses[i]`` is host i's address; ``hostfile`` lists them."""

    def __init__(self, hosts: int = 3, slots: list[int] | None = None) -> None:
        if not 1 <= hosts <= 9:
            raise ValueError("1 to 9 hosts")
        self.n = hosts
        self.slots = slots or [1] * hosts
        self.names = [f"node{i + 1}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{11 + i}" for i in range(hosts)]
        self.dir = ""
        self.hostfile = ""
        self.ssh = ""

    # -- set up and tear down ------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("needs root to make network namespaces")
        for tool in ("ip", "tc", "unshare", "ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise ClusterUnavailable(f"needs {tool} (iproute2, util-linux, openssh-client)")
        if not os.path.exists("/usr/sbin/sshd"):
            raise ClusterUnavailable("needs sshd: apt-get install openssh-server")
        _remove_leftovers()
        self.dir = tempfile.mkdtemp(prefix="byzcluster-")
        self._keys()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
        for i in range(self.n):
            self._host(i)
        with open(os.path.join(self.dir, "hostfile"), "w") as fh:
            fh.writelines(f"{a}:{s}\n" for a, s in zip(self.addresses, self.slots))
        self.hostfile = os.path.join(self.dir, "hostfile")
        self._wait_for_sshd()

    def _keys(self) -> None:
        d = self.dir
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/hostkey")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/id")
        shutil.copy(f"{d}/id.pub", f"{d}/authorized_keys")
        self.ssh = os.path.join(d, "ssh.sh")
        with open(self.ssh, "w") as fh:
            fh.write("#!/bin/sh\nexec ssh -i " + f"{d}/id" + " -o StrictHostKeyChecking=no "
                     "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR "
                     "-o ConnectTimeout=5 \"$@\"\n")
        os.chmod(self.ssh, 0o755)

    def _host(self, i: int) -> None:
        ns, veth, addr = f"{_NS}{i + 1}", f"{_VETH}{i + 1}", self.addresses[i]
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        conf = os.path.join(self.dir, f"sshd{i + 1}.conf")
        with open(conf, "w") as fh:
            fh.write(f"ListenAddress {addr}\nPort 22\nHostKey {self.dir}/hostkey\n"
                     f"AuthorizedKeysFile {self.dir}/authorized_keys\n"
                     "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
                     f"StrictModes no\nPidFile {self.dir}/sshd{i + 1}.pid\nMaxStartups 100\n"
                     # each host its own native-kernel cache, as machines without a shared home
                     f"SetEnv BYZROBUST_CACHE={self.cache_dir(i)}\n")
        _sh("ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
            f"hostname {self.names[i]} && exec /usr/sbin/sshd -f {conf} -E {self.dir}/sshd{i + 1}.log")

    def cache_dir(self, host: int) -> str:
        """Host ``host``'s native-kernel cache (``BYZROBUST_CACHE`` in its ssh sessions)."""
        return os.path.join(self.dir, f"cache-{self.names[host]}")

    def _wait_for_sshd(self, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        for addr in self.addresses:
            while self.run_on(addr, "true").returncode != 0:
                if time.time() > deadline:
                    raise ClusterUnavailable(f"sshd on {addr} did not answer")
                time.sleep(0.2)

    def down(self) -> None:
        """Kill every process of every host, remove the namespaces, links and files."""
        _remove_leftovers()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- use -------------------------------------------------------------------------------------
    def run_on(self, addr: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """``command`` through ssh on the host at ``addr``."""
        return subprocess.run([self.ssh, f"root@{addr}", command], capture_output=True,
                              text=True, timeout=timeout)

    def mpiexec(self, ranks: int, *args: str, hostfile: str | None = None) -> list[str]:
        """``mpiexec -f HOSTFILE`` over ssh with ``ranks`` ranks (filling each host's slots in
        hostfile order, rank 0 on the first) running ``args`` (e.g. python MPI_main.py ...);
        the proxies call back on the bridge's address.

        The hosts share this machine's kernel, so UCX's shared-memory transports would reach
        across them and no byte would cross a link: ``UCX_TLS=tcp,self`` keeps UCX to TCP between
        hosts, as between EC2 instances (ranks on one host still share memory through MPICH's
        own intra-node path)."""
        return ["mpiexec", "-f", hostfile or self.hostfile, "-launcher", "ssh",
                "-launcher-exec", self.ssh, "-iface", BRIDGE, "-genv", "MPICH_CH4_NETMOD", "ucx",
                "-genv", "UCX_TLS", "tcp,self", "-n", str(ranks), *args]

    def write_hostfile(self, path: str, hosts: list[int], slots: list[int]) -> str:
        """A hostfile of the hosts ``hosts`` (indices) with ``slots`` ranks each; returns path."""
        with open(path, "w") as fh:
            fh.writelines(f"{self.addresses[h]}:{s}\n" for h, s in zip(hosts, slots))
        return path

    def degrade(self, host: int, rate: str | None = None, loss: float | None = None) -> None:
        """Make host ``host``'s outgoing traffic slow (``rate``, e.g. ``16mbit``: tc tbf, so a
        message waits its size over the rate) and lossy (``loss`` percent of its TCP packets
        dropped at random: nftables); ``degrade(host)`` restores it. (A fixed delay would be tc
        netem, which this project's machines' kernel does not have.)"""
        ns = ["ip", "netns", "exec", f"{_NS}{host + 1}"]
        _sh(*ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        _sh(*ns, "nft", "delete", "table", "inet", "byzloss", check=False)
        if rate:
            _sh(*ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                "burst", "32kb", "latency", "10s")
        if loss:
            if shutil.which("nft") is None:
                raise ClusterUnavailable("needs nft for packet loss: apt-get install nftables")
            _sh(*ns, "nft", "add", "table", "inet", "byzloss")
            _sh(*ns, "nft", "add", "chain", "inet", "byzloss", "out",
                "{ type filter hook output priority 0; }")
            _sh(*ns, "nft", "add", "rule", "inet", "byzloss", "out", "meta", "l4proto", "tcp",
                "numgen", "random", "mod", "10000", "<", str(int(round(loss * 100))), "drop")

    def firewall(self, ports: str | None) -> None:
        """An EC2 security group in front of every host and this machine's end of the bridge:
        new TCP connections only to ``ports`` (an nftables set, e.g. ``22, 50000-50199``) are let
        in, replies always; None removes it."""
        for ns in [[]] + [["ip", "netns", "exec", f"{_NS}{i + 1}"] for i in range(self.n)]:
            iface = BRIDGE if not ns else "eth0"
            _sh(*ns, "nft", "delete", "table", "inet", _FIREWALL, check=False)
            if ports is None:
                continue
            if shutil.which("nft") is None:
                raise ClusterUnavailable("needs nft for a firewall: apt-get install nftables")
            _sh(*ns, "nft", "add", "table", "inet", _FIREWALL)
            _sh(*ns, "nft", "add", "chain", "inet", _FIREWALL, "in",
                "{ type filter hook input priority 0; policy accept; }")
            rule = ["nft", "add", "rule", "inet", _FIREWALL, "in", "iifname", iface]
            _sh(*ns, *rule, "ct", "state", "established,related", "accept")
            _sh(*ns, *rule, "tcp", "dport", "{ " + ports + " }", "accept")
            _sh(*ns, *rule, "meta", "l4proto", "tcp", "drop")

    def link(self, host: int, up: bool) -> None:
        """Set host ``host``'s link down (no packet in or out) or up again."""
        _sh("ip", "link", "set", f"{_VETH}{host + 1}", "up" if up else "down")

    def pids(self, host: int) -> list[int]:
        """Every process in host ``host``'s namespace but its sshd."""
        out = _sh("ip", "netns", "pids", f"{_NS}{host + 1}", check=False).stdout.split()
        keep = []
        for p in map(int, out):
            try:
                with open(f"/proc/{p}/comm") as fh:
                    if fh.read().strip() != "sshd":
                        keep.append(p)
            except OSError:
                pass
        return keep

    def kill(self, host: int, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process of host ``host`` but its sshd (a crashed host's job);
        returns their pids."""
        pids = self.pids(host)
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        return pids


def _remove_leftovers() -> None:
    """Remove whatever an earlier cluster left (processes, namespaces, links), by name."""
    names = _sh("ip", "netns", "list", check=False).stdout.split()
    for ns in [n for n in names if n.startswith(_NS)]:
        for p in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _sh("ip", "netns", "del", ns, check=False)
    if shutil.which("nft"):
        _sh("nft", "delete", "table", "inet", _FIREWALL, check=False)
    for line in _sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name == BRIDGE or name.startswith(_VETH):
            _sh("ip", "link", "del", name, check=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["down"]:
        _remove_leftovers()
        for d in glob.glob(os.path.join(tempfile.gettempdir(), "byzcluster-*")):
            shutil.rmtree(d, ignore_errors=True)
        return 0
    if argv[:1] != ["up"]:
        print("usage: python -m hosts.cluster up [HOSTS] | down", file=sys.stderr)
        return 2
    c = Cluster(int(argv[1]) if len(argv) > 1 else 3)
    try:
        c.up()
    except ClusterUnavailable as e:
        c.down()
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"hostfile: {c.hostfile}\nrun:      {' '.join(c.mpiexec(len(c.names)))} "
          f"{sys.executable} MPI_main.py ...\nssh:      {c.ssh} root@{c.addresses[0]}\n"
          "remove:   python -m hosts.cluster down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
