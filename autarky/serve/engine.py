"""The serving engine: continuous batching over one model, in one background thread.

The engine moves token ids; the text rules (stops, hold-back, finish) are `TextPolicy`'s, the same
as `autarky generate`'s, and the forward passes are a runner's (`autarky.runner`: PyTorch, or
llama.cpp on a GGUF export), so everything here holds for either. Requests join and leave the
running batch at token boundaries. Each running request owns one row of the runner's cache, and
running requests are kept packed in rows 0..B-1 (a finished request's row is filled by moving the
last one into it). A new request is staged and prefilled a chunk at a time, between decode steps
of the running batch, so a long prompt never stalls the others for more than one chunk; when its
prompt is in, it joins the running rows and decodes with the rest. An embedding input is prefilled
the same way, from the same queue and the same per-step budget, its final hidden states summed
chunk by chunk; it never takes a running row.

The thread owns the model; callers talk to it through `submit`/`embed`/`cancel`, which only touch a
thread-safe queue, and receive `Event`s through the callback they pass (the app turns that into
`loop.call_soon_threadsafe`). Nothing one request brings may stop the thread or the others: a
request that cannot be set up, or whose numbers go wrong (NaN logits), fails alone and at once; a
step that fails fails what is in flight; and `alive` tells the app if the thread has stopped all
the same.

A request that scores its prompt (`prompt_logprobs`, for `echo` with `logprobs`) is prefilled the
same way, but each chunk keeps the logits of every position, not only the last: position i's
distribution gives prompt token i+1 its log-probability, exactly as one forward pass over the
prompt would (the first token has none). A request that does not generate (`max_tokens: 0`)
finishes when its prompt is in and never takes a running row.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from autarky.generate import SamplingParams, TextPolicy, apply_penalties, sample
from autarky.runner import Runner
from autarky.tokenizer import Tokenizer

log = logging.getLogger("autarky.serve")


@dataclass
class TokenLogprob:
    token_id: int
    text: str  # the token's bytes as text (a partial UTF-8 character shows as U+FFFD)
    bytes: list[int]
    logprob: float | None  # None for a prompt's first token: nothing comes before it
    top: list[tuple[int, str, list[int], float]]  # (id, text, bytes, logprob), most likely first


@dataclass
class Event:
    """What the engine tells a request's owner: new text, and at the end a finish reason."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # in the request's first event
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    """One sequence to generate. `emit` is called from the engine thread."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    logprobs: int | None = None  # None: off; k: the chosen token's logprob and the k most likely
    prompt_logprobs: int | None = None  # None: off; k: every prompt token's logprob and the k most likely
    generate: bool = True  # False: only score the prompt (max_tokens 0)
    end_logprob: bool = False  # list the end token that stops the sequence too (legacy completions)
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generated: int = 0  # tokens sampled so far, read by the app when its client leaves early


@dataclass
class EmbedJob:
    """Inputs to embed; `done` gets every vector, or an error, once, from the engine thread."""

    inputs: list[list[int]]
    done: Callable[[list[list[float]] | None, str | None], None]
    cancelled: bool = False  # also set when one input failed: the others are not worth computing
    vectors: dict[int, list[float]] = field(default_factory=dict)


class Sequence:
    """A request's state inside the engine."""

    def __init__(self, request: Request, tokenizer: Tokenizer, vocab_size: int, device, end_ids=None):
        request.params.validate()
        self.request = request
        self.prompt = request.prompt_ids
        params = request.params
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed % 2**64)  # torch's range
        self.counts = torch.zeros(vocab_size, device=device)
        self.policy = TextPolicy(tokenizer, params.stop, params.max_tokens, end_ids)
        self.prefilled = 0
        self.next_token = -1
        self.pending: list[TokenLogprob] = []
        self.sent_at: float | None = None  # when its owner was last sent text (None: not yet)
        self.scored: list[TokenLogprob] = []  # the prompt's logprobs, until they are sent
        self.finish_reason: str | None = None

    @property
    def needs_row(self) -> bool:
        """Whether it will decode after its prompt: one token or none is sampled from the prefill."""
        return self.request.generate and self.request.params.max_tokens > 1

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled


class Pooling:
    """One embedding input's state: prefilled like a prompt, its final hidden states summed."""

    def __init__(self, job: EmbedJob, index: int):
        self.job, self.index = job, index
        self.prompt = job.inputs[index]
        self.prefilled = 0
        self.total: torch.Tensor | None = None

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled


class Engine:
    def __init__(
        self,
        runner: Runner,
        tokenizer: Tokenizer,
        prefill_chunk: int = 128,
        on_tokens: Callable[[int, int], None] | None = None,
        stream_interval: float = 0.0,
    ):
        """`stream_interval`: the least seconds between two events of one request after its first
        (0: an event per token). Each event wakes the app's event loop and becomes one streamed chunk
        that the client parses; on a CPU every core those take is one llama.cpp's threads lack, so
        tokens that come faster than this are sent together. The first token and the finish are
        never held."""
        self.runner = runner
        self.stream_interval = stream_interval
        self.tokenizer = tokenizer
        # The tokens one request may hold, prompt and completion: the runner's cache row length.
        self.context = runner.context
        self.slots = runner.slots  # running rows: its cache holds that many
        self.prefill_chunk = prefill_chunk
        self.on_tokens = on_tokens or (lambda prompt, generated: None)
        self.device = runner.device
        self.stop_ids: set[int] | None = None  # None: the tokenizer's end ids (a benchmark clears them)
        self._byte_cache: dict[int, tuple[str, list[int]]] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[Sequence | Pooling] = deque()
        self.prefilling: Sequence | Pooling | None = None
        self.running: list[Sequence] = []  # running[i] owns cache row i
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ------------------------------------------------------------ the caller's side (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="autarky-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, request: Request) -> None:
        self._inbox.put(request)

    def embed(self, job: EmbedJob) -> None:
        self._inbox.put(job)

    def cancel(self, request: Request | EmbedJob) -> None:
        request.cancelled = True
        self._inbox.put(None)  # wake the loop so the work is dropped at the next step

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running (and so will answer what is submitted)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize() + len(self.waiting)

    @property
    def busy_slots(self) -> int:
        return len(self.running) + (self.prefilling is not None)

    # ------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        with torch.inference_mode():  # a no-op for llama.cpp's runner, whose tensors are plain CPU ones
            while not self._stop.is_set():
                try:
                    idle = not (self.running or self.waiting or self.prefilling)
                    self._take_inbox(block=idle)
                    self.step()
                except Exception as e:  # a bug must not leave clients hanging: fail what is in flight
                    log.exception("engine step failed")
                    self._fail_all(f"internal error in the engine: {e}")

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._admit(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _admit(self, item: Request | EmbedJob) -> None:
        """Queue a request or an embedding job; one that cannot be set up fails alone."""
        try:
            if isinstance(item, EmbedJob):
                if not all(item.inputs):
                    raise ValueError("an embedding input has no tokens")
                self.waiting.extend(Pooling(item, i) for i in range(len(item.inputs)))
            else:
                self.waiting.append(
                    Sequence(item, self.tokenizer, self.runner.vocab_size, self.device, self.stop_ids)
                )
        except Exception as e:
            log.exception("could not admit a request")
            message = f"internal error in the engine: {e}"
            if isinstance(item, EmbedJob):
                item.done(None, message)
            else:
                self._emit(item, Event(finish_reason="error", error=message))

    def step(self) -> None:
        """One engine step: take new work, drop cancelled work, prefill up to `prefill_chunk` prompt
        and embedding tokens, then decode one token for every running request."""
        self.steps += 1
        self._take_inbox(block=False)
        self._drop_cancelled()
        budget = self.prefill_chunk
        while budget > 0 and (item := self._next_prefill()) is not None:
            budget -= self._prefill(item, budget)
        if self.running:
            self._decode()

    def _next_prefill(self) -> Sequence | Pooling | None:
        """What to prefill next: the one under way, else the first waiting if it has room to go."""
        if self.prefilling is None and self.waiting:
            first = self.waiting[0]
            if isinstance(first, Pooling) or not first.needs_row or len(self.running) < self.slots:
                self.prefilling = self.waiting.popleft()
                self.runner.stage()
        return self.prefilling

    def _drop_cancelled(self) -> None:
        if any(item.cancelled for item in self.waiting):
            for item in [item for item in self.waiting if item.cancelled]:
                self._cancelled(item)
            self.waiting = deque(item for item in self.waiting if not item.cancelled)
        if self.prefilling is not None and self.prefilling.cancelled:
            self._cancelled(self.prefilling)
            self.prefilling = None
        for i in reversed(range(len(self.running))):
            if self.running[i].cancelled:
                self._cancelled(self.running[i])
                self._release(i)

    def _cancelled(self, item: Sequence | Pooling) -> None:
        if isinstance(item, Sequence):  # an embedding's owner has gone, or was told already
            self._finish(item, "cancelled")

    def _prefill(self, item: Sequence | Pooling, budget: int) -> int:
        """Feed up to `budget` of `item`'s tokens; returns how many. A failure fails `item` alone."""
        chunk = item.prompt[item.prefilled : item.prefilled + budget]
        try:
            if isinstance(item, Pooling):
                self._pool_chunk(item, chunk)
            else:
                self._prefill_chunk(item, chunk)
        except Exception as e:
            log.exception("prefill failed")
            self.prefilling = None
            self._fail(item, f"internal error in the engine: {e}")
        return len(chunk)

    def _prefill_chunk(self, seq: Sequence, chunk: list[int]) -> None:
        scoring = seq.request.prompt_logprobs is not None
        logits = self.runner.prefill(chunk, all_logits=scoring)
        if scoring:
            self._score(seq, logits)
        seq.prefilled += len(chunk)
        if seq.prefilled == len(seq.prompt):
            self.prefilling = None
            self.on_tokens(len(seq.prompt), 0)
            if not seq.request.generate:
                self._finish(seq, "length")
                return
            self._accept(seq, logits[-1])
            if seq.finish_reason is None:
                self.runner.join(len(self.running))
                self.running.append(seq)

    def _decode(self) -> None:
        logits = self.runner.decode([s.next_token for s in self.running])
        for s, row_logits in zip(self.running, logits, strict=True):
            try:
                self._accept(s, row_logits)
            except Exception as e:  # one row's numbers gone wrong (NaN) fail its request alone
                log.exception("sampling failed")
                self._fail(s, f"internal error in the engine: {e}")
        for i in reversed(range(len(self.running))):
            if self.running[i].finish_reason is not None:
                self._release(i, scrub=self.running[i].finish_reason == "error")

    def _release(self, row: int, scrub: bool = False) -> None:
        """Free row `row`, keeping the running rows packed at the top (a failed one is scrubbed)."""
        self.runner.release(row, scrub=scrub)
        last = len(self.running) - 1
        self.running[row] = self.running[last]
        self.running.pop()

    def _accept(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Sample the next token from one row of logits and send what text it makes safe to send."""
        params = seq.request.params
        logits = apply_penalties(
            logits.float()[None], seq.counts, params.presence_penalty, params.frequency_penalty
        )
        token = int(sample(logits, params, seq.generator))
        if seq.request.first_token_at is None:
            seq.request.first_token_at = time.perf_counter()
        accepted = seq.policy.accept(token)
        if accepted:
            self.on_tokens(0, 1)
            seq.request.generated = len(seq.policy.token_ids)
            seq.next_token = token
            seq.counts[token] += 1
        if seq.request.logprobs is not None and (accepted or seq.request.end_logprob):
            seq.pending.append(self._logprob(logits[0], token, seq.request.logprobs))
        if seq.policy.finish_reason is not None:
            self._finish(seq, seq.policy.finish_reason)
        elif seq.sent_at is not None and time.perf_counter() - seq.sent_at < self.stream_interval:
            return  # held: sent with a later token
        elif (text := seq.policy.take()) or seq.pending or seq.scored:
            event = Event(text=text, logprobs=seq.pending, prompt_logprobs=seq.scored)
            seq.pending, seq.scored = [], []
            seq.sent_at = time.perf_counter()
            self._emit(seq, event)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        event = Event(
            text=seq.policy.take() if reason != "cancelled" else "",
            logprobs=seq.pending,
            prompt_logprobs=seq.scored,
            finish_reason=reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.policy.token_ids),
        )
        seq.pending, seq.scored = [], []
        self._emit(seq, event)

    def _fail(self, item: Sequence | Pooling, message: str) -> None:
        """End one request, or one embedding job, with an error at once: its client must not wait."""
        if isinstance(item, Pooling):
            if not item.job.cancelled:
                item.job.cancelled = True  # its other inputs are dropped; `done` is called once
                item.job.done(None, message)
            return
        item.finish_reason = "error"
        self._emit(item, Event(finish_reason="error", error=message))

    def _emit(self, seq: Sequence | Request, event: Event) -> None:
        request = seq if isinstance(seq, Request) else seq.request
        try:
            request.emit(event)
        except Exception:  # the owner is gone (its event loop closed): stop working for it
            log.debug("dropping a request whose owner is gone", exc_info=True)
            request.cancelled = True

    def _fail_all(self, message: str) -> None:
        for item in [*self.waiting, *self.running, *([self.prefilling] if self.prefilling else [])]:
            self._fail(item, message)
        self.waiting.clear()
        self.running.clear()
        self.prefilling = None
        self.runner.clear()

    # ------------------------------------------------------------ logprobs and embeddings

    def _token_text(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._byte_cache:
            data = self.tokenizer.token_bytes(token_id, skip_special=False)
            self._byte_cache[token_id] = (data.decode("utf-8", errors="replace"), list(data))
        return self._byte_cache[token_id]

    def _logprob(self, logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
        """Log-probabilities of the model's distribution (after penalties, before temperature/top-p)."""
        logprobs = F.log_softmax(logits.float(), dim=-1)
        top = []
        if k > 0:
            values, ids = logprobs.topk(k)
            top = [(int(i), *self._token_text(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]
        text, data = self._token_text(token)
        return TokenLogprob(token, text, data, float(logprobs[token]), top)

    def _score(self, seq: Sequence, logits: torch.Tensor) -> None:
        """The log-probabilities of the prompt tokens a chunk's logits (T, V) predict.

        Row j of the chunk starting at prompt position s predicts token s+j+1; the chunk's last row
        predicts the next chunk's first token, or, after the prompt, the first generated one.
        """
        k, start = seq.request.prompt_logprobs, seq.prefilled
        if start == 0:
            seq.scored.append(TokenLogprob(seq.prompt[0], *self._token_text(seq.prompt[0]), None, []))
        targets = seq.prompt[start + 1 : start + 1 + logits.shape[0]]
        if not targets:
            return
        logprobs = F.log_softmax(logits[: len(targets)].float(), dim=-1)
        index = torch.tensor(targets, device=logprobs.device)[:, None]
        chosen = logprobs.gather(1, index)[:, 0].tolist()
        tops = [[] for _ in targets]
        if k:
            values, ids = logprobs.topk(k, dim=-1)
            tops = [
                [(i, *self._token_text(i), v) for v, i in zip(vs, row, strict=True)]
                for vs, row in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        for token, lp, top in zip(targets, chosen, tops, strict=True):
            seq.scored.append(TokenLogprob(token, *self._token_text(token), lp, top))

    def _pool_chunk(self, item: Pooling, chunk: list[int]) -> None:
        """Add a chunk's final hidden states to its input's sum; the last chunk sends the job's vectors
        when it completes them: the mean, scaled to unit length."""
        states = self.runner.hidden(chunk).float().sum(dim=0)
        item.total = states if item.total is None else item.total + states
        item.prefilled += len(chunk)
        if item.prefilled < len(item.prompt):
            return
        self.prefilling = None
        vector = F.normalize(item.total / len(item.prompt), dim=0)
        if not bool(torch.isfinite(vector).all()):
            raise ValueError("the model's hidden states are not finite (NaN or infinity)")
        job = item.job
        job.vectors[item.index] = vector.tolist()
        if len(job.vectors) == len(job.inputs):
            job.done([job.vectors[i] for i in range(len(job.inputs))], None)
