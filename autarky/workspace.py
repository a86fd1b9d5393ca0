"""Looking after a workspace: what removing an artifact takes with it, what unfinished runs leave behind.

`rm` never leaves an artifact whose input is gone: it refuses, naming what was made from the one
asked, unless told to remove those too. `gc` removes what is no finished artifact: unfinished run
directories and curation's staging. One that a re-run would pick up (a training checkpoint, curated
parts), or one written in the last minutes (a run may still be at work in it), is kept unless asked.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from autarky import artifact
from autarky.artifact import KINDS, MANIFEST, Artifact
from autarky.console import UserError

# What `--resume` continues from: autarky.train.checkpoint.CHECKPOINT, spelled out here because that
# module imports torch, and `gc` should not (tests/test_workspace.py checks the two agree).
RESUMABLE = ("checkpoint.safetensors",)
STAGING = ".parts-"  # curation's staging; the same curation run again continues from the parts in it
RECENT_SECONDS = 600  # a run writes its metrics log and checkpoints more often than this


def removal(target: Artifact, cascade: bool) -> list[Artifact]:
    """What `rm` removes: the artifact, and with `cascade` everything made from it; without, a refusal
    that names those. Only the artifact's own workspace is searched: others cannot be known."""
    below = artifact.dependents(target.workspace, target)
    if below and not cascade:
        names = ", ".join(f"{a.kind}/{a.name}" for a in below)
        raise UserError(
            f"{len(below)} artifact(s) were made from {target.kind}/{target.name}: {names}; "
            f"removing it alone would leave them without an input. `autarky rm {target.name} --cascade` "
            "removes them too"
        )
    return [target, *below]


def remove(artifacts: list[Artifact]) -> None:
    """Remove finished artifacts, furthest downstream first; each loses its manifest before its files,
    so one interrupted halfway is an unfinished directory (`gc` takes it), never a damaged artifact."""
    for a in reversed(artifacts):
        (a.path / MANIFEST).unlink()
        shutil.rmtree(a.path)


@dataclass
class Leftover:
    """A directory of the workspace that is no finished artifact."""

    path: Path
    what: str
    bytes: int
    kept_because: str  # why `gc` keeps it unless `--all`; empty when it goes


def leftovers(workdir: Path, now: float | None = None) -> list[Leftover]:
    """Unfinished run directories and staging in the workspace; finished artifacts are never among them,
    nor a directory with a manifest that does not load (`autarky verify` names what is wrong with it)."""
    now = time.time() if now is None else now
    found = []
    workdir = Path(workdir)
    kind_dirs = [workdir / k for k in KINDS if (workdir / k).is_dir() and not (workdir / k).is_symlink()]
    for kind_dir in kind_dirs:
        for d in sorted(kind_dir.iterdir()):
            if d.is_symlink() or not d.is_dir() or (d / MANIFEST).exists():
                continue
            size, newest = _usage(d)
            what, resume = _what(kind_dir.name, d)
            if resume:
                kept = resume
            elif now - newest < RECENT_SECONDS:
                kept = f"written {int(now - newest)} s ago: a run may still be at work in it"
            else:
                kept = ""
            found.append(Leftover(d, what, size, kept))
    return found


def _what(kind: str, d: Path) -> tuple[str, str]:
    """What a leftover directory is, and how a re-run would pick it up, if one would."""
    if d.name.startswith(STAGING):
        done = len(list(d.glob("*.json")))
        resume = f"resumable: {done} task(s) done; the same `autarky curate` picks them up" if done else ""
        return "curation staging", resume
    if d.name.startswith("."):
        return "temporary directory", ""
    if any((d / f).is_file() for f in RESUMABLE):
        return f"unfinished {kind}", "resumable: a checkpoint; the same command with --resume continues it"
    return f"unfinished {kind}", ""


def _usage(d: Path) -> tuple[int, float]:
    """Bytes under a directory and when anything in it was last written; links are not followed."""
    size, newest = 0, d.lstat().st_mtime
    for root, dirs, files in os.walk(d):
        for entry in dirs + files:
            info = os.lstat(os.path.join(root, entry))
            newest = max(newest, info.st_mtime)
            size += info.st_size if entry in files else 0
    return size, newest


def collect(found: list[Leftover], everything: bool) -> list[Leftover]:
    """Remove the leftovers `gc` takes (all of them with `everything`); return those removed."""
    gone = [f for f in found if everything or not f.kept_because]
    for f in gone:
        shutil.rmtree(f.path)
    return gone
