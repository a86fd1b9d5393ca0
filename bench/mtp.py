"""Multi-token prediction: validation bits per byte at an equal wall-clock budget, with and without `--mtp`.

    .venv/bin/python bench/mtp.py [SOURCE] [--minutes 4] [--mtp 1]

SOURCE (default ../shared/corpora/ruslit) is curated, a tokenizer trained on it and the corpus
tokenized by the product's own stages (`curate`, `train_tokenizer`, `tokenize`, in a fresh temporary
work directory, or `--workdir`, which a rerun reuses); then `autarky train`'s own `train` makes two `tiny` models
from the same tokens, seed and settings for the same `--minutes` each, one plain (the reference) and
one with `--mtp D --mtp-keep`. Both sealed models are scored by `bits_per_byte` (the function behind
every `val_bpb`) on the same first `--eval-tokens` of the held-out validation split. The MTP run's
steps are dearer (D extra blocks and heads), so it takes fewer of them in the same time: the question
is whether the denser signal pays for that at this scale.

Tokens accepted per step of greedy self-speculative decoding with the kept modules: the plain
model's greedy continuation of `--spec-tokens` tokens after each of a few validation prompts, scored
by `MTP.accepted_per_step` (1 = no draft ever accepted, 1 + D = every draft). `generate` does not use
the drafts yet; this is what it would gain.

The last line printed is the JSON written to bench/results/mtp.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine, write_result

from autarky.data.curate import curate
from autarky.evaluate import bits_per_byte, token_byte_lengths
from autarky.model import load_pretrained
from autarky.tokenizer import Tokenizer, train_tokenizer
from autarky.tokens import load_tokens, tokenize
from autarky.train import TrainConfig, train
from autarky.train.mtp import load_kept

ROOT = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, nargs="?", default=ROOT.parent.parent / "shared/corpora/ruslit")
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget of each of the two runs")
    p.add_argument("--mtp", type=int, default=1, help="the depth of the MTP run")
    p.add_argument("--mtp-weight", type=float, default=TrainConfig.mtp_weight)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens of the final score")
    p.add_argument("--spec-prompts", type=int, default=4)
    p.add_argument("--spec-tokens", type=int, default=64)
    p.add_argument("--workdir", type=Path, help="keep the artifacts here (default: a temporary directory)")
    return p.parse_args()


def greedy(lm, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The plain model's greedy continuation of `prompt` (1, T) by `n` tokens."""
    ids = prompt
    with torch.no_grad():
        for _ in range(n):
            logits, _ = lm(ids[:, -lm.config.max_position_embeddings :], last_only=True)
            ids = torch.cat((ids, logits[:, -1:].argmax(-1)), dim=1)
    return ids


def accepted_per_step(model_dir: Path, val, args: argparse.Namespace) -> float:
    lm = load_pretrained(model_dir)
    kept = load_kept(lm, model_dir)
    rates = []
    for i in range(args.spec_prompts):
        start = i * (len(val) // max(args.spec_prompts, 1))
        prompt = torch.from_numpy(val[start : start + 32].astype("int64")).view(1, -1)
        rates.append(kept.accepted_per_step(greedy(lm, prompt, args.spec_tokens)))
    return sum(rates) / len(rates)


def main() -> None:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="autarky-bench-mtp-"))
    t = time.perf_counter()
    corpus = curate([args.source], work)
    tokenizer = train_tokenizer(corpus, work, vocab_size=args.vocab_size)
    tokens = tokenize(corpus, tokenizer, work, seq_len=args.seq_len)
    prepare_s = time.perf_counter() - t
    val = load_tokens(tokens, "val")
    token_bytes = token_byte_lengths(Tokenizer.load(tokenizer))
    runs = {}
    for depth in (0, args.mtp):
        config = TrainConfig(
            preset=args.preset,
            minutes=args.minutes,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            eval_interval=10**9,  # evaluated at the start and the end only, alike in both runs
            eval_tokens=4096,
            checkpoint_minutes=0,
            checkpoint_interval=10**9,
            mtp=depth,
            mtp_weight=args.mtp_weight,
            mtp_keep=bool(depth),
        )
        model = train(tokens, work, config, name=f"bench-mtp{depth}", force=True)
        score = bits_per_byte(load_pretrained(model.path), val, token_bytes, args.seq_len, args.eval_tokens)
        runs[f"mtp{depth}"] = {
            "val_bpb": round(score.bpb, 4),
            "val_loss": round(score.loss, 4),
            "steps": model.metrics["steps"],
            "train_seconds": model.metrics["train_seconds"],
            "tokens_per_s": model.metrics["tokens_per_s"],
            **{k: v for k, v in model.metrics.items() if k.startswith("final_mtp_loss")},
        }
        if depth:
            runs[f"mtp{depth}"]["accepted_per_step"] = round(accepted_per_step(model.path, val, args), 3)
    plain, mtp = runs["mtp0"], runs[f"mtp{args.mtp}"]
    result = {
        "machine": machine(),
        "source": str(args.source),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "prepare_seconds": round(prepare_s, 1),
        "runs": runs,
        "bpb_ratio_mtp_to_plain": round(mtp["val_bpb"] / plain["val_bpb"], 4),
        "steps_ratio_mtp_to_plain": round(mtp["steps"] / max(plain["steps"], 1), 3),
    }
    for name, r in runs.items():
        print(f"{name}: {r['val_bpb']:.4f} bits/byte after {r['steps']} steps in {r['train_seconds']:.0f} s")
    print(f"bits per byte, MTP / plain: {result['bpb_ratio_mtp_to_plain']:.4f} (below 1: MTP helps)")
    write_result("mtp", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
