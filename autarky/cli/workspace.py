"""Verbs that look after the workspace: list, show, verify, trace lineage, remove, collect leftovers.

What they find goes to stdout (`out`), so `| grep` and `> file` work; what they say about how they
found it goes to stderr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from autarky import artifact, workspace
from autarky.cli import chain
from autarky.cli.common import WORKSPACE, app, human_bytes, workdir_option
from autarky.console import console, out

NAME_HELP = (
    "An artifact: its name, kind/name, its directory, or latest (default: the newest in the workspace)."
)

# ---------------------------------------------------------------- what an artifact is, at a glance


def count(n: float) -> str:
    """1234567 → 1.2M: a count read at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def key_metric(a: artifact.Artifact) -> str:
    """The one number that says most about an artifact of its kind; empty when its stage recorded none
    or the manifest holds something else where it should be (metrics are the stage's claims, not checked)."""
    try:
        return _key_metric(a.kind, a.metrics)
    except (TypeError, ValueError, AttributeError, KeyError):
        return ""


def _key_metric(kind: str, m: dict) -> str:
    numbers = {k: v for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if kind == "corpus" and "documents_kept" in numbers:
        return f"{m['documents_kept']} docs, {human_bytes(m.get('bytes_kept', 0))}"
    if kind == "chat" and "conversations_kept" in numbers:
        return f"{m['conversations_kept']} conversations"
    if kind == "tokenizer" and "vocab_size" in numbers:
        return f"vocab {m['vocab_size']}"
    if kind == "tokens" and isinstance(m.get("train"), dict):
        total = sum(m[s].get("tokens", 0) for s in ("train", "val") if isinstance(m.get(s), dict))
        return f"{count(total)} tokens"
    if kind == "model" and "parameters" in numbers:
        bpb = f", val {m['val_bpb']:.3f} bpb" if isinstance(m.get("val_bpb"), float) else ""
        return f"{count(m['parameters'])} params{bpb}"
    if kind == "eval" and isinstance(m.get("bpb"), dict) and m["bpb"]:
        return ", ".join(f"{v:.3f} bpb" for v in list(m["bpb"].values())[:2])
    if kind == "export" and "bytes" in numbers:
        return f"{m.get('dtype', '')} {human_bytes(m['bytes'])}".strip()
    if kind == "tasks" and isinstance(m.get("tasks"), dict):
        return f"{len(m['tasks'])} tasks"
    if kind in ("card", "report") and "evals" in numbers:
        return f"{m['evals']} evals"
    return ""


def created(a: artifact.Artifact, date_only: bool = False) -> str:
    """`2026-12-01T19:54:35+00:00` as `2026-12-01 19:54` (UTC), or the date alone."""
    stamp = str(a.manifest.get("created", ""))
    return stamp[:10] if date_only else stamp[:16].replace("T", " ")


def next_steps(a: artifact.Artifact) -> list[list[str]]:
    """The verbs that take this artifact further, as the stage that made it printed them."""
    inputs = {ref["kind"]: ref["name"] for ref in a.manifest["inputs"]}
    steps = {
        "corpus": [["tokenizer", a.name]],
        "chat": [["sft", chain.newest_name(a.workspace, "model") or "MODEL", a.name]],
        "tokenizer": [["tokenize", inputs.get("corpus", "CORPUS"), a.name]],
        "tokens": [["train", a.name]],
        "eval": [["card", inputs.get("model", "MODEL")]],
        "card": [["serve", inputs.get("model", "MODEL")]],
        "export": [["serve", inputs.get("model", "MODEL")]],
    }.get(a.kind, [])
    if (
        a.kind == "model"
    ):  # as `train` and `sft` end: a chat model is talked with, a base model continues text
        corpus = chain.source_corpus(a)
        steps = [["chat", a.name], ["serve", a.name]]
        if "chat" not in inputs:
            steps.insert(0, ["generate", a.name, chain.prompt_from(corpus)])
        steps += [["eval", a.name, "--corpus", corpus.name]] if corpus else []
        steps.append(["export", a.name])
    return [*steps, ["lineage", a.name]]


def print_whole(renderable: RenderableType) -> None:
    """Print on stdout, every line whole: past the terminal's edge rather than cut or break a name."""
    needed = Measurement.get(out, out.options.update_width(1 << 16), renderable).maximum
    if needed <= out.width:
        out.print(renderable, crop=False)
        return
    wide = Console(
        file=out.file,
        width=needed,
        highlight=False,
        force_terminal=out.is_terminal,
        color_system=out.color_system,
    )
    wide.print(renderable, crop=False)


# ---------------------------------------------------------------- ls


@dataclass
class Column:
    header: str
    cells: list[str]

    @property
    def width(self) -> int:
        return max(len(line) for text in [self.header, *self.cells] for line in text.split("\n"))


def ls_columns(finished: list[artifact.Artifact], unfinished: list[Path], width: int) -> list[Column]:
    """The columns of `ls`, the least useful left out until the table fits `width`; names are never cut.

    Created loses its time and the id half its digits first, then inputs, id, created, size and the
    metric go in that order. A name longer than the terminal still prints whole: the line runs on.
    """
    rows = [(a.kind, a.name, key_metric(a), human_bytes(artifact.artifact_size(a))) for a in finished]
    rows += [(d.parent.name, d.name, unfinished_label(d), "") for d in unfinished]
    pad = [""] * len(unfinished)

    def layout(short: bool, drop: set[str]) -> list[Column]:
        columns = [
            Column("kind", [r[0] for r in rows]),
            Column("name", [r[1] for r in rows]),
            Column("metric", [r[2] for r in rows]),
            Column("size", [r[3] for r in rows]),
            Column("created", [created(a, date_only=short) for a in finished] + pad),
            Column("id", [a.id[7 : 15 if short else 19] for a in finished] + pad),
            Column(
                "inputs",
                ["\n".join(f"{i['kind']}/{i['name']}" for i in a.manifest["inputs"]) for a in finished] + pad,
            ),
        ]
        return [c for c in columns if c.header not in drop]

    drops = ["inputs", "id", "created", "size", "metric"]
    layouts = [layout(False, set()), *(layout(True, set(drops[:n])) for n in range(len(drops) + 1))]
    for columns in layouts:
        if table_width(columns) <= width:
            return columns
    return layouts[-1]


def unfinished_label(d: Path) -> str:
    resumable = any((d / f).is_file() for f in workspace.RESUMABLE)
    return "unfinished, resumable" if resumable else "unfinished"


def table_width(columns: list[Column]) -> int:
    """What a Rich table with its default box needs: each column, its padding, and the rules between."""
    return sum(c.width + 3 for c in columns) + 1


@app.command("ls", rich_help_panel=WORKSPACE)
def ls_command(
    workdir: Path = workdir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
) -> None:
    """List the workspace's artifacts: kind, name, a key metric, size, when made, id and inputs.

    Columns that do not fit the terminal are left out, the least useful first; names are never cut.

    Example: [bold]autarky ls -w work[/]
    """
    finished, unfinished = artifact.list_workspace(workdir)
    if as_json:
        print(json.dumps([as_record(a) for a in finished], indent=2, ensure_ascii=False))
        return
    if not finished and not unfinished:
        console.print(f"{workdir} holds no artifacts yet; [bold]autarky demo[/] makes a full set.")
        return
    columns = ls_columns(finished, unfinished, out.width)
    table = Table(title=f"artifacts in {workdir}", title_justify="left")
    for column in columns:
        table.add_column(column.header, no_wrap=True)
    for row in zip(*(c.cells for c in columns), strict=True):
        table.add_row(*(Text(cell) for cell in row))  # a name is text, whatever brackets it holds
    print_whole(table)
    if unfinished:
        how = escape(chain.command(workdir, "gc", "--dry-run"))
        console.print(f"{len(unfinished)} unfinished: [bold]{how}[/] says what they are", soft_wrap=True)


def as_record(a: artifact.Artifact) -> dict:
    """An artifact for a program: what `ls --json` printed before, with its size and key metric added."""
    return {
        **a.ref(),
        "path": str(a.path),
        "created": a.manifest["created"],
        "bytes": artifact.artifact_size(a),
        "metric": key_metric(a),
    }


# ---------------------------------------------------------------- show


def find(workdir: Path, ref: str | None) -> artifact.Artifact:
    """The artifact a workspace verb was asked about; with none named, the newest, and say which."""
    found = artifact.find(workdir, ref or artifact.LATEST)
    if ref in (None, artifact.LATEST):
        console.print(f"the newest artifact in {workdir}: {found.kind}/{found.name}")
    return found


def facts(a: artifact.Artifact, most_files: int = 20) -> list[tuple[str, str]]:
    """What `show` says of an artifact, row by row."""
    files = a.manifest["files"]
    made_from = [
        f"{i['kind']}/{i['name']}" + (f" (in {i['workspace']})" if "workspace" in i else "")
        for i in a.manifest["inputs"]
    ]
    if sources := a.manifest.get("sources") or []:
        made_from.append(f"{len(sources)} source files (`autarky lineage {a.name}` lists them)")
    metrics = a.metrics if isinstance(a.metrics, dict) else {}
    scalars = [
        f"{k}: {v}" for k, v in metrics.items() if isinstance(v, int | float | str) and len(str(v)) < 60
    ]
    listed = [f"{rel}  {human_bytes(f.get('bytes', 0))}" for rel, f in sorted(files.items())[:most_files]]
    more = [f"… and {len(files) - most_files} more"] if len(files) > most_files else []
    return [
        ("kind", a.kind),
        ("name", a.name),
        ("path", str(a.path)),
        ("id", a.id),
        ("created", str(a.manifest["created"])),
        ("size", f"{human_bytes(artifact.artifact_size(a))} in {len(files)} files"),
        ("made from", "\n".join(made_from) or "nothing: its first stage"),
        ("metric", key_metric(a) or "-"),
        ("metrics", "\n".join(scalars) or "-"),
        ("files", "\n".join(listed + more)),
    ]


@app.command(rich_help_panel=WORKSPACE)
def show(
    name: str = typer.Argument(None, help=NAME_HELP),
    workdir: Path = workdir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
) -> None:
    """Say what an artifact is: kind, id, when made, size, inputs, metrics, files and what to run next.

    With no name, the newest artifact in the workspace.

    Example: [bold]autarky show latest -w work[/]
    """
    a = find(workdir, name)
    files = a.manifest["files"]
    steps = [chain.command(a.workspace, *step) for step in next_steps(a)]
    if as_json:
        record = {**as_record(a), "inputs": a.manifest["inputs"], "metrics": a.metrics, "files": files}
        print(json.dumps({**record, "next": steps}, indent=2, ensure_ascii=False))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    for label, value in facts(a):
        grid.add_row(label, Text(value))  # names and paths are text, whatever brackets they hold
    print_whole(grid)
    for line in steps:
        out.print(f"next: {line}", markup=False, soft_wrap=True)


# ---------------------------------------------------------------- verify, lineage


@app.command(rich_help_panel=WORKSPACE)
def verify(
    name: str = typer.Argument(None, help=NAME_HELP),
    workdir: Path = workdir_option(),
    strict: bool = typer.Option(
        False, "--strict", help="Also fail (exit 1) when a source file a corpus read has changed since."
    ),
) -> None:
    """Re-hash an artifact and everything upstream; name every mismatch and exit 1 if any.

    Inputs made in another workspace are followed there, and said so. Source files a corpus read are
    re-hashed where they still are: one changed since is a warning (the corpus holds its own copy of the
    text, but its lineage no longer describes the file), an error with --strict.

    Example: [bold]autarky verify latest[/]
    """
    top = find(workdir, name)
    checked, problems = artifact.verify(top.path)
    for a in checked:
        where = f"  (in the workspace {chain.shown(a.workspace)})" if a.workspace != top.workspace else ""
        files = len(a.manifest.get("files", {}))
        out.print(f"checked {a.kind}/{a.name} ({files} files){where}", markup=False, soft_wrap=True)
    sources = artifact.check_sources(checked)
    report_sources(sources, strict)
    for p in problems:
        out.print(f"[red]MISMATCH[/] {escape(str(p))}", soft_wrap=True)
    if problems or (strict and sources.changed):
        out.print(f"[red]{len(problems) + (len(sources.changed) if strict else 0)} problem(s) found[/]")
        raise typer.Exit(1)
    out.print(f"[green]ok[/]: {len(checked)} artifact(s) match their manifests")
    out.print(
        f"seal {checked[0].manifest.get('seal')}: record it, and the whole lineage can be checked against it",
        soft_wrap=True,
    )


def report_sources(sources: artifact.SourceCheck, strict: bool, most: int = 10) -> None:
    """One line of counts for the recorded source files, then each changed one."""
    total = sources.checked + len(sources.missing)
    if not total:
        return
    out.print(
        f"sources: {total} recorded, {sources.checked} re-hashed, {len(sources.changed)} changed since, "
        f"{len(sources.missing)} not checked (no longer at their recorded path)",
        markup=False,
        soft_wrap=True,
    )
    label = "[red]CHANGED[/]" if strict else "[yellow]changed[/]"
    for artifact_name, path in sources.changed[:most]:
        out.print(f"{label} source {artifact_name}: {escape(path)}", soft_wrap=True)
    if len(sources.changed) > most:
        out.print(f"… and {len(sources.changed) - most} more changed sources")


@app.command(rich_help_panel=WORKSPACE)
def lineage(
    name: str = typer.Argument(None, help=NAME_HELP + " Not needed with --uses."),
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

    Example: [bold]autarky lineage latest[/] or [bold]autarky lineage --uses work/sources/python-3.*-docs/library/json.txt[/]
    """
    if uses is None:
        top = find(workdir, name)
        print_whole(artifact.lineage(top.path, max_sources=10**9 if show_all else 10))
        return
    what, match = artifact.source_matcher(uses)
    found = artifact.uses(workdir, match)
    if not found:
        out.print(f"no artifact in {workdir} was made from {what}", markup=False)
        return
    table = Table(title=f"artifacts in {workdir} made from {what}")
    for column in ("kind", "name", "id", "source as recorded", "documents"):
        table.add_column(column, no_wrap=column != "documents")
    for a, hits in found:
        per_source = (a.metrics.get("sources") or {}) if a.kind == "corpus" else {}
        for hit in hits:
            counts = per_source.get(hit.get("path")) or {}
            read = f"{counts['documents']} read, {counts['kept']} kept" if "kept" in counts else ""
            table.add_row(a.kind, a.name, a.id[7:19], str(hit.get("path")), read)
    print_whole(table)


# ---------------------------------------------------------------- rm, gc


@app.command("rm", rich_help_panel=WORKSPACE)
def rm_command(
    name: str = typer.Argument(..., help="The artifact to remove: its name, kind/name or directory."),
    cascade: bool = typer.Option(
        False,
        "--cascade",
        help="Also remove every artifact made from it (without, rm refuses and names them).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed, remove nothing."),
    workdir: Path = workdir_option(),
) -> None:
    """Remove a finished artifact; refuse while other artifacts were made from it, unless --cascade.

    Example: [bold]autarky rm latest --cascade --dry-run -w work[/]
    """
    gone = workspace.removal(artifact.find(workdir, name), cascade)
    verb = "would remove" if dry_run else "removed"
    if not dry_run:
        workspace.remove(gone)
    for a in gone:
        size = human_bytes(artifact.artifact_size(a))
        out.print(f"{verb} {a.kind}/{a.name}  {size}  {chain.shown(a.path)}", markup=False, soft_wrap=True)


@app.command(rich_help_panel=WORKSPACE)
def gc(
    workdir: Path = workdir_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed, remove nothing."),
    everything: bool = typer.Option(
        False,
        "--all",
        help="Also remove runs that could be resumed (a checkpoint, curated parts) or were written in the last 10 minutes.",
    ),
) -> None:
    """Remove unfinished run directories and staging left in the workspace; never a finished artifact.

    A run that --resume would continue, or one written in the last minutes (it may still be running),
    is listed and kept unless --all.

    Example: [bold]autarky gc -w work --dry-run[/]
    """
    found = workspace.leftovers(workdir)
    if not found:
        out.print(f"{workdir} holds nothing unfinished", markup=False)
        return
    gone = (
        workspace.collect(found, everything)
        if not dry_run
        else [f for f in found if everything or not f.kept_because]
    )
    paths = [str(f.path.relative_to(workdir)) for f in found]
    width = max(len(p) for p in paths)
    for f, path in zip(found, paths, strict=True):
        action = ("would remove" if dry_run else "removed") if f in gone else "kept"
        why = f"; {f.kept_because}" if f.kept_because else ""
        line = f"{action:<12}  {path:<{width}}  {human_bytes(f.bytes):>9}  {f.what}{why}"
        out.print(line, markup=False, soft_wrap=True)
    kept = len(found) - len(gone)
    if kept and not everything:
        console.print(f"{kept} kept; [bold]--all[/] removes them too")
