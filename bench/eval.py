"""`autarky eval` on 10k Russian held-out tokens: seconds, against the model's own forward-pass rate.

    .venv/bin/python bench/eval.py [--source ../shared/corpora/ruslit/prose/Pushkin] [--workdir /tmp/autarky-bench-eval]

The product's own stages make everything in a scratch workspace (never in the repository): a corpus
of the source directory (Russian only, a third of the works held out), a 4096-token BPE, and a
`tiny` model trained for a few steps (speed does not depend on how well it is trained). Then
`autarky.evaluate.stage.evaluate` is timed end to end (loading the model, tokenizing the held-out
text, bits per byte per source and language, writing the artifact) on `--tokens` held-out tokens,
with no tasks and no samples, and, apart, the built-in suite (made from the same corpus and scored).
The scoring alone (encoding and scoring the held-out text, the model already loaded) is timed
apart too. The reference is a bare forward pass over the same windows (batch 8 × 512 tokens, no
grad), best of three: what scoring those tokens costs at the least.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, write_result

from autarky.data.config import CurateConfig
from autarky.data.curate import curate
from autarky.evaluate.config import EvalConfig, SuiteConfig
from autarky.evaluate.stage import evaluate
from autarky.model import load_pretrained
from autarky.tokenizer import train_tokenizer
from autarky.tokens import tokenize
from autarky.train import TrainConfig, train

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared/corpora/ruslit/prose/Pushkin"


def forward_rate(model_dir: Path, seq_len: int, batch: int, repeats: int = 3) -> float:
    """Tokens/s of the model's plain forward pass on (batch, seq_len) windows: the floor of any scoring."""
    net = load_pretrained(model_dir)
    ids = torch.randint(0, net.config.vocab_size, (batch, seq_len))
    best = float("inf")
    with torch.no_grad():
        net(ids)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            net(ids)
            best = min(best, time.perf_counter() - t)
    return batch * seq_len / best


def scoring_seconds(model, corpus, tokens: int) -> float:
    """The bits-per-byte part of the eval alone (encoding and scoring the held-out text), model loaded."""
    from autarky.data.corpus import iter_documents
    from autarky.evaluate.score import bpb_by_group
    from autarky.tokenizer import Tokenizer

    net, tok = load_pretrained(model.path), Tokenizer.load(model.path)
    t = time.perf_counter()
    bpb_by_group(net, tok, iter_documents(corpus, "val", ("text", "lang", "source")), tokens, 512, 8)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a directory of Russian text")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/autarky-bench-eval"))
    parser.add_argument("--tokens", type=int, default=10_000, help="held-out tokens scored for bits per byte")
    args = parser.parse_args()

    corpus = curate([args.source], args.workdir, config=CurateConfig(val_fraction=0.34, languages=["ru"]))
    tokenizer = train_tokenizer(corpus, args.workdir, vocab_size=4096)
    tokens = tokenize(corpus, tokenizer, args.workdir)
    model = train(
        tokens, args.workdir, TrainConfig(preset="tiny", max_steps=30, eval_interval=30, eval_tokens=4096)
    )

    config = EvalConfig(bpb_tokens=args.tokens, seq_len=512, batch_size=8, prompts=[])
    t = time.perf_counter()
    result = evaluate(model, args.workdir, [corpus], config=config, force=True)
    eval_seconds = time.perf_counter() - t
    scored = results_of(result)["bpb"][corpus.name]["overall"]["tokens"]
    t = time.perf_counter()
    suite = evaluate(
        model,
        args.workdir,
        [corpus],
        config=EvalConfig(bpb_tokens=2, prompts=[]),
        suite=SuiteConfig(),
        force=True,
    )
    suite_seconds = time.perf_counter() - t
    rate = forward_rate(model.path, 512, 8)
    scoring = scoring_seconds(model, corpus, args.tokens)
    data = {
        "machine": machine(),
        "source": str(args.source),
        "model": {"preset": "tiny", "parameters": model.metrics["parameters"]},
        "bpb_tokens": scored,
        "bpb": result.metrics["bpb"][corpus.name],
        "eval_seconds": round(eval_seconds, 2),
        "eval_tokens_per_s": round(scored / eval_seconds, 1),
        "scoring_seconds": round(scoring, 2),
        "scoring_tokens_per_s": round(scored / scoring, 1),
        "forward_tokens_per_s": round(rate, 1),
        "eval_over_forward_time": round((eval_seconds * rate) / scored, 2),
        "scoring_over_forward_time": round((scoring * rate) / scored, 2),
        "suite": {
            "tasks": {t: {"n": r["n"], **r["metrics"]} for t, r in results_of(suite)["tasks"].items()},
            "seconds": round(suite_seconds, 2),
        },
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = write_result("eval", data)
    print(
        f"eval on {scored:,} held-out tokens: {eval_seconds:.2f} s end to end, {scoring:.2f} s of it scoring "
        f"({scored / scoring:,.0f} tokens/s; "
        f"bare forward {rate:,.0f} tokens/s, so {data['scoring_over_forward_time']}x its time); "
        f"bits/byte {data['bpb']:.3f}; built-in suite {suite_seconds:.1f} s → {path}"
    )


def results_of(result) -> dict:
    return json.loads((result.path / "results.json").read_text())


if __name__ == "__main__":
    main()
