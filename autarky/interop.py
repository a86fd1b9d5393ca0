"""Import a Hugging Face checkpoint from local disk: a model artifact and a tokenizer artifact.

The directory is what `save_pretrained` writes and what a model repository holds: `config.json`,
`model.safetensors` (or shards named by `model.safetensors.index.json`), `tokenizer.json`,
`tokenizer_config.json` (or `chat_template.jinja`) and `generation_config.json`. Everything is
checked before anything is written: the family and settings (refused by name where our model would
compute differently), each shard against the index, every tensor's name, shape and dtype against the
config (from the safetensors headers alone), and the tokenizer. Pickled weights are never read.

The weights are copied file by file, so importing holds no tensor in memory; asking for another
dtype converts one shard at a time. The manifests record every source file's sha256, the declared
licence and `origin: imported`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from autarky import artifact
from autarky.artifact import Artifact, Builder, default_name, sha256_file
from autarky.console import UserError, console
from autarky.options import setting

PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_SOURCES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "LICENCE.md")
DTYPES = ("keep", "float32", "bfloat16", "float16")


@dataclass
class ImportConfig:
    dtype: str = setting(
        "keep", help="The weights' dtype in the artifact: keep (as stored), float32, bfloat16 or float16."
    )

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclass
class Checkpoint:
    """A checked source directory: what `import_model` copies, and what it records."""

    path: Path
    model_type: str
    shards: list[Path]
    licence: dict
    pickled: list[str]

    def files(self, names: tuple[str, ...]) -> list[Path]:
        return [self.path / n for n in names if (self.path / n).is_file()]


def import_model(
    source: Path,
    workdir: Path,
    config: ImportConfig | None = None,
    name: str | None = None,
    force: bool = False,
) -> tuple[Artifact, Artifact]:
    """A checkpoint directory on disk → (model artifact, tokenizer artifact); nothing is written
    until the whole directory has been checked."""
    config = config or ImportConfig()
    config.validate()
    checkpoint = check_directory(Path(source))
    if checkpoint.pickled:
        console.print(
            f"not reading {', '.join(checkpoint.pickled)}: pickles are never loaded, the safetensors are"
        )
    tokenizer = _tokenizer_artifact(checkpoint, workdir, name, force)
    model = _model_artifact(checkpoint, tokenizer, workdir, config, name, force)
    return model, tokenizer


def check_directory(source: Path) -> Checkpoint:
    """Check a checkpoint directory without reading a weight; every problem is one sentence."""
    from autarky.model import check_checkpoint, read_config
    from autarky.tokenizer import Tokenizer

    if not source.is_dir():
        raise UserError(f"{source} is not a directory; import reads a Hugging Face checkpoint directory")
    pickled = sorted(p.name for p in source.iterdir() if p.suffix in PICKLED)
    if not any(source.glob("*.safetensors")):
        if pickled:
            raise UserError(
                f"{source} holds its weights only as pickles ({', '.join(pickled[:3])}); unpickling can run any "
                "code the file carries, so autarky never loads them: convert them to safetensors where you trust them"
            )
        raise UserError(f"{source} holds no weights: no *.safetensors file")
    model_config = read_config(source)
    shards = list(check_checkpoint(source, model_config))
    if not (source / "tokenizer.json").is_file():
        raise UserError(
            f"{source} has no tokenizer.json; autarky imports tokenizers in the Hugging Face tokenizers format"
        )
    tokenizer = Tokenizer.load(source)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise UserError(
            f"the tokenizer in {source} has {tokenizer.vocab_size} tokens but the model only "
            f"{model_config.vocab_size}: they do not belong together"
        )
    if "eos_token" not in tokenizer.special_tokens:
        raise UserError(f"the tokenizer in {source} names no eos_token, so a generation could never end")
    index = source / "model.safetensors.index.json"
    return Checkpoint(
        source,
        model_config.model_type,
        ([index] if index.is_file() else []) + shards,
        licence(source),
        pickled,
    )


def licence(source: Path) -> dict:
    """The licence the checkpoint declares: README.md's front matter `license:` and a LICENSE file's sha256."""
    found: dict = {"declared": None}
    readme = source / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        front = re.match(r"---\s*\n(.*?)\n---", text, re.DOTALL)
        for key in ("license", "license_name"):
            if front and (m := re.search(rf"^{key}:\s*(.+?)\s*$", front.group(1), re.MULTILINE)):
                found["declared" if key == "license" else "name"] = m.group(1).strip("'\"")
    for name in LICENCE_FILES:
        if (source / name).is_file():
            lines = (source / name).read_text(errors="replace").splitlines()
            first = next((line.strip() for line in lines if line.strip()), "")
            found.update(file=name, sha256=sha256_file(source / name), title=first[:120])
            break
    return found


def _entries(paths: list[Path]) -> list[dict]:
    return [{"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths]


def _stem(source: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source.resolve().name).strip("-.") or "imported"


def _tokenizer_artifact(checkpoint: Checkpoint, workdir: Path, name: str | None, force: bool) -> Artifact:
    """tokenizer.json as it is, and tokenizer_config.json with the chat template in it (where transformers
    and autarky both read it), whichever of the two places the checkpoint kept it in."""
    from autarky.tokenizer import Tokenizer

    source = checkpoint.path
    sources = _entries(checkpoint.files(TOKENIZER_SOURCES + LICENCE_FILES + ("README.md",)))
    kind = json.loads((source / "tokenizer.json").read_text()).get("model", {}).get("type")
    recipe = {"origin": "imported", "type": kind, "license": checkpoint.licence}
    name = name or default_name(_stem(source), "tokenizer", recipe, [], sources)
    builder = Builder(workdir, "tokenizer", name, recipe, sources=sources)
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing tokenizer {name} (same files)")
        return done
    with builder:
        shutil.copyfile(source / "tokenizer.json", builder.dir / "tokenizer.json")
        config_path = source / "tokenizer_config.json"
        settings = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if (source / "chat_template.jinja").is_file():
            settings["chat_template"] = (source / "chat_template.jinja").read_text()
        if settings:
            artifact.write_json(builder.dir / "tokenizer_config.json", settings)
        if (source / "special_tokens_map.json").is_file():
            shutil.copyfile(source / "special_tokens_map.json", builder.dir / "special_tokens_map.json")
        tokenizer = Tokenizer.load(builder.dir)
        builder.metrics = {
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.special_tokens,
            "chat_template": tokenizer.chat_template is not None,
        }
        return builder.finish()


def _model_artifact(
    checkpoint: Checkpoint,
    tokenizer: Artifact,
    workdir: Path,
    config: ImportConfig,
    name: str | None,
    force: bool,
) -> Artifact:
    source = checkpoint.path
    extra = checkpoint.files(("config.json", "generation_config.json", *LICENCE_FILES, "README.md"))
    sources = _entries(extra + checkpoint.shards)
    recipe = {
        "origin": "imported",
        "architecture": checkpoint.model_type,
        **asdict(config),
        "license": checkpoint.licence,
    }
    name = name or default_name(_stem(source), "model", recipe, [tokenizer], sources)
    builder = Builder(workdir, "model", name, recipe, [tokenizer], sources=sources)
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing model {name} (same files and settings)")
        return done
    with builder:
        settings = json.loads((source / "config.json").read_text())
        dtypes = _write_weights(checkpoint, builder.dir, config.dtype)
        if config.dtype != "keep":
            settings.update(torch_dtype=config.dtype, dtype=config.dtype)
        artifact.write_json(builder.dir / "config.json", settings)
        if (source / "generation_config.json").is_file():
            shutil.copyfile(source / "generation_config.json", builder.dir / "generation_config.json")
        for f in tokenizer.manifest["files"]:
            shutil.copyfile(tokenizer.path / f, builder.dir / f)
        weights = sum(
            (builder.dir / p.name).stat().st_size for p in checkpoint.shards if p.suffix == ".safetensors"
        )
        builder.metrics = {
            "parameters": _parameters(builder.dir),
            "dtype": sorted(dtypes),
            "weight_bytes": weights,
            "context": settings.get("max_position_embeddings"),
            "pickled_files_ignored": checkpoint.pickled,
        }
        return builder.finish()


def _write_weights(checkpoint: Checkpoint, directory: Path, dtype: str) -> set[str]:
    """Copy the weight files, or convert them one shard at a time; return the dtypes written."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    written = set()
    for path in checkpoint.shards:
        target = directory / path.name
        if path.suffix != ".safetensors":  # the index: tensor names and shards stay as they are
            shutil.copyfile(path, target)
            continue
        with safe_open(str(path), "pt") as f:
            if dtype == "keep":
                written |= {f.get_slice(n).get_dtype() for n in f.keys()}
                shutil.copyfile(path, target)
                continue
            tensors = {n: f.get_tensor(n).to(getattr(torch, dtype)).contiguous() for n in f.keys()}
            metadata = f.metadata()
        save_file(tensors, str(target), metadata=metadata or {"format": "pt"})
        written.add(dtype)
        del tensors
    return written


def _parameters(directory: Path) -> int:
    """Parameters the model has (a tied head counted once), from the headers."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for n in f.keys():
                total += math.prod(f.get_slice(n).get_shape())
    return total
