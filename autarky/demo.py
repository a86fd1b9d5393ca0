"""The main job: the whole pipeline on an embedded default corpus, then a sample of what the model says.

The default corpus is Python's own documentation, rendered from the interpreter that runs autarky:
the help topics that ship in `pydoc_data` and the docstrings of the standard library. Every machine
that can run autarky has it, nobody downloads it, and it is the same text on every machine with the
same Python version (man pages and /usr/share/doc are missing from minimal images and differ
between distributions). Only docstrings and signatures are written, never module data, so values
such as environment variables never reach the corpus.

The chat stage makes its instruction set from the same documentation, with no network and no other
model: "What does `json.dumps` do?" answered by the first paragraph of its docstring, "Which module
provides `dumps`?" by its module, "Tell me about X." by a page's first paragraph. The pretrained
model is fine-tuned on it (sft) and the demo ends with a short chat with the result.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from autarky import artifact
from autarky.artifact import Artifact, write_atomic
from autarky.console import UserError, console

# Modules that open windows, print on import, or are test suites: no documentation worth learning.
SKIP_MODULES = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "__hello__",
    "__phello__",
}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# A documented function or class of a library page (render_module's layout) and its docstring's first paragraph.
API_ENTRY = re.compile(r"^(?:function|class) ([A-Za-z]\w*)[^\n]*\n\n(.+?)(?:\n\n|\Z)", re.M | re.S)
UNDERLINE = re.compile(r"^[*=~#^-]{3,}$")
ANSWER_CHARS = 320  # an answer is the first sentences of a paragraph, up to this length


def _doc_of(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return ADDRESS.sub("", doc)


class _Elided:
    def __repr__(self) -> str:
        return "..."


def _signature(name: str, obj) -> str:
    """The call signature, with every default that is not a small literal shown as `...`.

    Defaults are live objects: `cgi.parse(environ=os.environ)` would otherwise print the
    environment, secrets included, into the corpus.
    """
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = []
    for p in signature.parameters.values():
        literal = (
            isinstance(p.default, (type(None), bool, int, float, str, bytes)) and len(repr(p.default)) <= 40
        )
        if p.default is not inspect.Parameter.empty and not literal:
            p = p.replace(default=_Elided())
        params.append(p)
    return ADDRESS.sub("", f"{name}{signature.replace(parameters=params)}")


def render_module(module) -> str:
    """A module's docstring, then each public class and function with its signature and docstring."""
    parts = [f"{module.__name__}\n{'=' * len(module.__name__)}\n", _doc_of(module)]
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for name in sorted(set(public)):
        obj = getattr(module, name, None)
        if (
            not (inspect.isclass(obj) or inspect.isroutine(obj))
            or getattr(obj, "__module__", None) != module.__name__
        ):
            continue
        doc = _doc_of(obj)
        if not doc:
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        parts.append(f"\n{kind} {_signature(name, obj)}\n\n{doc}")
        if inspect.isclass(obj):
            for method_name, method in sorted(vars(obj).items()):
                if method_name.startswith("_") or not callable(method):
                    continue
                if method_doc := _doc_of(method):
                    parts.append(
                        f"\n  {name}.{_signature(method_name, method)}\n\n"
                        + "\n".join("    " + line for line in method_doc.splitlines())
                    )
    return "\n".join(parts).strip() + "\n"


def export_python_docs(dest: Path) -> Path:
    """Write the interpreter's documentation as .txt files under `dest` (unchanged files untouched)."""
    from pydoc_data.topics import topics

    dest.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, str] = {}
    for topic, text in sorted(topics.items()):
        wanted[f"topics/{topic}.txt"] = f"{topic}\n\n{text.strip()}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in SKIP_MODULES:
                continue
            try:
                module = importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - platform-specific modules fail in many ways
                continue
            text = render_module(module)
            if len(text) > 200:
                wanted[f"library/{name}.txt"] = text
    for rel, text in wanted.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)
    return dest


# ---------------------------------------------------------------- the instruction set


def first_sentences(paragraph: str, limit: int = ANSWER_CHARS) -> str:
    """A paragraph on one line, cut after the last sentence that ends within `limit` characters."""
    text = " ".join(paragraph.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit].rsplit(" ", 1)[0] + "…"


def _about(text: str) -> dict | None:
    """ "Tell me about <title>." answered by the page's first paragraph of prose (not a heading, not code)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    title = paragraphs[0].strip().splitlines()[0].strip() if paragraphs else ""
    for paragraph in paragraphs[1:]:
        lines = [line.strip() for line in paragraph.splitlines()]
        if paragraph.startswith((" ", "\t")) or any(UNDERLINE.match(line) for line in lines):
            continue  # code, or a heading
        if len(prose := " ".join(lines)) >= 40:
            return conversation(f"Tell me about {title}.", first_sentences(prose))
    return None


def conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def instruction_set(source: Path) -> list[dict]:
    """Questions and answers from documentation files alone: no network, no other model.

    A library page (`library/<module>.txt`, as `render_module` writes it) gives "What does
    `module.name` do?" for each documented function and class, answered by its docstring's first
    paragraph, and "Which module provides `name`?" where only one module does. Any other page gives
    "Tell me about <its title>." answered by its first paragraph.
    """
    chats, api = [], {}
    pages = [Path(source)] if Path(source).is_file() else sorted(Path(source).rglob("*"))
    for path in [p for p in pages if p.suffix in (".txt", ".md") and p.is_file()]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.parent.name == "library":
            module = text.split("\n", 1)[0].strip()
            api[module] = [(m[1], first_sentences(m[2])) for m in API_ENTRY.finditer(text)]
        elif about := _about(text):
            chats.append(about)
    owners = Counter(name for entries in api.values() for name, _ in entries)
    for module, entries in sorted(api.items()):
        for name, answer in entries:
            chats.append(conversation(f"What does `{module}.{name}` do?", answer))
            if owners[name] == 1:
                chats.append(
                    conversation(f"Which module provides `{name}`?", f"`{name}` is in the `{module}` module.")
                )
    return chats


def write_instruction_set(source: Path, dest: Path) -> Path:
    """The instruction set of `source` as JSON lines (the file is left untouched when unchanged)."""
    text = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in instruction_set(source))
    if not text:
        raise UserError(
            f"{source} holds no page to make questions from (.txt or .md with a title and a paragraph)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_text(encoding="utf-8") != text:
        write_atomic(dest, text)
    return dest


# ---------------------------------------------------------------- the demo


@dataclass
class DemoResult:
    corpus: Artifact
    tokenizer: Artifact
    tokens: Artifact
    model: Artifact
    sample_prompt: str
    sample: str
    chat: Artifact
    chat_model: Artifact
    exchange: list[tuple[str, str, str]] = field(default_factory=list)  # (label, question, answer)
    evaluation: Artifact | None = None
    model_card: Artifact | None = None


def run_demo(
    workdir: Path,
    source: Path | None = None,
    minutes: float = 8.0,
    max_steps: int = 100_000,
    vocab_size: int = 4096,
    preset: str = "tiny",
    prompt: str | None = None,
    sft_minutes: float = 2.0,
) -> DemoResult:
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize

    workdir = Path(workdir)
    if source is None:
        console.rule("[bold]0 · source: Python's own documentation")
        source = export_python_docs(
            workdir / "sources" / f"python-{sys.version_info.major}.{sys.version_info.minor}-docs"
        )
        console.print(f"wrote the documentation of this Python to {source}")
    elif not Path(source).exists():
        raise UserError(f"--source {source} does not exist")
    console.rule("[bold]1 · curate")
    corpus = curate([Path(source)], workdir)
    console.rule("[bold]2 · tokenizer")
    tokenizer = train_tokenizer(corpus, workdir, vocab_size=vocab_size)
    console.rule("[bold]3 · tokenize")
    tokens = tokenize(corpus, tokenizer, workdir)
    console.rule("[bold]4 · train")
    model = _pretrain(tokens, workdir, preset, minutes, max_steps)
    console.rule("[bold]5 · sample")
    prompt = prompt or "The list data type"
    sample = _sample(model, prompt)
    console.rule("[bold]6 · chat data")
    chat_file = write_instruction_set(Path(source), workdir / "sources" / f"{Path(source).name}-chat.jsonl")
    chat = _curate_chat(chat_file, workdir)
    console.rule("[bold]7 · sft")
    chat_model = _fine_tune(model, chat, workdir, sft_minutes, max_steps)
    exchange = _exchange(chat_model, chat)
    console.rule("[bold]8 · eval and card")
    evaluation, model_card = _account(chat_model, corpus, workdir)
    return DemoResult(
        corpus, tokenizer, tokens, model, prompt, sample, chat, chat_model, exchange, evaluation, model_card
    )


def _account(model: Artifact, corpus: Artifact, workdir: Path) -> tuple[Artifact, Artifact]:
    """What the model is worth (bits per byte, the built-in English suite) and its card and ML-BOM."""
    from autarky.card import CardConfig, card
    from autarky.evaluate.config import EvalConfig, SuiteConfig
    from autarky.evaluate.stage import evaluate

    suite = SuiteConfig(suite_items=100, suite_languages=["en"])
    evaluation = evaluate(model, workdir, [corpus], config=EvalConfig(bpb_tokens=20_000), suite=suite)
    return evaluation, card(model, workdir, CardConfig())


def _pretrain(tokens: Artifact, workdir: Path, preset: str, minutes: float, max_steps: int) -> Artifact:
    from autarky.train import TrainConfig, train

    config = TrainConfig(
        preset=preset,
        max_steps=max_steps,
        minutes=minutes,
        schedule="wsd",
        seq_len=256,
        batch_size=16,
        lr=3e-3,
        warmup_steps=30,
        eval_interval=100,
        checkpoint_interval=50,
    )
    return train(
        tokens, workdir, config, resume=True
    )  # a demo killed mid-training picks up from its last checkpoint


def _sample(model: Artifact, prompt: str) -> str:
    from autarky.generate import SamplingParams, complete
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    tok, net = Tokenizer.load(model.path), load_pretrained(model.path)
    params = SamplingParams(temperature=0.7, top_k=40, max_tokens=120, seed=0)
    return complete(net, tok, [tok.bos_id, *tok.encode(prompt)], params).text


def _curate_chat(chat_file: Path, workdir: Path) -> Artifact:
    from autarky.data.chat import curate_chat

    return curate_chat([chat_file], workdir)


def _fine_tune(model: Artifact, chat: Artifact, workdir: Path, minutes: float, max_steps: int) -> Artifact:
    from autarky.train.config import SFTConfig
    from autarky.train.sft import sft

    config = SFTConfig(
        seq_len=256,
        batch_size=16,
        max_steps=max_steps,
        minutes=minutes,
        lr=1e-3,
        schedule="wsd",
        warmup_steps=10,
        eval_interval=100,
        checkpoint_interval=50,
        eval_tokens=8192,
    )
    return sft(model, chat, workdir, config, resume=True)


def _exchange(chat_model: Artifact, chat: Artifact) -> list[tuple[str, str, str]]:
    """The fine-tuned model's answers to a question it was trained on and one held out: with the
    Python docs, "What does `json.dumps` do?" and the first held-out "Which module provides ...?"."""
    from autarky.data.chat import iter_conversations
    from autarky.generate import SamplingParams, complete
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    tok, net = Tokenizer.load(chat_model.path), load_pretrained(chat_model.path)
    # Greedy, with a frequency penalty: a small model left to pure argmax soon repeats itself.
    params = SamplingParams(temperature=0.0, max_tokens=60, frequency_penalty=0.5)
    exchange = []
    for label, split, wanted in (
        ("seen in training", "train", "What does `json.dumps` do?"),
        ("held out", "val", "Which module provides"),
    ):
        questions = [c[0] for c in iter_conversations(chat, split)]
        question = next((q for q in questions if q["content"].startswith(wanted)), questions[0])
        answer = complete(net, tok, tok.apply_chat_template([question]), params).text
        exchange.append((label, question["content"], answer.strip()))
    return exchange


def summary_table(result: DemoResult) -> Table:
    table = Table(title="autarky demo: what was made")
    for column in ("stage", "artifact", "id", "key figures"):
        table.add_column(column)
    c, t, k, m = result.corpus.metrics, result.tokenizer.metrics, result.tokens.metrics, result.model.metrics
    h, s = result.chat.metrics, result.chat_model.metrics
    rows = [
        (
            "curate",
            result.corpus,
            f"{c.get('documents_in', '?')} documents in, {c.get('documents_kept', '?')} kept",
        ),
        (
            "tokenizer",
            result.tokenizer,
            f"vocab {t.get('vocab_size', '?')}, {t.get('bytes_per_token', t.get('val', {}).get('bytes_per_token', '?'))} bytes/token",
        ),
        (
            "tokenize",
            result.tokens,
            f"{k.get('train', {}).get('tokens', '?'):,} train tokens"
            if isinstance(k.get("train", {}).get("tokens"), int)
            else "",
        ),
        (
            "train",
            result.model,
            f"{m['parameters'] / 1e6:.1f}M params, {m['steps']} steps, val loss {m['initial_val_loss']:.2f} → {m['val_loss']:.2f}, {m['val_bpb']:.3f} bits/byte, {m['tokens_per_s'] or 0:,.0f} tok/s",
        ),
        (
            "chat data",
            result.chat,
            f"{h['conversations_in']:,} conversations, {h['splits']['train']:,} train / {h['splits']['val']:,} held out",
        ),
        (
            "sft",
            result.chat_model,
            f"{s['steps']} steps, {s['epochs']} epochs, held-out assistant loss {s['initial_val_loss']:.2f} → {s['val_loss']:.2f}, {s['val_bpb']:.3f} bits/byte",
        ),
    ]
    for stage, a, figures in rows:
        table.add_row(stage, f"{a.kind}/{a.name}", a.id[7:19], figures)
    return table


def print_result(result: DemoResult) -> None:
    console.print(summary_table(result))
    console.print(
        f"\n[bold]sample[/] (prompt: [italic]{result.sample_prompt}[/])\n{result.sample_prompt}[cyan]{result.sample}[/]\n"
    )
    console.print(artifact.lineage(result.chat_model.path, max_sources=5))
    console.print(f"\n[bold]chat[/] with {result.chat_model.kind}/{result.chat_model.name} (greedy)")
    for label, question, answer in result.exchange:
        console.print(f"[dim]({label})[/]\n[bold]you>[/] {question}\n[bold]model>[/] [cyan]{answer}[/]")
    if result.evaluation is not None and result.model_card is not None:
        console.print(f"\n[bold]eval[/] {result.evaluation.path}: {result.evaluation.metrics}")
        console.print(
            f"[bold]card[/] {result.model_card.path} (README.md, bom.cdx.json, training-content-summary.md)"
        )
    from autarky.cli.chain import finish  # the CLI's own `next:` lines, so the demo ends as every stage does

    chat_model = result.chat_model
    finish(chat_model, chat_model.workspace, [["chat", chat_model.name], ["serve", chat_model.name]], False)
