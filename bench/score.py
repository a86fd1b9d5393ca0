"""Scoring benchmark: prompt tokens per second of `/v1/completions` with echo (every prompt token's
log-probability, as lm-eval asks for it), at batch 1 and batched, against the model's own
forward-pass rate measured in the same run.

    .venv/bin/python bench/score.py [--preset small] [--prompt-tokens 256] [--prompts 32] [--quick]

The prompts are Russian prose from ../shared/corpora/ruslit; the model has random weights (speed does
not depend on them). Prints a table and writes bench/results/score.json. Figures, not asserts: each
rate is the best of a few runs on a shared machine.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autarky.model import Llama, preset_config, save_pretrained  # noqa: E402
from bench.common import machine, train_bpe, write_result  # noqa: E402

DEFAULT_TEXT = ROOT.parent / "shared" / "corpora" / "ruslit" / "prose" / "Gogol"


def russian_prompts(text_dir: Path, n: int, length: int, vocab: int):
    """A tokenizer trained on the text, and `n` prompts of `length` tokens cut from it."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(text_dir.glob("*.txt")))[:3_000_000]
    tok = train_bpe(text, vocab)
    ids = tok.encode(text[len(text) // 2 :])  # the half the tokenizer saw least of
    if len(ids) < n * length:
        raise SystemExit(f"{text_dir} holds {len(ids)} tokens; {n} prompts of {length} need more")
    return tok, [ids[i * length : (i + 1) * length] for i in range(n)]


def fastest(runs: dict, repeats: int) -> dict:
    """The shortest of `repeats` timings of each run, after one warm-up call each. The runs take turns
    round by round, so on a shared machine each sees the same spells of load."""
    for fn in runs.values():
        fn()
    times: dict = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: min(t) for key, t in times.items()}


def forward_passes(model: Llama, prompts: list[list[int]], batch: int):
    """Plain forward passes with every position's log-softmax, `batch` prompts a pass: what scoring
    the prompts costs at the least."""

    def run():
        with torch.inference_mode():
            for i in range(0, len(prompts), batch):
                logits, _ = model(torch.tensor(prompts[i : i + batch]))
                F.log_softmax(logits.float(), dim=-1)

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    directory: Path, port: int, work: Path, threads: int, prefill_chunk: int
) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from autarky.cli import main; main()", "serve", str(directory)]
    cmd += ["--port", str(port), "--threads", str(threads), "--prefill-chunk", str(prefill_chunk)]
    cmd += ["--audit-log", str(work / "audit.jsonl")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


def scoring_requests(client: httpx.Client, name: str, prompts: list[list[int]], batch: int):
    """Echo requests that score `batch` prompts each and generate nothing."""

    def run():
        for i in range(0, len(prompts), batch):
            body = {"model": name, "prompt": prompts[i : i + batch], "echo": True, "logprobs": 1}
            r = client.post("/v1/completions", json={**body, "max_tokens": 0})
            r.raise_for_status()
            assert all(len(c["logprobs"]["token_logprobs"]) == len(prompts[0]) for c in r.json()["choices"])

    return run


def largest_difference(client: httpx.Client, name: str, model: Llama, prompt: list[int]) -> float:
    """The largest gap between the server's logprobs of a prompt and one in-process forward pass."""
    body = {"model": name, "prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 0}
    served = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"][1:]
    with torch.inference_mode():
        logprobs = F.log_softmax(model(torch.tensor([prompt]))[0][0].float(), dim=-1)
    ours = logprobs[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    return float((torch.tensor(served) - ours).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="a directory of .txt files")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="prompts per request (and per forward pass)")
    ap.add_argument("--prefill-chunk", type=int, default=128, help="the server's --prefill-chunk")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the server (0 = default)"
    )
    ap.add_argument("--quick", action="store_true", help="8 prompts, one timing each")
    args = ap.parse_args()
    if args.quick:
        args.prompts = min(args.prompts, 8)
    repeats = 1 if args.quick else 3
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, prompts = russian_prompts(args.text, args.prompts, args.prompt_tokens, args.vocab)
    torch.manual_seed(0)
    model = Llama(preset_config(args.preset, tok.vocab_size)).eval()
    batches, tokens = (1, args.batch), sum(map(len, prompts))
    with tempfile.TemporaryDirectory(prefix="bench-score-") as work:
        directory = Path(work) / args.preset
        save_pretrained(model, directory)
        tok.hf.save(str(directory / "tokenizer.json"))
        port = free_port()
        server = start_server(directory, port, Path(work), args.threads, args.prefill_chunk)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                runs = {("forward", b): forward_passes(model, prompts, b) for b in batches}
                runs |= {("served", b): scoring_requests(client, args.preset, prompts, b) for b in batches}
                seconds = fastest(runs, repeats)
                gap = largest_difference(client, args.preset, model, prompts[0])
        finally:
            server.terminate()
            server.wait(timeout=30)
    forward = {b: tokens / seconds["forward", b] for b in batches}
    served = {b: tokens / seconds["served", b] for b in batches}
    rows = {
        f"batch_{b}": {
            "forward_tokens_per_s": round(forward[b], 1),
            "served_tokens_per_s": round(served[b], 1),
            "served_over_forward": round(served[b] / forward[b], 3),
        }
        for b in batches
    }
    for name, row in rows.items():
        print(
            f"{name}: served {row['served_tokens_per_s']} prompt tokens/s, forward pass "
            f"{row['forward_tokens_per_s']} ({row['served_over_forward']:.2f} of it)"
        )
    print(f"largest logprob difference, server vs one forward pass: {gap:.2e}")
    path = write_result(
        "score",
        {
            "machine": machine(),
            "preset": args.preset,
            "parameters": model.num_params(),
            "vocab": tok.vocab_size,
            "prompts": args.prompts,
            "prompt_tokens": args.prompt_tokens,
            "prefill_chunk": args.prefill_chunk,
            "repeats": repeats,
            **rows,
            "largest_logprob_difference": gap,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
