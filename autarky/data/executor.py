"""Where a run's tasks execute: in this process, a local process pool, or Ray. The steps never know which.

An executor takes a picklable function and a list of tasks and returns the function's results in
task order, calling `on_done(task)` as each finishes; which engine ran them changes how fast, never
what is made, so none of this enters a recipe. Ray starts here bound to the loopback address, and
reaches another machine only when the run names its address: an environment variable left set by
someone else (`$RAY_ADDRESS`) never sends a corpus elsewhere.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from autarky.console import UserError
from autarky.machine import available_cores

ENGINES = ("local", "ray")
# Ray's own switch for a one-machine Ray: with it off, the node's address is 127.0.0.1 and every
# Ray server (GCS, raylet, workers, agents) listens there rather than on all interfaces.
RAY_LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_ANSWER_MS = 2000  # how long a named cluster's GCS has to answer (Ray adds ~10 s of its own retries)


@dataclass
class Executor:
    """How a run is spread over processes and machines."""

    engine: str = field(default="local", metadata={"help": "local (a process pool on this machine) or ray."})
    workers: int = field(
        default=0, metadata={"help": "Worker processes, 1 or more (0: every core this process may use)."}
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "With --engine ray: the Ray cluster to run on (host:port or ray://host:port). "
            "Default: a Ray started on this machine, listening on 127.0.0.1 only; $RAY_ADDRESS is ignored."
        },
    )

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise UserError(f"--engine is one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.workers < 0:
            raise UserError(f"--workers must be 1 or more, not {self.workers}")
        if self.ray_address and self.engine != "ray":
            raise UserError("--ray-address needs --engine ray")

    def run(self, fn: Callable[[Any], Any], tasks: Sequence, on_done: Callable[[Any], None]) -> list:
        """`fn(task)` for every task, results in task order; `on_done(task)` as each finishes."""
        self.validate()
        workers = self.workers or available_cores()
        if self.engine == "ray":
            return run_ray(fn, tasks, workers, on_done, self.ray_address)
        return run_local(fn, tasks, workers, on_done)


def run_local(fn: Callable, tasks: Sequence, workers: int, on_done: Callable) -> list:
    """In a process pool on this machine; inline, without one, for one worker or one task.

    This process is one of the workers: the pool's `workers - 1` processes take tasks from the
    front, this one from the back, until they meet. Left to wait, it would leave a core idle, and
    the pool's processes each spend their first half second starting up, which this one has done.
    """
    results: list = [None] * len(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            results[i] = fn(task)
            on_done(task)
        return results
    # forkserver: workers must not inherit the progress bar's thread or a half-held lock.
    pool = ProcessPoolExecutor(max_workers=workers - 1, mp_context=get_context("forkserver"))
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()  # indices of futures done (or cancelled)
    futures = [pool.submit(fn, task) for task in tasks]
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _, i=i: finished.put(i))
    left = set(range(len(tasks)))  # not yet returned, by the pool or by this process

    def collect(block: bool) -> None:
        """What the pool has finished: waiting for one with `block`, else only those already done."""
        while left and (block or not finished.empty()):
            i = finished.get()
            if i in left and not futures[i].cancelled():
                results[i] = futures[i].result()
                left.discard(i)
                on_done(tasks[i])
            block = False

    try:
        for i in reversed(range(len(tasks))):
            if not futures[i].cancel():  # the pool has started it, and every one before it
                break
            results[i] = fn(tasks[i])
            left.discard(i)
            on_done(tasks[i])
            collect(block=False)
        while left:
            collect(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def run_ray(fn: Callable, tasks: Sequence, workers: int, on_done: Callable, address: str = "") -> list:
    """The same function as Ray tasks, one CPU each.

    On a cluster, what the tasks read and write (sources, the staging directory) must be on storage
    every node sees (NFS, a shared mount).
    """
    with ray_session(workers, address) as ray:
        remote = ray.remote(num_cpus=1)(fn)
        pending = {remote.remote(task): i for i, task in enumerate(tasks)}
        results: list = [None] * len(tasks)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                results[i] = ray.get(ref)
                on_done(tasks[i])
        return results


@contextmanager
def ray_session(workers: int, address: str = "") -> Iterator[Any]:
    """Ray for one run: the cluster at `address` when one is named, else a Ray of `workers` CPUs started
    here on 127.0.0.1 and shut down after. A Ray this process already runs is used as it is."""
    try:
        import ray
    except ImportError as e:
        raise UserError("--engine ray needs Ray: pip install 'autarky[cluster]'") from e
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry: nothing leaves the building
    if ray.is_initialized():
        yield ray
        return
    if address:
        _check_answers(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as e:  # another Ray or Python version, a cluster going down
            reason = " ".join(str(e).split())[:300] or type(e).__name__  # Ray's lines, as one
            raise UserError(f"the Ray cluster at {address} did not take this run: {reason}") from None
    else:
        _start_loopback_ray(ray, workers)
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_answers(address: str) -> None:
    """A `UserError` within seconds when no Ray cluster answers at `address`, where `ray.init` would retry
    for minutes. It asks as `ray.init` does (Ray's own GCS client), so it reaches what Ray reaches.
    A Ray Client address (ray://) is left to Ray."""
    from ray import _raylet

    standalone = getattr(getattr(_raylet, "InnerGcsClient", None), "standalone", None)
    if address.startswith("ray://") or standalone is None:
        return
    with _quiet_stderr():  # Ray's C++ client logs every failed try there
        try:
            standalone(address, None, RAY_ANSWER_MS)
        except Exception as e:  # ray.exceptions.RpcError, or a malformed address
            reason = str(e).rstrip(".") or type(e).__name__
            raise UserError(f"no Ray cluster answers at {address} ({reason}){_namespace_hint()}") from None


def _namespace_hint() -> str:
    from autarky import offline

    if offline.network_mode() != offline.NAMESPACE:
        return ""
    return (
        "; this command runs in a network namespace with loopback only, "
        "so a cluster on another machine or on the host is reached with autarky --no-isolate curate ..."
    )


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while (native code writes there, not to sys.stderr)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _start_loopback_ray(ray: Any, workers: int) -> None:
    """A new local Ray (`address="local"`: never $RAY_ADDRESS) whose servers all listen on 127.0.0.1.

    `ray.init` turns a `_node_ip_address` of 127.0.0.1 into the machine's outward address, so the
    loopback flag is set instead: in the environment the Ray processes inherit, and in Ray's constant
    in case Ray was imported before it. Both are restored once Ray is up.
    """
    from ray._private import ray_constants

    saved_env, saved_constant = os.environ.get(RAY_LOOPBACK_FLAG), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_LOOPBACK_FLAG], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(RAY_LOOPBACK_FLAG, None)
        else:
            os.environ[RAY_LOOPBACK_FLAG] = saved_env
