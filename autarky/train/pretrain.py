"""Pretraining: a tokens artifact and a recipe → a model artifact, in three parts.

`prepare` settles the run directory (start, resume or refuse), loads the token arrays and builds
the model and optimizer; `fit` (fit.py) runs the loop; `seal` writes the model directory (weights,
tokenizer files, loss plot), its metrics and its manifest.

Batches are a pure function of (seed, step, micro-batch), the schedule a pure function of progress,
and the model and optimizer state are checkpointed atomically, so a step-budgeted run killed at any
point and resumed with `resume=True` reaches the same numbers, and the same artifact id, as one that
was never interrupted (on CPU, bit for bit). A `minutes` budget ends wherever the clock says, so it
cannot promise that. The checkpoint lives in the run directory until the model is sealed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autarky import artifact
from autarky.artifact import Artifact, sha256_file
from autarky.console import UserError, console
from autarky.evaluate import bits_per_byte, token_byte_lengths
from autarky.model import Llama, load_pretrained, preset_config, save_pretrained
from autarky.model import build_model as new_model
from autarky.tokenizer import Tokenizer
from autarky.tokens import load_tokens
from autarky.train import distributed
from autarky.train.checkpoint import (
    CHECKPOINT,
    HISTORY,
    PICKLED_CHECKPOINT,
    Interrupted,
    history_log,
    read_history,
)
from autarky.train.config import TrainConfig
from autarky.train.distributed import CHECKPOINT_DIR, CHECKPOINTS, RETIRED, saved_step
from autarky.train.loop import Batches, Progress, autocast_for, fit, run_metrics, settle_precision
from autarky.train.mtp import attach, keep
from autarky.train.muon import make_optimizer
from autarky.train.plan import plan_of, size_line, size_warning, steps_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def get_batch(
    data: np.ndarray,
    seed: int,
    step: int,
    micro: int,
    batch_size: int,
    seq_len: int,
    rows: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows chosen by (seed, step, micro) alone, so a resumed run sees the same batches;
    `rows` of them only (a rank's share, when several processes train)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)
    ix = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=g)[rows].tolist()
    chunk = torch.from_numpy(np.stack([data[i : i + seq_len + 1].astype(np.int64) for i in ix]))
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


@dataclass
class Run:
    """What `fit` needs for one pretraining run, as `prepare` leaves it."""

    model: Llama
    optimizer: torch.optim.Optimizer
    batches: Batches
    evaluate: Callable[[], dict[str, float]]
    progress: Progress
    group: distributed.Group
    trainable: torch.nn.Module  # what trains and is checkpointed: the model, or it with its MTP modules


def train(
    tokens: Artifact,
    workdir: Path,
    config: TrainConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    force: bool = False,
    init: Artifact | None = None,
) -> Artifact:
    """Train a model on a tokens artifact (from scratch, or from `init`'s weights) into a model artifact."""
    config = config or TrainConfig()
    config.validate()
    with distributed.launched(config) as group:
        agree_on_precision(config, group)
        return _train(tokens, workdir, config, name, resume, force, init, group)


def agree_on_precision(config: TrainConfig, group: distributed.Group) -> None:
    """Settle `--precision auto` on rank 0 and give every rank its choice: the probe is timed, and
    ranks that chose apart would train apart."""
    config.precision = group.first(lambda: settle_precision(config) or config.precision)


def _train(
    tokens: Artifact,
    workdir: Path,
    config: TrainConfig,
    name: str | None,
    resume: bool,
    force: bool,
    init: Artifact | None,
    group: distributed.Group,
) -> Artifact:
    upstream = tokens.inputs("tokenizer")
    if not upstream:
        raise UserError(f"{tokens.path} names no tokenizer among its inputs")
    tokenizer = upstream[0]
    inputs = [tokens, tokenizer] + ([init] if init else [])
    recipe = config.recipe()
    source = next((i["name"] for i in tokens.manifest["inputs"] if i["kind"] == "corpus"), tokens.name)
    name = name or artifact.default_name(
        artifact.compose_name(source, config.preset), "model", recipe, inputs
    )
    builder = artifact.Builder(workdir, "model", name, recipe, inputs, keep_on_error=True)
    if found := group.first(lambda: finished(builder, force, f"autarky train {tokens.name} --init {name}")):
        return found
    if saved_step(builder.dir) is None and (others := other_budgets(workdir, recipe, inputs)):
        other = others[0]
        console.print(
            f"note: {other.name} was trained from the same inputs and settings for another budget; this "
            f"run starts from scratch. To train {other.name} more instead: "
            f"autarky train {tokens.name} --init {other.name}",
            soft_wrap=True,
        )
    with interruptible(builder.dir):
        run = prepare(builder.dir, tokens, tokenizer, config, resume, force, init, group)
        with builder:
            progress = fit_run(builder.dir, run, run.trainable, config, group)
            whole = group.gathered(run.model)
            return group.first(lambda: seal(builder, whole, tokenizer, config, progress, run.trainable))


def fit_run(
    run_dir: Path, run, trainable: torch.nn.Module, config: TrainConfig, group: distributed.Group
) -> Progress:
    """`fit` on a prepared run (pretraining's or sft's), its metrics log and its checkpoints of
    `trainable` in `run_dir`; rank 0 alone writes."""
    log = history_log(run_dir, run.progress.history) if group.main else lambda records: None

    def checkpoint(step: int, elapsed: float) -> None:
        distributed.save(run_dir, trainable, run.optimizer, step, elapsed, config, group)

    return fit(
        group.wrapped, run.optimizer, run.batches, run.evaluate, config, run.progress, log, checkpoint, group
    )


def finished(builder: artifact.Builder, force: bool, train_more: str) -> Artifact | None:
    """The finished model of this very recipe, if there is one (and a refusal where another is in
    its place); rank 0 alone decides, as it may clear the way."""
    if not force:
        refuse_to_change(builder, train_more)
    if (found := builder.existing(force=force)) is not None:
        console.print(f"reusing finished model {found.path}")
    return found


def refuse_to_change(builder: artifact.Builder, train_more: str) -> None:
    """A finished model is never changed: asked for with other settings (a larger budget, say) under
    its name, say how to train it more instead."""
    try:
        old = artifact.load(builder.dir, "model") if (builder.dir / artifact.MANIFEST).is_file() else None
    except UserError:
        return  # damaged: Builder.existing makes it again
    if old is not None and old.manifest.get("recipe") != builder.recipe:
        raise UserError(
            f"{builder.dir} holds a finished model ({old.metrics.get('steps')} steps) made from other "
            f"inputs or settings; to train it more, start a new model from its weights with "
            f"`{train_more}` (a fresh optimizer and schedule), choose another --name, "
            "or pass --force to replace it"
        )


def other_budgets(workdir: Path, recipe: dict, inputs: list[Artifact]) -> list[Artifact]:
    """Finished models made from the same inputs and settings but for their budget (--max-steps,
    --minutes), newest first: what someone asking for a longer run under a default name may mean
    to continue."""
    budget = ("max_steps", "minutes")
    wanted = ({k: v for k, v in recipe.items() if k not in budget}, [a.id for a in inputs])
    found = []
    for manifest in (Path(workdir) / "model").glob(f"*/{artifact.MANIFEST}"):
        try:
            old = artifact.load(manifest.parent, "model")
        except UserError:
            continue
        settings = {k: v for k, v in old.config.items() if k not in budget}
        if (settings, [i.get("id") for i in old.manifest["inputs"]]) == wanted and old.config != recipe:
            found.append(old)
    return sorted(found, key=lambda a: a.manifest["created"], reverse=True)


@contextmanager
def interruptible(run_dir: Path) -> Iterator[None]:
    """A Ctrl-C becomes `Interrupted`, which says where the run's checkpoint is, so the CLI can say
    how to resume it."""
    try:
        yield
    except KeyboardInterrupt as e:
        raise Interrupted(run_dir, saved_step(run_dir)) from e


def prepare(
    run_dir: Path,
    tokens: Artifact,
    tokenizer: Artifact,
    config: TrainConfig,
    resume: bool,
    force: bool,
    init: Artifact | None,
    group: distributed.Group,
) -> Run:
    """Settle the run directory, load the token arrays, build the model and optimizer, resume if asked."""
    group.first(lambda: settle_run_dir(run_dir, resume, force))
    train_data, val_data = load_tokens(tokens, "train"), load_tokens(tokens, "val")
    if len(train_data) <= config.seq_len + 1:
        raise UserError(
            f"the training split has {len(train_data)} tokens, fewer than one window of {config.seq_len + 1}; use a smaller --seq-len or more data"
        )
    if len(val_data) < 2:
        raise UserError("the validation split is empty; curate more documents")
    tok = Tokenizer.load(tokenizer)
    model = build_model(config, tokenizer, tok.vocab_size, init)
    model.set_dropout(config.dropout)
    if config.seq_len > model.config.max_position_embeddings:
        raise UserError(
            f"--seq-len {config.seq_len} exceeds the model's context of {model.config.max_position_embeddings}"
        )
    device = group.device
    model.to(device).train()
    trainable = attach(model, config)
    group.wrap(trainable)
    optimizer = make_optimizer(trainable, config)
    progress = Progress()
    if resume and (resumed := distributed.load(run_dir, trainable, optimizer, config, group)):
        progress.step, progress.elapsed = resumed
        console.print(f"resuming {run_dir} at step {progress.step}")
    progress.history = read_history(run_dir / HISTORY, progress.step)

    def batches(step: int, micro: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = get_batch(train_data, config.seed, step, micro, config.batch_size, config.seq_len, rows)
        if device.type == "cuda":  # pinned memory lets the copy overlap the device's work
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    token_bytes, autocast = token_byte_lengths(tok), autocast_for(config.precision, device)

    # Under DDP each rank scores its share of the windows and the sums are added; a sharded model
    # computes every forward on all ranks together, so there each scores them all.
    part = (group.rank, group.world) if group.distributed and not group.shard else (0, 1)

    def evaluate() -> dict[str, float]:
        score = bits_per_byte(
            model,
            val_data,
            token_bytes,
            config.seq_len,
            config.eval_tokens,
            config.batch_size,
            autocast,
            part,
            group.total if part[1] > 1 else None,
        )
        return {"val_loss": score.loss, "val_bpb": score.bpb}

    plan = plan_of(config, model.num_params(), len(train_data))
    console.print(f"training {'from ' + init.name + ': ' if init else ''}{size_line(plan)}")
    console.print(steps_line(plan))
    if warning := size_warning(plan):
        console.print(f"[bold yellow]warning:[/] {warning}")
    return Run(model, optimizer, group.batches(batches), evaluate, progress, group, trainable)


def settle_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Start over in an unfinished run directory, keep it to resume, or refuse to touch it.

    Resuming keeps only the checkpoint and the metrics log: any other file there would be sealed
    into the artifact, and the run writes every file it needs again.
    """
    if not run_dir.exists():
        return
    if not resume:
        if force or not any((run_dir / f).exists() for f in (*CHECKPOINTS, PICKLED_CHECKPOINT)):
            shutil.rmtree(run_dir)
            return
        raise UserError(
            f"an unfinished run is in {run_dir}; pass --resume to continue it or --force to start over"
        )
    if (run_dir / PICKLED_CHECKPOINT).exists():
        raise UserError(
            f"{run_dir} holds {PICKLED_CHECKPOINT}, a pickled checkpoint, which autarky never loads "
            "(unpickling can run any code); delete the run directory or pass --force to start over"
        )
    if not any((run_dir / f).exists() for f in CHECKPOINTS):
        shutil.rmtree(run_dir)
        return
    for path in run_dir.iterdir():
        if path.name not in (*CHECKPOINTS, HISTORY):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def build_model(config: TrainConfig, tokenizer: Artifact, vocab_size: int, init: Artifact | None) -> Llama:
    """A fresh model of the preset sized to the tokenizer, or `init`'s weights when fine-tuning."""
    torch.manual_seed(config.seed)
    if init is None:
        return new_model(preset_config(config.preset, vocab_size))
    ours, theirs = tokenizer.path / "tokenizer.json", init.path / "tokenizer.json"
    if not theirs.is_file() or sha256_file(theirs) != sha256_file(ours):
        raise UserError(
            f"{init.path} was trained with another tokenizer than {tokenizer.path}; "
            "tokenize the data with the model's own tokenizer"
        )
    return load_pretrained(init.path)


def seal(
    builder: artifact.Builder,
    model: Llama,
    tokenizer: Artifact,
    config: TrainConfig,
    progress: Progress,
    trainable: torch.nn.Module | None = None,
) -> Artifact:
    """Write the model directory (and the MTP modules, if kept), the loss plot and the metrics, drop
    the checkpoint, write the manifest."""
    directory = builder.dir
    save_pretrained(model.cpu(), directory, generation={"max_length": model.config.max_position_embeddings})
    keep(trainable, directory, config)
    for f in TOKENIZER_FILES:
        if (tokenizer.path / f).is_file():
            shutil.copy2(tokenizer.path / f, directory / f)
    # The model's copy of the tokenizer tells transformers this model's context, not a generic one.
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        settings = json.loads(tokenizer_config.read_text())
        settings["model_max_length"] = model.config.max_position_embeddings
        tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    plot_losses(progress.history, directory / "loss.png")
    builder.metrics = {
        "parameters": model.num_params(),
        "steps": progress.step,
        **run_metrics(progress, config),
    }
    # A sealed model holds weights, not optimizer state: a third of the bytes, and identical runs,
    # resumed or not, give identical files and so the same id.
    drop_checkpoints(directory)
    return builder.finish()


def drop_checkpoints(directory: Path) -> None:
    """A sealed model keeps no checkpoint, of either kind."""
    (directory / CHECKPOINT).unlink(missing_ok=True)
    for name in (CHECKPOINT_DIR, RETIRED):
        shutil.rmtree(directory / name, ignore_errors=True)


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
