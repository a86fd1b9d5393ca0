"""Chat fine-tuning (SFT): a model artifact and a chat corpus → a model that answers in turns.

prepare → fit → seal, as pretraining (pretrain.py), with `fit` itself unchanged. Three things differ:

- The loss is on the assistant's tokens only. A conversation is rendered through the model's own
  chat template; a token is the assistant's when it lies between the render up to an assistant
  turn (with the generation prompt) and the render through that turn, which holds for any template
  (`assistant_mask`). Every other target is -100, which the loss ignores.
- Conversations are packed, several to a row of `seq_len` tokens, each token tagged with its
  conversation so that attention stays within it and positions restart (`Llama.forward`'s
  `segment_ids`): a packed row computes what each conversation would alone. `fit` calls
  `model(x, y)`, so `y` carries the targets and the tags stacked, and `PackedLM` unstacks them.
- `--lora R` freezes the model and trains adapters (lora.py); the checkpoint holds the adapters
  and their optimizer state only, and the sealed model is the merged one, with the adapter alone
  in `adapter/` for PEFT.

Held-out evaluation scores the val conversations' assistant tokens: mean loss and bits per byte
(autarky.evaluate). Batches are a pure function of (seed, step, micro-batch), so a killed run
resumed with `resume=True` reaches the same numbers and artifact id as one never interrupted.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autarky import artifact
from autarky.artifact import Artifact
from autarky.console import UserError, console
from autarky.data.chat import count_conversations, iter_conversations
from autarky.evaluate.bpb import score_batches, token_byte_lengths
from autarky.lora import add_lora, merge_lora, save_adapter
from autarky.machine import best_device
from autarky.model import Llama, adamw_kernel, load_pretrained, save_pretrained
from autarky.tokenizer import Tokenizer
from autarky.train import distributed
from autarky.train.checkpoint import (
    HISTORY,
    read_history,
)
from autarky.train.config import SFTConfig
from autarky.train.loop import Progress, autocast_for, run_metrics
from autarky.train.muon import make_optimizer
from autarky.train.plan import plan_of, size_line, steps_line
from autarky.train.pretrain import (
    TOKENIZER_FILES,
    agree_on_precision,
    drop_checkpoints,
    finished,
    fit_run,
    interruptible,
    plot_losses,
    settle_run_dir,
)

IGNORE = -100  # the target of a token that carries no loss
MODEL_FILES = (*TOKENIZER_FILES, "chat_template.jinja", "generation_config.json")  # kept from the input


# ------------------------------------------------------------------ conversations → packed rows


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def assistant_mask(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """The conversation's ids through its chat template, and which of them the assistant wrote.

    Assistant turn i is what the render through it adds to the render of the turns before it with
    the generation prompt: its text and the end of its turn, never the prompt's own tokens. Both
    are compared with the whole render, so a template that renders earlier turns differently
    loses tokens from the mask rather than ever marking a user's.
    """
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    mine = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        start, end = shared_prefix(before, ids), shared_prefix(through, ids)
        mine[start:end] = [True] * max(end - start, 0)
    return ids, mine


def example(tokenizer: Tokenizer, messages: list[dict], seq_len: int) -> tuple[list[int], list[int], bool]:
    """(inputs, targets, cut) of one conversation: next-token targets on the assistant's tokens
    only, at most `seq_len` of them (a longer conversation is cut)."""
    ids, mine = assistant_mask(tokenizer, messages)
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mine[1:], strict=True)]
    return ids[:-1][:seq_len], targets[:seq_len], len(ids) - 1 > seq_len


@dataclass
class Rows:
    """Conversations packed into rows of equal length; `segments` tags each token's conversation
    in its row (padding is a run of its own), `targets` are -100 where there is no loss."""

    inputs: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor
    conversations: int
    truncated: int
    tokens: int  # that belong to a conversation (the rest is padding)

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, picks: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.inputs[picks], self.targets[picks], self.segments[picks]


def pack(examples: list[tuple[list[int], list[int], bool]], seq_len: int) -> Rows:
    """Fill rows in order, starting a new row when the next conversation does not fit."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = seq_len
    for inputs, targets, _ in examples:
        if used + len(inputs) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((inputs, targets))
        used += len(inputs)
    n = len(rows)
    packed = Rows(
        torch.zeros(n, seq_len, dtype=torch.long),
        torch.full((n, seq_len), IGNORE, dtype=torch.long),
        torch.zeros(n, seq_len, dtype=torch.long),
        len(examples),
        sum(cut for *_, cut in examples),
        sum(len(inputs) for inputs, *_ in examples),
    )
    for r, row in enumerate(rows):
        at = 0
        for s, (inputs, targets) in enumerate(row):
            packed.inputs[r, at : at + len(inputs)] = torch.tensor(inputs)
            packed.targets[r, at : at + len(inputs)] = torch.tensor(targets)
            packed.segments[r, at : at + len(inputs)] = s
            at += len(inputs)
        packed.segments[r, at:] = len(row)
    return packed


def load_rows(tokenizer: Tokenizer, chat: Artifact, split: str, seq_len: int, seed: int | None) -> Rows:
    """A split's conversations as packed rows; shuffled first (by `seed`) for training."""
    examples = [example(tokenizer, m, seq_len) for m in iter_conversations(chat, split)]
    examples = [e for e in examples if e[0]]
    if seed is not None:
        random.Random(seed).shuffle(examples)
    return pack(examples, seq_len)


class PackedLM(nn.Module):
    """The model as `fit` calls it, `model(x, y)`: `y` (B, 2, T) stacks the targets and each token's
    conversation, which the model needs to keep packed conversations apart.

    A rank's slice of a micro-batch (torchrun) holds some of its assistant tokens, not a set share:
    a third plane carries the whole micro-batch's count, and the loss is this slice's sum over it,
    times the micro-batch's rows over the slice's (which the averages over ranks and micro-batches
    divide by again), so the ranks together compute the one process's mean, however the tokens fall.
    """

    def __init__(self, lm: Llama, batch_size: int = 1):
        super().__init__()
        self.lm, self.batch_size = lm, batch_size

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if y.size(1) == 2:
            return self.lm(x, y[:, 0], segment_ids=y[:, 1])
        logits, _ = self.lm(x, segment_ids=y[:, 1])
        targets = y[:, 0].reshape(-1)
        total = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets, ignore_index=IGNORE, reduction="sum"
        )
        return logits, total * (self.batch_size / x.size(0)) / y[0, 2, 0].clamp(min=1)


# ------------------------------------------------------------------ the stage


@dataclass
class Run:
    """What `fit` needs for one fine-tuning run, as `prepare` leaves it."""

    lm: Llama
    trainable: nn.Module  # what the checkpoint holds: the model, or its adapters
    optimizer: torch.optim.Optimizer
    batches: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
    evaluate: Callable[[], dict[str, float]]
    progress: Progress
    train_rows: Rows
    val_rows: Rows


def sft(
    model: Artifact,
    chat: Artifact,
    workdir: Path,
    config: SFTConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    force: bool = False,
) -> Artifact:
    """Fine-tune a model artifact on a chat corpus artifact into a new model artifact."""
    config = config or SFTConfig()
    config.validate()
    if chat.kind != "chat":
        raise UserError(f"{chat.path} is a {chat.kind}; sft learns from a chat corpus (autarky curate-chat)")
    if config.shard and config.lora_rank:
        raise UserError(
            "--shard fine-tunes the whole model; with --lora leave --shard off (the adapters are small)"
        )
    with distributed.launched(config) as group:
        agree_on_precision(config, group)
        return _sft(model, chat, workdir, config, name, resume, force, group)


def _sft(
    model: Artifact,
    chat: Artifact,
    workdir: Path,
    config: SFTConfig,
    name: str | None,
    resume: bool,
    force: bool,
    group: distributed.Group,
) -> Artifact:
    recipe = config.recipe()
    prefix = f"{model.name}-{'lora' if config.lora_rank else 'sft'}"
    name = name or artifact.default_name(prefix, "model", recipe, [model, chat])
    builder = artifact.Builder(workdir, "model", name, recipe, [model, chat], keep_on_error=True)
    if found := group.first(lambda: finished(builder, force, f"autarky sft {name} {chat.name}")):
        return found
    with interruptible(builder.dir):
        run = prepare(builder.dir, model, chat, config, resume, force, group)
        with builder:
            progress = fit_run(builder.dir, run, run.trainable, config, group)
            run.lm = group.gathered(run.lm)
            return group.first(lambda: seal(builder, run, model, config, progress))


def prepare(
    run_dir: Path,
    model: Artifact,
    chat: Artifact,
    config: SFTConfig,
    resume: bool,
    force: bool,
    group: distributed.Group | None = None,
) -> Run:
    """Settle the run directory, render and pack the conversations, load the model (with adapters),
    build the optimizer, resume if asked."""
    group = group or distributed.Group(
        device=best_device(), rows=config.batch_size, micro_batches=config.grad_accum
    )
    group.first(lambda: settle_run_dir(run_dir, resume, force))
    if not (model.path / "tokenizer.json").is_file():
        raise UserError(f"{model.path} has no tokenizer.json, so its chat template is unknown")
    tokenizer = Tokenizer.load(model.path)
    lm = load_pretrained(model.path)
    check_fits(lm, tokenizer, chat, config)
    train_rows = load_rows(tokenizer, chat, "train", config.seq_len, config.seed)
    val_rows = load_rows(tokenizer, chat, "val", config.seq_len, None)
    if not (train_rows.targets != IGNORE).any():
        raise UserError(f"no assistant token of {chat.name} fits in --seq-len {config.seq_len}")
    device, total = group.device, lm.num_params()
    trainable, optimizer = adapt(lm, config, device, group)
    progress = Progress()
    if resume and (resumed := distributed.load(run_dir, trainable, optimizer, config, group)):
        progress.step, progress.elapsed = resumed
        console.print(f"resuming {run_dir} at step {progress.step}")
    progress.history = read_history(run_dir / HISTORY, progress.step)
    token_bytes, autocast = token_byte_lengths(tokenizer), autocast_for(config.precision, device)
    n_val = max(1, config.eval_tokens // config.seq_len)

    def evaluate() -> dict[str, float]:
        s = score_batches(lm, _val_batches(val_rows, n_val, config.batch_size), token_bytes, autocast)
        return {"val_loss": s.loss, "val_bpb": s.bpb}

    trained = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    plan = plan_of(config, trained, len(train_rows) * config.seq_len)
    console.print(
        f"fine-tuning {size_line(plan, of=total)}: {train_rows.conversations:,} conversations "
        f"in {len(train_rows):,} rows of {config.seq_len}"
    )
    console.print(steps_line(plan))
    return Run(
        lm,
        trainable,
        optimizer,
        group.batches(make_batches(train_rows, config, device)),
        evaluate,
        progress,
        train_rows,
        val_rows,
    )


def adapt(
    lm: Llama, config: SFTConfig, device: torch.device, group: distributed.Group | None = None
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """What trains, on `device`, and its optimizer: the whole model, or adapters beside a frozen one;
    wrapped for the processes torchrun started before the optimizer takes its parameters."""
    betas, group = (config.beta1, config.beta2), group or distributed.Group()
    if not config.lora_rank:
        lm.to(device).train()
        group.wrap(PackedLM(lm, config.batch_size))
        return lm, make_optimizer(lm, config)
    torch.manual_seed(config.seed)  # the adapters' initial values
    adapters = add_lora(lm, config.lora_rank, config.lora_alpha)
    lm.to(device).train()
    group.wrap(PackedLM(lm, config.batch_size))
    params = list(adapters.parameters())
    optimizer = torch.optim.AdamW(
        params, config.lr, betas, weight_decay=config.weight_decay, **adamw_kernel(params)
    )
    return adapters, optimizer


def check_fits(lm: Llama, tokenizer: Tokenizer, chat: Artifact, config: SFTConfig) -> None:
    if config.seq_len > lm.config.max_position_embeddings:
        raise UserError(
            f"--seq-len {config.seq_len} exceeds the model's context of {lm.config.max_position_embeddings}"
        )
    if tokenizer.vocab_size > lm.config.vocab_size:
        raise UserError(
            f"the model's tokenizer has {tokenizer.vocab_size} tokens but the model only {lm.config.vocab_size}"
        )
    for split in ("train", "val"):
        if not count_conversations(chat, split):
            raise UserError(
                f"the chat corpus {chat.name} has no {split} conversations; curate more, or a larger --val-fraction"
            )


def make_batches(rows: Rows, config: SFTConfig, device: torch.device):
    """Batches as a pure function of (step, micro): every row once per epoch, in an order drawn from
    (seed, epoch)."""

    @lru_cache(maxsize=4)
    def order(epoch: int) -> torch.Tensor:
        return torch.randperm(
            len(rows), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        )

    def batches(step: int, micro: int, share: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * config.grad_accum + micro) * config.batch_size
        picks = torch.stack(
            [order(i // len(rows))[i % len(rows)] for i in range(first, first + config.batch_size)]
        )
        x, targets, segments = rows.batch(picks[share])
        y = torch.stack([targets, segments], dim=1)
        if share != slice(None):  # a rank's slice: the whole micro-batch's assistant tokens, for PackedLM
            counted = (rows.targets[picks] != IGNORE).sum()
            y = torch.cat([y, torch.full_like(targets, int(counted)).unsqueeze(1)], dim=1)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return batches


def _val_batches(rows: Rows, n: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    for start in range(0, min(n, len(rows)), batch_size):
        x, targets, segments = rows.batch(slice(start, min(start + batch_size, n)))
        yield x, targets, {"segment_ids": segments}


def stored_dtype(directory: Path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in: the fine-tuned model is stored alike, though
    it trains in fp32."""
    config = json.loads((directory / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def seal(
    builder: artifact.Builder, run: Run, model: Artifact, config: SFTConfig, progress: Progress
) -> Artifact:
    """Write the adapter (LoRA), the merged model, the input's tokenizer and generation files, the loss
    plot and the metrics; drop the checkpoint; write the manifest."""
    directory, lm = builder.dir, run.lm.cpu()
    trainable = sum(p.numel() for p in run.trainable.parameters() if p.requires_grad)
    if config.lora_rank:
        save_adapter(lm, directory / "adapter", config.lora_rank, config.lora_alpha, model.name)
        merge_lora(lm)
    save_pretrained(lm.to(stored_dtype(model.path)), directory)
    for f in MODEL_FILES:
        if (model.path / f).is_file():
            shutil.copy2(model.path / f, directory / f)
    plot_losses(progress.history, directory / "loss.png")
    rows = run.train_rows
    builder.metrics = {
        "parameters": lm.num_params(),
        "trainable_parameters": trainable,
        "lora_rank": config.lora_rank or None,
        "steps": progress.step,
        "conversations": {"train": rows.conversations, "val": run.val_rows.conversations},
        "truncated": rows.truncated + run.val_rows.truncated,
        "rows": len(rows),
        "assistant_tokens": int((rows.targets != IGNORE).sum()),
        "packing": round(rows.tokens / rows.inputs.numel(), 4),  # the share of row slots holding tokens
        "epochs": round(progress.step * config.batch_size * config.grad_accum / len(rows), 3),
        **run_metrics(progress, config),
    }
    drop_checkpoints(directory)
    return builder.finish()
