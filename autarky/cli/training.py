"""Verbs that make and move models: import, train, sft, export, and the demo that chains them all."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from autarky import artifact
from autarky.cli import chain
from autarky.cli.chain import JSON_HELP, input_help
from autarky.cli.common import PIPELINE, app, human_bytes, workdir_option
from autarky.console import console, out
from autarky.gguf import ExportConfig
from autarky.interop import ImportConfig
from autarky.options import with_config
from autarky.train import TrainConfig
from autarky.train.config import SFTConfig

# ---------------------------------------------------------------- training and generation

INIT_HELP = (
    "Start from this model's weights, to train a finished model more: a new model artifact (its "
    "lineage names MODEL) with a fresh optimizer and schedule, warmup included, and MODEL's architecture "
    "(--preset is not used). An unfinished run continues with --resume instead, its optimizer state kept."
)


@contextmanager
def says_how_to_resume(flag: str | None = "--resume") -> Iterator[None]:
    """Ctrl-C in a training run: where its checkpoint is, and the command that continues from it
    (this very command, with `flag` and without --force)."""
    from autarky.train.checkpoint import Interrupted

    try:
        yield
    except Interrupted as stop:
        words = [w for w in sys.argv[1:] if w != "--force"]
        if stop.step is None:
            console.print(f"[yellow]interrupted[/] before {stop.run_dir} had a checkpoint: nothing to resume")
        else:
            console.print(f"[yellow]interrupted:[/] {stop.run_dir} holds a checkpoint at step {stop.step}")
            words += [flag] if flag and flag not in words else []
        out.print(f"next: {shlex.join(['autarky', *words])}", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


@app.command("import", rich_help_panel=PIPELINE)
@with_config(ImportConfig)
def import_command(
    source: Path = typer.Argument(..., help="A Hugging Face checkpoint directory on this machine."),
    workdir: Path = workdir_option(),
    name: str = typer.Option(
        None, help="Name of both artifacts (default: the directory's name + recipe hash)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing artifacts of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: ImportConfig = None,
) -> None:
    """Import open weights (Llama, Mistral, Qwen2, Qwen3, DeepSeek-V3 in safetensors) as a model and a tokenizer artifact.

    Nothing is downloaded and nothing is unpickled; what the model would compute differently is refused by name.

    Example: [bold]autarky import ~/models/Qwen2.5-0.5B-Instruct --dtype bfloat16[/]
    """
    from autarky.interop import import_model

    model, tokenizer = import_model(source, workdir, config, name=name, force=force)
    m, licence = model.metrics, model.config["license"]
    if not as_json:
        declared = licence.get("declared") or licence.get("title") or "not declared"
        out.print(
            f"model {chain.shown(model.path)}: {model.config['architecture']}, {m['parameters'] / 1e6:,.1f}M params, "
            f"{'/'.join(m['dtype'])}, context {m['context']}, licence {declared}",
            markup=False,
            soft_wrap=True,
        )
        out.print(
            f"tokenizer {chain.shown(tokenizer.path)}: {tokenizer.metrics['vocab_size']:,} tokens",
            markup=False,
            soft_wrap=True,
        )
    steps = [["generate", model.name, chain.FALLBACK_PROMPT], ["chat", model.name], ["serve", model.name]]
    chain.finish(model, workdir, steps, as_json, tokenizer=chain.shape(tokenizer))


@app.command("train", rich_help_panel=PIPELINE)
@with_config(TrainConfig)
def train_command(
    ctx: typer.Context,
    tokens: str = typer.Argument(None, help=input_help("tokens")),
    workdir: Path = workdir_option(),
    init: str = typer.Option(None, metavar="MODEL", help=INIT_HELP),
    name: str = typer.Option(None, help="Artifact name (default: <corpus>-<preset>-<recipe hash>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an unfinished run from its last checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: TrainConfig = None,
) -> None:
    """Pretrain a Llama-family model on a tokens artifact.

    Example: [bold]autarky train latest --preset tiny --minutes 5[/]
    """
    from autarky.train import train

    workdir, [tokens_artifact] = chain.inputs(ctx, workdir, (tokens, "tokens"))
    init_artifact = artifact.resolve(workdir, init, "model") if init else None
    with says_how_to_resume():
        model = train(
            tokens_artifact, workdir, config, name=name, resume=resume, force=force, init=init_artifact
        )
    m = model.metrics
    if not as_json:
        out.print(
            f"model {chain.shown(model.path)}: {m['parameters'] / 1e6:.2f}M params, {m['steps']} steps, "
            f"val loss {m['val_loss']:.3f}, {m['val_bpb']:.3f} bits/byte, {m['tokens_per_s'] or 0:,.0f} tokens/s",
            markup=False,
            soft_wrap=True,
        )
    chain.finish(model, workdir, _model_steps(model, chat=False), as_json)


def _model_steps(model: artifact.Artifact, chat: bool) -> list[list[str]]:
    """What a new model is for: a chat model is talked with; a pretrained one continues text first."""
    corpus = chain.source_corpus(model)
    steps = [["chat", model.name], ["serve", model.name]]
    if not chat:
        steps.insert(0, ["generate", model.name, chain.prompt_from(corpus)])
    if corpus is not None:
        steps.append(["eval", model.name, "--corpus", corpus.name])
    return steps


@app.command("sft", rich_help_panel=PIPELINE)
@with_config(SFTConfig)
def sft_command(
    ctx: typer.Context,
    model: str = typer.Argument(None, help=input_help("model", " to fine-tune")),
    chat: str = typer.Argument(None, help=input_help("chat", " (from curate-chat)")),
    workdir: Path = workdir_option(),
    name: str = typer.Option(None, help="Artifact name (default: <model>-sft-<recipe hash>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an unfinished run from its last checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: SFTConfig = None,
) -> None:
    """Fine-tune a model to chat: loss on the assistant's tokens only, short conversations packed.

    With --lora R only low-rank adapters train on a frozen model; the artifact holds the merged
    model and, in adapter/, the adapter alone for PEFT.

    Example: [bold]autarky sft latest latest --minutes 2 --lora 8[/]
    """
    from autarky.train.sft import sft

    workdir, [base, conversations] = chain.inputs(ctx, workdir, (model, "model"), (chat, "chat"))
    with says_how_to_resume():
        result = sft(base, conversations, workdir, config, name=name, resume=resume, force=force)
    m = result.metrics
    if not as_json:
        adapter = f"; PEFT adapter in {chain.shown(result.path / 'adapter')}" if m["lora_rank"] else ""
        out.print(
            f"model {chain.shown(result.path)}: {m['steps']} steps, held-out assistant loss "
            f"{m['initial_val_loss']:.3f} → {m['val_loss']:.3f}, {m['val_bpb']:.3f} bits/byte{adapter}",
            markup=False,
            soft_wrap=True,
        )
    chain.finish(result, workdir, _model_steps(result, chat=True), as_json)


@app.command("export", rich_help_panel=PIPELINE)
@with_config(ExportConfig)
def export_command(
    ctx: typer.Context,
    model: str = typer.Argument(None, help=input_help("model")),
    workdir: Path = workdir_option(),
    name: str = typer.Option(None, "--name", help="Artifact name (default: <model>-<dtype>-<recipe hash>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: ExportConfig = None,
) -> None:
    """Write a model as one GGUF file for llama.cpp and Ollama, tokenizer and chat template inside.

    Example: [bold]autarky export latest --format gguf --dtype q8_0[/]
    """
    from autarky.gguf import FILE, export

    workdir, [source] = chain.inputs(ctx, workdir, (model, "model"))
    result = export(source, workdir, config, name=name, force=force)
    path = chain.shown(result.path / FILE)
    if not as_json:
        out.print(
            f"export {path}: {config.dtype}, {human_bytes(result.metrics.get('bytes', 0))}",
            markup=False,
            soft_wrap=True,
        )
        out.print(
            f"llama.cpp: llama-cli -m {path}   Ollama: a Modelfile saying FROM {path}",
            markup=False,
            soft_wrap=True,
        )
    chain.finish(result, workdir, [["serve", source.name]], as_json)


@app.command(rich_help_panel=PIPELINE)
def demo(
    workdir: Path = workdir_option(),
    source: Path = typer.Option(None, help="Use your own documents instead of Python's documentation."),
    minutes: float = typer.Option(8.0, help="Pretraining budget in minutes."),
    sft_minutes: float = typer.Option(2.0, "--sft-minutes", help="Chat fine-tuning budget in minutes."),
    max_steps: int = typer.Option(
        100_000, "--max-steps", help="Stop pretraining and fine-tuning earlier at this many steps."
    ),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Tokens in the BPE vocabulary."),
    preset: str = typer.Option("tiny", help="Model size: tiny (~4M), small (~30M), base (~125M), 1b."),
) -> None:
    """The whole pipeline in one command: curate → tokenizer → tokenize → train → sample → chat data → sft → chat.

    With no --source it learns from this Python's own documentation, which every machine has, and
    makes its instruction set from the same pages. A second run reuses every finished artifact.

    Example: [bold]autarky demo --minutes 2 --sft-minutes 0.5[/]
    """
    from autarky.demo import print_result, run_demo

    with says_how_to_resume(flag=None):  # the demo resumes its runs by itself
        made = run_demo(
            workdir,
            source=source,
            minutes=minutes,
            max_steps=max_steps,
            vocab_size=vocab_size,
            preset=preset,
            sft_minutes=sft_minutes,
        )
    print_result(made)
