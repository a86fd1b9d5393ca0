"""Text generation with a KV cache: sampling settings, the next-token sampler, the one text policy
(stops, hold-back, finish) and a streaming loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from autarky.console import UserError
from autarky.model import Llama
from autarky.runner import Runner, TorchRunner
from autarky.tokenizer import Tokenizer

# A temperature below this samples greedily, as vLLM does: the distribution is one-hot to float
# precision anyway, and the division by it is where 1e-45 once overflowed every logit.
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError("temperature must be 0 or more (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise UserError("top_k must be 0 (off) or positive")
        if self.max_tokens < 1:
            raise UserError("max_tokens must be at least 1")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch's generator takes
            raise UserError("seed must be a 64-bit integer (from -2**63 to 2**64 - 1)")


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's presence/frequency penalties: subtract per token already generated."""
    if presence == 0 and frequency == 0:
        return logits
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token id per row of `logits` (B, V), by temperature, top-k and top-p.

    Non-finite logits are a ValueError: sampling from them gives garbage, or on a GPU a device
    assert that takes every request down with it.
    """
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model's logits are not finite (NaN or infinity)")
    if params.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    # The largest logit becomes 0 before the division, so no temperature can overflow one to inf.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    if params.top_k > 0 and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string begins in `text`, if any."""
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string, so must wait to be sent."""
    longest = max((len(s) for s in stops), default=0)
    for i in range(max(0, len(text) - longest + 1), len(text)):  # the earliest start holds the most
        tail = text[i:]
        if any(len(tail) < len(s) and s.startswith(tail) for s in stops):
            return len(tail)
    return 0


class TextPolicy:
    """The text rules of one generated sequence, shared by `stream` and the serving engine.

    The end-of-text and end-of-turn ids end it ("stop") and are not part of the completion; a stop
    string ends it ("stop") even when spread over several tokens, and is never sent; text that might
    be the start of a stop string is held back until it is known not to be; `max_tokens` tokens end
    it ("length"). Each token's check reads only the tail where a new match or a held-back start can
    be, so neither a long output nor a long stop string makes a token's check slower.
    """

    def __init__(
        self, tokenizer: Tokenizer, stops: list[str], max_tokens: int, end_ids: set[int] | None = None
    ):
        self.end_ids = tokenizer.stop_ids if end_ids is None else end_ids
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.max_tokens = max_tokens
        self.decoder = tokenizer.decode_stream()
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish_reason: str | None = None

    def accept(self, token: int) -> bool:
        """Take the next sampled token; False for an end token, which is not part of the completion."""
        if token in self.end_ids:
            self._extend(self.decoder.finish())
            self.finish_reason = "stop"
            return False
        self.token_ids.append(token)
        if self._extend(self.decoder.step(token)):
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.max_tokens:
            self._extend(self.decoder.finish())  # a stop string it completes is cut; still "length"
            self.finish_reason = "length"
        return True

    def take(self) -> str:
        """The text not sent yet that is safe to send now: all of it once the sequence has ended."""
        end = len(self.text)
        if self.finish_reason is None:
            # A held-back start only moves forward (text that cannot begin a stop string now never
            # will), so the search starts where the last one ended.
            end -= held_back(self.text[max(self.sent, end - self.longest + 1) :], self.stops)
        piece, self.sent = self.text[self.sent : end], max(end, self.sent)
        return piece

    def _extend(self, new: str) -> bool:
        """Append decoded text; cut it where a stop string it completes begins (True if so)."""
        if not new:
            return False
        start = max(0, len(self.text) - self.longest + 1)  # a match ending in `new` begins no earlier
        self.text += new
        cut = find_stop(self.text[start:], self.stops)
        if cut is not None:
            self.text = self.text[: start + cut]
        return cut is not None


@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    capped: bool = False  # whether the model's context allowed fewer tokens than asked for


@torch.no_grad()
def stream(
    model: Llama | Runner,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    params: SamplingParams,
    use_cache: bool = True,
    completion: Completion | None = None,
) -> Iterator[str]:
    """Yield text pieces as they are generated; fill `completion` with the ids and finish reason.

    `model` is a PyTorch model or a one-slot runner (`autarky.llamacpp.LlamaCppRunner`): the
    sampling and the text rules (stop tokens and strings, hold-back, finish reason) are the same
    for both, and the same as the serving engine's (`TextPolicy`).
    """
    params.validate()
    done = completion if completion is not None else Completion()
    done.prompt_tokens = len(prompt_ids)
    context = model.config.max_position_embeddings if isinstance(model, Llama) else model.context
    if not prompt_ids:
        prompt_ids = [tokenizer.bos_id]
    if len(prompt_ids) >= context:
        raise UserError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {context}")
    max_new = min(params.max_tokens, context - len(prompt_ids))
    done.capped = max_new < params.max_tokens
    advance = _recompute(model, prompt_ids) if not use_cache else _cached(model, prompt_ids, max_new)
    logits = advance(None)
    device = logits.device
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    policy = TextPolicy(tokenizer, params.stop, max_new)
    done.token_ids = policy.token_ids
    counts = torch.zeros(logits.shape[-1], device=device)
    while policy.finish_reason is None:
        logits = apply_penalties(logits[None], counts, params.presence_penalty, params.frequency_penalty)
        token = int(sample(logits, params, generator))
        if policy.accept(token):
            counts[token] += 1
            if policy.finish_reason is None:
                logits = advance(token)
        if piece := policy.take():
            yield piece
    done.text, done.finish_reason = policy.text, policy.finish_reason


def _cached(model: Llama | Runner, prompt_ids: list[int], max_new: int) -> Callable:
    """advance(None) gives the logits after the prompt, advance(token) those after one more token."""
    runner = TorchRunner(model, 1, len(prompt_ids) + max_new) if isinstance(model, Llama) else model

    def advance(token: int | None) -> torch.Tensor:
        if token is not None:
            return runner.decode([token])[0].float()
        runner.clear()  # a runner used before (a chat's last turn) starts over
        runner.stage()
        logits = runner.prefill(prompt_ids)[-1].float()
        runner.join(0)
        return logits

    return advance


def _recompute(model: Llama, prompt_ids: list[int]) -> Callable:
    """The same, computing the whole sequence again for each token: the benchmark's reference."""
    ids = list(prompt_ids)
    device = next(model.parameters()).device

    def advance(token: int | None) -> torch.Tensor:
        if token is not None:
            ids.append(token)
        logits, _ = model(torch.tensor([ids], device=device), last_only=True)
        return logits[0, -1].float()

    return advance


def complete(model: Llama, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams) -> Completion:
    completion = Completion()
    for _ in stream(model, tokenizer, prompt_ids, params, completion=completion):
        pass
    return completion


def fit_conversation(
    tokenizer: Tokenizer, messages: list[dict], keep: int, room: int, context: int
) -> tuple[list[dict], list[int]]:
    """Drop the oldest turns after the first `keep` messages (the system message) until the
    prompt leaves `room` tokens for the reply; the newest message always stays."""
    messages = list(messages)
    ids = tokenizer.apply_chat_template(messages)
    while len(ids) + room > context and len(messages) > keep + 1:
        del messages[keep]
        ids = tokenizer.apply_chat_template(messages)
    if len(ids) >= context:
        raise UserError(f"this message alone takes {len(ids)} tokens; the model's context is {context}")
    return messages, ids
