"""Training across processes: torchrun's ranks, each its slice of every step's rows, one writer.

`torchrun --nproc-per-node N -m autarky train ...` starts N copies of the verb; each reads RANK,
WORLD_SIZE and LOCAL_RANK here and joins one process group (gloo on CPU, nccl on CUDA). The global
batch stays the single-process one: a step's batch_size × grad_accum rows are cut into equal
contiguous slices, one per rank, so the ranks' gradients averaged (DDP, or FSDP2's reduce-scatter
with `--shard`) are the one process's gradient. The loss logged is the mean over ranks, the
gradient norm the global one, and anything decided by the clock (a --minutes budget, a checkpoint
by time, Ctrl-C) is agreed across ranks, so every rank takes the same steps.

Rank 0 alone settles the run directory, writes the metrics log and seals the artifact; the others
wait for it and return the same artifact (their console is quiet). A checkpoint of a distributed
run is a directory of safetensors shards written together by every rank through
torch.distributed.checkpoint (DCP), named as the single-process file's tensors are (`model/<name>`,
`optimizer/<name>/<key>`), with its step, time and recipe in a JSON header: any world size, one
process included, reads it back, resharded to its own layout, and nothing is ever unpickled (DCP's
own format pickles its metadata; its Hugging Face storage is safetensors and JSON).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from torch import nn

from autarky.console import UserError, console, out
from autarky.machine import best_device
from autarky.offline import is_local
from autarky.train.checkpoint import CHECKPOINT, _check_header, load_checkpoint, save_checkpoint
from autarky.train.config import TrainConfig

CHECKPOINT_DIR = "checkpoint.dcp"  # a distributed run's checkpoint, beside the single-process file
STAGING, RETIRED = ".checkpoint.dcp.tmp", ".checkpoint.dcp.old"
HEADER = "header.json"
CHECKPOINTS = (CHECKPOINT, CHECKPOINT_DIR, RETIRED)  # what a resumable run directory keeps

RowBatches = Callable[[int, int, slice], tuple[torch.Tensor, torch.Tensor]]


def launched_world() -> int:
    """How many processes torchrun started for this run (1 when it was not started by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Group:
    """This process's place in the run: its rank, the world size, its device and its share of a step."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    shard: bool = False
    rows: int = 1  # rows of each micro-batch this process computes
    micro_batches: int = 1  # micro-batches it computes per optimizer step
    batch_size: int = 1  # the single-process micro-batch its slices are cut from
    control: object = None  # a gloo group for the CPU-side flags (the default group on CPU)
    wrapped: nn.Module | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def batches(self, batches: RowBatches) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """`fit`'s batches for this rank: local micro-batch j of a step is a slice of one global one."""
        if not self.distributed:
            return batches  # all rows: its `rows` argument keeps its default

        def local(step: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
            first = (self.rank * self.micro_batches + j) * self.rows  # the step's rows, micro-batch major
            at = first % self.batch_size
            return batches(step, first // self.batch_size, slice(at, at + self.rows))

        return local

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module `fit` trains: the model itself, DDP around it, or the model sharded in place
        (FSDP2: each block, then the rest)."""
        if not self.distributed:
            self.wrapped = model
        elif self.shard:
            from torch.distributed.fsdp import fully_shard

            inner = getattr(model, "lm", model)
            for block in inner.model.layers:
                fully_shard(block)
            fully_shard(model)
            self.wrapped = model
        else:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        return self.wrapped

    def sync(self, last: bool) -> AbstractContextManager:
        """Around a micro-batch: gradients are averaged across ranks on the step's last one only."""
        if not self.distributed or last:
            if self.shard and self.distributed:
                self.wrapped.set_requires_gradient_sync(True)
            return nullcontext()
        if self.shard:
            self.wrapped.set_requires_gradient_sync(False)
            return nullcontext()
        return self.wrapped.no_sync()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a per-rank number (each rank's loss on its equal share)."""
        return self.total(value) / self.world if self.distributed else value

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a per-rank number."""
        if not self.distributed:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def whole(self, value: torch.Tensor) -> torch.Tensor:
        """A plain tensor of a sharded result (FSDP's global gradient norm is a DTensor)."""
        return value.full_tensor() if hasattr(value, "full_tensor") else value

    def agree(self, *values: float) -> list[float]:
        """Each value's maximum over ranks, so a clock, a Ctrl-C or a due checkpoint that one rank
        sees, all act on (over the CPU-side group: no wait for the device)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def first(self, work: Callable[[], object]) -> object:
        """Run `work` on rank 0 alone and give every rank its result, or its error: the one
        sentence of a UserError, which only rank 0 prints."""
        if not self.distributed:
            return work()
        outcome: list = [None]
        if self.main:
            try:
                outcome = [("ok", work())]
            except UserError as e:
                outcome = [("user", str(e))]
                dist.broadcast_object_list(outcome, src=0, group=self.control)
                raise
            except BaseException as e:
                outcome = [("failed", f"{type(e).__name__}: {e}")]
                dist.broadcast_object_list(outcome, src=0, group=self.control)
                raise
        dist.broadcast_object_list(outcome, src=0, group=self.control)
        kind, value = outcome[0]
        if kind == "user":
            raise UserError(value)
        if kind == "failed":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def gathered(self, model: nn.Module) -> nn.Module | None:
        """The whole model on rank 0, to seal: a sharded one is gathered (every rank takes part)."""
        if not (self.distributed and self.shard):
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        # the root: sft wraps its own module around the model
        state = get_model_state_dict(self.wrapped, options=options)
        if not self.main:
            return None
        from autarky.model import build_model

        whole = build_model(model.config)
        whole.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
        return whole


@contextmanager
def launched(config: TrainConfig) -> Iterator[Group]:
    """The process group torchrun asked for (none for one process), torn down when the run ends."""
    world, shard = launched_world(), getattr(config, "shard", False)
    if world == 1:
        if shard:
            raise UserError(
                "--shard splits the model across processes, and this run is one process; start it with "
                "`torchrun --nproc-per-node N -m autarky ...` (N ≥ 2), or leave --shard off"
            )
        yield Group(device=best_device(), rows=config.batch_size, micro_batches=config.grad_accum)
        return
    per_step = config.batch_size * config.grad_accum
    if per_step % world:
        raise UserError(
            f"{world} processes cannot share a step of {per_step} rows (--batch-size {config.batch_size} × "
            f"--grad-accum {config.grad_accum}) equally; choose a world size that divides it, or another --batch-size"
        )
    if shard and getattr(config, "optimizer", "adamw") == "muon":
        raise UserError(
            "--optimizer muon needs whole matrices, and --shard splits them; use adamw with --shard"
        )
    yield from _joined(config, world, shard, per_step // world)


def _joined(config: TrainConfig, world: int, shard: bool, share: int) -> Iterator[Group]:
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if is_local(os.environ.get("MASTER_ADDR", "127.0.0.1")):
        # One machine: the collectives stay on loopback rather than the address the hostname names.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    if rank != 0:
        console.quiet = out.quiet = True  # rank 0 speaks for the run
    try:
        rows = math.gcd(share, config.batch_size)  # a local micro-batch never spans two global ones
        yield Group(
            rank=rank,
            world=world,
            device=device,
            shard=shard,
            rows=rows,
            micro_batches=share // rows,
            batch_size=config.batch_size,
            control=dist.new_group(backend="gloo") if cuda else None,
        )
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ checkpoints at any world size


def _tensors(module: nn.Module, optimizer: torch.optim.Optimizer, with_optimizer: bool) -> dict:
    """The checkpoint's tensors under the single-process file's names: this rank's shards of them."""
    module = getattr(module, "module", module)  # DDP's wrapped module keeps the names
    flat = {}
    for name, p in module.named_parameters():
        flat[f"model/{name}"] = p.detach()
        if with_optimizer:
            for key, value in optimizer.state.get(p, {}).items():
                flat[f"optimizer/{name}/{key}"] = value
    return flat


def save(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed: float,
    config: TrainConfig,
    group: Group,
) -> None:
    """One process writes the safetensors file as ever; several write one DCP directory together,
    staged and then renamed, so a kill leaves the last whole checkpoint."""
    if not group.distributed:
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, step, elapsed, config)
        for stale in (CHECKPOINT_DIR, RETIRED):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    staging = run_dir / STAGING
    if group.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    group.barrier()
    writer = HuggingFaceStorageWriter(str(staging), save_distributed=True)
    dcp.save(_tensors(model, optimizer, True), storage_writer=writer)
    if group.main:
        header = {"step": step, "elapsed": elapsed, "config": config.recipe(), "world_size": group.world}
        (staging / HEADER).write_text(json.dumps(header))
        if (run_dir / CHECKPOINT_DIR).exists():
            os.replace(run_dir / CHECKPOINT_DIR, run_dir / RETIRED)
        os.replace(staging, run_dir / CHECKPOINT_DIR)
        shutil.rmtree(run_dir / RETIRED, ignore_errors=True)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    group.barrier()


def _header(path: Path) -> dict | None:
    """A checkpoint's header (step, elapsed, recipe), from the DCP directory's JSON or the file's metadata."""
    try:
        if path.is_dir():
            return json.loads((path / HEADER).read_text())
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("autarky", "null"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def latest(run_dir: Path) -> Path | None:
    """The checkpoint a resume starts from: the one at the later step, where a kill left two."""
    found = [
        (h["step"], p)
        for p in (run_dir / CHECKPOINT, run_dir / CHECKPOINT_DIR, run_dir / RETIRED)
        if p.exists() and isinstance(h := _header(p), dict) and type(h.get("step")) is int
    ]
    if not found:
        # damaged: the single-process loader says so in one sentence
        return run_dir / CHECKPOINT if (run_dir / CHECKPOINT).exists() else None
    return max(found, key=lambda f: f[0])[1]


def saved_step(run_dir: Path) -> int | None:
    """The step the run directory's checkpoint holds; None when there is none to resume from."""
    path = latest(run_dir)
    header = _header(path) if path else None
    return header.get("step") if isinstance(header, dict) and type(header.get("step")) is int else None


def load(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, group: Group
) -> tuple[int, float] | None:
    """Resume from the run directory's checkpoint, whichever world size wrote it: (step, elapsed)."""
    path = latest(run_dir)
    if path is None:
        return None
    if path.name == CHECKPOINT and not group.distributed:
        return load_checkpoint(path, model, optimizer, config)
    step, elapsed = _check_header(path, _header(path), config)
    if step > 0:
        _start_state(model, optimizer)
    wanted = _tensors(model, optimizer, step > 0)
    _read_into(path, wanted)
    return step, elapsed


def _start_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Give the optimizer its state tensors (a step of zero size on zero gradients), to load into."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    rates = [g["lr"] for g in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, rates, strict=True):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def _read_into(path: Path, wanted: dict[str, torch.Tensor]) -> None:
    """Check the checkpoint's names, shapes and dtypes against `wanted`, then read it in place,
    each rank its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reader = HuggingFaceStorageReader(str(path if path.is_dir() else path.parent))
    try:
        stored = reader.read_metadata().state_dict_metadata
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(
            f"the checkpoint {path} is damaged ({type(e).__name__}); delete the run directory or pass --force to start over"
        ) from e
    stored = {k: v for k, v in stored.items() if path.is_dir() or k.startswith(("model/", "optimizer/"))}
    missing, unexpected = sorted(wanted.keys() - stored.keys()), sorted(stored.keys() - wanted.keys())
    wrong = sorted(
        k
        for k in wanted.keys() & stored.keys()
        if (tuple(stored[k].size), stored[k].properties.dtype) != (tuple(wanted[k].shape), wanted[k].dtype)
    )
    if missing or unexpected or wrong:
        raise UserError(
            f"the checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape or dtype {wrong[:3]}); pass --force to start over"
        )
    try:
        with warnings.catch_warnings():  # one process reading a checkpoint several wrote is meant
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(wanted, storage_reader=reader)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"the checkpoint {path} is damaged ({type(e).__name__}); delete the run directory or pass --force to start over"
        ) from e
