"""Verbs that use a model: generate, chat, serve."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from autarky import artifact
from autarky.cli.common import MODEL, app, workdir_option
from autarky.console import UserError, console
from autarky.options import with_config
from autarky.serve import ServeConfig


def _model_dir(model_ref: str, workdir: Path) -> Path:
    """Any checkpoint directory as given, else a model artifact by path or name in the workspace."""
    path = Path(model_ref)
    if (path / "config.json").is_file():
        return path
    return artifact.resolve(workdir, model_ref, "model").path


def _load_for_generation(model_ref: str, workdir: Path):
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    path = _model_dir(model_ref, workdir)
    return load_pretrained(path), Tokenizer.load(path)


def _sampling(temperature: float, top_k: int, top_p: float, max_tokens: int, seed: int | None):
    from autarky.generate import SamplingParams

    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    params.validate()
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
) -> None:
    """Continue a prompt, streaming the text to the terminal.

    Example: [bold]autarky generate work/model/demo "The list data type" --seed 0[/]
    """
    from autarky.generate import Completion, stream

    net, tokenizer = _load_for_generation(model, workdir)
    params = _sampling(temperature, top_k, top_p, max_tokens, seed)
    done = Completion()
    sys.stdout.write(prompt)
    for piece in stream(net, tokenizer, tokenizer.encode_prompt(prompt), params, completion=done):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    console.print(f"[dim]{len(done.token_ids)} tokens, finish reason: {done.finish_reason}[/]")


@app.command(rich_help_panel=MODEL)
def chat(
    model: str = typer.Argument(..., help="A model artifact (path or name)."),
    workdir: Path = workdir_option(),
    system: str = typer.Option(None, help="A system message to start the conversation."),
    temperature: float = typer.Option(0.7, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    max_tokens: int = typer.Option(300, "--max-tokens", help="Most tokens in each answer."),
    seed: int = typer.Option(None, help="Fix the sampling for repeatable answers."),
) -> None:
    """Talk with a model in the terminal; /reset starts over, /exit (or Ctrl-D) leaves.

    Example: [bold]autarky chat work/model/demo[/]
    """
    from autarky.generate import Completion, fit_conversation, stream

    net, tokenizer = _load_for_generation(model, workdir)
    params = _sampling(temperature, top_k, top_p, max_tokens, seed)
    context = net.config.max_position_embeddings
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    console.print("[dim]chatting; /reset starts over, /exit leaves[/]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
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
        done = Completion()
        sys.stdout.write("model> ")
        for piece in stream(net, tokenizer, prompt, params, completion=done):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": done.text})


@app.command(rich_help_panel=MODEL)
@with_config(ServeConfig)
def serve(
    model: str = typer.Argument(..., help="A model artifact (path or name) or a Llama checkpoint."),
    workdir: Path = workdir_option(),
    config: ServeConfig = None,
) -> None:
    """Serve a model with an OpenAI-compatible API and a web chat page.

    Keys come from --api-keys-file or $AUTARKY_API_KEYS (never the process list), e.g.
    [bold]openssl rand -hex 16 > keys.txt[/].

    Example: [bold]autarky serve work/model/demo --api-keys-file keys.txt[/]
    """
    from autarky.serve import serve as run_serve

    path = _model_dir(model, workdir)
    config.audit_log = config.audit_log or workdir / "audit" / "serve.jsonl"
    run_serve(path, config)
