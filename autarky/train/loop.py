"""The training loop, with its one step inline: what every recipe that trains a model runs.

`fit` knows nothing of artifacts or token files. It takes a model, its optimizer, `batches(step,
micro)` giving the inputs and targets of one micro-batch, `evaluate()` giving validation numbers,
the config, and callbacks that keep the records and the checkpoints; pretraining passes its own, a
chat fine-tune (masked targets) or a distributed run would pass theirs. Batches must be a pure
function of (step, micro) and the schedule is a pure function of progress, so a run resumed from a
checkpoint takes the very steps of one never interrupted.

The host waits for the device only at a sync point (every `LOG_INTERVAL` steps, an evaluation, a
checkpoint, the last step): losses and gradient norms stay tensors until then, and the next
micro-batch is fetched while the device works on the current one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from autarky.console import progress as progress_bar
from autarky.train.config import TrainConfig, lr_at

LOG_INTERVAL = 10
STEP_KEYS = ("step", "loss", "lr", "grad_norm")  # what a step logs; anything else came from `evaluate`

Batches = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Progress:
    """Where a run stands: the step reached, seconds spent (resumed sessions included), every record
    logged, and this session's training speed (evaluation and checkpoints excluded)."""

    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float | None = None


def run_metrics(progress: Progress, config: TrainConfig) -> dict:
    """What every trained model's manifest reports of its run (the last step is always evaluated)."""
    train_losses = [h["loss"] for h in progress.history if "loss" in h]
    evaluations = [h for h in progress.history if "val_loss" in h]
    return {
        "tokens_seen": progress.step * config.batch_size * config.seq_len * config.grad_accum,
        "train_seconds": round(progress.elapsed, 2),
        "tokens_per_s": round(progress.tokens_per_s, 1) if progress.tokens_per_s else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "initial_val_loss": evaluations[0]["val_loss"],
        "val_loss": evaluations[-1]["val_loss"],
        "val_bpb": evaluations[-1]["val_bpb"],
    }


def autocast_for(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A context factory for the forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    evaluate: Callable[[], dict[str, float]],
    config: TrainConfig,
    progress: Progress,
    log: Callable[[list[dict]], None] = lambda records: None,
    checkpoint: Callable[[int, float], None] = lambda step, elapsed: None,
) -> Progress:
    """Train from `progress` until `config.max_steps` or the `config.minutes` budget; return where it ended.

    The last step is no special case (nanochat's `last_step`): the loop top evaluates, logs and
    checkpoints whenever due, the last step included, and only then leaves or takes a step.
    """
    device = next(model.parameters()).device
    autocast = autocast_for(config.precision, device)
    budget = config.minutes * 60 if config.minutes else None
    first, step, history = progress.step, progress.step, progress.history
    start, paused, tokens, rate = time.perf_counter(), 0.0, 0, 0.0
    elapsed = lambda: progress.elapsed + time.perf_counter() - start  # noqa: E731
    fraction = lambda s: max(s / config.max_steps, elapsed() / budget if budget else 0.0)  # noqa: E731
    # A resumed run whose checkpoint step was evaluated before the kill is not evaluated again.
    evaluated = bool(history) and history[-1]["step"] == step and any(k not in STEP_KEYS for k in history[-1])
    pending, trained = [], {}
    x, y = batches(step, 0)
    with progress_bar() as bar:
        task = bar.add_task("train", total=config.max_steps, completed=step)
        while True:
            last_step = step >= config.max_steps or fraction(step) >= 1.0
            pending.append({"step": step, **trained})
            evaluate_now = (last_step or step % config.eval_interval == 0) and not (
                evaluated and step == first
            )
            save_now = step > first and (last_step or step % config.checkpoint_interval == 0)
            if evaluate_now or save_now or last_step or step % LOG_INTERVAL == 0:
                records = read_back(pending)  # the host waits for the device here, and only here
                pause = time.perf_counter()
                rate = tokens / max(pause - start - paused, 1e-9)
                if evaluate_now:
                    records[-1].update(evaluate())
                pending = [r for r in records if len(r) > 1]
                history.extend(pending)
                log(pending)
                if save_now:
                    checkpoint(step, elapsed())
                if "loss" in records[-1]:
                    bar.update(task, description=f"train loss {records[-1]['loss']:.3f} · {rate:,.0f} tok/s")
                pending = []
                paused += time.perf_counter() - pause
            if last_step:
                break

            lr = lr_at(config, step, fraction(step))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                with autocast():
                    _, loss = model(x, y)
                tokens += x.numel()
                # Fetch the next micro-batch while the device computes this one's backward pass.
                x, y = batches(step, micro + 1) if micro + 1 < config.grad_accum else batches(step + 1, 0)
                (loss / config.grad_accum).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            trained = {"loss": loss_sum / config.grad_accum, "lr": lr, "grad_norm": grad_norm}
            step += 1
            total = (
                config.max_steps
                if not budget
                else min(config.max_steps, max(step, round(step / fraction(step))))
            )
            bar.update(task, completed=step, total=total)
    return Progress(step, elapsed(), history, rate if tokens else None)


def read_back(records: list[dict]) -> list[dict]:
    """The records with their tensors turned into numbers in one transfer from the device."""
    tensors = [v for r in records for v in r.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{k: next(values) if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in records]
