"""DDP on CPU: tokens/s of `autarky train` itself on 1 process with one thread, on 2 processes under
torchrun (gloo, one thread each: torchrun's default), and on 1 process with 2 threads, the same
global batch in all three. Issue 13's target: 2 processes ≥ 1.6× one process with one thread.

    .venv/bin/python bench/ddp.py                      # tiny, 60 steps
    .venv/bin/python bench/ddp.py --preset small --steps 30

Each run is the CLI as a user runs it; its speed is the manifest's `tokens_per_s` (training steps
only: evaluation, checkpoints and start-up are excluded), on a small corpus curated, tokenized and
trained here from Python's own help texts. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.6


def corpus_tokens(workdir: Path) -> str:
    """A tokens artifact of Python's help topics (about 1 MB of text), made here."""
    from pydoc_data.topics import topics

    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize

    source = workdir.parent / "src"
    source.mkdir(parents=True, exist_ok=True)
    for i, (name, text) in enumerate(sorted(topics.items())):
        (source / f"{i:03d}-{name}.txt").write_text(text * 4, encoding="utf-8")
    corpus = curate([source], workdir)
    return tokenize(corpus, train_tokenizer(corpus, workdir, vocab_size=4096), workdir).name


def train(workdir: Path, tokens: str, name: str, launcher: list[str], threads: int, args) -> dict:
    flags = ["--preset", args.preset, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
    flags += ["--max-steps", str(args.steps), "--eval-interval", str(args.steps), "--eval-tokens", "4096"]
    flags += ["--checkpoint-interval", str(args.steps), "--precision", args.precision]
    env = {**os.environ, "AUTARKY_WORKDIR": str(workdir), "OMP_NUM_THREADS": str(threads)}
    command = [*launcher, "-m", "autarky", "train", tokens, "--name", name, "--force", *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((workdir / "model" / name / "manifest.json").read_text())["metrics"]
    return {"tokens_per_s": metrics["tokens_per_s"], "val_loss": metrics["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    python = [sys.executable]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "work"
        tokens = corpus_tokens(workdir)
        runs = {
            "1 process, 1 thread": train(workdir, tokens, "one", python, 1, args),
            "2 processes (DDP), 1 thread each": train(workdir, tokens, "ddp", torchrun, 1, args),
            "1 process, 2 threads": train(workdir, tokens, "two-threads", python, 2, args),
        }
    base = runs["1 process, 1 thread"]["tokens_per_s"]
    for label, r in runs.items():
        r["speedup"] = round(r["tokens_per_s"] / base, 2)
        print(
            f"{label:34} {r['tokens_per_s']:>9,.0f} tokens/s  {r['speedup']:.2f}×  val loss {r['val_loss']:.4f}"
        )
    ddp = runs["2 processes (DDP), 1 thread each"]["speedup"]
    print(f"DDP on 2 processes: {ddp:.2f}× one process with one thread (target ≥ {TARGET}×)")
    settings = {k: getattr(args, k) for k in ("preset", "steps", "seq_len", "batch_size", "precision")}
    path = write_result("ddp", {"machine": machine(), "settings": settings, "runs": runs, "target": TARGET})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
