"""Verbs that make data: curate, curate-chat, tokenizer, tokenize."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from typer.core import TyperArgument

from autarky import artifact
from autarky.cli import chain
from autarky.cli.chain import JSON_HELP, input_help
from autarky.cli.common import PIPELINE, App, Group, app, human_bytes, workdir_option
from autarky.console import UserError, console, out
from autarky.data.config import ChatConfig, CurateConfig
from autarky.data.executor import Executor
from autarky.options import with_config
from autarky.train.config import TrainConfig
from autarky.vocab import VocabConfig

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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: CurateConfig = None,
    executor: Executor = None,
) -> None:
    """Curate raw files into a corpus: decode, normalise, filter, deduplicate, split, account for every document.

    Reads .txt .md .log .html .pdf .docx .epub .fb2 .jsonl(.gz/.zst) .parquet .warc(.gz), man pages, .zip, .tar.*,
    and text without a suffix (README, COPYING), in UTF-8 or the legacy Russian code pages.

    Example: [bold]autarky curate 'work/sources/python-*-docs' --tag license=PSF-2.0 --lang en[/]
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
    if not as_json:
        console.print(summary_table(corpus.metrics, f"corpus/{corpus.name}"))
        out.print(
            f"corpus {chain.shown(corpus.path)}  (report: {chain.shown(corpus.path / 'report.md')})",
            markup=False,
            soft_wrap=True,
        )
    chain.finish(corpus, workdir, [["tokenizer", corpus.name]], as_json)


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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: ChatConfig = None,
) -> None:
    """Curate conversations into a chat corpus for sft: roles and order checked, PII redacted, duplicates dropped, split.

    A line is OpenAI's format (a "messages" list of role and content: system, user, assistant) or
    the instruction format ("instruction", "input", "output"). Every line is kept or dropped with a reason.

    Example: [bold]autarky curate-chat 'work/sources/*-chat.jsonl' --val-fraction 0.1[/]
    """
    from autarky.data.chat import curate_chat

    result = curate_chat(sources, workdir, name=name, config=config, force=force)
    model = chain.newest_name(workdir, "model")
    if not as_json:
        _print_chat(result)
        if model is None:
            console.print(
                "[dim]sft needs a model to fine-tune: `autarky train` or `autarky import` makes one[/]"
            )
    chain.finish(result, workdir, [["sft", model or "MODEL", result.name]], as_json)


def _print_chat(result: artifact.Artifact) -> None:
    m = result.metrics
    table = Table(title=f"chat/{result.name}")
    table.add_column("conversations")
    table.add_column("count", justify="right")
    table.add_row("read", f"{m['conversations_in']:,}")
    table.add_row("kept: train / val", f"{m['splits']['train']:,} / {m['splits']['val']:,}")
    for reason, n in m["dropped"].items():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    out.print(table)
    out.print(f"chat corpus {chain.shown(result.path)}", markup=False, soft_wrap=True)


# ---------------------------------------------------------------- tokenizer and tokens


class TokenizerVerb(Group):
    """`autarky tokenizer CORPUS` trains a tokenizer; `autarky tokenizer extend MODEL CORPUS` extends a model's.

    A Click group with an argument of its own would read `extend` as the corpus: a first word that
    names a sub-command goes to it, anything else is the corpus, as before there were sub-commands.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(invoke_without_command=True, subcommand_metavar="[extend MODEL CORPUS]", **kwargs)
        self.add_command(typer.main.get_command(_extend_app), "extend")
        self.allow_interspersed_args = (
            True  # `autarky tokenizer latest --vocab-size 8192`: options after the corpus
        )

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)
        if ctx.command is not self:  # asked for the usage line of `autarky tokenizer extend`: no corpus there
            return [p for p in params if not isinstance(p, TyperArgument)]
        return params

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super().parse_args(ctx, [])
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        rest = super().parse_args(ctx, args)
        if ctx._protected_args:  # a second word after the corpus: no sub-command comes there
            ctx.fail(f"unexpected extra argument {ctx._protected_args[0]!r} after the corpus")
        return rest


_extend_app = App(add_completion=False, rich_markup_mode="rich")


@app.command("tokenizer", rich_help_panel=PIPELINE, cls=TokenizerVerb)
def tokenizer_command(
    ctx: typer.Context,
    corpus: str = typer.Argument(None, help=input_help("corpus")),
    vocab_size: int = typer.Option(
        4096, "--vocab-size", help="Tokens in the vocabulary, 7 special ones included."
    ),
    name: str = typer.Option(
        None, "--name", help="Artifact name (default: <corpus>-bpe<vocab>-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train a byte-level BPE tokenizer on a corpus's train split; report bytes per token on val.

    The result loads in Hugging Face transformers as is (AutoTokenizer), chat template included.

    `autarky tokenizer extend MODEL CORPUS --tokens N` adds tokens to a model's tokenizer instead (see its --help).

    Example: [bold]autarky tokenizer latest --vocab-size 8192[/]
    """
    from autarky.tokenizer import train_tokenizer

    if ctx.invoked_subcommand is not None:
        return
    workdir, [source] = chain.inputs(ctx, workdir, (corpus, "corpus"))
    result = train_tokenizer(source, workdir, name=name, vocab_size=vocab_size, force=force)
    if not as_json:
        _print_tokenizer(result)
    chain.finish(result, workdir, [["tokenize", source.name, result.name]], as_json)


def _print_tokenizer(result: artifact.Artifact) -> None:
    from autarky.tokenizer import summary_rows

    table = Table(
        title=f"tokenizer {result.name}",
        caption=f"{result.metrics['vocab_size']} tokens, measured on the val split",
    )
    for column in ("language", "documents", "bytes/token", "tokens/word"):
        table.add_column(column, justify="left" if column == "language" else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    out.print(table)
    out.print(f"tokenizer {chain.shown(result.path)}", markup=False, soft_wrap=True)


@_extend_app.command("extend")
@with_config(VocabConfig)
def tokenizer_extend(
    ctx: typer.Context,
    model: str = typer.Argument(
        None, help=input_help("model", " whose tokenizer to extend (ours or imported)")
    ),
    corpus: str = typer.Argument(
        None, help=input_help("corpus", " to learn the new tokens on (its train split)")
    ),
    name: str = typer.Option(
        None, "--name", help="Name of both new artifacts (default: <model>-ext<tokens>-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace existing artifacts of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: VocabConfig = None,
) -> None:
    """Add N tokens learned on a corpus to a model's tokenizer: a new tokenizer and a resized model.

    New merges are appended after the old ones, so text they do not touch is encoded as before; each
    new token's embedding (and output row) starts as the mean of the old tokens it replaces. Tokens
    per word before and after are measured on the corpus's val split, per language. Continue
    pretraining with `autarky tokenize` and `autarky train --init`.

    Example: [bold]autarky tokenizer extend latest latest --tokens 2000[/]
    """
    from autarky.vocab import extend

    workdir, [base, source] = chain.inputs(ctx, workdir, (model, "model"), (corpus, "corpus"))
    tokenizer, made = extend(base, source, workdir, config=config, name=name, force=force)
    if not as_json:
        _print_extension(tokenizer, made)
    steps = [["tokenize", source.name, tokenizer.name], ["train", "--init", made.name]]
    chain.finish(made, workdir, steps, as_json, tokenizer=chain.shape(tokenizer))


def _print_extension(tokenizer: artifact.Artifact, model: artifact.Artifact) -> None:
    m = tokenizer.metrics
    table = Table(
        title=f"tokenizer {tokenizer.name}",
        caption=f"{m['old_vocab_size']} + {m['added_tokens']} tokens, measured on the val split (before → after)",
    )
    for column in ("language", "words", "tokens/word", "words in ≤ 2 tokens", "bytes/token"):
        table.add_column(column, justify="left" if column == "language" else "right")
    before, after = m["before"], m
    rows = [(lang, b, after["val_by_lang"][lang]) for lang, b in before["val_by_lang"].items()]
    if before["val"] and len(rows) > 1:
        rows.append(("all", before["val"], after["val"]))
    for lang, b, a in rows:
        table.add_row(
            lang,
            f"{b['words']:,}",
            f"{b['tokens_per_word']} → {a['tokens_per_word']}",
            f"{b['short_word_share']:.0%} → {a['short_word_share']:.0%}",
            f"{b['bytes_per_token']} → {a['bytes_per_token']}",
        )
    out.print(table)
    out.print(f"tokenizer {chain.shown(tokenizer.path)}", markup=False, soft_wrap=True)
    out.print(f"model {chain.shown(model.path)}", markup=False, soft_wrap=True)


@app.command("tokenize", rich_help_panel=PIPELINE)
def tokenize_command(
    ctx: typer.Context,
    corpus: str = typer.Argument(None, help=input_help("corpus")),
    tokenizer: str = typer.Argument(None, help=input_help("tokenizer")),
    name: str = typer.Option(
        None, "--name", help="Artifact name (default: <corpus>-<tokenizer>-<recipe hash>)."
    ),
    workdir: Path = workdir_option(),
    workers: int = typer.Option(
        None, "--workers", help="Encoding processes (default: all cores; 1 for a small corpus)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    seq_len: int = typer.Option(
        TrainConfig.seq_len,
        "--seq-len",
        help="The training window (train's --seq-len): a train split too short to fill one is refused.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Encode a corpus with a tokenizer into train.bin / val.bin, ready for `autarky train`.

    Example: [bold]autarky tokenize latest latest[/]
    """
    from autarky.tokens import tokenize

    workdir, [source, vocabulary] = chain.inputs(ctx, workdir, (corpus, "corpus"), (tokenizer, "tokenizer"))
    result = tokenize(source, vocabulary, workdir, name=name, workers=workers, force=force, seq_len=seq_len)
    if not as_json:
        _print_tokens(result)
    window = ["--seq-len", str(seq_len)] if seq_len != TrainConfig.seq_len else []
    chain.finish(result, workdir, [["train", result.name, *window]], as_json)


def _print_tokens(result: artifact.Artifact) -> None:
    m = result.metrics
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
    out.print(table)
    out.print(f"tokens {chain.shown(result.path)}", markup=False, soft_wrap=True)
