"""The OpenAI request bodies we accept, strictly typed, and the fields we refuse by name.

A field we do not implement is never ignored: it gets a 400 that names it (tools, response_format
other than text, logit_bias, …). A field OpenAI does not have gets a 400 as an unrecognised argument.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# What OpenAI's API has and we do not do, with why; a null or empty value is let through.
UNSUPPORTED = {
    "tools": "tools / function calling is not supported by this server",
    "tool_choice": "tools / function calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "parallel_tool_calls": "tools / function calling is not supported by this server",
    "logit_bias": "logit_bias is not supported by this server",
    "audio": "audio output is not supported by this server",
    "modalities": "only text output is supported by this server",
    "prediction": "predicted outputs are not supported by this server",
    "web_search_options": "web search is not supported by this server (it is offline)",
    "reasoning_effort": "reasoning_effort is not supported by this server",
    "service_tier": "service tiers are not supported by this server",
    "store": "stored completions are not supported by this server",
    "metadata": "metadata (for stored completions) is not supported by this server",
    "suffix": "suffix (insertion) is not supported by this server",
    "dimensions": "dimensions is not supported: embeddings have the model's hidden size",
}

CHAT_ROLES = ("system", "developer", "user", "assistant")
# The seeds torch.Generator.manual_seed takes: a 64-bit integer, signed or not.
SEED_MIN, SEED_END = -(2**63), 2**64
# A temperature is 0 (greedy) or at least this: dividing logits by less overflows them to inf, and
# the softmax of inf - inf is NaN (1e-45 once failed every request in the batch).
MIN_TEMPERATURE = 0.01
# Stop strings, as OpenAI bounds them in number; each is searched for at every new token, so its
# length is bounded too.
MAX_STOPS, MAX_STOP_CHARS = 4, 256
# Alternatives per token in legacy completions' logprobs: OpenAI's limit. Scoring needs only the
# chosen token's logprob and the most likely one (lm-eval asks for 1).
MAX_LOGPROBS = 5


class RequestError(Exception):
    """A request the client must fix: becomes a 4xx with OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Strict(BaseModel):
    # No NaN or Infinity (Python's json reads them; no number we take may be one).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def check(self) -> None:
        """Checks across fields, or with OpenAI's wording, after the types (a RequestError each)."""


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False


class ResponseFormat(Strict):
    type: str


Stop = str | list[str] | None


class Sampling(Strict):
    """The fields chat and legacy completions share; null means the default."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's; vLLM's extension
    n: int | None = Field(None, ge=1, le=8)
    seed: int | None = Field(None, ge=SEED_MIN, lt=SEED_END)
    stop: Stop = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None

    def check(self) -> None:
        if self.temperature is not None and 0 < self.temperature < MIN_TEMPERATURE:
            raise RequestError(
                f"Invalid value for 'temperature': {self.temperature:g}; it must be 0 (greedy) or from "
                f"{MIN_TEMPERATURE} to 2",
                param="temperature",
            )
        stops = self.stops()
        if len(stops) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise RequestError(
                f"stop takes up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters each",
                param="stop",
            )

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for legacy completions; 0 with echo
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1)

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:
            raise RequestError(
                "max_tokens 0 generates nothing: it is only for echo (scoring the prompt)",
                param="max_tokens",
            )


class EmbeddingRequest(Strict):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True  # a prompt gets <|bos|>, as /v1/completions gives it
    add_generation_prompt: bool = True


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]


def parse(body: bytes, model: type[Strict]) -> Strict:
    """Validate a JSON body, raising RequestError with OpenAI's wording for each kind of mistake."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"We could not parse the JSON body of your request: {e}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise RequestError(
            "We could not parse the JSON body of your request: it is nested too deeply"
        ) from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    for key, why in UNSUPPORTED.items():
        if key in data and data[key] not in (None, [], {}, False):
            raise RequestError(why, param=key, code="unsupported_parameter")
    try:
        req = model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            raise RequestError(f"Unrecognized request argument supplied: {param}", param=param) from None
        if first["type"] == "missing":
            raise RequestError(f"Missing required parameter: '{param}'", param=param) from None
        raise RequestError(f"Invalid value for '{param}': {first['msg']}", param=param) from None
    req.check()
    return req


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str) or part in (
            "str",
            "list[str]",
            "list[int]",
            "list[list[int]]",
            "list[TextPart]",
            "TextPart",
        ):
            continue
        else:
            out += ("." if out else "") + part
    return out
