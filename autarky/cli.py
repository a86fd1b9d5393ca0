"""`autarky VERB`: a thin Typer app. It parses, calls a stage, prints; the stages do the work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from autarky import artifact, offline
from autarky.card import CardConfig
from autarky.console import UserError, console
from autarky.data.config import ChatConfig, CurateConfig
from autarky.data.executor import Executor
from autarky.evaluate.config import EvalConfig, SuiteConfig
from autarky.gguf import ExportConfig
from autarky.interop import ImportConfig
from autarky.options import with_config
from autarky.serve import ServeConfig
from autarky.train import TrainConfig
from autarky.train.config import SFTConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="autarky: curate → tokenizer → tokenize → train → generate/chat/serve, offline, every artifact accountable.\n\n"
    "Artifacts live in a workspace (--workdir, or $AUTARKY_WORKDIR, default ./work). Start with [bold]autarky demo[/].",
)

PIPELINE, MODEL, WORKSPACE = "Make artifacts", "Use a model", "Inspect the workspace"
WORKDIR_HELP = "Workspace holding the artifacts ($AUTARKY_WORKDIR, default ./work)."
REACHABLE_VERBS = {"serve"}  # clients outside must reach it, so it stays in the host's network


@app.callback()
def network(
    ctx: typer.Context,
    isolate: bool = typer.Option(
        None,
        "--isolate/--no-isolate",
        help="Run the verb in a fresh network namespace with loopback only, where the kernel allows it "
        "(default: every verb but serve). The in-process guard is on either way.",
    ),
) -> None:
    """Cut the network before any thread starts: a namespace holds only the thread that enters it."""
    if isolate is False or (isolate is None and ctx.invoked_subcommand in REACHABLE_VERBS):
        return
    refused = offline.isolate()
    if refused and isolate:
        raise UserError(f"--isolate: {refused}; --no-isolate runs with the in-process guard alone")


def workdir_option() -> Path:
    return typer.Option(Path(os.environ.get("AUTARKY_WORKDIR", "work")), "--workdir", "-w", help=WORKDIR_HELP)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---------------------------------------------------------------- workspace verbs


@app.command("ls", rich_help_panel=WORKSPACE)
def ls_command(
    workdir: Path = workdir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
) -> None:
    """List the workspace's artifacts.

    Example: [bold]autarky ls -w work[/]
    """
    finished, unfinished = artifact.list_workspace(workdir)
    if as_json:
        print(
            json.dumps(
                [{**a.ref(), "path": str(a.path), "created": a.manifest["created"]} for a in finished],
                indent=2,
            )
        )
        return
    if not finished and not unfinished:
        console.print(f"{workdir} holds no artifacts yet; [bold]autarky demo[/] makes a full set.")
        return
    table = Table(title=f"artifacts in {workdir}")
    for column in ("kind", "name", "id", "created", "size", "inputs"):
        table.add_column(column)
    for a in finished:
        inputs = ", ".join(f"{i['kind']}/{i['name']}" for i in a.manifest.get("inputs", []))
        table.add_row(
            a.kind, a.name, a.id[7:19], a.manifest["created"], human_bytes(artifact.artifact_size(a)), inputs
        )
    for d in unfinished:
        table.add_row(d.parent.name, d.name, "[yellow]unfinished[/]", "", "", "")
    console.print(table)


@app.command(rich_help_panel=WORKSPACE)
def verify(path: Path = typer.Argument(..., help="An artifact directory.")) -> None:
    """Re-hash an artifact and everything upstream; name every mismatch and exit 1 if any.

    Example: [bold]autarky verify work/model/demo[/]
    """
    checked, problems = artifact.verify(path)
    for a in checked:
        console.print(f"checked {a.kind}/{a.name} ({len(a.manifest.get('files', {}))} files)")
    if problems:
        for p in problems:
            console.print(f"[red]MISMATCH[/] {p}")
        console.print(f"[red]{len(problems)} problem(s) found[/]")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(checked)} artifact(s) match their manifests")
    console.print(
        f"seal {checked[0].manifest.get('seal')}: record it, and the whole lineage can be checked against it"
    )


@app.command(rich_help_panel=WORKSPACE)
def lineage(
    path: Path = typer.Argument(None, help="An artifact directory (not needed with --uses)."),
    show_all: bool = typer.Option(False, "--all", help="List every source file, not the first ten."),
    uses: str = typer.Option(
        None,
        "--uses",
        help="Instead, list every artifact of the workspace made from this source file (a path, or its sha256).",
    ),
    workdir: Path = workdir_option(),
) -> None:
    """Print the tree from an artifact down to the source files it came from, or (--uses) the reverse.

    --uses answers a deletion or personal-data request: every corpus that read the file, and every
    tokenizer, model, eval and other artifact made from those corpora.

    Example: [bold]autarky lineage work/model/demo[/] or [bold]autarky lineage --uses ~/docs/letter.txt[/]
    """
    if uses is None:
        if path is None:
            raise UserError("name an artifact directory, or a source file with --uses")
        console.print(artifact.lineage(path, max_sources=10**9 if show_all else 10))
        return
    what, match = artifact.source_matcher(uses)
    found = artifact.uses(workdir, match)
    if not found:
        console.print(f"no artifact in {workdir} was made from {what}")
        return
    table = Table(title=f"artifacts in {workdir} made from {what}")
    for column in ("kind", "name", "id", "source as recorded", "documents"):
        table.add_column(column)
    for a, hits in found:
        per_source = (a.metrics.get("sources") or {}) if a.kind == "corpus" else {}
        for hit in hits:
            counts = per_source.get(hit.get("path")) or {}
            read = f"{counts['documents']} read, {counts['kept']} kept" if "kept" in counts else ""
            table.add_row(a.kind, a.name, a.id[7:19], str(hit.get("path")), read)
    console.print(table)


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


# ---------------------------------------------------------------- evaluation and report


def _task_refs(values: list[str], workdir: Path) -> list:
    """Each --tasks value as a tasks artifact when it names one, else as a task file or directory."""
    refs = []
    for value in values:
        named = (Path(value), workdir / value, workdir / "tasks" / value)
        if any((p / artifact.MANIFEST).is_file() for p in named):
            refs.append(artifact.resolve(workdir, value, "tasks"))
        elif Path(value).exists():
            refs.append(Path(value))
        else:
            raise UserError(
                f"--tasks {value}: no tasks artifact, task YAML or directory of them by that name"
            )
    return refs


def _print_eval(result) -> None:
    m = result.metrics
    table = Table(
        title=f"eval {result.name}", caption="bits per byte on each corpus's val split; tasks zero-shot"
    )
    for column in ("measure", "group", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for corpus, bpb in m["bpb"].items():
        table.add_row(f"bits/byte {corpus}", "all", f"{bpb:.4f}" if bpb is not None else "-")
        for lang, value in m["bpb_by_language"][corpus].items():
            table.add_row("", lang, f"{value:.4f}" if value is not None else "-")
    for task, metrics in m["tasks"].items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):
                table.add_row(task, metric, f"{value:.4f}")
    console.print(table)
    for sample in json.loads((result.path / "results.json").read_text())["samples"]:
        console.print(f"[dim]sample:[/] [bold]{escape(sample['prompt'])}[/]{escape(sample['completion'])}")
    console.print(f"[green]eval[/] {result.path}  (results.json, samples/, eval.png)")


def _print_compare(workdir: Path, plot: Path | None) -> None:
    from autarky.evaluate.stage import compare, plot_compare

    measures, rows = compare(workdir)
    if not rows:
        console.print(
            f"{workdir} holds no eval artifacts yet; [bold]autarky eval MODEL --corpus C[/] makes one"
        )
        return
    table = Table(
        title=f"every evaluated model in {workdir}", caption="bpb: lower is better; tasks: acc or exact match"
    )
    for column in ("model", "eval", *measures):
        table.add_column(column, justify="left" if column in ("model", "eval") else "right")
    for r in rows:
        values = [f"{r['scores'][m]:.4f}" if m in r["scores"] else "-" for m in measures]
        table.add_row(r["model"], r["eval"], *values)
    console.print(table)
    plot = plot or workdir / "eval-compare.png"
    plot_compare(measures, rows, plot)
    console.print(f"chart: {plot}")


@app.command("eval", rich_help_panel=PIPELINE)
@with_config(SuiteConfig, "suite_config")
@with_config(EvalConfig)
def eval_command(
    model: str = typer.Argument(None, help="A model artifact: path or name (not needed with --compare)."),
    corpus: list[str] = typer.Option(
        [],
        "--corpus",
        help="A corpus whose val split is scored for bits per byte, per source and language. Repeatable.",
    ),
    tasks: list[str] = typer.Option(
        [],
        "--tasks",
        help="A tasks artifact, an lm-eval task YAML (with its JSONL) or a directory of them. Repeatable.",
    ),
    suite: bool = typer.Option(
        True,
        "--suite/--no-suite",
        help="Also make the built-in tasks from each --corpus (next sentence, cloze) and score them.",
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Print every evaluated model in the workspace side by side, and chart them to --plot.",
    ),
    plot: Path = typer.Option(
        None, "--plot", help="Where --compare writes its chart (default: <workdir>/eval-compare.png)."
    ),
    name: str = typer.Option(None, "--name", help="Artifact name (default: eval-<model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json."),
    config: EvalConfig = None,
    suite_config: SuiteConfig = None,
) -> None:
    """Score a model: bits per byte on held-out text, multiple-choice and generation tasks, fixed-prompt samples.

    Tasks are lm-evaluation-harness YAML files read from disk; --corpus also makes a built-in suite
    (Russian and English next-sentence and cloze choice) from that corpus's held-out text.

    Example: [bold]autarky eval demo-model --corpus ruslit-1a2b3c4d --tasks my-tasks/ --limit 100[/]
    """
    if compare:
        _print_compare(workdir, plot)
        return
    if model is None:
        raise UserError("name the model to evaluate, or pass --compare")
    from autarky.evaluate.stage import evaluate

    result = evaluate(
        artifact.resolve(workdir, model, "model"),
        workdir,
        corpora=[artifact.resolve(workdir, c, "corpus") for c in corpus],
        tasks=_task_refs(tasks, workdir),
        config=config,
        suite=suite_config if suite else None,
        name=name,
        force=force,
    )
    if as_json:
        print((result.path / "results.json").read_text(), end="")
        return
    _print_eval(result)


@app.command("card", rich_help_panel=PIPELINE)
@with_config(CardConfig)
def card_command(
    model: str = typer.Argument(..., help="A model artifact: path or name."),
    name: str = typer.Option(None, "--name", help="Artifact name (default: <model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    config: CardConfig = None,
) -> None:
    """Write a model card, a CycloneDX ML-BOM and the EU training-content summary from the model's lineage.

    The card's inputs are the model and every eval of it in the workspace; a lineage that does not
    verify gets no card. What no manifest can tell is marked "to fill in", for a person.

    Example: [bold]autarky card demo-model --provider "Example Ltd" --license apache-2.0[/]
    """
    from autarky.card import card

    result = card(artifact.resolve(workdir, model, "model"), workdir, config, name=name, force=force)
    left = result.metrics.get("to_fill_in", {})
    for f in ("README.md", "bom.cdx.json", "training-content-summary.md"):
        note = f"  [yellow]{left[f]} field(s) for a person to fill in[/]" if left.get(f) else ""
        console.print(f"  {result.path / f}{note}")
    m = result.metrics
    console.print(f"[green]card[/] {result.path}: {m.get('evals', 0)} eval(s), BOM {m.get('serial_number')}")


@app.command(rich_help_panel=WORKSPACE)
def report(
    model: str = typer.Argument(..., help="A model artifact: path or name."),
    name: str = typer.Option(None, "--name", help="Artifact name (default: report-<model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
) -> None:
    """One page on a model from its manifests: curation counts, tokenizer fertility, training curve, evaluations.

    Written as a report artifact (report.md and its PNG charts) and printed.

    Example: [bold]autarky report demo-model[/]
    """
    from rich.markdown import Markdown

    from autarky.evaluate.report import make_report

    result = make_report(artifact.resolve(workdir, model, "model"), workdir, name=name, force=force)
    console.print(Markdown((result.path / "report.md").read_text(encoding="utf-8")))
    console.print(f"[green]report[/] {result.path}  (report.md and its charts)")


# --help lists the verbs in the order a user meets them, whatever order they are defined in above.
VERB_ORDER = [
    "demo",
    "curate",
    "curate-chat",
    "tokenizer",
    "tokenize",
    "import",
    "train",
    "sft",
    "generate",
    "chat",
    "serve",
    "export",
    "eval",
    "card",
    "report",
    "ls",
    "verify",
    "lineage",
]
app.registered_commands.sort(key=lambda c: VERB_ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    """Entry point: guard the network, run the verb; a user mistake is one red sentence and exit 2."""
    offline.install()
    try:
        app()  # standalone mode: click handles --help, usage errors (exit 2) and exit codes itself
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    except UserError as e:
        console.print(f"[red]error:[/] {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
