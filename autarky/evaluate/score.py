"""Scoring a model in-process: log-likelihoods of continuations, task metrics, and bits per byte by group.

`loglikelihood` is lm-eval's request of that name, computed exactly: the summed log-probability of
the continuation's tokens given the context, and whether greedy decoding would have produced them.
Contexts and continuations are split into tokens as lm-eval does for a local model (`encode_pair`),
and every sequence starts with `<|bos|>`, as every document did in training.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autarky.console import UserError
from autarky.evaluate.bpb import bits_per_byte, token_byte_lengths
from autarky.evaluate.tasks import Task
from autarky.generate import SamplingParams, complete
from autarky.model import Llama
from autarky.tokenizer import Tokenizer


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation, and the continuation's
    tokens are those of `context + continuation` after the context's own, so a merge across the seam
    is scored as the model would see it."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = [tokenizer.bos_id, *tokenizer.encode(context)]
    return context_ids, whole[len(context_ids) - 1 :]


@torch.no_grad()
def loglikelihood(
    model: Llama, requests: list[tuple[list[int], list[int]]], batch_size: int = 8
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), is it the greedy continuation) for each (context, continuation).

    A request longer than the model's context keeps its last tokens (the continuation is never cut);
    requests run longest first in right-padded batches, which a causal model scores exactly.
    """
    limit = model.config.max_position_embeddings + 1
    if any(len(cont) >= limit for _, cont in requests):
        raise UserError(f"a continuation is longer than the model's context of {limit - 1} tokens")
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        rows = [(requests[i][0] + requests[i][1])[-limit:] for i in chosen]
        width = max(len(r) for r in rows) - 1
        if width < 1:  # nothing to score: empty continuations after a lone <|bos|>
            continue
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row) - 1] = torch.tensor(row[:-1])
        logits = model(ids.to(device))[0]
        for b, i in enumerate(chosen):
            n_cont, n_in = len(requests[i][1]), len(rows[b]) - 1
            if n_cont == 0:
                continue
            logprobs = F.log_softmax(logits[b, n_in - n_cont : n_in].float(), dim=-1)
            target = torch.tensor(rows[b][-n_cont:], device=logprobs.device)
            total = float(logprobs.gather(1, target[:, None]).sum())
            results[i] = (total, bool((logprobs.argmax(-1) == target).all()))
    return results


def _accuracy(correct: list[bool]) -> tuple[float, float]:
    """The share correct and its standard error (as lm-eval reports it: sample standard deviation / √n)."""
    n, p = len(correct), sum(correct) / len(correct)
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def score_multiple_choice(
    model: Llama, tokenizer: Tokenizer, task: Task, batch_size: int = 8
) -> tuple[dict, list[dict]]:
    """acc (the most likely choice is the gold one) and acc_norm (likelihood per character of the
    choice, lm-eval's length normalisation); and one record per document."""
    requests, spans = [], []
    for item in task.items:
        spans.append((len(requests), len(item.choices)))
        requests += [encode_pair(tokenizer, item.context, task.target_delimiter + c) for c in item.choices]
    scored = loglikelihood(model, requests, batch_size)
    records, correct, correct_norm = [], [], []
    for index, (item, (first, n)) in enumerate(zip(task.items, spans, strict=True)):
        lls = [ll for ll, _ in scored[first : first + n]]
        normed = [ll / max(len(c), 1) for ll, c in zip(lls, item.choices, strict=True)]
        pred, pred_norm = max(range(n), key=lls.__getitem__), max(range(n), key=normed.__getitem__)
        correct.append(pred == item.gold)
        correct_norm.append(pred_norm == item.gold)
        records.append(
            {"doc": index, "gold": item.gold, "pred": pred, "pred_norm": pred_norm, "loglikelihoods": lls}
        )
    metrics = {}
    if "acc" in task.metrics:
        metrics["acc"], metrics["acc_stderr"] = _accuracy(correct)
    if "acc_norm" in task.metrics:
        metrics["acc_norm"], metrics["acc_norm_stderr"] = _accuracy(correct_norm)
    metrics["chance"] = sum(1 / len(item.choices) for item in task.items) / len(task.items)
    return metrics, records


def score_generation(model: Llama, tokenizer: Tokenizer, task: Task) -> tuple[dict, list[dict]]:
    """exact_match: the greedy continuation, cut at the task's first stop string, equals the target
    (both stripped of surrounding whitespace)."""
    context = model.config.max_position_embeddings
    records, correct = [], []
    params = SamplingParams(temperature=0.0, max_tokens=task.max_gen_toks, stop=task.until)
    for index, item in enumerate(task.items):
        ids = tokenizer.encode(item.context)[-max(context - task.max_gen_toks - 1, 1) :]
        output = complete(model, tokenizer, [tokenizer.bos_id, *ids], params).text
        correct.append(output.strip() == item.gold.strip())
        records.append({"doc": index, "target": item.gold, "output": output, "match": correct[-1]})
    metrics = {}
    metrics["exact_match"], metrics["exact_match_stderr"] = _accuracy(correct)
    return metrics, records


@dataclass
class Tally:
    """Bits, bytes, tokens and documents of a group of held-out text: tallies add, so groups combine exactly."""

    bits: float = 0.0
    bytes: int = 0
    tokens: int = 0
    documents: int = 0

    def add(self, other: Tally) -> None:
        self.bits += other.bits
        self.bytes += other.bytes
        self.tokens += other.tokens
        self.documents += other.documents

    def as_dict(self) -> dict:
        bpb = self.bits / self.bytes if self.bytes else None
        return {"bpb": bpb, "bytes": self.bytes, "tokens": self.tokens, "documents": self.documents}


def score_stream(
    model: Llama, stream: torch.Tensor, token_bytes: torch.Tensor, seq_len: int, batch_size: int
) -> Tally:
    """Every token of the stream after the first scored once: `bits_per_byte`'s whole windows, then
    the tail they leave as one shorter window (overlapping the last by one token)."""
    tally = Tally()
    whole = (len(stream) - 1) // seq_len * seq_len
    for part in (stream[: whole + 1], stream[whole:]):
        if len(part) >= 2:
            score = bits_per_byte(model, part, token_bytes, seq_len, batch_size=batch_size)
            tally.add(Tally(score.bpb * score.bytes if score.bytes else 0.0, score.bytes, score.tokens))
    return tally


def bpb_by_group(
    model: Llama,
    tokenizer: Tokenizer,
    documents: Iterable[dict],
    max_tokens: int,
    seq_len: int,
    batch_size: int = 8,
) -> dict:
    """Bits per byte of held-out documents overall, per language and per source file.

    Documents are read in order until `max_tokens` (the last one cut there), framed as the tokens
    stage frames them (`<|bos|>` then the text), and scored by `bits_per_byte` once per
    (source, language) group; per-language and per-source figures add those groups' bits and bytes.
    """
    streams: dict[tuple[str, str], list[int]] = defaultdict(list)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    total = 0
    for doc in documents:
        ids = [tokenizer.bos_id, *tokenizer.encode(doc["text"])][: max_tokens - total]
        key = (doc.get("source") or "?", doc.get("lang") or "und")
        streams[key] += ids
        counts[key] += 1
        total += len(ids)
        if total >= max_tokens:
            break
    token_bytes = token_byte_lengths(tokenizer)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    overall, by_lang, by_source = Tally(), defaultdict(Tally), defaultdict(Tally)
    for (source, lang), stream in sorted(streams.items()):
        tally = score_stream(model, torch.tensor(stream), token_bytes, seq_len, batch_size)
        tally.documents = counts[(source, lang)]
        for group in (overall, by_lang[lang], by_source[source]):
            group.add(tally)
    return {
        "overall": overall.as_dict(),
        "by_language": {k: v.as_dict() for k, v in sorted(by_lang.items())},
        "by_source": {k: v.as_dict() for k, v in sorted(by_source.items())},
    }
