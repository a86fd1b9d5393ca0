"""An unfinished run's state on disk, the checkpoint and the metrics log, read back as untrusted input.

The checkpoint is one safetensors file: the parameters as `model/<name>`, AdamW's state as
`optimizer/<name>/<key>`, and the step, elapsed seconds and config as JSON in its header. Nothing is
ever unpickled, so a planted file can at worst hold wrong numbers, and every name, shape and dtype
is checked against the model before any of it is used. The metrics log becomes part of the
artifact, so every line of it is checked too, but a last line torn by a kill is dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from autarky.console import UserError
from autarky.train.config import TrainConfig

CHECKPOINT = "checkpoint.safetensors"
PICKLED_CHECKPOINT = "checkpoint.pt"  # what autarky once wrote; never loaded, as unpickling runs code
HISTORY = "metrics.jsonl"
ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")
MUON_STATE = ("momentum_buffer",)


def state_keys(optimizer: torch.optim.Optimizer) -> dict[int, tuple[str, ...]]:
    """The state each parameter (by id) has once a step is taken: Muon's momentum, or AdamW's moments."""
    return {
        id(p): MUON_STATE if group.get("muon") else ADAMW_STATE
        for group in optimizer.param_groups
        for p in group["params"]
    }


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed: float,
    config: TrainConfig,
) -> None:
    """Write the model and optimizer state atomically (temp file, then rename)."""
    tensors = {}
    for name, p in model.named_parameters():
        tensors[f"model/{name}"] = p.detach().cpu()
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optimizer/{name}/{key}"] = value.detach().cpu()
    header = {"step": step, "elapsed": elapsed, "config": config.recipe()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"autarky": json.dumps(header)})
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[int, float]:
    """Check a checkpoint against the model and config, load it into both; return (step, elapsed seconds)."""
    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("autarky", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"the checkpoint {path} is damaged ({type(e).__name__}); delete the run directory or pass --force to start over"
        ) from e
    step, elapsed = _check_header(path, header, config)
    params = dict(model.named_parameters())
    expected = {f"model/{n}": (p.shape, p.dtype) for n, p in params.items()}
    keys = state_keys(optimizer)
    if step > 0:  # the optimizer has state for every parameter once a step is taken
        for n, p in params.items():
            for k in keys.get(id(p), ()):
                expected[f"optimizer/{n}/{k}"] = (
                    (torch.Size([]), torch.float32) if k == "step" else (p.shape, p.dtype)
                )
    _check_tensors(path, tensors, expected)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"model/{n}"])
    if step > 0:
        names = {id(p): n for n, p in params.items()}
        state = optimizer.state_dict()
        ordered = [p for group in optimizer.param_groups for p in group["params"]]
        state["state"] = {
            i: {k: tensors[f"optimizer/{names[id(p)]}/{k}"] for k in keys[id(p)]}
            for i, p in enumerate(ordered)
        }
        optimizer.load_state_dict(state)
    return step, elapsed


def _check_header(path: Path, header, config: TrainConfig) -> tuple[int, float]:
    step, elapsed = (header.get("step"), header.get("elapsed")) if isinstance(header, dict) else (None, None)
    if (
        type(step) is not int
        or not 0 <= step <= (config.max_steps if config.max_steps is not None else step)
        or type(elapsed) not in (int, float)
        or not 0 <= elapsed < math.inf
        or not isinstance(header.get("config"), dict)
    ):
        raise UserError(
            f"the checkpoint {path} has no valid step, time and config; delete the run directory or pass --force to start over"
        )
    if differences := changed_settings(header["config"], config.recipe()):
        raise UserError(
            f"cannot resume {path.parent}: the config changed: {', '.join(differences)}; "
            "resume with the same settings (then train the finished model more with --init), "
            "or pass --force to start over"
        )
    return step, float(elapsed)


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict) -> None:
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    wrong = [
        k for k in expected.keys() & tensors.keys() if (tensors[k].shape, tensors[k].dtype) != expected[k]
    ]
    if missing or unexpected or wrong:
        raise UserError(
            f"the checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape or dtype {sorted(wrong)[:3]}); pass --force to start over"
        )


class Interrupted(KeyboardInterrupt):
    """A run the user stopped: its run directory, and the step its checkpoint holds (None: none yet)."""

    def __init__(self, run_dir: Path, step: int | None):
        super().__init__(f"interrupted; checkpoint at step {step} in {run_dir}")
        self.run_dir, self.step = run_dir, step


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint holds, from its header alone; None when there is none to resume from."""
    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("autarky", "null"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    step = header.get("step") if isinstance(header, dict) else None
    return step if type(step) is int else None


def changed_settings(old: dict, new: dict) -> list[str]:
    return [f"{k} ({old.get(k)} → {new.get(k)})" for k in new if old.get(k) != new.get(k)]


def read_history(path: Path, up_to_step: int) -> list[dict]:
    """The run's records up to `up_to_step`, its checkpoint's step.

    Each record is written as one line ending in a newline, so a last line without one was torn by
    a kill; it is past the checkpoint, and is dropped. Any other line that is no record is refused.
    """
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not _is_record(record):
            raise UserError(f"line {number} of {path} is no training record; pass --force to start over")
        if record["step"] <= up_to_step:
            records.append(record)
    if [r["step"] for r in records if "loss" in r] != list(range(1, up_to_step + 1)):
        raise UserError(
            f"{path} does not match the checkpoint at step {up_to_step}; pass --force to start over"
        )
    return records


def _is_record(record) -> bool:
    return (
        isinstance(record, dict)
        and type(record.get("step")) is int
        and record["step"] >= 0
        and all(type(v) in (int, float) for v in record.values())
    )


def history_log(run_dir: Path, history: list[dict]):
    """Rewrite the run's `metrics.jsonl` as `history` (a resumed run drops what came after its
    checkpoint) and return the callback `fit` appends its records with."""
    from autarky.artifact import write_atomic

    path = run_dir / HISTORY
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in history))

    def log(records: list[dict]) -> None:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    return log
