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

On a GPU (`--device cuda`, presets base and 1b by default) each configuration is `autarky train`'s
step as the product runs it there: bf16 autocast, `make_optimizer`'s optimizer (Muon's iteration in
bf16, fused AdamW beside it), SDPA's flash attention, pinned non-blocking batch copies, with and
without `--compile on`. The host syncs only where `fit` does, so a step is timed over whole rounds
(the device synchronised at each round's edges). MFU is model FLOP/s over the GPU's dense bf16 peak
from its datasheet (`--peak-tflops` for a GPU the table lacks); the same-run reference is the best
8192² bf16 `torch.mm`.

    .venv/bin/python bench/train_throughput.py --device cuda            # base and 1b, eager and compiled
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
from autarky.train.muon import make_optimizer

VOCAB = {"tiny": 4096, "small": 8192, "base": 32000, "1b": 32000}
# Dense bf16 tensor-core peaks (no sparsity) from the datasheets, by a part of torch's device name;
# the first that matches wins, so the variants come before the family.
GPU_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
GPU_WARMUP_STEPS = 5  # untimed on a GPU: allocations, cuDNN/cuBLAS choices and torch.compile's compilation
TARGET_RATIO = 0.6
WARMUP_STEPS = 2  # untimed, reported as warmup_s: first allocations (and torch.compile's compilation)


def flop_params(model: Llama) -> int:
    """Parameters that take part in a matmul per token: all but an untied input embedding."""
    n = model.num_params()
    if not model.config.tie_word_embeddings:
        n -= model.model.embed_tokens.weight.numel()
    return n


def model_flops_per_token(model: Llama, seq: int) -> int:
    """6·N + 12·n_layer·d_model·seq_len (PaLM appendix B / nanoGPT's MFU)."""
    return 6 * flop_params(model) + 12 * model.config.num_hidden_layers * model.config.hidden_size * seq


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
    fit(model, optimizer, batches, lambda: {}, config, Progress())
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
        compile="on" if compiled else "off",
        max_steps=WARMUP_STEPS + rounds * steps,
        eval_interval=10**9,
        checkpoint_interval=10**9,
    )
    model = Llama(preset_config(preset, VOCAB[preset])).train()
    seconds, refs = timed_fit(model, config, compiled, steps, rounds, clock)
    warmup, times = seconds[:WARMUP_STEPS], seconds[WARMUP_STEPS:]
    flops_per_token = model_flops_per_token(model, seq)
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


def gpu_peak_flops(name: str, asked_tflops: float | None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s: `--peak-tflops` when given, else the datasheet's."""
    if asked_tflops:
        return asked_tflops * 1e12
    return next((tflops * 1e12 for part, tflops in GPU_BF16_PEAK_TFLOPS if part in name), None)


def gpu_matmul_flops(n: int = 8192, repeats: int = 10) -> float:
    """Best bf16 FLOP/s of an n×n by n×n `torch.mm` on the GPU: what this device reaches, same run."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure_gpu(
    preset: str, compiled: bool, batch: int, seq: int, steps: int, rounds: int, peak_tflops: float | None
) -> dict:
    """`fit` on the GPU with the product's optimizer and batch copies, timed over whole rounds."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = TrainConfig(
        preset=preset,
        batch_size=batch,
        seq_len=seq,
        precision="bf16",
        compile="on" if compiled else "off",
        max_steps=GPU_WARMUP_STEPS + rounds * steps,
        eval_interval=10**9,
        checkpoint_interval=10**9,
    )
    model = Llama(preset_config(preset, VOCAB[preset])).to(device).train()
    optimizer = make_optimizer(model, config)
    data = np.random.default_rng(0).integers(0, model.config.vocab_size, 10_000_000, dtype=np.uint16)
    edges: list[float] = []
    start = time.perf_counter()

    def batches(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        # fit asks for a step's first batch right after the previous step's forward pass, so from
        # one round's edge to the next is exactly `steps` whole steps of the device's work.
        if micro == 0 and step >= GPU_WARMUP_STEPS and (step - GPU_WARMUP_STEPS) % steps == 0:
            torch.cuda.synchronize()
            edges.append(time.perf_counter())
        x, y = get_batch(data, config.seed, step, micro, config.batch_size, config.seq_len)
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)

    fit(model, optimizer, batches, lambda: {}, config, Progress())
    step_s = [(b - a) / steps for a, b in zip(edges, edges[1:], strict=False)]
    best = min(step_s)
    flops_per_token = model_flops_per_token(model, seq)
    model_flops = flops_per_token * batch * seq / best
    peak = gpu_peak_flops(torch.cuda.get_device_name(), peak_tflops)
    matmul = gpu_matmul_flops()
    return {
        "preset": preset,
        "precision": "bf16",
        "compile": compiled,
        "device": torch.cuda.get_device_name(),
        "optimizer": config.optimizer,
        "batch_size": batch,
        "seq_len": seq,
        "params": model.num_params(),
        "flops_per_token": flops_per_token,
        "warmup_s": round(edges[0] - start, 1),
        "step_s_best": round(best, 4),
        "step_s_median": round(statistics.median(step_s), 4),
        "tokens_per_s_best": round(batch * seq / best, 1),
        "model_tflops_best": round(model_flops / 1e12, 1),
        "peak_tflops": peak and round(peak / 1e12, 1),
        "mfu": peak and round(model_flops / peak, 4),
        "matmul_tflops": round(matmul / 1e12, 1),
        "ratio_to_matmul": round(model_flops / matmul, 3),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def run_gpu(args: argparse.Namespace) -> None:
    """Each preset eager and compiled on the GPU, each in its own process; MFU printed and written."""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU on this machine")
    print(
        f"{'preset':6} {'compile':7} {'tok/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'of mm':>6} {'mem GB':>7}",
        flush=True,
    )
    results = []
    for preset in args.presets:
        for compiled in (False, True):
            cmd = [sys.executable, __file__, "--device", "cuda", "--one", f"{preset},bf16,{int(compiled)},0"]
            cmd += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
            cmd += ["--steps", str(args.steps or 10), "--rounds", str(args.rounds)]
            cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"{preset} compile={compiled}: failed\n{proc.stderr[-3000:]}", flush=True)
                results.append({"preset": preset, "compile": compiled, "error": proc.stderr[-3000:]})
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "?"
            print(
                f"{preset:6} {str(compiled):7} {r['tokens_per_s_best']:>10,.0f} {r['model_tflops_best']:>8.1f} "
                f"{mfu:>6} {r['ratio_to_matmul']:>6.2f} {r['peak_memory_gb']:>7.1f}",
                flush=True,
            )
            results.append(r)
    path = write_result("train_gpu", {"machine": machine(), "target_mfu_1b": 0.45, "runs": results})
    print(f"wrote {path}")


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
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the GPU path and its MFU (see above)"
    )
    parser.add_argument(
        "--presets", nargs="+", choices=sorted(VOCAB), help="default: tiny small (cpu), base 1b (cuda)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16 peak, where the table lacks it"
    )
    parser.add_argument(
        "--bf16-presets",
        nargs="*",
        default=["tiny"],
        choices=sorted(VOCAB),
        help="presets to time under bf16 autocast too (default tiny: on a CPU without native bf16 it is "
        "an order of magnitude slower, and small would take half an hour)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (fp32, 1 thread)")
    parser.add_argument("--batch-size", type=int, help="default: 16 (cpu), 8 (cuda)")
    parser.add_argument("--seq-len", type=int, help="default: 256 (cpu), 2048 (cuda)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default: 4 for tiny, 2 for small)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (matmul reference, steps)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.presets = args.presets or (["base", "1b"] if gpu else ["tiny", "small"])
    args.batch_size = args.batch_size or (8 if gpu else 16)
    args.seq_len = args.seq_len or (2048 if gpu else 256)

    if args.one and gpu:
        preset, _, compiled, _ = args.one.split(",")
        settings = (args.batch_size, args.seq_len, args.steps, args.rounds, args.peak_tflops)
        print(json.dumps(measure_gpu(preset, compiled == "1", *settings)))
        return
    if gpu:
        run_gpu(args)
        return
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
