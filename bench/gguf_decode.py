"""Decode side by side at batch 1: autarky (fp32, bf16, int8) against llama.cpp on the exported GGUF (f32, q8_0).

    .venv/bin/python bench/gguf_decode.py [--preset small] [--corpus ../shared/corpora/tinyshakespeare/input.txt]

One model, random weights from the preset (speed does not depend on them) and our byte-level BPE
trained on the corpus at the preset's vocabulary, is saved as a model directory and exported by
`autarky.gguf.write_gguf` at f32 and q8_0. Each engine decodes 256 tokens greedily after the same
64-token prompt, prefill included, `--repeats` times, the engines taking turns so that all see the
same machine load; best and median tokens/s are reported.
autarky runs `autarky.generate.stream` (the CLI's generate: KV cache, text policy) on the model in
each serving precision (`autarky.serve.precision`); llama.cpp runs through llama-cpp-python's
`Llama.generate` with its greedy sampler in C, reset before each run so no prompt is reused from
its cache. Both use every core. As in bench/generate.py, the stop tokens' embedding rows are zeroed
so greedy decoding never picks them and every run decodes all its tokens.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, train_bpe, write_result

from autarky.generate import Completion, SamplingParams, stream
from autarky.gguf import write_gguf
from autarky.model import Llama, preset_config, save_pretrained
from autarky.serve.precision import prepare

VOCAB = {"tiny": 4096, "small": 8192}
DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared/corpora/tinyshakespeare/input.txt"


def autarky_run(model, tok, prompt: list[int], n: int) -> tuple[float, list[int]]:
    done = Completion()
    t = time.perf_counter()
    for _ in stream(model, tok, prompt, SamplingParams(temperature=0, max_tokens=n), completion=done):
        pass
    return time.perf_counter() - t, list(done.token_ids)


def llama_cpp_run(llm, prompt: list[int], n: int) -> tuple[float, list[int]]:
    llm.reset()  # a fresh context: the prompt is evaluated again, as autarky's is
    out = []
    t = time.perf_counter()
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == n:
            break
    return time.perf_counter() - t, out


def timed(engines: dict, repeats: int, n: int) -> dict:
    """Each engine decodes `n` tokens `repeats` times, the engines taking turns so all see the same load."""
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    tokens = {}
    for run in engines.values():
        run(16)  # warm-up
    for _ in range(repeats):
        for name, run in engines.items():
            s, tokens[name] = run(n)
            if len(tokens[name]) != n:
                raise RuntimeError(f"{name} decoded {len(tokens[name])} tokens, not {n}")
            seconds[name].append(s)
    return {
        name: {
            "tokens_per_s_best": round(n / min(times), 1),
            "tokens_per_s_median": round(n / statistics.median(times), 1),
            "tokens": tokens[name],
        }
        for name, times in seconds.items()
    }


def build(preset: str, text: str, directory: Path):
    tok = train_bpe(text, VOCAB[preset])
    torch.manual_seed(0)
    model = Llama(preset_config(preset, tok.vocab_size)).eval()
    with torch.no_grad():
        for stop in tok.stop_ids:
            model.model.embed_tokens.weight[stop] = 0
    save_pretrained(model, directory)
    tok.hf.save(str(directory / "tokenizer.json"))
    return model, tok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="text for the tokenizer and prompt"
    )
    parser.add_argument("--preset", default="small", choices=sorted(VOCAB))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: `pip install -e '.[dev]'` builds it") from None

    text = args.corpus.read_text(encoding="utf-8")
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "model"
        model, tok = build(args.preset, text, directory)
        prompt = tok.encode(text)[: args.prompt_tokens]
        files = {}
        for dtype in ("f32", "q8_0"):
            files[dtype] = Path(tmp) / f"model-{dtype}.gguf"
            write_gguf(directory, files[dtype], dtype)
        engines = {}
        for dtype in ("fp32", "bf16", "int8"):
            # The same weights, converted as `autarky serve --dtype` converts them (in place: a copy).
            served = model if dtype == "fp32" else prepare(copy.deepcopy(model), dtype)
            engines[f"autarky {dtype}"] = lambda k, m=served: autarky_run(m, tok, prompt, k)
        for dtype, path in files.items():
            llm = llama_cpp.Llama(
                str(path),
                n_ctx=len(prompt) + n + 16,
                n_batch=len(prompt),
                n_threads=torch.get_num_threads(),
                verbose=False,
            )
            engines[f"llama.cpp {dtype}"] = lambda k, m=llm: llama_cpp_run(m, prompt, k)
        runs = timed(engines, args.repeats, n)
        sizes = {dtype: path.stat().st_size for dtype, path in files.items()}

    same = runs["autarky fp32"]["tokens"] == runs["llama.cpp f32"]["tokens"]
    for r in runs.values():
        del r["tokens"]
    best = {name: r["tokens_per_s_best"] for name, r in runs.items()}
    for name, r in runs.items():
        print(f"{name:16} {r['tokens_per_s_best']:8.1f} tokens/s (median {r['tokens_per_s_median']:.1f})")
    ratios = {
        "llama.cpp f32 / autarky fp32": round(best["llama.cpp f32"] / best["autarky fp32"], 2),
        "llama.cpp q8_0 / autarky int8": round(best["llama.cpp q8_0"] / best["autarky int8"], 2),
        "llama.cpp q8_0 / autarky bf16": round(best["llama.cpp q8_0"] / best["autarky bf16"], 2),
        "llama.cpp q8_0 / llama.cpp f32": round(best["llama.cpp q8_0"] / best["llama.cpp f32"], 2),
    }
    for name, ratio in ratios.items():
        print(f"{name:32} {ratio:5.2f}×")
    print(f"greedy tokens of autarky fp32 and llama.cpp f32 identical: {same}")
    path = write_result(
        "gguf_decode",
        {
            "machine": machine(),
            "llama_cpp_python": llama_cpp.__version__,
            "preset": args.preset,
            "params": model.num_params(),
            "vocab_size": tok.vocab_size,
            "prompt_tokens": len(prompt),
            "new_tokens": n,
            "repeats": args.repeats,
            "gguf_bytes": sizes,
            "runs": runs,
            "ratios": ratios,
            "same_greedy_tokens_f32": same,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
