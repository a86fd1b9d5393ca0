"""Chat fine-tuning throughput and memory: tokens/s and peak memory of `autarky sft`'s own step
(`autarky.train.fit` over `PackedLM`: packed rows, block-diagonal attention, assistant-only loss,
AdamW on every weight or on LoRA adapters), full and LoRA, for the `small` preset and a 1B-class
Llama (the `1b` preset with Llama 3.2's 128k vocabulary: 16 layers, 2048 wide, GQA 32/8, tied
embeddings, 1.24B parameters, the shape of Llama-3.2-1B), random weights in fp32.

    .venv/bin/python bench/sft.py                          # small and 1b, full and LoRA rank 16
    .venv/bin/python bench/sft.py --presets small --steps 8

Rows are packed from conversations of random length (24 to 400 tokens, the assistant's half of
each scored) exactly as `sft` packs them (`pack`, `make_batches`). Each configuration runs in its
own process, so its peak RSS (or, on a GPU, peak allocated memory) is its own. A step's time is
read where `fit` asks for a step's first micro-batch, as bench/train_throughput.py does; tokens/s
counts every slot of a row (padding included) and, beside it, the conversation tokens alone.

Full fine-tuning holds weights, gradients and AdamW's two moments in fp32, 16 bytes a parameter
before activations; where that would take more than half this machine's available memory (it is
shared) the run is not attempted, and its peak is estimated as those 16 bytes a parameter plus the
activations the LoRA run of the same shape measured (its peak less its 4-byte frozen weights),
marked so. LoRA holds the frozen weights (4 bytes a parameter) and, for the adapters alone,
gradients and moments.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, write_result

from autarky.machine import best_device
from autarky.model import Llama, preset_config
from autarky.train import Progress, fit
from autarky.train.config import SFTConfig
from autarky.train.sft import IGNORE, PackedLM, adapt, make_batches, pack

VOCAB = {"small": 8192, "1b": 128256}  # 1b with Llama 3.2's vocabulary: 1.24B parameters, as Llama-3.2-1B
SETTINGS = {"small": dict(seq_len=512, batch_size=8), "1b": dict(seq_len=512, batch_size=2)}
WARMUP_STEPS = 1
GIB = 1 << 30


def conversations(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int], bool]]:
    """(inputs, targets, cut) of `n` random conversations: the first half of each is the user's."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(24, 400))]
        half = len(ids) // 2
        out.append((ids[:-1], [IGNORE] * (half - 1) + ids[half:], False))
    return out


def available_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def full_bytes_estimate(n_params: int) -> int:
    """Weights, gradients and AdamW's two moments, fp32: 16 bytes a parameter, activations aside."""
    return 16 * n_params


def measure(preset: str, rank: int, steps: int) -> dict:
    device = best_device()
    torch.manual_seed(0)
    settings = SETTINGS[preset]
    config = SFTConfig(
        **settings,
        max_steps=WARMUP_STEPS + steps,
        lora_rank=rank,
        lr=1e-4,
        warmup_steps=1,
        eval_interval=10**9,
        checkpoint_interval=10**9,
    )
    with torch.device("meta"):
        n_params = Llama(preset_config(preset, VOCAB[preset])).num_params()
    if not rank and full_bytes_estimate(n_params) > 0.5 * available_bytes():
        return {
            "parameters": n_params,
            "skipped": f"full fine-tuning needs at least {full_bytes_estimate(n_params) / GIB:.1f} GiB "
            f"(16 bytes a parameter before activations); {available_bytes() / GIB:.1f} GiB are available",
        }
    model = Llama(preset_config(preset, VOCAB[preset]))
    trainable, optimizer = adapt(model, config, device)
    rows = pack(conversations(16 * config.batch_size * (WARMUP_STEPS + steps), VOCAB[preset]), config.seq_len)
    batches, asked = make_batches(rows, config, device), []

    def timed(step: int, micro: int):
        if micro == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            asked.append(time.perf_counter())
        return batches(step, micro)

    fit(PackedLM(model), optimizer, timed, lambda: {}, config, Progress())
    seconds = [b - a for a, b in zip(asked, asked[1:], strict=False)][WARMUP_STEPS:]
    step_s = statistics.median(seconds)
    tokens = config.batch_size * config.seq_len * config.grad_accum
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else peak_rss_mb() / 1024
    return {
        "parameters": n_params,
        "trainable_parameters": sum(p.numel() for p in trainable.parameters() if p.requires_grad),
        "device": str(device),
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "steps_timed": len(seconds),
        "step_s_median": round(step_s, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "conversation_tokens_per_s": round(tokens / step_s * rows.tokens / rows.inputs.numel(), 1),
        "packing": round(rows.tokens / rows.inputs.numel(), 4),
        "peak_gib": round(peak, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,1b")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one warmup step)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # preset,rank: run one configuration here
    args = parser.parse_args()
    if args.one:
        preset, rank = args.one.split(",")
        print(json.dumps(measure(preset, int(rank), args.steps)))
        return
    results = []
    for preset in args.presets.split(","):
        rows = {rank: run_one(preset, rank, args.steps) for rank in (args.rank, 0)}
        lora, full = rows[args.rank], rows[0]
        if "skipped" in full:
            activations = lora["peak_gib"] - 4 * lora["parameters"] / GIB
            full["estimated_peak_gib"] = round(full_bytes_estimate(full["parameters"]) / GIB + activations, 2)
        for row in (full, lora):
            results.append(row)
            print(json.dumps(row))
    write_result("sft", {"machine": machine(), "results": results})


def run_one(preset: str, rank: int, steps: int) -> dict:
    """One configuration in its own process, so that its peak memory is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", f"{preset},{rank}", "--steps", str(steps)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    mode = f"lora r={rank}" if rank else "full"
    return {"preset": preset, "mode": mode, **json.loads(out.stdout.splitlines()[-1])}


if __name__ == "__main__":
    main()
