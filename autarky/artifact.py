"""Artifacts and their manifests: write, hash, load, verify, trace lineage, list the workspace.

An artifact is a directory `<workdir>/<kind>/<name>/` with its files and a `manifest.json` written
last and atomically; a directory without a manifest is unfinished and never read as input.

Two hashes make a manifest tamper-evident without making identical runs differ:
- `id`: the sha256 of what the artifact is and what it was made from (schema, kind, config, input
  ids, source hashes, file hashes). Identical runs give identical ids, whenever and however they ran.
- `seal`: the sha256 of the whole manifest but the seal itself: the id, names, created, network,
  producer, metrics, recipe, source paths, and the seals of the inputs. Since every input is named by
  its seal, the seal of the last artifact covers the whole lineage, down to every source file.
`verify` recomputes both, re-hashes every file and names anything not listed, so no field, file or
input can change unnoticed unless whoever changes it recomputes every hash downstream too.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autarky import __version__, offline
from autarky.console import UserError, console

SCHEMA = "autarky.manifest/2"
OLD_SCHEMA = "autarky.manifest/1"  # an id over kind, config, input ids and files only; no seal
MANIFEST = "manifest.json"
KINDS = ("corpus", "chat", "tokenizer", "tokens", "model", "eval", "export", "tasks", "report", "card")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def content_id(manifest: dict) -> str:
    """The id: what the artifact is and what made it, and nothing that differs between identical runs."""
    if manifest["schema"] == OLD_SCHEMA:
        covered = {"kind": manifest["kind"], "config": manifest["config"], "files": manifest["files"]}
        return sha256_bytes(canonical_json({**covered, "inputs": [i["id"] for i in manifest["inputs"]]}))
    covered = {key: manifest[key] for key in ("schema", "kind", "config", "files")}
    covered["inputs"] = [i["id"] for i in manifest["inputs"]]
    covered["sources"] = [s["sha256"] for s in manifest["sources"]]
    return sha256_bytes(canonical_json(covered))


def seal_of(manifest: dict) -> str:
    """The seal: every field of the manifest but the seal itself, `created` and the inputs' seals included."""
    return sha256_bytes(canonical_json({k: v for k, v in manifest.items() if k != "seal"}))


def recipe_key(kind: str, config: dict, inputs: list[dict], sources: list[dict] | None = None) -> str:
    """What determines an artifact before it is made: a re-run with the same recipe reuses it."""
    source_ids = [s["sha256"] for s in sources or []]
    return sha256_bytes(
        canonical_json(
            {"kind": kind, "config": config, "inputs": [i["id"] for i in inputs], "sources": source_ids}
        )
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def producer() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("torch", "numpy", "tokenizers", "safetensors", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "autarky": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
    }


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def workspace(self) -> Path:
        return self.path.parent.parent

    def ref(self) -> dict:
        """How a later artifact names this one: by content (`id`) and by this very manifest (`seal`)."""
        return {"kind": self.kind, "name": self.name, "id": self.id, "seal": self.manifest.get("seal")}

    def inputs(self, kind: str | None = None) -> list[Artifact]:
        found = [load(input_dir(self.workspace, i)) for i in self.manifest["inputs"]]
        return [a for a in found if kind is None or a.kind == kind]


def is_plain_name(name: Any) -> bool:
    """A name that stays one directory down: no separators, no `..`, not hidden."""
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and not set(name) & {"/", "\\", "\0"}
    )


def input_dir(workspace: Path, ref: dict) -> Path:
    """Where an input lives, `<workspace>/<kind>/<name>`, refusing any name that would lead out of it.

    An input made in another workspace is named with that workspace too (`workspace`, relative to
    this one, as `Builder.finish` records it): sealed like every field, and shown by `lineage` and
    `verify`, so an input from elsewhere is never taken silently.
    """
    kind, name = ref.get("kind"), ref.get("name")
    if not (is_plain_name(kind) and is_plain_name(name)):
        raise UserError(f"the input {kind!r}/{name!r} is not a kind/name inside the workspace")
    base = Path(workspace)
    if "workspace" in ref:
        if not isinstance(ref["workspace"], str) or not ref["workspace"]:
            raise UserError(
                f"the input {kind}/{name} names its workspace as {ref['workspace']!r}, not a path"
            )
        base = base / ref["workspace"]
    path = base / kind / name
    if path.resolve() != base.resolve() / kind / name:  # a linked directory, in or out
        raise UserError(f"the input {kind}/{name} is reached through a symbolic link, to {path.resolve()}")
    return path


def input_ref(made_in: Path, given: Artifact) -> dict:
    """How an artifact made in the workspace `made_in` names its input `given`, and where it lives
    when that is another workspace (relative, so workspaces moved together still find each other)."""
    ref = given.ref()
    if given.workspace != Path(made_in).resolve():
        ref["workspace"] = os.path.relpath(given.workspace, Path(made_in).resolve())
    return ref


REQUIRED = {  # the fields a manifest of each schema must have
    SCHEMA: tuple("kind name id seal recipe created network inputs sources config files".split()),
    OLD_SCHEMA: tuple("kind name id inputs config files".split()),
}


def load(path: Path | str, kind: str | None = None) -> Artifact:
    """Load a finished artifact; a missing path or a directory without a manifest is a UserError."""
    path = Path(path)
    if path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise UserError(f"{path} does not exist; `autarky ls` lists the artifacts in the workspace")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{path} is not a finished artifact (it has no {MANIFEST}); re-run the stage that makes it"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{manifest_path} is not valid JSON ({e}); the artifact is damaged, re-run its stage"
        ) from e
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if schema not in REQUIRED:
        raise UserError(f"{manifest_path} is not an autarky manifest (schema {schema!r})")
    missing = [key for key in REQUIRED[schema] if key not in manifest]
    if missing or not _well_formed(manifest):
        what = f"lacks {', '.join(missing)}" if missing else "has fields of the wrong shape"
        raise UserError(f"{manifest_path} {what}; the artifact is damaged, re-run its stage")
    if kind is not None and manifest["kind"] != kind:
        raise UserError(f"{path} is a {manifest['kind']}, but a {kind} is needed here")
    return Artifact(path.resolve(), manifest)


def _well_formed(manifest: dict) -> bool:
    """The shapes verify relies on, so that a forged manifest is named as damaged, never a crash."""
    refs = manifest["inputs"]
    files = manifest["files"]
    return (
        isinstance(refs, list)
        and all(isinstance(r, dict) and {"kind", "name", "id"} <= r.keys() for r in refs)
        and isinstance(files, dict)
        and all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files.values())
        and isinstance(manifest.get("sources", []), list)
        and all(isinstance(s, dict) and "sha256" in s for s in manifest.get("sources", []))
    )


LATEST = "latest"  # a name that means the newest finished artifact of the kind asked for
MAKER = {  # the verb that makes each kind, for a message that says how to get one
    "corpus": "autarky curate DIR",
    "chat": "autarky curate-chat FILE",
    "tokenizer": "autarky tokenizer CORPUS",
    "tokens": "autarky tokenize CORPUS TOKENIZER",
    "model": "autarky train TOKENS (or autarky import DIR)",
    "eval": "autarky eval MODEL",
    "export": "autarky export MODEL",
    "card": "autarky card MODEL",
    "report": "autarky report MODEL",
}


def resolve(workdir: Path, ref: str, kind: str) -> Artifact:
    """Find an artifact by path, by `kind/name`, by bare name under `<workdir>/<kind>/`, or `latest`."""
    for candidate in (Path(ref), Path(workdir) / ref, Path(workdir) / kind / ref):
        if (candidate / MANIFEST).is_file():
            return load(candidate, kind)
    if ref == LATEST:
        found = newest(workdir, kind)
        console.print(f"latest {kind}: {found.name}")
        return found
    raise UserError(
        f"no finished {kind} called {ref!r} (looked in {ref} and {Path(workdir) / kind / ref}); "
        "`autarky ls` lists what the workspace holds"
    )


def newest(workdir: Path, kind: str) -> Artifact:
    """The finished artifact of `kind` made last in the workspace; none is a UserError naming its verb."""
    found = []
    for manifest in (Path(workdir) / kind).glob(f"*/{MANIFEST}"):
        try:
            found.append((load(manifest.parent, kind), manifest.stat().st_mtime_ns))
        except UserError:  # damaged: `autarky verify` names it; it is nobody's default
            continue
    if not found:
        how = MAKER.get(kind, f"the stage that makes a {kind}")
        raise UserError(f"{workdir} holds no {kind} yet; `{how}` makes one")
    return max(found, key=lambda pair: (pair[0].manifest["created"], pair[1]))[0]


def list_workspace(workdir: Path) -> tuple[list[Artifact], list[Path]]:
    """Finished artifacts, and directories that look like unfinished ones."""
    finished, unfinished = [], []
    workdir = Path(workdir)
    if not workdir.is_dir():
        return finished, unfinished
    for kind_dir in sorted(p for p in workdir.iterdir() if p.is_dir() and p.name in KINDS):
        for d in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (d / MANIFEST).is_file():
                try:
                    finished.append(load(d))
                except UserError:
                    unfinished.append(d)
            else:
                unfinished.append(d)
    return finished, unfinished


def find(workdir: Path, ref: str) -> Artifact:
    """An artifact of any kind: by path, by `kind/name`, by bare name, or `latest` (the newest of all).

    A bare name two kinds share is refused with both spelled as `kind/name`; one not found is
    answered with the names it may have meant.
    """
    for candidate in (Path(ref), Path(workdir) / ref):
        if (candidate / MANIFEST).is_file() or (candidate.name == MANIFEST and candidate.is_file()):
            return load(candidate)
    finished, unfinished = list_workspace(workdir)
    if ref == LATEST:
        if not finished:
            raise UserError(f"{workdir} holds no finished artifact yet; `autarky demo` makes a full set")
        return max(finished, key=lambda a: (a.manifest["created"], (a.path / MANIFEST).stat().st_mtime_ns))
    named = [a for a in finished if a.name == ref]
    if len(named) == 1:
        return named[0]
    if named:
        spelled = ", ".join(f"{a.kind}/{a.name}" for a in named)
        raise UserError(
            f"{ref!r} names {len(named)} artifacts in {workdir}: {spelled}; say which, as kind/name"
        )
    as_path = [Path(ref)] if os.sep in ref else []  # a bare word is a name, even where a directory has it
    for half in [*as_path, *(d for d in unfinished if d.name == ref)]:
        if half.is_dir():
            load(half)  # says what is wrong with it: unfinished, or a damaged manifest
    names = sorted({a.name for a in finished})
    close = [n for n in names if n.startswith(ref)] or difflib.get_close_matches(ref, names, n=3)
    hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
    raise UserError(f"no artifact called {ref!r} in {workdir}{hint} (`autarky ls -w {workdir}` lists them)")


def dependents(workdir: Path, target: Artifact) -> list[Artifact]:
    """Every finished artifact in the workspace made from `target`, directly or further down, nearest first."""
    finished, _ = list_workspace(workdir)
    made_from: dict[Path, list[Artifact]] = {}
    for a in finished:
        for ref in a.manifest["inputs"]:
            try:
                made_from.setdefault(input_dir(a.workspace, ref).resolve(), []).append(a)
            except UserError:  # an input named out of bounds: verify names it; it leads nowhere here
                continue
    found, pending, seen = [], [target.path], {target.path}
    while pending:
        for a in made_from.get(pending.pop(0), []):
            if a.path not in seen:
                seen.add(a.path)
                found.append(a)
                pending.append(a.path)
    return found


def warn_dependents(workdir: Path, old: Artifact, most: int = 10) -> None:
    """Name what replacing `old` leaves behind: artifacts made from it, which no longer verify."""
    found = dependents(workdir, old)
    if not found:
        return
    names = ", ".join(f"{a.kind}/{a.name}" for a in found[:most])
    more = f" and {len(found) - most} more" if len(found) > most else ""
    console.print(
        f"[bold yellow]warning:[/] replacing {old.kind}/{old.name}, from which {len(found)} artifact(s) were "
        f"made: {names}{more}; they fail `autarky verify` until each is made again",
        soft_wrap=True,
    )


def scan(directory: Path) -> tuple[list[str], dict[str, str]]:
    """Every regular file under `directory`, dot-files included, and what is there that is not one.

    Symbolic links, to files or directories, are never followed: they are named instead, with pipes,
    sockets and devices. The manifest itself is not among the files.
    """
    files, odd = [], {}
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(Path(directory) / prefix) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    odd[rel] = f"is a symbolic link (to {os.readlink(entry.path)})"
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(rel + "/")
                elif not entry.is_file(follow_symlinks=False):
                    odd[rel] = "is not a regular file (a pipe, socket or device)"
                elif rel != MANIFEST:
                    files.append(rel)
    return sorted(files), odd


def hash_files(directory: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of an artifact's files; an artifact holds regular files only."""
    files, odd = scan(directory)
    if odd:
        rel, what = min(odd.items())
        raise UserError(f"{Path(directory) / rel} {what}; an artifact holds regular files only")
    paths = {rel: Path(directory) / rel for rel in files}
    return {rel: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for rel, p in paths.items()}


@dataclass
class Builder:
    """Makes one artifact: the stage writes files into `dir`, fills `metrics`, then `finish()` seals it.

    Used as a context manager, an exception removes the half-made directory (unless `keep_on_error`,
    which training uses so that a killed run can resume from its checkpoints).
    """

    workdir: Path
    kind: str
    name: str
    config: dict
    inputs: list[Artifact] = field(default_factory=list)
    sources: list[dict] | None = None
    keep_on_error: bool = False
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (is_plain_name(self.kind) and is_plain_name(self.name)):
            raise UserError(
                f"{self.kind}/{self.name} is not a name for an artifact: one directory, no / and no leading dot"
            )

    @property
    def dir(self) -> Path:
        return Path(self.workdir) / self.kind / self.name

    @property
    def recipe(self) -> str:
        return recipe_key(self.kind, self.config, [a.ref() for a in self.inputs], self.sources)

    def existing(self, force: bool = False) -> Artifact | None:
        """The finished artifact already made from this recipe, if any; clears what is in the way.

        One sealed under an older schema, or against inputs since re-sealed, is made again: its
        manifest could not tell its lineage as it now is.
        """
        if not (self.dir / MANIFEST).is_file():
            return None
        try:
            old = load(self.dir)
        except UserError:
            old = None
        if old is not None and not force and old.manifest.get("recipe") != self.recipe:
            raise UserError(
                f"{self.dir} already holds a {self.kind} made from other inputs or settings; "
                "choose another --name, or pass --force to replace it"
            )
        input_seals = [a.manifest.get("seal") for a in self.inputs]
        current = old is not None and old.manifest["schema"] == SCHEMA
        if current and not force and [i.get("seal") for i in old.manifest["inputs"]] == input_seals:
            return old
        if old is not None:
            warn_dependents(self.workdir, old)
        shutil.rmtree(self.dir)
        return None

    def __enter__(self) -> Builder:
        if not self.keep_on_error and self.dir.exists() and not (self.dir / MANIFEST).exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self.keep_on_error and not (self.dir / MANIFEST).exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self) -> Artifact:
        """Hash the files, then write the manifest with its id and seal: the artifact is finished."""
        manifest = {
            "schema": SCHEMA,
            "kind": self.kind,
            "name": self.name,
            "id": None,
            "seal": None,
            "recipe": self.recipe,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "network": offline.network_mode(),
            "inputs": [input_ref(self.workdir, a) for a in self.inputs],
            "sources": self.sources or [],
            "config": self.config,
            "files": hash_files(self.dir),
            "producer": producer(),
            "metrics": self.metrics,
        }
        manifest = json.loads(json.dumps(manifest))  # seal exactly what a reader will load back
        manifest["id"] = content_id(manifest)
        manifest["seal"] = seal_of(manifest)
        write_json(self.dir / MANIFEST, manifest)
        return Artifact(self.dir.resolve(), manifest)


NAME_HASH = re.compile(r"-[0-9a-f]{8}$")  # what default_name appends


def stem(name: str) -> str:
    """A name without the recipe hash default_name gave it: `docs-2678a849` → `docs`."""
    return NAME_HASH.sub("", name)


def compose_name(*names: str) -> str:
    """A prefix that says what went in: each name's stem, one that the next begins with left out.

    `compose_name("docs-2678a849", "docs-bpe4096-787627db")` is `docs-bpe4096`, not `docs-docs-bpe4096`.
    """
    stems = [stem(n) for n in names]
    nexts = [*stems[1:], ""]
    return "-".join(s for s, after in zip(stems, nexts, strict=True) if not after.startswith(s + "-"))


def default_name(
    prefix: str, kind: str, config: dict, inputs: list[Artifact], sources: list[dict] | None = None
) -> str:
    """A readable name that still differs when the recipe differs: `<prefix>-<8 hex of the recipe>`.

    An input's own hash is taken out of the prefix (`docs-tiny-1a2b3c4d-sft` → `docs-tiny-sft`), so
    names say what went in without growing a hash at every stage.
    """
    for a in inputs:
        if found := NAME_HASH.search(a.name):
            prefix = re.sub(re.escape(found.group()) + r"(?=-|$)", "", prefix)
    key = recipe_key(kind, config, [a.ref() for a in inputs], sources)
    return f"{prefix}-{key.split(':')[1][:8]}"


@dataclass
class Problem:
    artifact: str
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.artifact}: {self.path}: {self.what}"


def verify(path: Path | str, _seen: set | None = None) -> tuple[list[Artifact], list[Problem]]:
    """Re-hash an artifact and everything upstream; return what was checked and every mismatch."""
    seen = _seen if _seen is not None else set()
    artifact = load(path)
    if artifact.path in seen:
        return [], []
    seen.add(artifact.path)
    label = f"{artifact.kind}/{artifact.name}"
    checked = [artifact]
    problems = check_manifest(artifact, label) + check_files(artifact.path, artifact.manifest["files"], label)
    for ref in artifact.manifest["inputs"]:
        where = f"input {ref['kind']}/{ref['name']}"
        try:
            upstream = load(input_dir(artifact.workspace, ref))
        except UserError as e:
            problems.append(Problem(label, where, str(e)))
            continue
        if upstream.id != ref["id"]:
            problems.append(Problem(label, where, "was replaced by a different artifact"))
        elif upstream.manifest.get("seal") != ref.get("seal"):
            problems.append(
                Problem(
                    label,
                    where,
                    "was sealed again after this artifact was made (the same content, another manifest: "
                    "re-made with --force, or edited); re-run this stage to seal against it",
                )
            )
        more_checked, more_problems = verify(upstream.path, seen)
        checked += more_checked
        problems += more_problems
    return checked, problems


def check_manifest(artifact: Artifact, label: str) -> list[Problem]:
    """The id against the content, the seal against every field, the place against the name."""
    manifest, problems = artifact.manifest, []
    if manifest["schema"] == OLD_SCHEMA:
        problems.append(
            Problem(
                label,
                MANIFEST,
                f"is of the older schema {OLD_SCHEMA}: only its files and an id over kind, config, input ids "
                "and file hashes were checked; its name, sources, metrics, recipe, producer, created and its "
                "inputs' manifests are not covered by any hash. Re-run its stage to seal it under " + SCHEMA,
            )
        )
    if content_id(manifest) != artifact.id:
        problems.append(
            Problem(
                label,
                MANIFEST,
                "its id does not match its content (kind, config, inputs, sources or files were edited)",
            )
        )
    if manifest["schema"] == SCHEMA and seal_of(manifest) != manifest["seal"]:
        problems.append(
            Problem(label, MANIFEST, "its seal does not match it (a field was edited after sealing)")
        )
    if (artifact.path.parent.name, artifact.path.name) != (artifact.kind, artifact.name):
        problems.append(
            Problem(
                label,
                MANIFEST,
                f"names {label}, but lies at {artifact.path.parent.name}/{artifact.path.name}",
            )
        )
    return problems


def check_files(directory: Path, recorded: dict, label: str) -> list[Problem]:
    """Every listed file present and unchanged; nothing else there, links and dot-files included."""
    files, odd = scan(directory)
    problems = []
    for rel, what in sorted(odd.items()):
        listed = "where the manifest lists a regular file" if rel in recorded else "not in the manifest"
        problems.append(Problem(label, rel, f"{what}, {listed}"))
    for rel, info in sorted(recorded.items()):
        if rel in odd:
            continue
        if rel not in files:
            problems.append(Problem(label, rel, "missing"))
            continue
        digest = sha256_file(Path(directory) / rel)
        if digest != info["sha256"]:
            problems.append(
                Problem(
                    label, rel, f"changed (sha256 {digest[7:19]}…, manifest says {info['sha256'][7:19]}…)"
                )
            )
    for rel in sorted(set(files) - recorded.keys()):
        problems.append(Problem(label, rel, "not in the manifest (added after the artifact was sealed)"))
    return problems


@dataclass
class SourceCheck:
    """The recorded source files verify could read again: how many, which changed, which are gone."""

    checked: int = 0
    changed: list[tuple[str, str]] = field(default_factory=list)  # (artifact, path as recorded)
    missing: list[tuple[str, str]] = field(default_factory=list)


def check_sources(artifacts: list[Artifact]) -> SourceCheck:
    """Re-hash the source files the artifacts recorded (a corpus's, a chat corpus's) still at their paths.

    A path recorded relative is looked up from the current directory, as curation read it. A source
    changed since is no mismatch of the artifact, which holds its own copy of the text, but its
    lineage no longer describes the file as it is now.
    """
    result, seen = SourceCheck(), set()
    for a in artifacts:
        for s in a.manifest.get("sources", []):
            path, label = str(s.get("path") or ""), f"{a.kind}/{a.name}"
            if (path, s["sha256"]) in seen:
                continue
            seen.add((path, s["sha256"]))
            if not path or not Path(path).is_file():
                result.missing.append((label, path))
                continue
            try:
                size_differs = isinstance(s.get("bytes"), int) and Path(path).stat().st_size != s["bytes"]
                changed = size_differs or sha256_file(Path(path)) != s["sha256"]
            except OSError:  # gone since, or unreadable: nothing to compare
                result.missing.append((label, path))
                continue
            result.checked += 1
            if changed:
                result.changed.append((label, path))
    return result


def lineage(path: Path | str, max_sources: int = 10):
    """A Rich tree from an artifact down through its inputs to the source files of each corpus.

    An artifact reached twice (a corpus feeds both the tokenizer and the tokens) is expanded once; an
    input that cannot be read is named with what is wrong, in its place.
    """
    from rich.markup import escape
    from rich.tree import Tree

    expanded: set[Path] = set()
    root = load(path)

    def node(artifact: Artifact, tree: Tree | None) -> Tree:
        created, network = artifact.manifest.get("created", "?"), artifact.manifest.get("network", "?")
        label = f"[bold]{artifact.kind}[/]/{escape(artifact.name)}  [dim]{artifact.id[7:19]}  {created}  network: {network}[/]"
        if artifact.workspace != root.workspace:
            label += f"  [yellow]in the workspace {escape(str(artifact.workspace))}[/]"
        key = artifact.path
        if key in expanded:
            return tree.add(label + "  [dim](shown above)[/]")
        expanded.add(key)
        branch = Tree(label) if tree is None else tree.add(label)
        for ref in artifact.manifest["inputs"]:
            try:
                node(load(input_dir(artifact.workspace, ref)), branch)
            except UserError as e:
                branch.add(f"[red]{escape(str(ref['kind']))}/{escape(str(ref['name']))}: {escape(str(e))}[/]")
        sources = artifact.manifest.get("sources") or []
        if sources:
            documents = sum(s.get("documents", 0) for s in sources)
            sb = branch.add(f"{len(sources)} source files, {documents} documents")
            for s in sources[:max_sources]:
                sb.add(
                    f"{escape(str(s.get('path')))}  [dim]{s['sha256'][7:19]}  {s.get('documents', '?')} docs[/]"
                )
            if len(sources) > max_sources:
                sb.add(
                    f"[dim]… and {len(sources) - max_sources} more (manifest.json lists them all; --all shows them)[/]"
                )
        return branch

    return node(root, None)


def source_matcher(given: str) -> tuple[str, Callable[[dict], bool]]:
    """What `lineage --uses` looks for, and a test of a manifest's source entry against it.

    A file that exists is found by its content (its sha256) or its path as recorded; a bare sha256
    (with or without `sha256:`) by content; a directory by every file recorded under it; a path to a
    file since deleted by the path it was recorded under, or any recorded path that ends with it at
    a directory boundary.
    """
    if not given.strip():
        raise UserError("--uses needs a file, a directory or a sha256")
    digest = None
    if Path(given).is_file():
        digest = sha256_file(Path(given))
    elif re.fullmatch(r"(sha256:)?[0-9a-f]{64}", given.lower()):
        digest = "sha256:" + given.lower().removeprefix("sha256:")
    if digest and not Path(given).is_file():
        return f"content {digest}", lambda s: s.get("sha256") == digest
    wanted = os.path.normpath(given)

    def same_path(s: dict) -> bool:
        path = os.path.normpath(str(s.get("path", "")))
        if path == wanted or os.path.abspath(path) == os.path.abspath(wanted):
            return True
        if os.path.abspath(path).startswith(os.path.abspath(wanted) + os.sep):  # under a directory given
            return True
        return digest is None and path.endswith(os.sep + wanted.lstrip(os.sep))

    if digest:
        return f"{given} (content {digest[7:19]}…)", lambda s: s.get("sha256") == digest or same_path(s)
    return f"the path {given}", same_path


def uses(workdir: Path, match: Callable[[dict], bool]) -> list[tuple[Artifact, list[dict]]]:
    """Reverse lineage: every finished artifact in the workspace whose lineage includes a source entry
    `match` accepts, with those entries (a corpus's own, or its ancestors' for a later artifact)."""
    finished, _ = list_workspace(workdir)
    memo: dict[Path, list[dict]] = {}

    def found(a: Artifact) -> list[dict]:
        if a.path in memo:
            return memo[a.path]
        memo[a.path] = []  # an input cycle (only a forged manifest has one) ends here
        hits = [s for s in a.manifest.get("sources", []) if match(s)]
        for ref in a.manifest["inputs"]:
            try:
                upstream = load(input_dir(a.workspace, ref))
            except UserError:  # a missing input: `verify` names it; here it uses nothing
                continue
            hits += [h for h in found(upstream) if h not in hits]
        memo[a.path] = hits
        return hits

    return [(a, hits) for a in finished if (hits := found(a))]


def artifact_size(artifact: Artifact) -> int:
    return sum(f["bytes"] for f in artifact.manifest.get("files", {}).values())
