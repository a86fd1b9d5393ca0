"""`autarky serve`: an OpenAI-compatible server with continuous batching, keys, audit and a web chat.

engine.py batches and samples in a background thread; app.py puts the endpoints (routes.py) behind
the gate (gate.py: host, origin and content-type checks, body limit, metrics, audit); connection.py
bounds what a connection may hold (deadlines, a cap); jobs.py bridges the app and the engine thread;
answers.py shapes the output as OpenAI's; protocol.py the request bodies; access.py keys and the
audit log; metrics.py Prometheus text; precision.py fp32/bf16/int8. docs/security.md says what
each protection covers.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from autarky.console import UserError, console
from autarky.options import setting

KEYS_ENV = "AUTARKY_API_KEYS"  # keys, separated by commas or whitespace: not in the process list
SERVED_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what serving reads
# Also read when present: a sharded checkpoint's index (and every *.safetensors), the chat template, stop ids.
ALSO_SERVED = (
    "model.safetensors.index.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass
class ServeConfig:
    host: str = setting("127.0.0.1", help="Address to listen on (loopback unless you say otherwise).")
    port: int = setting(8000, help="Port to listen on.")
    engine: str = setting(
        "auto",
        help="torch, llama.cpp (on the model's GGUF export, made when missing), or auto: llama.cpp on a CPU "
        "when installed, else torch.",
    )
    dtype: str = setting(
        "fp32", help="fp32, bf16, or int8 (weight-only, per-channel scales; q8_0 in llama.cpp)."
    )
    slots: int = setting(16, help="Requests decoded together (KV-cache rows).")
    max_queue: int = setting(64, help="Requests waiting for a slot before 429s.")
    prefill_chunk: int = setting(128, help="Prompt tokens per engine step.")
    stream_interval_ms: float = setting(
        0.0,
        help="Least milliseconds between two streamed chunks of one request; faster tokens are sent "
        "together, which frees CPU for decoding (20 is a frame of a 50 Hz screen). 0: a chunk per "
        "token. The first token is never held.",
    )
    max_body_bytes: int = setting(
        1_000_000, flags=("--max-body",), help="Largest request body in bytes (else 413)."
    )
    api_keys: list[str] = setting(
        factory=list,
        flags=("--api-key",),
        help="A key clients send as Bearer. Every local user can read it in the process list: "
        f"prefer --api-keys-file or ${KEYS_ENV} (comma-separated).",
    )
    api_keys_file: Path | None = setting(None, help="A file of keys, one a line.")
    audit_log: Path | None = setting(
        None, help="The append-only audit log (default <workdir>/audit/serve.jsonl)."
    )
    audit_content: bool = setting(
        False, flags=("--audit-content",), help="Also log prompt and completion text."
    )
    model_name: str | None = setting(
        None, flags=("--name",), help="Model name clients use (default: the directory name)."
    )
    threads: int = setting(
        0,
        help="Compute threads (0: every core for llama.cpp, fewer while other work takes them; "
        "torch's default for torch).",
    )
    max_model_len: int | None = setting(
        None, help="Tokens per request, prompt + completion (default: the model's context)."
    )
    allow_no_key: bool = setting(
        False,
        flags=("--allow-no-key",),
        help="Allow a non-loopback --host with no API key (anyone who can reach it).",
    )
    allowed_hosts: list[str] = setting(
        factory=list,
        flags=("--allowed-host",),
        help="A Host name clients may use besides the bind address (* for any).",
    )
    header_timeout: float = setting(10.0, help="Seconds for a request's line and headers.")
    body_timeout: float = setting(30.0, help="Seconds for a request's body.")
    max_connections: int = setting(512, help="Open connections; more are answered 503.")

    def validate(self) -> None:
        """Each flag's mistake as a UserError that names the flag."""
        from autarky.runner import choose_engine
        from autarky.serve.precision import check_dtype

        check_dtype(self.dtype)
        choose_engine(self.engine)
        checks = [
            (self.slots >= 1, f"--slots must be at least 1 (got {self.slots})"),
            (self.max_queue >= 0, f"--max-queue must be 0 or more (got {self.max_queue})"),
            (self.prefill_chunk >= 1, f"--prefill-chunk must be at least 1 (got {self.prefill_chunk})"),
            (
                0 <= self.stream_interval_ms <= 1000,
                f"--stream-interval-ms must be from 0 to 1000 (got {self.stream_interval_ms})",
            ),
            (
                self.max_body_bytes >= 1024,
                f"--max-body must be at least 1024 bytes (got {self.max_body_bytes})",
            ),
            (self.threads >= 0, f"--threads must be 0 (torch's default) or more (got {self.threads})"),
            (0 <= self.port <= 65535, f"--port must be from 0 to 65535 (got {self.port})"),
            (
                self.max_model_len is None or self.max_model_len >= 2,
                f"--max-model-len must be at least 2 tokens (got {self.max_model_len})",
            ),
            (self.header_timeout > 0, f"--header-timeout must be more than 0 s (got {self.header_timeout})"),
            (self.body_timeout > 0, f"--body-timeout must be more than 0 s (got {self.body_timeout})"),
            (self.max_connections >= 1, f"--max-connections must be at least 1 (got {self.max_connections})"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


def check_exposure(host: str, keys_required: bool, allow_no_key: bool) -> None:
    """Refuse to listen beyond loopback with no API key unless the operator says so."""
    if not _is_loopback(host) and not keys_required and not allow_no_key:
        raise UserError(
            f"--host {host} is reachable from other machines and no API key is set: give --api-key or "
            "--api-keys-file, or --allow-no-key to serve anyone who can reach it"
        )


def check_tokenizer(tokenizer, model_path: Path) -> None:
    """The tokenizer beside the model must have a chat template and an eos token: chat needs both."""
    if tokenizer.chat_template is None:
        raise UserError(
            f"the tokenizer in {model_path} has no chat template (tokenizer_config.json names none); "
            "autarky serves models whose tokenizer can render a conversation"
        )
    if not tokenizer.stop_ids:  # a tokenizer that names no eos token raises here, in one sentence
        raise UserError(f"the tokenizer in {model_path} has no token that ends a generation")


def check_weights(model_path: Path) -> None:
    """Refuse to serve files that differ from the sha256 the model artifact's manifest recorded.

    A directory without a manifest (a checkpoint made elsewhere) has nothing to check against: a
    warning. The manifest's own integrity and the lineage are `autarky verify`'s to check.
    """
    from autarky.artifact import MANIFEST, load, sha256_file

    model_path = Path(model_path)
    if not (model_path / MANIFEST).is_file():
        console.print(f"[yellow]warning:[/] {model_path} has no {MANIFEST}: its weights are served unchecked")
        return
    files = load(model_path).manifest.get("files", {})
    for name in sorted({*SERVED_FILES, *ALSO_SERVED, *(p.name for p in model_path.glob("*.safetensors"))}):
        path = model_path / name
        if not path.is_file():
            continue  # loading names what is missing
        if name not in files:
            raise UserError(f"{path} is not in the model's {MANIFEST}: it was added after the model was made")
        if sha256_file(path) != files[name]["sha256"]:
            raise UserError(
                f"{path} differs from the sha256 in the model's {MANIFEST}: it changed after the model "
                f"was made; refusing to serve it (`autarky verify {model_path}` checks the whole lineage)"
            )


def build_app(model_path: Path, config: ServeConfig):
    """Load the model and tokenizer and return the ASGI app (the engine starts with the app)."""
    from autarky.model import chat_tuned, read_config
    from autarky.runner import open_runner, outside_this_thread
    from autarky.serve.access import AuditLog, Keys, key_id_secret
    from autarky.serve.app import Settings, create_app
    from autarky.serve.engine import Engine
    from autarky.serve.gate import HostPolicy
    from autarky.tokenizer import Tokenizer

    config.validate()
    keys = Keys.load(
        config.api_keys, config.api_keys_file, os.environ.get(KEYS_ENV), key_id_secret(config.audit_log)
    )
    check_exposure(config.host, keys.required, config.allow_no_key)
    check_weights(model_path)
    tokenizer = Tokenizer.load(model_path)
    check_tokenizer(tokenizer, model_path)
    model_config = read_config(model_path)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise UserError(
            f"the tokenizer in {model_path} has {tokenizer.vocab_size} tokens but the model only "
            f"{model_config.vocab_size}: they do not belong together"
        )
    context = model_config.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > context:
        raise UserError(
            f"--max-model-len {config.max_model_len} is more than the model's context ({context})"
        )
    runner = outside_this_thread(
        open_runner,
        model_path,
        config.engine,
        config.dtype,
        slots=config.slots,
        context=config.max_model_len,
        threads=config.threads,
        batch=max(config.prefill_chunk, config.slots),
    )
    engine = Engine(
        runner,
        tokenizer,
        prefill_chunk=config.prefill_chunk,
        stream_interval=config.stream_interval_ms / 1000,
    )
    settings = Settings(
        model_name=config.model_name or Path(model_path).resolve().name,
        keys=keys,
        max_queue=config.max_queue,
        max_body_bytes=config.max_body_bytes,
        audit=AuditLog(config.audit_log, config.audit_content),
        hosts=HostPolicy(config.host, config.allowed_hosts),
        chat_tuned=chat_tuned(model_path),
    )
    return create_app(engine, settings), settings


def serve(model_path: Path, config: ServeConfig) -> None:
    import uvicorn

    from autarky.serve.connection import Limits, check_port, server_config

    if config.api_keys:
        console.print(
            "[yellow]warning:[/] --api-key puts the key in the process list, where every user of this "
            f"machine can read it; give keys with --api-keys-file or the {KEYS_ENV} environment variable"
        )
    config.validate()
    check_port(config.host, config.port)  # before the model loads, and in one sentence, not uvicorn's trace
    app, settings = build_app(model_path, config)
    if not _is_loopback(config.host):
        console.print(
            f"[yellow]warning:[/] listening on {config.host}, reachable from other machines"
            + ("" if settings.keys.required else " with no API key required (--allow-no-key)")
        )
    engine = app.state.engine
    if settings.chat_tuned is False:
        from autarky.model import NOT_CHAT_TUNED

        console.print(f"[yellow]note:[/] {NOT_CHAT_TUNED}; the API and the web chat say so too")
    console.print(
        f"serving [bold]{settings.model_name}[/] ({engine.runner.name}, {config.dtype}, {config.slots} slots of "
        f"{engine.context} tokens) on "
        f"http://{config.host}:{config.port}  — web chat at /, API at /v1"
        + (f", audit log {config.audit_log}" if config.audit_log else "")
    )
    limits = Limits(config.header_timeout, config.body_timeout, config.max_connections)
    try:
        uvicorn.Server(server_config(app, config.host, config.port, limits)).run()
    finally:
        settings.audit.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
