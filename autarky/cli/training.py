"""Verbs that make and move models: import, train, sft, export, and the demo that chains them all."""

from __future__ import annotations

from pathlib import Path

import typer

from autarky import artifact
from autarky.cli.common import PIPELINE, app, human_bytes, workdir_option
from autarky.console import console
from autarky.gguf import ExportConfig
from autarky.interop import ImportConfig
from autarky.options import with_config
from autarky.train import TrainConfig
from autarky.train.config import SFTConfig

# ---------------------------------------------------------------- training and generation


@app.command("import", rich_help_panel=PIPELINE)
@with_config(ImportConfig)
def import_command(
    source: Path = typer.Argument(..., help="A Hugging Face checkpoint directory on this machine."),
    workdir: Path = workdir_option(),
    name: str = typer.Option(
        None, help="Name of both artifacts (default: the directory's name + recipe hash)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing artifacts of the same name."),
    config: ImportConfig = None,
) -> None:
    """Import open weights (Llama, Mistral, Qwen2, Qwen3 in safetensors) as a model and a tokenizer artifact.

    Nothing is downloaded and nothing is unpickled; what the model would compute differently is refused by name.

    Example: [bold]autarky import ~/models/Qwen2.5-0.5B-Instruct --dtype bfloat16[/]
    """
    from autarky.interop import import_model

    model, tokenizer = import_model(source, workdir, config, name=name, force=force)
    m, licence = model.metrics, model.config["license"]
    console.print(
        f"[green]model[/] {model.path}: {model.config['architecture']}, {m['parameters'] / 1e6:,.1f}M params, "
        f"{'/'.join(m['dtype'])}, context {m['context']}, licence {licence.get('declared') or licence.get('title') or 'not declared'}"
    )
    console.print(f"[green]tokenizer[/] {tokenizer.path}: {tokenizer.metrics['vocab_size']:,} tokens")


@app.command("train", rich_help_panel=PIPELINE)
@with_config(TrainConfig)
def train_command(
    tokens: str = typer.Argument(..., help="A tokens artifact: path or name."),
    workdir: Path = workdir_option(),
    init: str = typer.Option(None, help="Start from this model artifact's weights (fine-tuning)."),
    name: str = typer.Option(None, help="Artifact name (default: preset + recipe hash)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an unfinished run from its last checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    config: TrainConfig = None,
) -> None:
    """Pretrain a Llama-family model on a tokens artifact.

    Example: [bold]autarky train demo-tokens --preset tiny --minutes 5[/]
    """
    from autarky.train import train

    tokens_artifact = artifact.resolve(workdir, tokens, "tokens")
    init_artifact = artifact.resolve(workdir, init, "model") if init else None
    model = train(tokens_artifact, workdir, config, name=name, resume=resume, force=force, init=init_artifact)
    m = model.metrics
    console.print(
        f"[green]model[/] {model.path}: {m['parameters'] / 1e6:.2f}M params, {m['steps']} steps, "
        f"val loss {m['val_loss']:.3f}, {m['val_bpb']:.3f} bits/byte, {m['tokens_per_s'] or 0:,.0f} tokens/s"
    )


@app.command("sft", rich_help_panel=PIPELINE)
@with_config(SFTConfig)
def sft_command(
    model: str = typer.Argument(..., help="A model artifact to fine-tune: path or name."),
    chat: str = typer.Argument(..., help="A chat corpus artifact (from curate-chat): path or name."),
    workdir: Path = workdir_option(),
    name: str = typer.Option(None, help="Artifact name (default: <model>-sft-<recipe hash>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an unfinished run from its last checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    config: SFTConfig = None,
) -> None:
    """Fine-tune a model to chat: loss on the assistant's tokens only, short conversations packed.

    With --lora R only low-rank adapters train on a frozen model; the artifact holds the merged
    model and, in adapter/, the adapter alone for PEFT.

    Example: [bold]autarky sft demo-model python-chat --minutes 2 --lora 8[/]
    """
    from autarky.train.sft import sft

    result = sft(
        artifact.resolve(workdir, model, "model"),
        artifact.resolve(workdir, chat, "chat"),
        workdir,
        config,
        name=name,
        resume=resume,
        force=force,
    )
    m = result.metrics
    adapter = f"; PEFT adapter in {result.path / 'adapter'}" if m["lora_rank"] else ""
    console.print(
        f"[green]model[/] {result.path}: {m['steps']} steps, held-out assistant loss "
        f"{m['initial_val_loss']:.3f} → {m['val_loss']:.3f}, {m['val_bpb']:.3f} bits/byte{adapter}"
    )


@app.command("export", rich_help_panel=PIPELINE)
@with_config(ExportConfig)
def export_command(
    model: str = typer.Argument(..., help="A model artifact: path or name."),
    workdir: Path = workdir_option(),
    name: str = typer.Option(None, "--name", help="Artifact name (default: <model>-<dtype>-<recipe hash>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    config: ExportConfig = None,
) -> None:
    """Write a model as one GGUF file for llama.cpp and Ollama, tokenizer and chat template inside.

    Example: [bold]autarky export work/model/demo --format gguf --dtype q8_0[/]
    """
    from autarky.gguf import FILE, export

    result = export(artifact.resolve(workdir, model, "model"), workdir, config, name=name, force=force)
    path = result.path / FILE
    console.print(f"[green]export[/] {path}: {config.dtype}, {human_bytes(result.metrics.get('bytes', 0))}")
    console.print(f"[dim]llama.cpp: llama-cli -m {path}   Ollama: a Modelfile saying FROM {path}[/]")


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

    print_result(
        run_demo(
            workdir,
            source=source,
            minutes=minutes,
            max_steps=max_steps,
            vocab_size=vocab_size,
            preset=preset,
            sft_minutes=sft_minutes,
        )
    )
