"""Tokenizer extension on an imported Llama: Russian tokens per word, and Russian characters generated
per second, before and after `autarky tokenizer extend`, each model continued on ruslit for the same budget.

    .venv/bin/python bench/vocab.py                                  # the measurement (about 30 minutes)
    .venv/bin/python bench/vocab.py --files 4 --minutes 0.1 --tokens 300 --new-tokens 32   # a check

The base model is what a user imports from elsewhere, made here without a download: a transformers
`LlamaForCausalLM` at random init (the `tiny` preset's shape, untied head), saved with a byte-level
BPE that autarky trained on English only (tinyshakespeare), so it is as Russian-poor as an
English-first tokenizer is; `autarky import` takes it in. Then, all through the product's CLI:
ruslit is curated; `tokenizer extend` adds --tokens Russian tokens learned on its train split; ruslit
is tokenized with the old and the new tokenizer; `train --init` continues the imported model (old
tokenizer) and the extended model (new tokenizer) on ruslit for the same --minutes each.

Reported: tokens per Russian word and the share of Russian words in at most two tokens on ruslit's
val split, before and after (the extend stage's own measurement; target −25% tokens per word or
better); bits per byte on val of each continued model (comparable across tokenizers); and Russian
characters generated per second by each continued model (`autarky.generate.stream`, sampling at
0.8, the same prompts, interleaved repeats, best and median), their ratio the speed-up a user sees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, write_result

from autarky.generate import Completion, SamplingParams, stream
from autarky.model import PRESETS, load_pretrained
from autarky.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared/corpora"
TARGET = -0.25


def cli(workdir: Path, *args: str) -> dict:
    """One verb through the CLI, as a user runs it; its --json answer."""
    env = {**os.environ, "AUTARKY_WORKDIR": str(workdir)}
    run = subprocess.run(
        [sys.executable, "-m", "autarky.cli", *args, "--json"], capture_output=True, text=True, env=env
    )
    if run.returncode != 0:
        raise SystemExit(f"autarky {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def english_llama(workdir: Path, english: Path, vocab_size: int) -> Path:
    """A random transformers Llama of the tiny preset's shape with an English-only tokenizer beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    corpus = cli(workdir, "curate", str(english), "--name", "english")
    tokenizer = cli(workdir, "tokenizer", corpus["name"], "--vocab-size", str(vocab_size))
    tok = Tokenizer.load(tokenizer["path"])
    shape = PRESETS["tiny"]
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    source = workdir.parent / "hf-llama-english"
    LlamaForCausalLM(config).save_pretrained(source, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(tokenizer["path"]) / f, source / f)
    return source


def ruslit_sources(root: Path, files: int | None, into: Path) -> Path:
    """ruslit itself, or a copy of its first `files` works for a quick check."""
    if not files:
        return root
    into.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in root.rglob("*.txt"))[:files]:
        shutil.copyfile(path, into / f"{path.parent.name}-{path.name}")
    return into


def prompts(corpus_path: Path, n: int) -> list[str]:
    """The opening words of `n` val documents that start with Russian prose."""
    from autarky.data.corpus import iter_documents

    found = []
    for doc in iter_documents(corpus_path, "val", ("text",)):
        words = doc["text"].split()[:6]
        if len(words) == 6 and any("а" <= c <= "я" for c in " ".join(words).lower()):
            found.append(" ".join(words))
        if len(found) == n:
            break
    return found or ["Мороз и солнце; день чудесный!"]


def chars_per_second(model_path: str, texts: list[str], new_tokens: int) -> tuple[float, int]:
    """Characters of text generated per second over the prompts, and the tokens that took."""
    model, tok = load_pretrained(model_path).eval(), Tokenizer.load(model_path)
    chars = tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i, text in enumerate(texts):
            done = Completion()
            params = SamplingParams(temperature=0.8, max_tokens=new_tokens, seed=i)
            for piece in stream(model, tok, tok.encode_prompt(text), params, completion=done):
                chars += len(piece)
            tokens += len(done.token_ids)
    return chars / (time.perf_counter() - start), tokens


def continued(workdir: Path, corpus: str, tokenizer: str, init: str, args) -> dict:
    tokens = cli(workdir, "tokenize", corpus, tokenizer, "--seq-len", str(args.seq_len))
    return cli(
        workdir,
        "train",
        tokens["name"],
        "--init",
        init,
        "--minutes",
        str(args.minutes),
        "--seq-len",
        str(args.seq_len),
        "--name",
        f"{init}-ruslit",
    )


def speeds(before: dict, after: dict, texts: list[str], args) -> dict:
    """Interleaved repeats of both models' generation, so both see the same machine load."""
    runs: dict[str, list[float]] = {"before": [], "after": []}
    tokens = {}
    for _ in range(args.repeats):
        for label, model in (("before", before), ("after", after)):
            rate, tokens[label] = chars_per_second(model["path"], texts, args.new_tokens)
            runs[label].append(rate)
    return {
        label: {
            "chars_per_s_best": round(max(r), 1),
            "chars_per_s_median": round(statistics.median(r), 1),
            "tokens_generated": tokens[label],
        }
        for label, r in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ruslit", type=Path, default=SHARED / "ruslit")
    parser.add_argument("--english", type=Path, default=SHARED / "tinyshakespeare/input.txt")
    parser.add_argument(
        "--files", type=int, default=None, help="only the first N ruslit works (a quick check)"
    )
    parser.add_argument("--vocab-size", type=int, default=4096, help="the English tokenizer's vocabulary")
    parser.add_argument("--tokens", type=int, default=4096, help="Russian tokens to add")
    parser.add_argument("--minutes", type=float, default=10.0, help="continued pretraining, each model")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the artifacts here (default: a temp dir)"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-vocab-")) if args.workdir is None else args.workdir
    workdir = root / "work"
    started = time.perf_counter()
    imported = cli(workdir, "import", str(english_llama(workdir, args.english, args.vocab_size)))
    ruslit = cli(
        workdir, "curate", str(ruslit_sources(args.ruslit, args.files, root / "ruslit")), "--name", "ruslit"
    )
    made = cli(workdir, "tokenizer", "extend", imported["name"], ruslit["name"], "--tokens", str(args.tokens))
    old_tokenizer = next(
        i["name"] for i in json.loads((Path(imported["path"]) / "manifest.json").read_text())["inputs"]
    )
    before = continued(workdir, ruslit["name"], old_tokenizer, imported["name"], args)
    after = continued(workdir, ruslit["name"], made["tokenizer"]["name"], made["name"], args)
    after_m, before_m = made["metrics"], made["metrics"]["before"]
    ru = {
        "before": before_m["val_by_lang"].get("ru", before_m["val"]),
        "after": after_m["val_by_lang"].get("ru", after_m["val"]),
    }
    generation = speeds(before, after, prompts(Path(ruslit["path"]), args.prompts), args)
    change = ru["after"]["tokens_per_word"] / ru["before"]["tokens_per_word"] - 1
    result = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "vocab": {
            "before": made["metrics"]["vocab_size"] - args.tokens,
            "after": made["metrics"]["vocab_size"],
        },
        "ru_val": ru,
        "tokens_per_word_change": round(change, 4),
        "target_met": change <= TARGET,
        "val_bpb": {"before": before["metrics"].get("val_bpb"), "after": after["metrics"].get("val_bpb")},
        "train_steps": {"before": before["metrics"].get("steps"), "after": after["metrics"].get("steps")},
        "generation": generation,
        "chars_per_s_ratio": round(
            generation["after"]["chars_per_s_median"] / generation["before"]["chars_per_s_median"], 3
        ),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "workdir": str(workdir),
    }
    print(f"{'':22} {'before':>10} {'after':>10}")
    rows = [
        ("ru tokens/word", ru["before"]["tokens_per_word"], ru["after"]["tokens_per_word"]),
        ("ru words in ≤2 tokens", ru["before"]["short_word_share"], ru["after"]["short_word_share"]),
        ("ru bytes/token", ru["before"]["bytes_per_token"], ru["after"]["bytes_per_token"]),
        ("val bits/byte", *result["val_bpb"].values()),
        ("chars/s (median)", *(generation[k]["chars_per_s_median"] for k in ("before", "after"))),
    ]
    for label, b, a in rows:
        print(f"{label:22} {b!s:>10} {a!s:>10}")
    print(f"tokens/word {change:+.1%} (target {TARGET:+.0%}); chars/s ×{result['chars_per_s_ratio']}")
    print(f"wrote {write_result('vocab', result)}")


if __name__ == "__main__":
    main()
