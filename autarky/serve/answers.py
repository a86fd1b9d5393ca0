"""A job's output in OpenAI's shapes: chat or legacy completions, whole or streamed.

The two endpoints answer the same way (wait for every choice, or stream events as chunks, then
usage and [DONE]) and differ only in how a choice looks; `ChatAnswer` and `CompletionAnswer` hold
that difference, `answer` the rest.
"""

from __future__ import annotations

import time

from autarky.serve.engine import Event, TokenLogprob
from autarky.serve.jobs import ClientGone, EngineError, EventStream, Job, sse


class ChatAnswer:
    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def __init__(self, n: int, logprobs: bool):
        self.n, self.logprobs = n, logprobs

    def choice(self, i: int, result: dict) -> dict:
        return {
            "index": i,
            "message": {"role": "assistant", "content": result["text"]},
            "logprobs": {"content": chat_logprobs(result["logprobs"])} if self.logprobs else None,
            "finish_reason": result["finish_reason"],
        }

    def opening(self) -> list[dict]:
        return [self._delta(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def deltas(self, i: int, event: Event) -> list[dict]:
        out = []
        if event.text or event.logprobs:
            lp = {"content": chat_logprobs(event.logprobs)} if self.logprobs else None
            out.append(self._delta(i, {"content": event.text}, logprobs=lp))
        if event.finish_reason:
            out.append(self._delta(i, {}, finish=event.finish_reason))
        return out

    @staticmethod
    def _delta(i: int, delta: dict, finish=None, logprobs=None) -> dict:
        return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


class CompletionAnswer:
    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, echoes: list[str], logprobs: bool, echo_offsets: list[list[int]] | None = None):
        """`echoes[i]`: the prompt text choice i starts with ("" unless echo is on); `echo_offsets[i]`:
        where each of its prompt tokens starts in that text, when the prompt is scored (echo and
        logprobs): its logprobs then come first, the prompt's tokens, then the generated ones."""
        self.echoes, self.logprobs, self.echo_offsets = echoes, logprobs, echo_offsets
        self.offsets = [len(e) for e in echoes]  # where a streamed choice's next text starts

    def choice(self, i: int, result: dict) -> dict:
        logprobs = None
        if self.logprobs:
            logprobs = legacy_logprobs(result["logprobs"], len(self.echoes[i]))
            if self.echo_offsets is not None:
                scored = legacy_logprobs(result["prompt_logprobs"], offsets=self.echo_offsets[i])
                logprobs = {key: scored[key] + logprobs[key] for key in scored}
        return {
            "index": i,
            "text": self.echoes[i] + result["text"],
            "finish_reason": result["finish_reason"],
            "logprobs": logprobs,
        }

    def opening(self) -> list[dict]:
        if self.echo_offsets is not None:
            return []  # a scored prompt's text goes out with its logprobs, in the choice's first event
        return [self._piece(i, echo) for i, echo in enumerate(self.echoes) if echo]

    def deltas(self, i: int, event: Event) -> list[dict]:
        if not (event.text or event.logprobs or event.prompt_logprobs or event.finish_reason):
            return []
        text, lp = event.text, None
        if self.logprobs:
            lp = legacy_logprobs(event.logprobs, self.offsets[i])
            if event.prompt_logprobs and self.echo_offsets is not None:
                scored = legacy_logprobs(event.prompt_logprobs, offsets=self.echo_offsets[i])
                lp = {key: scored[key] + lp[key] for key in scored}
                text = self.echoes[i] + text
        self.offsets[i] += len(event.text)
        return [self._piece(i, text, finish=event.finish_reason, logprobs=lp)]

    @staticmethod
    def _piece(i: int, text: str, finish=None, logprobs=None) -> dict:
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}


Answer = ChatAnswer | CompletionAnswer


async def answer(
    job: Job, shape: Answer, record: dict, model: str, prompt_tokens: int, stream: bool, include_usage: bool
):
    """The response to a started job: a JSON body, or an event stream when `stream` is set."""
    meta = {"id": f"{shape.id_prefix}-{record['request_id']}", "created": int(time.time()), "model": model}
    if stream:
        return EventStream(_chunks(job, shape, record, meta, prompt_tokens, include_usage))
    try:
        results = await job.results()
    except ClientGone:
        record["tokens_out"] = generated(job)
        raise
    record["tokens_out"] = sum(r["completion_tokens"] for r in results)
    record["completion"] = [r["text"] for r in results]
    return {
        **meta,
        "object": shape.object,
        "choices": [shape.choice(i, r) for i, r in enumerate(results)],
        "usage": usage(prompt_tokens, record["tokens_out"]),
    }


async def _chunks(job: Job, shape: Answer, record: dict, meta: dict, prompt_tokens: int, include_usage: bool):
    base = {**meta, "object": shape.chunk_object}
    extra = {"usage": None} if include_usage else {}
    texts = [""] * len(job.requests)
    try:
        for choice in shape.opening():
            yield sse({**base, "choices": [choice], **extra})
        while job.open:
            try:
                i, event = await job.next()
            except EngineError as e:
                yield sse(e.body())
                return
            texts[i] += event.text
            record["tokens_out"] += event.completion_tokens
            for choice in shape.deltas(i, event):
                yield sse({**base, "choices": [choice], **extra})
        record["completion"] = texts
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(prompt_tokens, record["tokens_out"])})
        yield sse("[DONE]")
    except ClientGone:
        record["status"] = 499
    finally:
        job.close()
        record["tokens_out"] = generated(job)  # what was made, though a client that left saw less


def generated(job: Job) -> int:
    """Tokens sampled for the job's choices so far (the engine thread counts them as it goes)."""
    return sum(r.generated for r in job.requests)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(entries: list[TokenLogprob]) -> list[dict]:
    return [
        {
            "token": e.text,
            "logprob": e.logprob,
            "bytes": e.bytes,
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for _, t, b, lp in e.top],
        }
        for e in entries
    ]


def legacy_logprobs(entries: list[TokenLogprob], offset: int = 0, offsets: list[int] | None = None) -> dict:
    """Legacy completions' logprobs; `offset` is where the first entry's text starts in the choice,
    or `offsets` where each does (a prompt's, whose special tokens the echoed text leaves out)."""
    if offsets is None:
        offsets = []
        for e in entries:
            offsets.append(offset)
            offset += len(e.text)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        # A prompt's first token has no logprob, and so no alternatives: null, as OpenAI's echo gives.
        # Tokens that show as the same text (halves of characters) share a key: the likeliest's value.
        "top_logprobs": [
            None if e.logprob is None else {t: lp for _, t, _, lp in reversed(e.top)} for e in entries
        ],
        "text_offset": offsets,
    }
