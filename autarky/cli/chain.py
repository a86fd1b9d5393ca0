"""How one verb leads to the next, so a user never copies a hash by hand.

An input is a path, a name or `latest`; one not given is the newest of its kind in the workspace.
An input given as a path inside another workspace takes the output there, unless the user chose
the workspace. Every stage ends with `next: autarky ...` lines that run as printed (with `-w` when
the workspace is not the default), or with `--json`, the artifact and those commands for a program.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import typer

from autarky import artifact
from autarky.artifact import Artifact
from autarky.console import UserError, console, out

JSON_HELP = "Print the artifact's kind, name, id, path, metrics and next commands as JSON, and nothing else."
PROMPT_WORDS = 5  # the opening of a held-out document: a prompt in the model's own language and domain
FALLBACK_PROMPT = "Once upon a time"


def input_help(kind: str, what: str = "") -> str:
    """Help for an artifact argument that defaults to the newest of its kind."""
    return f"A {kind} artifact{what}: path, name or latest (default: the newest in the workspace)."


def default_workdir() -> Path:
    """The workspace a verb uses when not told: $AUTARKY_WORKDIR, else ./work."""
    return Path(os.environ.get("AUTARKY_WORKDIR", "work"))


def workdir_chosen(ctx: typer.Context) -> bool:
    """Whether the user named the workspace: -w on the command line, or $AUTARKY_WORKDIR."""
    source = ctx.get_parameter_source("workdir")
    return getattr(source, "name", None) == "COMMANDLINE" or "AUTARKY_WORKDIR" in os.environ


def shown(path: Path) -> str:
    """A path as a user would type it: relative when under the current directory."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def inputs(ctx: typer.Context, workdir: Path, *wanted: tuple[str | None, str]) -> tuple[Path, list[Artifact]]:
    """The workspace the output goes to, and each `(ref, kind)` wanted as an artifact.

    Refs given are found first: one that lies in another workspace moves the output there when the
    user did not choose the workspace, and is warned about when they did. A ref not given is then the
    newest of its kind in that workspace, and the user is told which was taken.
    """
    workdir = Path(workdir)
    found: dict[int, Artifact] = {}
    for i, (ref, kind) in enumerate(wanted):
        if ref is not None:
            found[i] = artifact.resolve(workdir, ref, kind)
            workdir = _output_workspace(workdir, found[i], workdir_chosen(ctx))
    for i, (ref, kind) in enumerate(wanted):
        if ref is None:
            found[i] = artifact.newest(workdir, kind)
            console.print(f"no {kind} named: taking the newest in {shown(workdir)}, {found[i].name}")
    return workdir, [found[i] for i in range(len(wanted))]


def _output_workspace(workdir: Path, given: Artifact, chosen: bool) -> Path:
    """Where an output goes when one input lies in `given.workspace`."""
    home = given.workspace
    if home == workdir.resolve() or given.path.parent.name != given.kind:  # the same, or in no workspace
        return workdir
    label = f"{given.kind}/{given.name}"
    if not chosen:
        console.print(f"output goes to the workspace {shown(home)}, where {label} lives")
        return home
    console.print(
        f"[bold yellow]warning:[/] {label} lives in the workspace {shown(home)}, but the output goes to "
        f"{shown(workdir)}, as -w or $AUTARKY_WORKDIR says; leave them out to keep it beside its input"
    )
    return workdir


def command(workdir: Path, *args: str) -> str:
    """`autarky ARGS`, quoted for a shell, with `-w DIR` when `workdir` is not the default workspace."""
    words = ["autarky", *args]
    if Path(workdir).resolve() != default_workdir().resolve():
        words += ["-w", shown(workdir)]
    return shlex.join(words)


def finish(made: Artifact, workdir: Path, steps: list[list[str]], as_json: bool, **extra) -> None:
    """End a stage: its artifact and next commands as JSON, or the `next:` lines, on stdout."""
    commands = [command(workdir, *step) for step in steps]
    if as_json:
        made_json = {**shape(made), "metrics": made.metrics, **extra, "next": commands}
        print(json.dumps(made_json, indent=2, ensure_ascii=False))
        return
    for line in commands:
        out.print(f"next: {line}", markup=False, soft_wrap=True)


def shape(made: Artifact) -> dict:
    """What a program needs to find an artifact again."""
    return {"kind": made.kind, "name": made.name, "id": made.id, "path": str(made.path)}


def prompt_from(corpus: Artifact | None) -> str:
    """The opening words of a line of prose in a held-out document: a prompt the model has a chance with."""
    if corpus is None:
        return FALLBACK_PROMPT
    from autarky.data.corpus import iter_documents

    for doc in iter_documents(corpus, "val", ("text",)):
        for line in doc["text"].splitlines():
            words = line.split()[:PROMPT_WORDS]
            if len(words) >= 3 and all(any(c.isalpha() for c in w) for w in words):
                return " ".join(words)
    return FALLBACK_PROMPT


def source_corpus(made: Artifact) -> Artifact | None:
    """The corpus upstream of an artifact (through tokens, a tokenizer, a base model), if any."""
    seen, pending = set(), [made]
    while pending:
        a = pending.pop(0)
        if a.kind == "corpus":
            return a
        if a.path in seen:
            continue
        seen.add(a.path)
        try:
            pending += a.inputs()
        except UserError:  # an input moved or removed: the next command goes without it
            continue
    return None


def newest_name(workdir: Path, kind: str) -> str | None:
    try:
        return artifact.newest(workdir, kind).name
    except UserError:
        return None
