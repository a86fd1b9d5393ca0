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

import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from rich.progress import Progress as ProgressBar
from torch import nn

from autarky.console import console
from autarky.console import progress as progress_bar
from autarky.machine import training_precision
from autarky.train.config import TrainConfig, lr_at
from autarky.train.distributed import Group
from autarky.train.plan import estimate

LOG_INTERVAL = 10
STEP_KEYS = ("step", "loss", "lr", "grad_norm")  # what a step logs (with mtp_loss_k); the rest: `evaluate`

Batches = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Progress:
    """Where a run stands: the step reached, seconds spent (resumed sessions included), every record
    logged, and this session's training speed (evaluation and checkpoints excluded)."""

    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float | None = None
    processes: int = 1  # how many trained together in this session (torchrun's world size)


def run_metrics(progress: Progress, config: TrainConfig) -> dict:
    """What every trained model's manifest reports of its run (the last step is always evaluated)."""
    train_losses = [h["loss"] for h in progress.history if "loss" in h]
    last = next((h for h in reversed(progress.history) if "loss" in h), {})
    evaluations = [h for h in progress.history if "val_loss" in h]
    return {
        "tokens_seen": progress.step * config.batch_size * config.seq_len * config.grad_accum,
        "train_seconds": round(progress.elapsed, 2),
        "tokens_per_s": round(progress.tokens_per_s, 1) if progress.tokens_per_s else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "initial_val_loss": evaluations[0]["val_loss"],
        "val_loss": evaluations[-1]["val_loss"],
        "val_bpb": evaluations[-1]["val_bpb"],
        **{f"final_{k}": v for k, v in last.items() if k.startswith("mtp_loss_")},
        **({"processes": progress.processes} if progress.processes > 1 else {}),
    }


def settle_precision(config: TrainConfig) -> None:
    """Make `--precision auto` concrete for this machine before the recipe is hashed, so the
    manifest names what was computed, and say why."""
    if config.precision == "auto":
        config.precision, why = training_precision("auto")
        console.print(f"precision {config.precision}: {why} (--precision fp32 or bf16 forces one)")


def autocast_for(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A context factory for the forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def compiled_for_training(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """The module the training step calls: `model`, or `torch.compile(model)` where `--compile`
    (auto: on a GPU) says so. Evaluation keeps calling `model`, so its other shapes never recompile."""
    if config.compile == "off" or (config.compile == "auto" and device.type != "cuda"):
        return model
    console.print("compiling the training step (torch.compile): the first steps take longer")
    return torch.compile(model)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    evaluate: Callable[[], dict[str, float]],
    config: TrainConfig,
    progress: Progress,
    log: Callable[[list[dict]], None] = lambda records: None,
    checkpoint: Callable[[int, float], None] = lambda step, elapsed: None,
    ranks: Group | None = None,
) -> Progress:
    """Train from `progress` until `config.max_steps` or the `config.minutes` budget; return where it ended.

    The last step is no special case (nanochat's `last_step`): the loop top evaluates, logs and
    checkpoints whenever due, the last step included, and only then leaves or takes a step. Ctrl-C
    is taken at the loop top too, where the model and optimizer are whole: the run checkpoints
    there and raises KeyboardInterrupt, so `--resume` takes the very steps it would have taken.
    Under torchrun, `ranks` (distributed.py) says which rows of each step are this rank's, averages
    the logged loss over ranks and has every rank agree on what the clock and Ctrl-C decide.
    """
    ranks = ranks or Group(rows=config.batch_size, micro_batches=config.grad_accum)
    device = next(model.parameters()).device
    settle_precision(config)
    autocast = autocast_for(config.precision, device)
    stepped = compiled_for_training(model, config, device)
    first, step, history = progress.step, progress.step, progress.history
    session = Session(config, progress.elapsed, first)
    evaluated = evaluated_at(history, step)
    smoothed = SmoothedLoss(history)
    pending, trained = [], {}
    x, y = batches(step, 0)
    with progress_bar() as bar, StopRequest(bar) as stop:
        task = bar.add_task("train", total=config.max_steps, completed=step)
        while True:
            fraction, asked, due = ranks.agree(session.fraction(step), stop.asked, session.checkpoint_due())
            last_step = fraction >= 1.0
            stopping = bool(asked) and not last_step
            pending.append({"step": step, **trained})
            evaluate_now = (last_step or step % config.eval_interval == 0) and not (
                (evaluated and step == first) or stopping
            )
            save_now = step > first and (
                last_step or stopping or step % config.checkpoint_interval == 0 or bool(due)
            )
            if evaluate_now or save_now or last_step or step % LOG_INTERVAL == 0:
                records = read_back(pending)  # the host waits for the device here, and only here
                session.pause(step, last_step)
                if evaluate_now:
                    records[-1].update(evaluate())
                    session.evaluations += 1
                pending = [r for r in records if len(r) > 1]
                history.extend(pending)
                log(pending)
                if save_now:
                    checkpoint(step, session.elapsed())
                    session.saved()
                if loss := smoothed.update(pending):
                    bar.update(
                        task, description=f"train loss {loss:.3f} (smoothed) · {session.rate:,.0f} tok/s"
                    )
                pending = []
                session.resume()
            if last_step:
                break
            if stopping:
                raise KeyboardInterrupt

            lr = lr_at(config, step, ranks.agree(session.fraction(step))[0])
            trained, (x, y) = train_step(
                stepped, optimizer, batches, config, ranks, autocast, session, step, x, y, lr
            )
            step += 1
            if step == first + 1:
                session.first_step_done()
            bar.update(task, completed=step, total=session.total(step))
    return Progress(step, session.elapsed(), history, session.rate if session.tokens else None, ranks.world)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    config: TrainConfig,
    ranks: Group,
    autocast: Callable[[], AbstractContextManager],
    session: Session,
    step: int,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step from its first micro-batch (`x`, `y`, fetched already): what it logs, kept
    on the device, and the next step's first micro-batch."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    accum = ranks.micro_batches
    loss_sum = torch.zeros(1 + config.mtp, device=x.device)  # the loss, and each MTP depth's
    for micro in range(accum):
        with ranks.sync(last=micro + 1 == accum):
            with autocast():
                out, loss = model(x, y)
            session.tokens += x.numel() * ranks.world
            # Fetch the next micro-batch while the device computes this one's backward pass.
            x, y = batches(step, micro + 1) if micro + 1 < accum else batches(step + 1, 0)
            (loss / accum).backward()
        loss_sum += out if config.mtp else loss.detach()  # with --mtp, `out` holds the losses (mtp.py)
    grad_norm = ranks.whole(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
    optimizer.step()
    for router in (m for m in getattr(model, "module", model).modules() if hasattr(m, "after_step")):
        router.after_step(ranks.mean)  # a DeepSeek router balances its experts' load (autarky/deepseek.py)
    optimizer.zero_grad(set_to_none=True)
    losses = ranks.mean(loss_sum / accum)
    depths = {f"mtp_loss_{k}": losses[k] for k in range(1, len(losses))}
    return {"loss": losses[0], "lr": lr, "grad_norm": grad_norm, **depths}, (x, y)


class Session:
    """This session's clock: seconds spent (earlier sessions included), the share of the budget used,
    training speed (evaluations and checkpoints excluded), when a checkpoint is due by time, and the
    estimate printed once the first steps are timed."""

    def __init__(self, config: TrainConfig, before: float, first: int):
        self.config, self.before, self.first = config, before, first
        self.budget = config.minutes * 60 if config.minutes else None
        self.start = self.last_save = time.perf_counter()
        self.paused_at, self.paused, self.tokens, self.rate, self.evaluations = 0.0, 0.0, 0, 0.0, 0
        self.estimated = False
        self.first_step: float | None = None  # the training seconds of this session's first step

    def first_step_done(self) -> None:
        self.first_step = time.perf_counter() - self.start - self.paused

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def fraction(self, step: int) -> float:
        """How much of the run is done: by steps or by time, whichever is further."""
        by_steps = step / self.config.max_steps if self.config.max_steps else 0.0
        return max(by_steps, self.elapsed() / self.budget if self.budget else 0.0)

    def total(self, step: int) -> int | None:
        """The steps the run will take, as far as is known: for the bar."""
        if not self.budget:
            return self.config.max_steps
        projected = max(step, round(step / max(self.fraction(step), 1e-9)))
        return min(self.config.max_steps, projected) if self.config.max_steps else projected

    def checkpoint_due(self) -> bool:
        every = self.config.checkpoint_minutes * 60
        return every > 0 and time.perf_counter() - self.last_save >= every

    def saved(self) -> None:
        self.last_save = time.perf_counter()

    def pause(self, step: int, last_step: bool) -> None:
        """The clock stops for evaluation and checkpoints; the first pause after some steps prints
        the estimate (and any warning) from how long they took."""
        self.paused_at = time.perf_counter()
        training = max(self.paused_at - self.start - self.paused, 1e-9)
        self.rate = self.tokens / training
        if self.estimated or step == self.first or last_step:
            return
        self.estimated = True
        per_eval = self.paused / self.evaluations if self.evaluations else 0.0
        steps = step - self.first
        per_step = training / steps
        if self.first_step is not None and steps > 1:
            # The first step also allocates, and under --compile compiles (a minute or more on a
            # GPU): the pace is the steps after it.
            per_step = (training - self.first_step) / (steps - 1)
        line, warning = estimate(self.config, step, per_step, per_eval, self.elapsed())
        console.print(line)
        if warning:
            console.print(f"[bold yellow]warning:[/] {warning}")

    def resume(self) -> None:
        self.paused += time.perf_counter() - self.paused_at


class SmoothedLoss:
    """An exponential moving average of the training loss, debiased as Adam's moments are: what the
    bar shows, as a single step's loss jumps with its batch."""

    BETA = 0.9

    def __init__(self, history: list[dict]):
        self.value, self.count = 0.0, 0
        self.update(history)

    def update(self, records: list[dict]) -> float | None:
        for r in records:
            if "loss" in r:
                self.value = self.BETA * self.value + (1 - self.BETA) * r["loss"]
                self.count += 1
        return self.value / (1 - self.BETA**self.count) if self.count else None


class StopRequest:
    """Ctrl-C during a run asks it to stop at the next step boundary, where its state is whole and can
    be checkpointed; a second Ctrl-C stops at once, as it would anywhere. Only the main thread gets
    signals, and a process that ignores Ctrl-C (a background job) keeps ignoring it."""

    NOTICE = "[yellow]stopping after this step, with a checkpoint (Ctrl-C again: at once)[/]"

    def __init__(self, bar: ProgressBar):
        self.bar, self.asked, self.previous = bar, False, None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):
                self.previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        self.asked = True
        signal.signal(signal.SIGINT, self.previous)
        # The bar, not a print: a print from a handler could wait on the console's lock, which the
        # interrupted code may hold while the bar's thread waits on it.
        for task in self.bar.task_ids:
            self.bar.update(task, description=self.NOTICE)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def evaluated_at(history: list[dict], step: int) -> bool:
    """Whether the history's last record is an evaluation at `step`: a resumed run whose checkpoint
    step was evaluated before the kill is not evaluated again."""
    return (
        bool(history)
        and history[-1]["step"] == step
        and any(k not in STEP_KEYS and not k.startswith("mtp_loss_") for k in history[-1])
    )


def read_back(records: list[dict]) -> list[dict]:
    """The records with their tensors turned into numbers in one transfer from the device."""
    tensors = [v for r in records for v in r.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{k: next(values) if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in records]
