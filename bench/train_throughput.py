"""Training throughput: tokens/s of `autarky train`'s own loop (`autarky.train.fit`: forward,
backward, clip, AdamW, its logging) and its share of the machine's fp32 matmul FLOP/s, measured in
the same run.

    .venv/bin/python bench/train_throughput.py                # tiny and small, fp32 and bf16 autocast
    .venv/bin/python bench/train_throughput.py --compile      # also torch.compile (fp32, one thread)

Model FLOPs per token are 6·N + 12·n_layer·d_model·seq_len (PaLM appendix B / nanoGPT's MFU):
N counts every parameter that is a matmul weight, so the tied lm_head (= the embedding matrix) is
counted once, and an untied input embedding, a lookup, is not. The RMSNorm gains are counted too
(under 0.1% of N). A step's time is read where `fit` asks for its batches: the interval between
two successive first micro-batches is one whole step (fit fetches the next batch right after the
forward pass), so nothing is timed but the product's loop. The reference is the best of several
2048×2048 fp32 `torch.mm` timings, taken in rounds interleaved with the steps (inside the batch
callback, their time taken out of the step's) so both see the same machine load; the headline
ratio is best step against best matmul, and the median of the per-round ratios is reported beside
it. On two threads both are timed by the wall clock; on one thread by the CPU time the process
uses, which other processes on a shared machine change far less (a busy machine makes two OpenMP
threads wait on each other at every op).

Each configuration runs in its own process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from common import machine, matmul_flops, peak_rss_mb, write_result

from autarky.model import Llama, preset_config
from autarky.train import Progress, TrainConfig, fit, get_batch

VOCAB = {"tiny": 4096, "small": 8192}
TARGET_RATIO = 0.6
WARMUP_STEPS = 2  # untimed, reported as warmup_s: first allocations (and torch.compile's compilation)


def flop_params(model: Llama) -> int:
    """Parameters that take part in a matmul per token: all but an untied input embedding."""
    n = model.num_params()
    if not model.config.tie_word_embeddings:
        n -= model.model.embed_tokens.weight.numel()
    return n


def timed_fit(
    model: Llama, config: TrainConfig, compiled: bool, steps: int, rounds: int, clock
) -> tuple[list[float], list[float]]:
    """Run `fit` for WARMUP_STEPS + rounds × steps steps; return each step's seconds and each
    round's reference matmul FLOP/s (measured before the round's first step)."""
    data = np.random.default_rng(0).integers(0, model.config.vocab_size, 1_000_000, dtype=np.uint16)
    asked, reference_s, refs = [], [], []

    def batches(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if micro == 0:
            t = clock()
            due = step >= WARMUP_STEPS and (step - WARMUP_STEPS) % steps == 0 and len(refs) < rounds
            if due:
                refs.append(matmul_flops(2048, 3, clock))
            asked.append(t)
            reference_s.append(clock() - t if due else 0.0)
        return get_batch(data, config.seed, step, micro, config.batch_size, config.seq_len)

    optimizer = model.configure_optimizer(config.lr, config.weight_decay, (config.beta1, config.beta2))
    fit(torch.compile(model) if compiled else model, optimizer, batches, lambda: {}, config, Progress())
    seconds = [b - a - r for a, b, r in zip(asked, asked[1:], reference_s, strict=False)]
    return seconds, refs


def measure(
    preset: str, precision: str, compiled: bool, threads: int, batch: int, seq: int, steps: int, rounds: int
) -> dict:
    torch.set_num_threads(threads)
    # One thread is timed by the CPU time it uses, which other processes on the machine hardly
    # change; two threads by the wall clock, which they do.
    clock = time.process_time if threads == 1 else time.perf_counter
    torch.manual_seed(0)
    config = TrainConfig(
        preset=preset,
        batch_size=batch,
        seq_len=seq,
        precision=precision,
        max_steps=WARMUP_STEPS + rounds * steps,
        eval_interval=10**9,
        checkpoint_interval=10**9,
    )
    model = Llama(preset_config(preset, VOCAB[preset])).train()
    seconds, refs = timed_fit(model, config, compiled, steps, rounds, clock)
    warmup, times = seconds[:WARMUP_STEPS], seconds[WARMUP_STEPS:]
    flops_per_token = (
        6 * flop_params(model) + 12 * model.config.num_hidden_layers * model.config.hidden_size * seq
    )
    round_ratios = [
        flops_per_token * batch * seq / min(times[r * steps : (r + 1) * steps]) / ref
        for r, ref in enumerate(refs)
    ]
    best, median = min(times), statistics.median(times)
    model_flops = flops_per_token * batch * seq / best
    return {
        "preset": preset,
        "precision": precision,
        "compile": compiled,
        "threads": threads,
        "clock": "process_time" if threads == 1 else "wall",
        "vocab_size": VOCAB[preset],
        "batch_size": batch,
        "seq_len": seq,
        "params": model.num_params(),
        "flop_params": flop_params(model),
        "flops_per_token": flops_per_token,
        "warmup_s": round(sum(warmup), 2),
        "step_s_best": round(best, 4),
        "step_s_median": round(median, 4),
        "tokens_per_s_best": round(batch * seq / best, 1),
        "tokens_per_s_median": round(batch * seq / median, 1),
        "model_gflops_best": round(model_flops / 1e9, 2),
        "matmul_gflops_best": round(max(refs) / 1e9, 2),
        "matmul_gflops_median": round(statistics.median(refs) / 1e9, 2),
        "ratio": round(model_flops / max(refs), 3),
        "ratio_median_of_rounds": round(statistics.median(round_ratios), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_in_process(
    args: argparse.Namespace, preset: str, precision: str, compiled: bool, threads: int
) -> dict:
    """One configuration in a fresh process (its own peak RSS), printed as a table row."""
    steps = args.steps or (4 if preset == "tiny" else 2)
    one = f"{preset},{precision},{int(compiled)},{threads}"
    cmd = [sys.executable, __file__, "--one", one, "--batch-size", str(args.batch_size)]
    cmd += ["--seq-len", str(args.seq_len), "--steps", str(steps), "--rounds", str(args.rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{preset} {precision} compile={compiled} threads={threads}: failed\n{proc.stderr[-2000:]}")
        return {
            "preset": preset,
            "precision": precision,
            "compile": compiled,
            "threads": threads,
            "error": proc.stderr[-2000:],
        }
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{preset:6} {precision:5} {str(compiled):7} {threads:>3} {r['tokens_per_s_best']:>10,.0f} "
        f"{r['tokens_per_s_median']:>8,.0f} {r['model_gflops_best']:>10.1f} {r['matmul_gflops_best']:>8.1f} "
        f"{r['ratio']:>6.3f} {r['ratio_median_of_rounds']:>8.3f} {r['peak_rss_mb']:>7.0f}",
        flush=True,
    )
    return r


def summarise(preset: str, results: list[dict]) -> dict:
    """A preset's ratios and speed-ups, printed as one line."""
    by = {(r["preset"], r["precision"], r["compile"], r["threads"]): r for r in results if "error" not in r}
    two, one = by.get((preset, "fp32", False, 2)), by.get((preset, "fp32", False, 1))
    bf16, comp = by.get((preset, "bf16", False, 1)), by.get((preset, "fp32", True, 1))
    s = {
        "ratio_2_threads_wall": two and two["ratio"],
        "ratio_1_thread_cpu_time": one and one["ratio"],
        "tokens_per_s_2_threads": two and two["tokens_per_s_best"],
        "meets_target": bool(two and two["ratio"] >= TARGET_RATIO),
    }
    if one and bf16:
        s["bf16_over_fp32_speed"] = round(bf16["tokens_per_s_best"] / one["tokens_per_s_best"], 3)
    if one and comp:
        s["compile_over_eager_speed"] = round(comp["tokens_per_s_best"] / one["tokens_per_s_best"], 3)
        s["compile_warmup_s"] = comp["warmup_s"]
    print(
        f"{preset}: fp32 ratio to matmul {s['ratio_2_threads_wall']} on 2 threads (target ≥ {TARGET_RATIO}: "
        f"{'met' if s['meets_target'] else 'MISSED'}), {s['ratio_1_thread_cpu_time']} on 1 thread by CPU time"
        + (f"; bf16/fp32 speed {s['bf16_over_fp32_speed']}" if "bf16_over_fp32_speed" in s else "")
        + (
            f"; compiled/eager speed {s['compile_over_eager_speed']}"
            if "compile_over_eager_speed" in s
            else ""
        )
    )
    return s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(VOCAB))
    parser.add_argument(
        "--bf16-presets",
        nargs="*",
        default=["tiny"],
        choices=sorted(VOCAB),
        help="presets to time under bf16 autocast too (default tiny: on a CPU without native bf16 it is "
        "an order of magnitude slower, and small would take half an hour)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (fp32, 1 thread)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, help="timed steps per round (default: 4 for tiny, 2 for small)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (matmul reference, steps)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()

    if args.one:
        preset, precision, compiled, threads = args.one.split(",")
        settings = (args.batch_size, args.seq_len, args.steps, args.rounds)
        print(json.dumps(measure(preset, precision, compiled == "1", int(threads), *settings)))
        return

    # (preset, precision, compiled, threads): fp32 on both cores by the wall clock, and fp32 against
    # bf16 autocast (and compiled) on one core by CPU time, the comparison the machine's load spoils least.
    runs = []
    for p in args.presets:
        runs += [(p, "fp32", False, 2), (p, "fp32", False, 1)]
        if p in args.bf16_presets:
            runs.append((p, "bf16", False, 1))
        if args.compile:
            runs.append((p, "fp32", True, 1))
    print(
        f"{'preset':6} {'prec':5} {'compile':7} {'thr':>3} {'tok/s best':>10} {'median':>8} {'model GF/s':>10} "
        f"{'mm GF/s':>8} {'ratio':>6} {'(median)':>8} {'RSS MB':>7}",
        flush=True,
    )
    results = [run_in_process(args, *run) for run in runs]
    summary = {preset: summarise(preset, results) for preset in args.presets}
    path = write_result(
        "train_throughput",
        {"machine": machine(), "target_ratio": TARGET_RATIO, "summary": summary, "runs": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
