"""Verbs that use a model: generate, chat, serve."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from autarky import artifact
from autarky.cli.common import MODEL, app, workdir_option
from autarky.console import UserError, console
from autarky.options import in_flags, with_config
from autarky.serve import ServeConfig


def _model_dir(model_ref: str | None, workdir: Path) -> Path:
    """Any checkpoint directory as given, else a model artifact by path or name in the workspace;
    none given: the newest model there, said so."""
    if model_ref is None:
        newest = artifact.newest(workdir, "model")
        console.print(f"no model named: taking the newest in {workdir}, {newest.name}")
        return newest.path
    path = Path(model_ref)
    if (path / "config.json").is_file():
        return path
    return artifact.resolve(workdir, model_ref, "model").path


def _load_for_generation(model_ref: str, workdir: Path, engine: str, dtype: str):
    """The model's runner (`autarky.runner`: PyTorch or llama.cpp) and its tokenizer."""
    from autarky.runner import open_runner
    from autarky.tokenizer import Tokenizer

    path = _model_dir(model_ref, workdir)
    return open_runner(path, engine, dtype), Tokenizer.load(path)


def engine_option():
    return typer.Option(
        "auto", "--engine", help="torch, llama.cpp, or auto (llama.cpp on a CPU when installed: faster)."
    )


def dtype_option():
    return typer.Option("fp32", "--dtype", help="fp32 (exact), bf16, or int8 (q8_0 in llama.cpp).")


def _sampling(temperature: float, top_k: int, top_p: float, max_tokens: int, seed: int | None):
    from autarky.generate import SamplingParams

    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    try:
        params.validate()
    except UserError as e:
        raise UserError(in_flags(str(e), SamplingParams, every_field=True)) from e
    return params


@app.command(rich_help_panel=MODEL)
def generate(
    model: str = typer.Argument(
        ..., help="A model artifact (path or name) or any Llama checkpoint directory."
    ),
    prompt: str = typer.Argument(..., help="Text to continue."),
    workdir: Path = workdir_option(),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    max_tokens: int = typer.Option(200, "--max-tokens", help="Most tokens to generate."),
    seed: int = typer.Option(None, help="Fix the sampling for a repeatable result."),
    engine: str = engine_option(),
    dtype: str = dtype_option(),
) -> None:
    """Continue a prompt, streaming the text to the terminal.

    Example: [bold]autarky generate latest "The list data type" --seed 0[/]
    """
    from autarky.generate import Completion, stream

    net, tokenizer = _load_for_generation(model, workdir, engine, dtype)
    params = _sampling(temperature, top_k, top_p, max_tokens, seed)
    done = Completion()
    sys.stdout.write(prompt)
    for piece in stream(net, tokenizer, tokenizer.encode_prompt(prompt), params, completion=done):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    console.print(f"[dim]{len(done.token_ids)} tokens, finish reason: {done.finish_reason}[/]")
    if done.capped:
        context = net.context
        console.print(
            f"[dim]the model's context ({context} tokens) capped --max-tokens {max_tokens} at "
            f"{context - done.prompt_tokens}, after the prompt's {done.prompt_tokens}[/]"
        )


CHAT_COMMANDS = "/help lists these, /reset starts over, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply"


@app.command(rich_help_panel=MODEL)
def chat(
    model: str = typer.Argument(None, help="A model artifact (path or name; default: the newest)."),
    workdir: Path = workdir_option(),
    system: str = typer.Option(None, help="A system message to start the conversation."),
    temperature: float = typer.Option(0.7, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    max_tokens: int = typer.Option(300, "--max-tokens", help="Most tokens in each answer."),
    seed: int = typer.Option(None, help="Fix the sampling for repeatable answers."),
    engine: str = engine_option(),
    dtype: str = dtype_option(),
) -> None:
    """Talk with a model in the terminal; /help lists the commands, Ctrl-C stops a reply, Ctrl-D leaves.

    Example: [bold]autarky chat latest[/]
    """
    from autarky.generate import fit_conversation
    from autarky.model import NOT_CHAT_TUNED, chat_tuned

    path = _model_dir(model, workdir)
    net, tokenizer = _load_for_generation(str(path), workdir, engine, dtype)
    params = _sampling(temperature, top_k, top_p, max_tokens, seed)
    context = net.context
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    if chat_tuned(path) is False:
        console.print(f"[yellow]note:[/] {NOT_CHAT_TUNED}")
    if sys.stdin.isatty():
        import readline  # noqa: F401  (input() then edits the line with the arrow keys, and keeps a history)
    console.print(f"[dim]chatting; {CHAT_COMMANDS}[/]")
    while True:
        line = _ask()
        if line is None or line.strip() in ("/exit", "/quit"):
            break
        if line.strip() in ("/help", "/?"):
            console.print(CHAT_COMMANDS)
            continue
        if line.strip() == "/reset":
            messages = list(start)
            continue
        try:
            messages, prompt = fit_conversation(
                tokenizer, [*messages, {"role": "user", "content": line}], len(start), max_tokens, context
            )
        except UserError as e:
            console.print(f"[red]{e}[/]; say something shorter")
            continue
        messages.append({"role": "assistant", "content": _reply(net, tokenizer, prompt, params)})


def _ask() -> str | None:
    """The user's next line; None at the end of input. Ctrl-C here clears the line, as in a shell."""
    while True:
        try:
            return input("you> ")
        except EOFError:
            return None
        except KeyboardInterrupt:
            console.print("\n[dim](/exit or Ctrl-D leaves)[/]")


def _reply(net, tokenizer, prompt: list[int], params) -> str:
    """Stream one answer and return its text; Ctrl-C ends the answer, not the session."""
    from autarky.generate import stream

    pieces = []
    sys.stdout.write("model> ")
    try:
        for piece in stream(net, tokenizer, prompt, params):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        console.print(" [dim](stopped)[/]", end="")
    sys.stdout.write("\n")
    return "".join(pieces)


@app.command(rich_help_panel=MODEL)
@with_config(ServeConfig)
def serve(
    model: str = typer.Argument(
        None, help="A model artifact (path or name; default: the newest) or a Llama checkpoint."
    ),
    workdir: Path = workdir_option(),
    config: ServeConfig = None,
) -> None:
    """Serve a model with an OpenAI-compatible API and a web chat page.

    Keys come from --api-keys-file or $AUTARKY_API_KEYS (never the process list), e.g.
    [bold]openssl rand -hex 16 > keys.txt[/].

    Example: [bold]autarky serve latest --api-keys-file keys.txt[/]
    """
    from autarky.serve import serve as run_serve

    path = _model_dir(model, workdir)
    config.audit_log = config.audit_log or workdir / "audit" / "serve.jsonl"
    run_serve(path, config)
