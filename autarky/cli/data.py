"""Verbs that make data: curate, curate-chat, tokenizer, tokenize."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from autarky import artifact
from autarky.cli.common import PIPELINE, app, human_bytes, workdir_option
from autarky.console import UserError, console
from autarky.data.config import ChatConfig, CurateConfig
from autarky.data.executor import Executor
from autarky.options import with_config

# ---------------------------------------------------------------- curate


@app.command(rich_help_panel=PIPELINE)
@with_config(Executor, "executor")
@with_config(CurateConfig)
def curate(
    sources: list[Path] = typer.Argument(..., help="Files, directories (read recursively) or globs."),
    name: str = typer.Option(
        None, "--name", help="Artifact name (default: <first source dir>-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an artifact with this name exists."),
    tag: list[str] = typer.Option(
        [],
        "--tag",
        help="key=value carried by every document, e.g. license=CC-BY-4.0; SRC::key=value tags only the documents of source SRC. The value is all after the first =.",
    ),
    quality: str = typer.Option(
        None,
        "--quality",
        help="Shortcut for the quality settings: web (judge HTML/WARC text), all (every document), or off.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's metrics as JSON."),
    config: CurateConfig = None,
    executor: Executor = None,
) -> None:
    """Curate raw files into a corpus: decode, normalise, filter, deduplicate, split, account for every document.

    Reads .txt .md .html .pdf .docx .epub .fb2 .jsonl(.gz/.zst) .parquet .warc(.gz), man pages, .zip and .tar.*
    archives, in UTF-8 or the legacy Russian code pages.

    Example: [bold]autarky curate ~/docs 'mail/*.warc.gz' --tag license=internal --tag ~/docs::origin=wiki --lang ru[/]
    """
    from autarky.data.curate import curate as run_curate
    from autarky.data.curate import parse_tags
    from autarky.data.report import summary_table

    config.tags, config.source_tags = parse_tags(tag)
    if quality is not None:
        if quality not in ("web", "all", "off"):
            raise UserError(f"--quality is web, all or off, not {quality!r}")
        on = quality != "off"
        config.gopher_quality = config.gopher_repetition = config.fineweb_quality = on
        config.quality_scope = "all" if quality == "all" else "web"
    if config.languages and not config.langid:
        raise UserError("--lang needs language identification; drop --no-langid")
    config.languages = sorted(set(config.languages))
    corpus = run_curate(
        sources,
        workdir,
        name=name,
        config=config,
        force=force,
        workers=executor.workers or None,
        engine=executor.engine,
        ray_address=executor.ray_address,
    )
    if as_json:
        print(json.dumps(corpus.metrics, indent=2, ensure_ascii=False))
        return
    console.print(summary_table(corpus.metrics, f"corpus/{corpus.name}"))
    console.print(f"[green]corpus[/] {corpus.path}  (report: {corpus.path / 'report.md'})")


@app.command("curate-chat", rich_help_panel=PIPELINE)
@with_config(ChatConfig)
def curate_chat_command(
    sources: list[Path] = typer.Argument(
        ..., help="JSON-lines files, directories or globs: one conversation per line."
    ),
    name: str = typer.Option(
        None, "--name", help="Artifact name (default: <first source dir>-chat-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an artifact with this name exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's metrics as JSON."),
    config: ChatConfig = None,
) -> None:
    """Curate conversations into a chat corpus for sft: roles and order checked, PII redacted, duplicates dropped, split.

    A line is OpenAI's format (a "messages" list of role and content: system, user, assistant) or
    the instruction format ("instruction", "input", "output"). Every line is kept or dropped with a reason.

    Example: [bold]autarky curate-chat support/*.jsonl --val-fraction 0.1[/]
    """
    from autarky.data.chat import curate_chat

    result = curate_chat(sources, workdir, name=name, config=config, force=force)
    m = result.metrics
    if as_json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"chat/{result.name}")
    table.add_column("conversations")
    table.add_column("count", justify="right")
    table.add_row("read", f"{m['conversations_in']:,}")
    table.add_row("kept: train / val", f"{m['splits']['train']:,} / {m['splits']['val']:,}")
    for reason, n in m["dropped"].items():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    console.print(table)
    console.print(f"[green]chat corpus[/] {result.path}")


# ---------------------------------------------------------------- tokenizer and tokens


@app.command("tokenizer", rich_help_panel=PIPELINE)
def tokenizer_command(
    corpus: str = typer.Argument(..., help="A corpus artifact: path or name."),
    vocab_size: int = typer.Option(
        4096, "--vocab-size", help="Tokens in the vocabulary, 7 special ones included."
    ),
    name: str = typer.Option(None, "--name", help="Artifact name (default: bpe<vocab>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's metrics as JSON."),
) -> None:
    """Train a byte-level BPE tokenizer on a corpus's train split; report bytes per token on val.

    The result loads in Hugging Face transformers as is (AutoTokenizer), chat template included.

    Example: [bold]autarky tokenizer ruslit-1a2b3c4d --vocab-size 8192[/]
    """
    from autarky.tokenizer import summary_rows, train_tokenizer

    result = train_tokenizer(
        artifact.resolve(workdir, corpus, "corpus"), workdir, name=name, vocab_size=vocab_size, force=force
    )
    if as_json:
        print(json.dumps(result.metrics, indent=2, ensure_ascii=False))
        return
    table = Table(
        title=f"tokenizer {result.name} · {result.metrics['vocab_size']} tokens",
        caption="measured on the val split",
    )
    for column in ("language", "documents", "bytes/token", "tokens/word"):
        table.add_column(column, justify="left" if column == "language" else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    console.print(table)
    console.print(f"[green]tokenizer[/] {result.path}")


@app.command("tokenize", rich_help_panel=PIPELINE)
def tokenize_command(
    corpus: str = typer.Argument(..., help="A corpus artifact: path or name."),
    tokenizer: str = typer.Argument(..., help="A tokenizer artifact: path or name."),
    name: str = typer.Option(
        None, "--name", help="Artifact name (default: <corpus>-<tokenizer>-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    workers: int = typer.Option(
        None, "--workers", help="Encoding processes (default: all cores; 1 for a small corpus)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's metrics as JSON."),
) -> None:
    """Encode a corpus with a tokenizer into train.bin / val.bin, ready for `autarky train`.

    Example: [bold]autarky tokenize ruslit-1a2b3c4d bpe8192-5e6f7a8b[/]
    """
    from autarky.tokens import tokenize

    result = tokenize(
        artifact.resolve(workdir, corpus, "corpus"),
        artifact.resolve(workdir, tokenizer, "tokenizer"),
        workdir,
        name=name,
        workers=workers,
        force=force,
    )
    m = result.metrics
    if as_json:
        print(json.dumps(m, indent=2))
        return
    table = Table(title=f"tokens {result.name} ({m['dtype']})")
    for column in ("split", "documents", "tokens", "text", "bytes/token"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("train", "val"):
        s = m[split]
        table.add_row(
            split,
            f"{s['documents']:,}",
            f"{s['tokens']:,}",
            human_bytes(s["bytes"]),
            str(s["bytes_per_token"]),
        )
    console.print(table)
    console.print(f"[green]tokens[/] {result.path}")
