"""DeepSeek-V3-style MoE + MLA against the dense Llama presets: bits per byte at equal wall-clock,
training FLOPs, KV-cache bytes per token and decode speed, side by side in one run.

    .venv/bin/python bench/moe.py [--source ../shared/corpora/ruslit] [--minutes 5]
    .venv/bin/python bench/moe.py --tokens <a tokens artifact> --minutes 5   # data made already
    .venv/bin/python bench/moe.py --minutes 0.1 --decode-steps 4 --source ../shared/corpora/ruslit/prose/Pushkin  # a check

Training: the product's own stages make the data in a scratch workspace (curate the source, a
4096-token BPE on it, tokenize; or `--tokens` names a tokens artifact), then `autarky.train.train`
(what `autarky train` runs: its precision choice, Muon, schedule, evaluation and artifact) trains
each of `--train-presets` on the same tokens for the same `--minutes` of wall clock (evaluations
included, as `autarky train --minutes`). Reported per preset from the model's own manifest: val bits
per byte, tokens seen, tokens/s; training FLOPs = 6·N·tokens + 6·layers·seq·heads·(qk+v head
dims)·tokens (PaLM's count, the attention term made per head so it covers MLA's wider query/key),
N being the parameters a token's matmuls use (the dense model's all; the MoE's shared and chosen
experts, attention and head, not the idle experts); and the bits per byte gained per PFLOP
(initial − final). The presets are sized for equal *active* parameters per token (moe-tiny ≈ tiny),
so the MoE holds about twice the weights at about the same FLOPs per token.

Decoding: each of `--decode-presets`, random weights at the same vocabulary, through
`autarky.runner.TorchRunner` (the serving engine's runner): `--batch` rows each prefilled with a
`--prompt`-token prompt, then `--decode-steps` timed decode steps (best of `--repeats`), at batch 1
and 16. KV-cache bytes per token are the cache's own tensors (fp32). An MLA model is decoded both
ways: with kv_b_proj absorbed into the query and output (the default) and with the latent expanded
to keys and values every step. The reference measured in the same run is the dense preset beside
it: the ratios are MoE/MLA over dense.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, write_result

from autarky.model import build_model, preset_config, read_config
from autarky.runner import TorchRunner

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared/corpora/ruslit"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a directory of Russian text")
    p.add_argument(
        "--tokens", help="a tokens artifact (path, or name in --workdir) to train on instead of making one"
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autarky-bench-moe"))
    p.add_argument("--minutes", type=float, default=5.0, help="wall clock per model, evaluation included")
    p.add_argument("--train-presets", default="tiny,moe-tiny")
    p.add_argument("--decode-presets", default="tiny,moe-tiny,small,moe-small")
    p.add_argument(
        "--precision", default="auto", help="as autarky train --precision (the same for every model)"
    )
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per row before decoding")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    return p.parse_args()


def tokens_artifact(args: argparse.Namespace):
    from autarky import artifact
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize

    if args.tokens:
        return artifact.resolve(args.workdir, str(args.tokens), "tokens")
    corpus = curate([args.source], args.workdir)
    tokenizer = train_tokenizer(corpus, args.workdir, vocab_size=4096)
    return tokenize(corpus, tokenizer, args.workdir)


def flops_per_token(model, seq_len: int) -> float:
    """6·N + the attention term, N the matmul parameters one token uses (see the docstring)."""
    c = model.config
    if c.model_type == "deepseek_v3":
        n = model.active_params() + c.vocab_size * c.hidden_size  # + the head (the embedding is a lookup)
        per_head = c.qk_head_dim + c.v_head_dim
    else:
        n = model.num_params(non_embedding=True) + c.vocab_size * c.hidden_size
        per_head = 2 * c.head_dim
    return 6 * n + 6 * c.num_hidden_layers * seq_len * c.num_attention_heads * per_head


def train_one(preset: str, tokens, args: argparse.Namespace) -> dict:
    from autarky.train import TrainConfig, train

    config = TrainConfig(preset=preset, minutes=args.minutes, precision=args.precision)
    config.eval_interval = 50 if args.minutes >= 1 else 5
    model = train(tokens, args.workdir, config, name=f"bench-moe-{preset}", force=True)
    m = model.metrics
    with torch.device("meta"):
        net = build_model(read_config(model.path))
    per_token = flops_per_token(net, config.seq_len)
    flops = per_token * m["tokens_seen"]
    initial_bpb = m["initial_val_loss"] * m["val_bpb"] / m["val_loss"]  # same windows, same bytes
    return {
        "preset": preset,
        "vocab_size": net.config.vocab_size,
        "parameters": net.num_params(),
        "active_parameters": net.active_params() if hasattr(net, "active_params") else net.num_params(),
        "precision": config.precision,
        "train_seconds": m["train_seconds"],
        "tokens_seen": m["tokens_seen"],
        "tokens_per_s": m["tokens_per_s"],
        "initial_val_bpb": round(initial_bpb, 4),
        "val_bpb": m["val_bpb"],
        "flops_per_token": per_token,
        "train_flops": flops,
        "bpb_gain_per_pflop": round((initial_bpb - m["val_bpb"]) / (flops / 1e15), 4) if flops else None,
    }


def decode_rate(model, batch: int, args: argparse.Namespace) -> float:
    """Decode tokens/s of `batch` running rows through TorchRunner, best of `--repeats`."""
    context = args.prompt + args.decode_steps + 1
    runner = TorchRunner(model, slots=batch, context=context)
    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        runner.clear()
        for row in range(batch):
            runner.stage()
            runner.prefill(torch.randint(0, 256, (args.prompt,), generator=generator).tolist())
            runner.join(row)
        tokens = [1] * batch
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(args.decode_steps):
                tokens = runner.decode(tokens).argmax(dim=-1).tolist()
            best = max(best, batch * args.decode_steps / (time.perf_counter() - t))
    return best


def decode_one(preset: str, vocab: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build_model(preset_config(preset, vocab)).eval()
    cache = model.new_cache(1, 1)
    result = {"preset": preset, "kv_bytes_per_token": cache.bytes_per_token()}
    modes = {"": None}
    if model.config.model_type == "deepseek_v3":
        modes = {"": True, "_expanded": False}  # absorbed (the default), then the latent expanded per step
    for suffix, absorb in modes.items():
        for block in model.model.layers:
            if absorb is not None:
                block.self_attn.absorb = absorb
        for batch in (1, 16):
            result[f"decode_tokens_per_s_b{batch}{suffix}"] = round(decode_rate(model, batch, args), 1)
    return result


def ratios(rows: dict[str, dict], key: str) -> dict:
    """Each MoE preset's `key` over its dense neighbour's (moe-tiny / tiny ...)."""
    out = {}
    for name, row in rows.items():
        dense = rows.get(name.removeprefix("moe-"))
        if name.startswith("moe-") and dense and row.get(key) and dense.get(key):
            out[f"{name}/{dense['preset']}"] = round(row[key] / dense[key], 3)
    return out


def main() -> None:
    args = parse_args()
    data: dict = {"machine": machine(), "minutes": args.minutes}
    vocab = 4096
    if not args.skip_train:
        tokens = tokens_artifact(args)
        trained = {p: train_one(p, tokens, args) for p in args.train_presets.split(",")}
        vocab = next(iter(trained.values()))["vocab_size"]
        data["train"] = trained
        data["train_ratios"] = {
            k: ratios(trained, k) for k in ("val_bpb", "tokens_per_s", "bpb_gain_per_pflop")
        }
        for row in trained.values():
            print(
                f"{row['preset']:10s} val bpb {row['val_bpb']:.3f} after {row['train_seconds']:.0f} s, "
                f"{row['tokens_seen']:,} tokens ({row['tokens_per_s']} tok/s), {row['train_flops'] / 1e15:.3f} PFLOP, "
                f"{row['bpb_gain_per_pflop']} bpb/PFLOP"
            )
    decoded = {p: decode_one(p, vocab, args) for p in args.decode_presets.split(",")}
    data["decode"] = decoded
    data["decode_ratios"] = {
        k: ratios(decoded, k)
        for k in ("kv_bytes_per_token", "decode_tokens_per_s_b1", "decode_tokens_per_s_b16")
    }
    for row in decoded.values():
        rates = ", ".join(
            f"{k.removeprefix('decode_tokens_per_s_')} {v}" for k, v in row.items() if "decode" in k
        )
        print(f"{row['preset']:10s} KV cache {row['kv_bytes_per_token']:,} B/token; decode tok/s: {rates}")
    data["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(f"ratios: {data.get('train_ratios')} {data['decode_ratios']} → {write_result('moe', data)}")


if __name__ == "__main__":
    main()
