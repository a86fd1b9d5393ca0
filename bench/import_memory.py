"""Peak memory to import a 1B-class bf16 checkpoint and to load it for serving, against its weight bytes.

    .venv/bin/python bench/import_memory.py [--layers 16] [--keep DIR]

A random Llama of the `1b` preset's shape (vocab 32000, 2048 wide, 16 layers, GQA 32/8) is written
in bf16 as transformers shards it (several `model-0000k-of-0000n.safetensors` and an index), one
shard at a time, so no fp32 copy ever exists, with a small tokenizer and a chat template beside it.
Then, each in a fresh process so that one peak cannot hide another:

- `import`: `autarky.interop.import_model` (check, copy, hash: every weight file is read, none is held);
- `serve`: what `autarky serve --dtype bf16` does before it listens (`build_app`: hash the served
  files, load the tokenizer and the weights), then 8 greedy tokens, so every weight page is touched;
- `transformers` (reference): `AutoModelForCausalLM.from_pretrained(dtype=bfloat16)` and the same 8 tokens.

Peak RSS is the child's high-water mark (VmHWM); the weights are memory-mapped, so the pages of the file count
in it once touched. The target is peak ≤ 1.3 × the bf16 weight bytes. Results go to
bench/results/import_memory.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, peak_rss_mb, write_result

TARGET = 1.3
SHARD_BYTES = 500 << 20
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_checkpoint(directory: Path, layers: int) -> int:
    """A random bf16 Llama of the 1b preset's shape, sharded; returns its weight bytes."""
    from safetensors.torch import save_file

    from autarky.model import Llama, preset_config
    from autarky.tokenizer import SPECIAL_TOKENS, train_bpe

    directory.mkdir(parents=True)
    config = preset_config("1b", 32000, num_hidden_layers=layers, tie_word_embeddings=False)
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in Llama(config).state_dict().items()}
    shards: list[dict[str, tuple]] = [{}]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * math.prod(shape)
        if size and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = shape
        size += nbytes
    weight_map, total = {}, 0
    generator = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            name: (torch.randn(shape, generator=generator, dtype=torch.bfloat16) * 0.02)
            if len(shape) > 1
            else torch.ones(shape, dtype=torch.bfloat16)
            for name, shape in shard.items()
        }
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(
        json.dumps({**config.to_hf(), "torch_dtype": "bfloat16"}, indent=2)
    )
    hf = train_bpe(["The quick brown fox jumps over the lazy dog. " * 50], 300)
    hf.save(str(directory / "tokenizer.json"))
    settings = {
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return total


def high_water_mb() -> float:
    """This process's peak RSS: /proc's VmHWM, which starts afresh at exec, where Linux's ru_maxrss
    carries over the peak of the parent that forked it (here, the one that wrote the checkpoint)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def child(step: str, source: Path, work: Path) -> dict:
    """One measurement, in this (fresh) process: seconds and peak RSS, and the RSS before the work."""
    import transformers  # noqa: F401 (imported by every step alike, so the baselines compare)

    from autarky.generate import SamplingParams, complete
    from autarky.tokenizer import Tokenizer

    torch.set_num_threads(2)
    baseline = high_water_mb()
    t = time.perf_counter()
    if step == "import":
        from autarky.interop import import_model

        model, _ = import_model(source, work)
        result = {"artifact": str(model.path)}
    elif step == "serve":
        from autarky.serve import ServeConfig, build_app

        app, settings = build_app(
            Path(source), ServeConfig(dtype="bf16", slots=1, allow_no_key=True, engine="torch")
        )
        engine = app.state.engine
        ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])
        done = complete(
            engine.runner.model, engine.tokenizer, ids, SamplingParams(temperature=0, max_tokens=8)
        )
        settings.audit.close()
        result = {"tokens": len(done.token_ids)}
    else:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
        tok = Tokenizer.load(source)
        ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Hello"}])])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
        result = {"tokens": out.shape[1] - ids.shape[1]}
    return {
        **result,
        "seconds": round(time.perf_counter() - t, 2),
        "baseline_mb": baseline,
        "peak_mb": high_water_mb(),
    }


def measure(step: str, source: Path, work: Path, weight_mb: float) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, "--child", step, str(source), str(work)], capture_output=True, text=True
    )
    if run.returncode:
        raise SystemExit(f"{step} failed:\n{run.stderr[-3000:]}")
    found = json.loads(run.stdout.strip().splitlines()[-1])
    found["ratio_to_weights"] = round(found["peak_mb"] / weight_mb, 3)
    found["ratio_above_baseline"] = round((found["peak_mb"] - found["baseline_mb"]) / weight_mb, 3)
    print(
        f"{step:>12}: peak {found['peak_mb']:,.0f} MB (baseline {found['baseline_mb']:,.0f} MB), "
        f"{found['ratio_to_weights']:.2f}× the weights, {found['seconds']} s"
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16, help="Transformer blocks (16: the 1b preset).")
    parser.add_argument(
        "--keep", type=Path, help="Work here and keep the files (default: a temporary directory)."
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="import-memory-"))
    try:
        source, work = root / "checkpoint", root / "work"
        t = time.perf_counter()
        weight_bytes = write_checkpoint(source, args.layers)
        weight_mb = weight_bytes / 2**20
        print(f"wrote {weight_mb:,.0f} MB of bf16 weights in {time.perf_counter() - t:.1f} s")
        results = {"import": measure("import", source, work, weight_mb)}
        model_dir = Path(results["import"].pop("artifact"))
        results["serve"] = measure("serve", model_dir, work, weight_mb)
        results["transformers"] = measure("transformers", source, work, weight_mb)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    met = {step: results[step]["ratio_to_weights"] <= TARGET for step in ("import", "serve")}
    path = write_result(
        "import_memory",
        {
            "machine": machine(),
            "layers": args.layers,
            "weight_bytes": weight_bytes,
            "target_ratio": TARGET,
            "met": met,
            **results,
        },
    )
    print(
        f"target ≤ {TARGET}×: import {'met' if met['import'] else 'missed'}, serve {'met' if met['serve'] else 'missed'}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
