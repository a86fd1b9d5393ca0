"""The Ray engine runs the same step functions as the local pool and makes the same corpus, byte for byte,
on a Ray that listens on the loopback address only."""

from __future__ import annotations

import glob
import ipaddress
import os
import random

import pytest

from autarky.data import curate as curate_module
from autarky.data.curate import curate
from autarky.data.executor import ray_session

ray = pytest.importorskip("ray")


def test_ray_engine_matches_local_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(curate_module, "TASK_FILES", 3)  # several tasks, so Ray really spreads them
    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    words = [f"w{i}" for i in range(800)]
    for i in range(10):
        (src / f"{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(120)))
    (src / "copy.txt").write_text((src / "3.txt").read_text())
    local = curate([src], tmp_path / "local", workers=2)
    on_ray = curate([src], tmp_path / "ray", workers=2, engine="ray")
    assert on_ray.id == local.id
    assert on_ray.metrics["documents_kept"] == local.metrics["documents_kept"] == 10
    assert not ray.is_initialized()  # the local Ray it started is shut down again


def listening_addresses(pids: set[int]) -> list[str]:
    """The addresses TCP sockets of these processes listen on, from /proc."""
    inodes = set()
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
                addresses.append(str(ipaddress.ip_address(words)))
    return addresses


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def descendants(root: int) -> set[int]:
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            parents[int(stat.split("/")[2])] = int(open(stat).read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return tree


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads listening sockets from Linux's /proc")
def test_local_ray_listens_on_loopback_only_and_ignores_ray_address(monkeypatch):
    """Reproduces issue 8.3 on a real Ray: its GCS, raylet, workers and agents listened on all
    interfaces (0.0.0.0 / ::), and $RAY_ADDRESS sent the run to whatever cluster it named."""
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.1:6379")  # TEST-NET-1: nothing there; must not be tried
    with ray_session(1) as session:
        assert session.get(session.remote(lambda: 7).remote()) == 7
        addresses = listening_addresses(descendants(os.getpid()))
    assert addresses, "found no Ray server sockets to check"
    assert all(is_loopback(a) for a in addresses), addresses
    assert not ray.is_initialized()
