"""Bits per byte: the model's loss per byte of text, comparable across tokenizers and vocabularies.

A mean loss per token favours a tokenizer with short tokens; bits per byte does not. Every target
token is weighed by the UTF-8 bytes it stands for, from a per-token table in which special tokens
(a document's `<|bos|>`, the chat markers) count 0 bytes and their loss is left out, so
bits/byte = (nats of the byte-bearing targets) / ln 2 / (their bytes), exactly, with no average
bytes-per-token in between. The text is cut into fixed windows, the same ones every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autarky.tokenizer import Tokenizer


@dataclass(frozen=True)
class Score:
    """Bits per byte, and the mean loss per target token (nats) from the same windows."""

    bpb: float
    loss: float
    tokens: int
    bytes: int


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """The UTF-8 bytes each token id stands for (int64, one per id); special tokens count 0."""
    return torch.tensor([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)])


def windows(
    token_ids: np.ndarray | torch.Tensor, seq_len: int, max_tokens: int | None = None
) -> torch.Tensor:
    """The first `max_tokens` (default all) of the stream as (n, seq_len + 1) windows that overlap by
    one token, so every token after the first is a target exactly once. A stream shorter than one
    window is one shorter window."""
    T = min(seq_len, len(token_ids) - 1)
    if T < 1:
        raise ValueError("bits per byte needs at least two tokens")
    n = (len(token_ids) - 1) // T
    if max_tokens is not None:
        n = max(1, min(n, max_tokens // T))
    ids = torch.as_tensor(np.asarray(token_ids[: n * T + 1], dtype=np.int64))
    return ids.unfold(0, T + 1, T)


def bits_per_byte(
    model: nn.Module,
    token_ids: np.ndarray | torch.Tensor,
    token_bytes: torch.Tensor,
    seq_len: int,
    max_tokens: int | None = None,
    batch_size: int = 16,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    part: tuple[int, int] = (0, 1),
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Score:
    """Score `model` (any module whose `model(ids)[0]` are logits) on fixed windows of a token stream.

    `part` (k, n) scores every n-th window from the k-th, and `total` adds the sums of all n parts
    (processes that share the work, each scoring its part, all getting the whole stream's score)."""
    k, n = part
    chunks = windows(token_ids, seq_len, max_tokens)[k::n]
    batches = ((batch[:, :-1], batch[:, 1:], {}) for batch in chunks.split(batch_size))
    return score_batches(model, batches, token_bytes, autocast, total)


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, dict]],
    token_bytes: torch.Tensor,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Score:
    """Score `model` on (inputs, targets, forward keyword arguments) batches; a target of -100 is
    not scored (chat fine-tuning scores the assistant's tokens only). `total` turns this process's
    sums into those of every process sharing the batches.

    Sums stay on the device and are read once at the end, so a GPU is not stalled per batch.
    """
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    was_training = model.training
    model.eval()
    nats = counted_nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = n_tokens = torch.zeros((), dtype=torch.int64, device=device)
    for inputs, targets, kwargs in batches:
        targets = targets.to(device).reshape(-1)
        with autocast():
            logits = model(inputs.to(device), **{k: v.to(device) for k, v in kwargs.items()})[0]
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets, reduction="none", ignore_index=-100)
        scored = targets != -100
        weight = token_bytes[targets.clamp(min=0)] * scored
        nats = nats + nll.sum()
        counted_nats = counted_nats + (nll * (weight > 0)).sum()
        n_bytes = n_bytes + weight.sum()
        n_tokens = n_tokens + scored.sum()
    model.train(was_training)
    sums = torch.stack([nats, counted_nats, n_bytes.double(), n_tokens.double()])
    nats_total, counted, total_bytes, total_tokens = (total(sums) if total else sums).tolist()
    bpb = counted / math.log(2) / total_bytes if total_bytes else math.nan
    loss = nats_total / total_tokens if total_tokens else math.nan
    return Score(bpb=bpb, loss=loss, tokens=int(total_tokens), bytes=int(total_bytes))
