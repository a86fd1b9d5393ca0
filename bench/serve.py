"""Serving benchmark: decode speed against the memory-bandwidth floor, continuous batching, TTFT,
transformers' `generate` as a reference, and fp32/bf16/int8 speed and bits-per-byte.

    .venv/bin/python bench/serve.py [--text ../shared/corpora/tinyshakespeare/input.txt] [--quick]

Prints a table and writes bench/results/serve.json. Figures, not asserts: a shared 2-core machine is noisy,
so each timing is the best of a few runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autarky.evaluate import bits_per_byte, token_byte_lengths  # noqa: E402
from autarky.generate import SamplingParams  # noqa: E402
from autarky.model import Llama, load_pretrained, preset_config, save_pretrained  # noqa: E402
from autarky.runner import TorchRunner  # noqa: E402
from autarky.serve.engine import Engine, Request  # noqa: E402
from autarky.serve.precision import decode_weight_bytes, int8pack_works, prepare  # noqa: E402
from autarky.tokenizer import Tokenizer  # noqa: E402
from autarky.train import Progress, TrainConfig, fit, get_batch  # noqa: E402

DEFAULT_TEXT = ROOT.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"


# ---------------------------------------------------------------- setup


def make_tokenizer(text_path: Path, workdir: Path) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) trained on the text through the real stages."""
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer

    corpus = curate([text_path], workdir)
    return train_tokenizer(corpus, workdir, vocab_size=1024).path


def save_model(model: Llama, tokenizer_dir: Path, directory: Path) -> Path:
    save_pretrained(model, directory)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / f, directory / f)
    return directory


def train_tiny(ids: np.ndarray, vocab: int, seconds: float, seq_len: int = 128, batch: int = 16) -> Llama:
    """`autarky train`'s loop (`fit`) on the text for a time budget: a model good enough for
    quantisation to show its cost."""
    config = TrainConfig(
        seq_len=seq_len,
        batch_size=batch,
        max_steps=10**9,
        minutes=seconds / 60,
        lr=3e-3,
        warmup_steps=10,
        eval_interval=10**9,
        checkpoint_interval=10**9,
        seed=0,
    )
    torch.manual_seed(0)
    model = Llama(preset_config("tiny", vocab))
    optimizer = model.configure_optimizer(config.lr, config.weight_decay, (config.beta1, config.beta2))
    done = fit(
        model,
        optimizer,
        lambda step, micro: get_batch(ids, config.seed, step, micro, batch, seq_len),
        lambda: {},
        config,
        Progress(),
    )
    print(f"trained tiny for {done.step} steps, last loss {done.history[-1]['loss']:.3f}")
    return model.eval()


def copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write), the best of a few."""
    a = torch.ones(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a)) for _ in range(repeats))
    return 2 * a.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- decode speed


@torch.inference_mode()
def engine_run(engine: Engine, prompt: list[int], max_tokens: int) -> float:
    done = []
    request = Request(
        prompt,
        SamplingParams(temperature=0, max_tokens=max_tokens),
        emit=lambda e: done.append(e) if e.finish_reason else None,
    )
    t = time.perf_counter()
    engine.submit(request)
    while not done:
        engine._take_inbox(block=False)
        engine.step()
    assert done[0].completion_tokens == max_tokens, done[0]
    return time.perf_counter() - t


def engine_decode_rate(model: Llama, tok: Tokenizer, prompt: list[int], n: int, repeats: int = 3) -> float:
    """Decode tokens/s at batch 1 through the serving engine: n tokens' time beyond the first token's."""
    engine = Engine(TorchRunner(model, slots=1), tok)
    engine.stop_ids = set()  # a random model may pick end-of-text; the benchmark wants exactly n tokens
    engine_run(engine, prompt, 2)
    first = min(engine_run(engine, prompt, 1) for _ in range(repeats))
    whole = min(engine_run(engine, prompt, n + 1) for _ in range(repeats))
    return n / (whole - first)


def hf_decode_rate(directory: Path, prompt: list[int], n: int, repeats: int = 3) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])

    def run(k: int) -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=2)
            elapsed = time.perf_counter() - t
        assert out.shape[1] == len(prompt) + k
        return elapsed

    run(2)
    first = min(run(1) for _ in range(repeats))
    whole = min(run(n + 1) for _ in range(repeats))
    return n / (whole - first)


# ---------------------------------------------------------------- concurrent clients over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path, port: int, log: Path, threads: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from autarky.cli import main; main()",
        "serve",
        str(directory),
        "--port",
        str(port),
        "--slots",
        "16",
        "--audit-log",
        str(log),
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


async def clients(url: str, model: str, n_clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)

    async def one(i: int):
        t = time.perf_counter()
        ttft, tokens = None, 0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Tell me a story, number {i}."}],
            max_tokens=max_tokens,
            temperature=0.8,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return ttft, tokens

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n_clients)))
    wall = time.perf_counter() - start
    await client.close()
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    return {
        "clients": n_clients,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, math.ceil(0.95 * len(ttfts)) - 1)], 3),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and a shorter training run")
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the server (0 = default)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()
    n = 32 if args.quick else 128
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
    }
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        tokenizer_dir = make_tokenizer(args.text, work / "work")
        tok = Tokenizer.load(tokenizer_dir)
        prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me a story about the king."}])

        # batch-1 decode of the `small` preset (random weights: speed does not depend on them)
        small = Llama(preset_config("small", tok.vocab_size)).eval()
        small_dir = save_model(small, tokenizer_dir, work / "small")
        bandwidth = copy_bandwidth()
        speeds = {}
        for dtype in ("fp32", "bf16", "int8"):
            model = prepare(load_pretrained(small_dir), dtype)
            rate = engine_decode_rate(model, tok, prompt, n)
            floor = bandwidth / decode_weight_bytes(model)
            speeds[dtype] = {
                "decode_tokens_per_s": round(rate, 1),
                "weight_bytes": decode_weight_bytes(model),
                "floor_tokens_per_s": round(floor, 1),
                "ratio_to_floor": round(rate / floor, 3),
            }
            print(
                f"small {dtype}: {rate:.1f} tokens/s at batch 1; floor {floor:.1f} ({rate / floor:.2f} of it)"
            )
        if int8pack_works():
            model = prepare(load_pretrained(small_dir), "int8", kernel="dequant")
            speeds["int8_dequant_kernel"] = {
                "decode_tokens_per_s": round(engine_decode_rate(model, tok, prompt, n), 1)
            }
        hf_rate = hf_decode_rate(small_dir, prompt, n)
        print(
            f"transformers generate: {hf_rate:.1f} tokens/s; ours/theirs {speeds['fp32']['decode_tokens_per_s'] / hf_rate:.2f}"
        )
        result["small_batch1"] = {
            "copy_bandwidth_GBps": round(bandwidth / 1e9, 2),
            "int8_kernel": "int8pack" if int8pack_works() else "dequant",
            **speeds,
            "transformers_generate_tokens_per_s": round(hf_rate, 1),
            "ours_over_transformers": round(speeds["fp32"]["decode_tokens_per_s"] / hf_rate, 2),
            "new_tokens": n,
        }

        # continuous batching over HTTP: 1, 4, 16 streaming clients against `autarky serve` (fp32, 16 slots)
        port = free_port()
        server = start_server(small_dir, port, work / "audit.jsonl", args.threads)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(clients(url, "small", 2, 8))  # warm up
            runs = [asyncio.run(clients(url, "small", c, n)) for c in (1, 4, 16)]
        finally:
            server.terminate()
            server.wait(timeout=30)
        for r in runs:
            print(
                f"{r['clients']:>2} clients: {r['tokens_per_s']:.1f} tokens/s, TTFT p50 {r['ttft_p50_s']}s p95 {r['ttft_p95_s']}s"
            )
        result["concurrent_clients"] = runs
        result["speedup_16_vs_1"] = round(runs[2]["tokens_per_s"] / runs[0]["tokens_per_s"], 2)

        # bits per byte of each precision, on a tiny model trained on the text for a minute or so
        text = args.text.read_text(encoding="utf-8")
        split = int(len(text) * 0.9)
        train_ids = np.array(tok.encode(text[:split]), dtype=np.uint16)
        val_text = text[split:][: 50_000 if args.quick else 100_000]
        val_ids = np.array([tok.bos_id, *tok.encode(val_text)])
        token_bytes = token_byte_lengths(tok)
        tiny = train_tiny(train_ids, tok.vocab_size, 20 if args.quick else args.train_seconds)
        tiny_dir = save_model(tiny, tokenizer_dir, work / "tiny")
        quality = {}
        for dtype in ("fp32", "bf16", "int8"):
            model = prepare(load_pretrained(tiny_dir), dtype)
            quality[dtype] = {
                "val_bits_per_byte": round(bits_per_byte(model, val_ids, token_bytes, seq_len=256).bpb, 4),
                "decode_tokens_per_s": round(engine_decode_rate(model, tok, prompt, n), 1),
            }
            print(
                f"tiny {dtype}: {quality[dtype]['val_bits_per_byte']} bits/byte, "
                f"{quality[dtype]['decode_tokens_per_s']} tokens/s"
            )
        result["tiny_trained"] = {
            "train_seconds": args.train_seconds,
            "val_bytes": len(val_text.encode()),
            **quality,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
