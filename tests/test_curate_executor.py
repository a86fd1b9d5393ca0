"""The executors run any function over tasks, results in task order; Ray starts on the loopback address
and goes elsewhere only when the run names an address. (The real Ray runs in test_curate_ray.py.)"""

from __future__ import annotations

import os
import sys
import types

import pytest

from autarky.console import UserError
from autarky.data.executor import RAY_LOOPBACK_FLAG, Executor, ray_session, run_local


def square(x: int) -> int:
    return x * x


def test_local_executor_returns_results_in_task_order():
    done = []
    assert run_local(square, [3, 1, 2, 5], 1, done.append) == [9, 1, 4, 25]
    assert done == [3, 1, 2, 5]
    assert Executor(workers=1).run(square, [4], done.append) == [16]


def test_executor_settings_are_checked():
    for bad, message in [
        (Executor(engine="spark"), "--engine"),
        (Executor(workers=-1), "--workers"),
        (Executor(ray_address="10.0.0.5:6379"), "--ray-address needs --engine ray"),
    ]:
        with pytest.raises(UserError, match=message):
            bad.validate()


def fake_ray(monkeypatch) -> tuple[dict, types.SimpleNamespace]:
    """A stand-in `ray` module that records how it is started."""
    calls: dict = {}
    constants = types.SimpleNamespace(ENABLE_RAY_CLUSTER=True)
    private = types.ModuleType("ray._private")
    private.ray_constants = constants
    raylet = types.ModuleType("ray._raylet")
    raylet.InnerGcsClient = types.SimpleNamespace(
        standalone=lambda address, cluster_id, timeout_ms: calls.update(asked=(address, timeout_ms))
    )
    ray = types.ModuleType("ray")
    ray._private, ray._raylet = private, raylet
    state = {"up": False}

    def init(**kwargs):
        calls["init"] = kwargs
        calls["loopback"] = (os.environ.get(RAY_LOOPBACK_FLAG), constants.ENABLE_RAY_CLUSTER)
        state["up"] = True

    ray.init, ray.is_initialized = init, lambda: state["up"]
    ray.shutdown = lambda: state.update(up=False)
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray._private", private)
    monkeypatch.setitem(sys.modules, "ray._raylet", raylet)
    monkeypatch.setitem(sys.modules, "ray._private.ray_constants", constants)
    return calls, constants


def test_ray_starts_on_loopback_and_ignores_ray_address(monkeypatch):
    """Reproduces issue 8.3: `curate --engine ray` followed $RAY_ADDRESS and started Ray services
    listening on all interfaces. A local Ray is now a new one (`address="local"`, which Ray never
    replaces with $RAY_ADDRESS), without a dashboard, with Ray's loopback switch on while it starts;
    another cluster is reached only through an address the run names."""
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")
    monkeypatch.delenv(RAY_LOOPBACK_FLAG, raising=False)
    calls, constants = fake_ray(monkeypatch)
    with ray_session(3) as ray:
        assert ray.is_initialized()
    started = calls["init"]
    assert started["address"] == "local" and started["num_cpus"] == 3
    assert started["include_dashboard"] is False
    assert calls["loopback"] == ("0", False)  # every Ray server binds 127.0.0.1
    assert constants.ENABLE_RAY_CLUSTER is True and RAY_LOOPBACK_FLAG not in os.environ  # restored
    assert "asked" not in calls  # a Ray of its own is not probed
    with ray_session(3, "10.0.0.5:6379"):
        pass
    assert calls["init"]["address"] == "10.0.0.5:6379"
    assert calls["asked"] == ("10.0.0.5:6379", 2000)  # asked first whether it answers, in seconds


def test_a_cluster_that_refuses_the_run_is_one_sentence(monkeypatch):
    """Ray's many-line refusal (another Ray or Python version) is one sentence, not a traceback."""
    fake_ray(monkeypatch)
    ray = sys.modules["ray"]

    def refuse(**kwargs):
        raise RuntimeError(
            "Version mismatch: The cluster was started with:\n    Ray: 2.9.0\n    Python: 3.10"
        )

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UserError) as refused, ray_session(3, "10.0.0.5:6379"):
        pass
    assert str(refused.value) == (
        "the Ray cluster at 10.0.0.5:6379 did not take this run: "
        "Version mismatch: The cluster was started with: Ray: 2.9.0 Python: 3.10"
    )
