"""The Ray engine runs the same step functions as the local pool and makes the same corpus, byte for byte,
on a Ray that listens on the loopback address only and on a cluster of two nodes; a cluster that does
not answer is one sentence."""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autarky.data import curate as curate_module
from autarky.data import executor as executor_module
from autarky.data.curate import curate
from autarky.data.executor import ray_session
from tests.conftest import cli_env

ray = pytest.importorskip("ray")


def write_sources(src: Path) -> Path:
    """Ten documents, an exact copy of one and a near copy (two words of 120 changed) of another, in
    several tasks (with TASK_FILES at 3)."""
    rng = random.Random(5)
    src.mkdir()
    words = [f"w{i}" for i in range(800)]
    for i in range(10):
        (src / f"{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(120)))
    (src / "copy.txt").write_text((src / "3.txt").read_text())
    near = (src / "6.txt").read_text().split()
    near[30], near[90] = "changed", "words"
    (src / "near.txt").write_text(" ".join(near))
    return src


def test_ray_engine_matches_local_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(curate_module, "TASK_FILES", 3)  # several tasks, so Ray really spreads them
    src = write_sources(tmp_path / "src")
    local = curate([src], tmp_path / "local", workers=2)
    on_ray = curate([src], tmp_path / "ray", workers=2, engine="ray")
    assert on_ray.id == local.id
    assert on_ray.metrics["documents_kept"] == local.metrics["documents_kept"] == 10
    assert local.metrics["dropped"]["near_dedup"] == {"near_duplicate": 1}
    assert not ray.is_initialized()  # the local Ray it started is shut down again


@pytest.fixture
def two_nodes():
    """A Ray cluster of a head node and a worker node (two raylets, one CPU each), torn down even when
    the test fails; a skip, with Ray's reason, where Ray cannot start one here."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(num_cpus=1, include_dashboard=False, resources={"head": 1})
        cluster.add_node(num_cpus=1, resources={"worker": 1})
    except Exception as e:  # no shared memory, no ports, a sandbox: nothing to test on
        cluster.shutdown()
        pytest.skip(f"Ray cannot start a two-node cluster here: {e}")
    try:
        yield cluster
    finally:
        cluster.shutdown()


def where(_: int) -> str:
    time.sleep(1)  # long enough that two tasks run at once, one per node's one CPU
    return ray.get_runtime_context().get_node_id()


@pytest.mark.timeout(60)
def test_two_node_cluster_makes_the_local_pools_corpus(tmp_path, monkeypatch, two_nodes):
    """`--ray-address` of an existing cluster: its two nodes both run tasks, and the corpus is the one
    the local process pool makes, byte for byte, through the API and through the CLI."""
    monkeypatch.setattr(curate_module, "TASK_FILES", 3)
    src = write_sources(tmp_path / "src")
    with ray_session(2, two_nodes.address) as session:
        alive = [n for n in session.nodes() if n["Alive"]]
        assert [n["Resources"]["CPU"] for n in alive] == [1.0, 1.0]
        nodes = session.get([session.remote(num_cpus=1)(where).remote(i) for i in range(2)])
        assert len(set(nodes)) == 2  # one CPU each: two tasks at once run on two nodes
    assert not ray.is_initialized()
    local = curate([src], tmp_path / "local", workers=2)
    on_cluster = curate([src], tmp_path / "ray", workers=2, engine="ray", ray_address=two_nodes.address)
    assert on_cluster.id == local.id
    assert not ray.is_initialized()  # the run leaves the cluster, and leaves it running
    assert all(node.remaining_processes_alive() for node in two_nodes.list_all_nodes())
    # as a user runs it: the cluster's address is not loopback, so outside the network namespace
    command = ["--no-isolate", "curate", str(src), "--engine", "ray", "--ray-address", two_nodes.address]
    run = subprocess.run(
        [sys.executable, "-m", "autarky.cli", *command, "--json"],
        env=cli_env(tmp_path / "cli"),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["id"] == local.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_ray_address_that_does_not_answer_is_one_sentence(tmp_path, monkeypatch, capsys):
    """Reproduces issue 13's bad input: Ray retried a silent address for minutes. Now: one sentence,
    exit 2, no corpus and no staging left."""
    from autarky import cli

    monkeypatch.setattr(executor_module, "RAY_ANSWER_MS", 500)
    address = f"127.0.0.1:{free_port()}"
    src = write_sources(tmp_path / "src")
    work = tmp_path / "w"
    argv = ["autarky", "curate", str(src), "-w", str(work), "--engine", "ray", "--ray-address", address]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert time.perf_counter() - started < 30
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: no Ray cluster answers at {address}" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (work / "corpus").exists() or not any((work / "corpus").iterdir())
    assert not ray.is_initialized()


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
