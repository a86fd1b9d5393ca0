"""Serving benchmark: both engines through the HTTP API beside llama.cpp called directly, at each
precision; continuous batching (1 and 16 streaming clients) with TTFT; bits per byte of each precision.

Batch-1 decode is timed as a client sees it: one streaming client, greedy, the time from its first
token to its last. llama.cpp's own figure is llama-cpp-python's `Llama.generate` on the same GGUF.

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
from autarky.model import Llama, load_pretrained, preset_config, save_pretrained  # noqa: E402
from autarky.serve.precision import decode_weight_bytes, prepare  # noqa: E402
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


# ---------------------------------------------------------------- references: llama.cpp called directly


class DirectLlamaCpp:
    """llama-cpp-python's own greedy decode on a GGUF, batch 1, every core: tokens/s from the first
    generated token to the last (the prompt's prefill left out, as in the HTTP figures)."""

    def __init__(self, gguf: Path, prompt: list[int], n: int):
        import llama_cpp

        self.prompt, self.n = prompt, n
        self.llm = llama_cpp.Llama(
            str(gguf),
            n_ctx=len(prompt) + n + 16,
            n_batch=len(prompt),
            n_threads=os.cpu_count(),
            verbose=False,
        )
        self.rate()  # warm up

    def rate(self) -> float:
        self.llm.reset()
        first = None
        for k, _ in enumerate(
            self.llm.generate(self.prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        ):
            if k == 0:
                first = time.perf_counter()
            if k == self.n:
                return self.n / (time.perf_counter() - first)
        raise RuntimeError("llama.cpp stopped early")

    def close(self) -> None:
        self.llm.close()


def batching_gain(gguf: Path, prompt: list[int], n: int, rows: int = 16, repeats: int = 3) -> dict:
    """llama.cpp's own gain from decoding 16 sequences in one batch: our runner (one `llama_decode`
    of a token of every row, as the engine makes them, with the server's cache settings) at 1 and 16
    rows, greedy, no HTTP and no sampling. The most the 16-client figure could gain over one client."""
    from autarky.llamacpp import LlamaCppRunner

    runner = LlamaCppRunner(gguf, slots=rows)  # the model's context, as the server makes it

    def rate(k: int) -> float:
        runner.clear()
        for row in range(k):
            runner.stage()
            runner.prefill(prompt)
            runner.join(row)
        tokens = [prompt[-1]] * k
        start = time.perf_counter()
        for _ in range(n):
            tokens = runner.decode(tokens).argmax(dim=-1).tolist()
        return k * n / (time.perf_counter() - start)

    try:
        one, many = (max(rate(k) for _ in range(repeats)) for k in (1, rows))
    finally:
        runner.close()
    return {
        "batch1_tokens_per_s": round(one, 1),
        f"batch{rows}_tokens_per_s": round(many, 1),
        "gain": round(many / one, 2),
    }


class RunnerAsModel(torch.nn.Module):
    """A runner behind the `model(ids)[0]` = logits interface that bits per byte scores."""

    def __init__(self, runner):
        super().__init__()
        self.runner = runner
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # tells score_batches the device

    def forward(self, ids: torch.Tensor):
        rows = []
        for row in ids.tolist():
            self.runner.clear()
            self.runner.stage()
            rows.append(self.runner.prefill(row, all_logits=True))
        return (torch.stack(rows),)


# ---------------------------------------------------------------- concurrent clients over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    directory: Path, port: int, log: Path, threads: int, engine: str, dtype: str, *extra: str
) -> subprocess.Popen:
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
        "--engine",
        engine,
        "--dtype",
        dtype,
        *extra,
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


async def clients(url: str, model: str, n_clients: int, max_tokens: int, temperature: float = 0.8) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)

    async def one(i: int):
        t = time.perf_counter()
        ttft, last, tokens = None, None, 0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Tell me a story, number {i}."}],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter() - t
                ttft = last if ttft is None else ttft
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return ttft, tokens, last

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n_clients)))
    wall = time.perf_counter() - start
    await client.close()
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    ttft, count, last = results[0]
    return {
        # one client's decode rate: its tokens after the first over the time from first to last
        "decode_tokens_per_s": round((count - 1) / (last - ttft), 1) if count > 1 else None,
        "clients": n_clients,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, math.ceil(0.95 * len(ttfts)) - 1)], 3),
    }


# ---------------------------------------------------------------- main


ENGINES = ("llama.cpp", "torch")


def decode_table(small_dir: Path, work: Path, args, prompt: list[int], n: int) -> dict:
    """Batch-1 decode through the HTTP API on each engine, beside llama.cpp called directly.

    The three are measured in turn, round after round, and each keeps its best round: a shared
    machine's speed drifts over minutes, and taking them one after another would credit the drift
    to whichever ran in the faster minute. 16 streaming clients follow.
    """
    from autarky.gguf import write_gguf
    from autarky.llamacpp import GGUF_DTYPES

    rows = {}
    for dtype in ("fp32", "bf16", "int8"):
        gguf = work / f"small-{GGUF_DTYPES[dtype]}.gguf"
        write_gguf(small_dir, gguf, GGUF_DTYPES[dtype])
        gain = batching_gain(gguf, prompt, n)
        direct = DirectLlamaCpp(gguf, prompt, n)
        servers = {e: start_server_for(small_dir, work, args, e, dtype) for e in ENGINES}
        try:
            rounds: dict[str, list] = {"direct": [], **{e: [] for e in ENGINES}}
            for _ in range(args.rounds):
                rounds["direct"].append(direct.rate())
                for e, (_, url) in servers.items():
                    rounds[e].append(asyncio.run(clients(url, "small", 1, n, temperature=0)))
            crowd = {e: asyncio.run(clients(url, "small", 16, n)) for e, (_, url) in servers.items()}
        finally:
            direct.close()
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
        rows[dtype] = decode_row(dtype, rounds, crowd) | {"llama_cpp_batching": gain}
        print(f"  llama.cpp alone, 16 rows in one batch against 1: {gain}")
    return rows


def start_server_for(
    directory: Path, work: Path, args, engine: str, dtype: str
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = work / f"audit-{engine}-{dtype}.jsonl"
    extra = ("--stream-interval-ms", str(args.stream_interval_ms))
    proc = start_server(directory, port, log, args.threads, engine, dtype, *extra)
    url = f"http://127.0.0.1:{port}"
    asyncio.run(clients(url, "small", 2, 8))  # warm up
    return proc, url


def decode_row(dtype: str, rounds: dict[str, list], crowd: dict) -> dict:
    """Each engine's best round against llama.cpp's best, its 16-client run against its best round."""
    from autarky.llamacpp import GGUF_DTYPES

    direct = max(rounds["direct"])
    best = {e: max(rounds[e], key=lambda r: r["decode_tokens_per_s"] or 0) for e in ENGINES}
    cpp, ours = (best[e]["decode_tokens_per_s"] for e in ENGINES)
    row = {
        "gguf": GGUF_DTYPES[dtype],
        "rounds": len(rounds["direct"]),
        "llama_cpp_direct_tokens_per_s": round(direct, 1),
        "llama_cpp_direct_rounds": [round(r, 1) for r in rounds["direct"]],
        **{f"http_{e.replace('.', '')}": {"one_client": best[e]} for e in ENGINES},
        **{
            f"http_{e.replace('.', '')}_rounds": [r["decode_tokens_per_s"] for r in rounds[e]]
            for e in ENGINES
        },
        "llamacpp_engine_over_direct": round(cpp / direct, 3),
        "llamacpp_engine_over_torch_engine": round(cpp / ours, 2),
    }
    print(
        f"small {dtype}: llama.cpp direct {direct:.0f} tokens/s; through our API: llama.cpp engine "
        f"{cpp:.0f} ({cpp / direct:.2f}x direct), torch engine {ours:.0f} ({cpp / ours:.1f}x slower)"
    )
    for e in ENGINES:
        key = f"http_{e.replace('.', '')}"
        row[key]["sixteen_clients"] = crowd[e]
        row[key]["sixteen_over_one"] = round(crowd[e]["tokens_per_s"] / best[e]["tokens_per_s"], 2)
        for label, run in row[key].items():
            if isinstance(run, dict):
                print(
                    f"  {e:9} {label:15} {run['tokens_per_s']:7.1f} tokens/s aggregate, "
                    f"TTFT p50 {run['ttft_p50_s']}s p95 {run['ttft_p95_s']}s"
                )
    return row


def quality_table(args, tok: Tokenizer, tokenizer_dir: Path, work: Path) -> dict:
    """Bits per byte of each precision on held-out text, torch and llama.cpp, on a tiny model trained
    on the text for a minute or so (a random model's bits per byte would hide what precision costs)."""
    from autarky.gguf import write_gguf
    from autarky.llamacpp import GGUF_DTYPES, LlamaCppRunner

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
        gguf = work / f"tiny-{GGUF_DTYPES[dtype]}.gguf"
        write_gguf(tiny_dir, gguf, GGUF_DTYPES[dtype])
        runner = RunnerAsModel(LlamaCppRunner(gguf, context=256, batch=256))
        quality[dtype] = {
            "torch_val_bits_per_byte": round(bits_per_byte(model, val_ids, token_bytes, seq_len=256).bpb, 4),
            f"llamacpp_{GGUF_DTYPES[dtype]}_val_bits_per_byte": round(
                bits_per_byte(runner, val_ids, token_bytes, seq_len=256).bpb, 4
            ),
        }
        print(f"tiny {dtype}: bits/byte {quality[dtype]}")
    return {"train_seconds": args.train_seconds, "val_bytes": len(val_text.encode()), **quality}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and a shorter training run")
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument("--threads", type=int, default=0, help="compute threads in the servers (0 = default)")
    ap.add_argument(
        "--rounds", type=int, default=5, help="rounds of direct / llama.cpp engine / torch engine"
    )
    ap.add_argument(
        "--stream-interval-ms",
        type=float,
        default=20.0,
        help="the servers' --stream-interval-ms (0: a chunk a token)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()
    n = 32 if args.quick else 128
    torch.manual_seed(0)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
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
        # The `small` preset with random weights (speed does not depend on them); the stop tokens'
        # embedding rows are zeroed so a greedy client decodes every token it asks for.
        small = Llama(preset_config("small", tok.vocab_size)).eval()
        with torch.no_grad():
            for stop in tok.stop_ids:
                small.model.embed_tokens.weight[stop] = 0
        small_dir = save_model(small, tokenizer_dir, work / "small")
        bandwidth = copy_bandwidth()
        result["small_decode"] = {
            "copy_bandwidth_GBps": round(bandwidth / 1e9, 2),
            "fp32_weight_bytes": decode_weight_bytes(small),
            "new_tokens": n,
            **decode_table(small_dir, work, args, prompt, n),
        }
        result["tiny_trained"] = quality_table(args, tok, tokenizer_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
