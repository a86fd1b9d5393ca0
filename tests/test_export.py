"""GGUF export: the file reads back as written, llama.cpp continues a prompt exactly as we do, and
every bad input is one clear sentence with nothing half-written left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from autarky import artifact
from autarky.console import UserError
from autarky.generate import Completion, SamplingParams, complete, stream
from autarky.gguf import ExportConfig, export, rotary_pairs, write_gguf
from autarky.model import apply_rotary, load_pretrained
from autarky.tokenizer import Tokenizer
from tests.conftest import cli_env

PROMPT = "The list data type has some more methods."


@pytest.fixture(scope="module")
def exports(pipeline, trained):
    """The session's trained model exported at f32 and q8_0."""
    return {dtype: export(trained, pipeline.workdir, ExportConfig(dtype=dtype)) for dtype in ("f32", "q8_0")}


def fields(path) -> tuple[dict, dict]:
    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_the_metadata_and_tensors_read_back_as_written(trained, exports):
    keys, tensors = fields(exports["f32"].path / "model.gguf")
    config = json.loads((trained.path / "config.json").read_text())
    settings = json.loads((trained.path / "tokenizer_config.json").read_text())
    hf_tokenizer = json.loads((trained.path / "tokenizer.json").read_text())
    expected = {
        "general.architecture": "llama",
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": config["bos_token_id"],
        "tokenizer.ggml.eos_token_id": config["eos_token_id"],
        "tokenizer.ggml.padding_token_id": config["pad_token_id"],
        "tokenizer.chat_template": settings["chat_template"],
    }
    assert {k: keys.get(k) for k in expected} == expected
    assert keys["llama.rope.freq_base"] == pytest.approx(config["rope_theta"])
    assert keys["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    tokenizer = Tokenizer.load(trained.path)
    assert keys["tokenizer.ggml.tokens"] == [tokenizer.hf.id_to_token(i) for i in range(tokenizer.vocab_size)]
    assert len(keys["tokenizer.ggml.merges"]) == len(hf_tokenizer["model"]["merges"])
    assert keys["tokenizer.ggml.eot_token_id"] == tokenizer.end_id

    weights = load_file(str(trained.path / "model.safetensors"))
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert len(tensors) == 2 + 9 * config["num_hidden_layers"]
    embed = tensors["token_embd.weight"]
    assert list(embed.shape) == [config["hidden_size"], config["vocab_size"]]  # GGML order: innermost first
    assert np.array_equal(embed.data, weights["model.embed_tokens.weight"].numpy())
    q = weights["model.layers.1.self_attn.q_proj.weight"]
    assert np.array_equal(
        tensors["blk.1.attn_q.weight"].data, rotary_pairs(q, config["num_attention_heads"]).numpy()
    )
    assert np.array_equal(
        tensors["blk.3.ffn_down.weight"].data, weights["model.layers.3.mlp.down_proj.weight"].numpy()
    )


def test_q8_0_keeps_norms_in_f32_and_weights_within_about_half_a_step(trained, exports):
    _, tensors = fields(exports["q8_0"].path / "model.gguf")
    weights = load_file(str(trained.path / "model.safetensors"))
    assert tensors["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    v = tensors["blk.0.attn_v.weight"]
    assert v.tensor_type == GGMLQuantizationType.Q8_0
    original = weights["model.layers.0.self_attn.v_proj.weight"].numpy()
    restored = dequantize(v.data, GGMLQuantizationType.Q8_0).reshape(original.shape)
    step = np.abs(original.reshape(-1, 32)).max(axis=1, keepdims=True) / 127  # one scale per block of 32
    # Half a step, and a little more: the step itself is stored in f16 (an error of up to 127 × 2⁻¹¹ steps).
    assert np.all(np.abs(restored - original).reshape(-1, 32) <= step * (0.5 + 127 * 2**-11))


def test_rotary_pairs_turn_the_halves_rotation_into_adjacent_pairs():
    """What llama.cpp's `llama` computes on the permuted rows equals what HF's rotate_half computes."""
    torch.manual_seed(0)
    heads, head_dim, hidden, T = 2, 8, 16, 5
    wq, wk, x = (
        torch.randn(heads * head_dim, hidden),
        torch.randn(heads * head_dim, hidden),
        torch.randn(T, hidden),
    )
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(T).float(), inv_freq)  # (T, head_dim / 2)
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)

    def heads_of(w):
        return (x @ w.T).view(T, heads, head_dim).transpose(0, 1)  # (heads, T, head_dim)

    q, k = apply_rotary(heads_of(wq)[None], heads_of(wk)[None], cos[None], sin[None])
    hf_scores = q[0] @ k[0].transpose(-1, -2)

    def ggml_rope(v):  # adjacent pairs (2i, 2i + 1) rotate by angle i
        pairs = v.view(heads, T, head_dim // 2, 2)
        c, s = angles.cos()[None], angles.sin()[None]
        return torch.stack(
            (pairs[..., 0] * c - pairs[..., 1] * s, pairs[..., 0] * s + pairs[..., 1] * c), -1
        ).flatten(-2)

    ggml_q, ggml_k = (
        ggml_rope(heads_of(rotary_pairs(wq, heads))),
        ggml_rope(heads_of(rotary_pairs(wk, heads))),
    )
    assert torch.allclose(ggml_q @ ggml_k.transpose(-1, -2), hf_scores, atol=1e-4)


def test_bf16_weights_stay_exact_in_a_bf16_file(trained, tmp_path):
    directory = model_dir_copy(trained, tmp_path)
    weights = {k: v.bfloat16() for k, v in load_file(str(directory / "model.safetensors")).items()}
    save_file(weights, str(directory / "model.safetensors"))
    write_gguf(directory, tmp_path / "bf16.gguf", "bf16")
    _, tensors = fields(tmp_path / "bf16.gguf")
    up = tensors["blk.2.ffn_up.weight"]
    assert up.tensor_type == GGMLQuantizationType.BF16
    bits = weights["model.layers.2.mlp.up_proj.weight"].view(torch.int16).numpy()
    assert np.array_equal(up.data.view(np.int16).reshape(bits.shape), bits)


def test_the_export_is_an_artifact_made_from_the_model(pipeline, trained, exports):
    made = exports["q8_0"]
    assert made.kind == "export" and made.path.parent.name == "export"
    assert [i["id"] for i in made.manifest["inputs"]] == [trained.id]
    assert set(made.manifest["files"]) == {"model.gguf"}
    assert made.config == {"format": "gguf", "dtype": "q8_0"}
    assert (
        made.metrics["tensors"] == 38 and made.metrics["bytes"] == (made.path / "model.gguf").stat().st_size
    )
    _, problems = artifact.verify(made.path)
    assert problems == []
    assert export(trained, pipeline.workdir, ExportConfig(dtype="q8_0")).id == made.id  # reused
    finished, _ = artifact.list_workspace(pipeline.workdir)
    assert made.path in [a.path for a in finished]


def test_the_cli_hands_its_options_to_the_stage(monkeypatch, tmp_path):
    seen = {}

    def stage(model, workdir, config, name=None, force=False):
        seen.update(model=model, config=config)
        return SimpleNamespace(path=tmp_path, metrics={"bytes": 1})

    model = SimpleNamespace(name="m")
    monkeypatch.setattr("autarky.gguf.export", stage)
    monkeypatch.setattr("autarky.cli.chain.inputs", lambda ctx, workdir, *refs: (workdir, [model]))
    monkeypatch.setattr("autarky.cli.chain.finish", lambda *a: None)
    from autarky.cli import app

    result = CliRunner().invoke(app, ["export", "m", "--format", "gguf", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert seen == {"model": model, "config": ExportConfig(format="gguf", dtype="bf16")}


def test_the_licence_an_imported_ancestor_declared_is_the_files_licence(pipeline, trained, exports):
    def model_artifact(name, config, inputs):
        with artifact.Builder(pipeline.workdir, "model", name, config, inputs) as builder:
            for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
                shutil.copy(trained.path / f, builder.dir / f)
            return builder.finish()

    imported = model_artifact("imported", {"license": {"declared": "apache-2.0"}}, [])
    tuned = model_artifact("tuned", {"lr": 1e-4}, [imported])
    made = export(tuned, pipeline.workdir, ExportConfig(dtype="q8_0"))
    keys, _ = fields(made.path / "model.gguf")
    assert keys["general.license"] == "apache-2.0"
    assert "general.license" not in fields(exports["q8_0"].path / "model.gguf")[0]  # none declared


# ---------------------------------------------------------------- llama.cpp


# llama.cpp keeps its KV cache in f16 unless told: that alone moves the logits by about 1e-3 of their range.
EXACT = dict(type_k=0, type_v=0, n_threads=2, verbose=False)  # 0 is GGML_TYPE_F32


def greedy_llama_cpp(llm, prompt: list[int], n: int, end_ids: set[int]) -> tuple[list[int], np.ndarray]:
    """Greedy decoding on llama.cpp's logits, token by token through its KV cache; also the first logits."""
    llm.reset()
    llm.eval(prompt)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    out = []
    while len(out) < n:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in end_ids:
            break
        out.append(token)
        llm.eval([token])
    return out, first


def test_llama_cpp_continues_a_prompt_exactly_as_autarky_generate_does(trained, exports):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (make test installs it with the dev extra)"
    )
    model, tokenizer = load_pretrained(trained.path), Tokenizer.load(trained.path)
    prompt = [tokenizer.bos_id, *tokenizer.encode(PROMPT)]
    done = Completion()
    for _ in stream(model, tokenizer, prompt, SamplingParams(temperature=0, max_tokens=32), completion=done):
        pass
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0][0, -1].numpy()

    context = model.config.max_position_embeddings
    end_ids = tokenizer.stop_ids
    llm = llama_cpp.Llama(str(exports["f32"].path / "model.gguf"), n_ctx=context, logits_all=True, **EXACT)
    for text in (PROMPT, "Мороз и солнце; день чудесный!\n\n  x = [1, 22, 333, 4444]"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text)
    theirs, first = greedy_llama_cpp(llm, prompt, 32, end_ids)
    assert np.abs(first - ours).max() <= 1e-4
    assert theirs == done.token_ids and len(theirs) > 0
    assert (
        llm.metadata["tokenizer.chat_template"]
        == json.loads((trained.path / "tokenizer_config.json").read_text())["chat_template"]
    )
    # llama.cpp renders the template it carries to the prompt our template makes, and answers the same.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    chat = llm.create_chat_completion(messages=messages, max_tokens=8, temperature=0)
    prompt_ids = tokenizer.apply_chat_template(messages)
    assert chat["usage"]["prompt_tokens"] == len(prompt_ids)
    answer = complete(model, tokenizer, prompt_ids, SamplingParams(temperature=0, max_tokens=8))
    assert chat["choices"][0]["message"]["content"] == answer.text

    small = llama_cpp.Llama(str(exports["q8_0"].path / "model.gguf"), n_ctx=context, logits_all=True, **EXACT)
    tokens, logits = greedy_llama_cpp(small, prompt, 16, end_ids)
    cosine = float(logits @ ours / (np.linalg.norm(logits) * np.linalg.norm(ours)))
    assert len(tokens) == 16 and cosine > 0.99
    llm.close()
    small.close()


FAMILIES = {
    # grouped-query attention, an untied head, Llama 3's rope scaling (llama.cpp's `rope_freqs`)
    "llama": dict(
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),  # q/k/v biases
    "qwen3": dict(num_key_value_heads=2, head_dim=48, tie_word_embeddings=True),  # q/k norms, wide heads
}


def hf_checkpoint(family: str, trained, directory):
    """A random model of `family` that transformers builds from a config and saves, with our tokenizer."""
    import transformers

    name = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    config = getattr(transformers, f"{name}Config")(
        vocab_size=Tokenizer.load(trained.path).vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        **FAMILIES[family],
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{name}ForCausalLM")(config).eval()
    for p in model.parameters():  # larger than the init, so that a layout error shows in the logits
        p.data.normal_(0, 0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(trained.path / f, directory / f)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_written_under_its_llama_cpp_architecture(trained, tmp_path, family):
    hf_checkpoint(family, trained, tmp_path / "hf")
    summary = write_gguf(tmp_path / "hf", tmp_path / "m.gguf", "f16")
    keys, tensors = fields(tmp_path / "m.gguf")
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[family]
    assert keys["general.architecture"] == summary["architecture"] == arch
    assert keys[f"{arch}.attention.key_length"] == FAMILIES[family].get("head_dim", 32)
    assert keys[f"{arch}.attention.head_count_kv"] == 2
    extra = {
        "llama": {"rope_freqs.weight", "output.weight"},
        "qwen2": {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"},
        "qwen3": {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"},
    }[family]
    assert extra <= set(tensors)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llama_cpp_computes_each_family_as_transformers_does(trained, tmp_path, family):
    """The logits at every position of a random model agree, so every layout and key is right."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (make test installs it with the dev extra)"
    )
    hf = hf_checkpoint(family, trained, tmp_path / "hf")
    write_gguf(tmp_path / "hf", tmp_path / "m.gguf", "f32")
    ids = torch.randint(0, hf.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[0].numpy()
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, **EXACT)
    llm.eval(ids[0].tolist())
    assert np.abs(np.asarray(llm.scores[:48]) - want).max() <= 1e-4
    llm.close()


# ---------------------------------------------------------------- bad input


def model_dir_copy(trained, tmp_path, drop=()):
    target = tmp_path / "model"
    shutil.copytree(trained.path, target, ignore=shutil.ignore_patterns("manifest.json", *drop))
    return target


def test_a_model_without_a_tokenizer_is_refused_and_nothing_is_left(pipeline, trained):
    builder = artifact.Builder(pipeline.workdir, "model", "no-tokenizer", {"test": True}, [])
    with builder:
        for f in ("config.json", "model.safetensors"):
            shutil.copy(trained.path / f, builder.dir / f)
        bare = builder.finish()
    with pytest.raises(UserError, match="no tokenizer.json"):
        export(bare, pipeline.workdir, ExportConfig(), name="bare")
    assert not (pipeline.workdir / "export" / "bare").exists()
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "--no-isolate", "export", "no-tokenizer"],
        capture_output=True,
        text=True,
        env=cli_env(pipeline.workdir),
    )
    assert out.returncode != 0 and "no tokenizer.json" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def shard(directory) -> None:
    """Split model.safetensors in two with an index, as transformers saves a large model."""
    weights = load_file(str(directory / "model.safetensors"))
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: weights[n] for n in part}, str(directory / file))
    weight_map = {n: file for file, part in halves.items() for n in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "model.safetensors").unlink()


def test_a_sharded_checkpoint_exports_as_the_single_file_does(trained, exports, tmp_path):
    directory = model_dir_copy(trained, tmp_path)
    shard(directory)
    write_gguf(directory, tmp_path / "sharded.gguf", "q8_0", title=trained.name)
    assert (tmp_path / "sharded.gguf").read_bytes() == (exports["q8_0"].path / "model.gguf").read_bytes()
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors"):
        write_gguf(directory, tmp_path / "broken.gguf", "q8_0")


def test_a_tensor_of_the_wrong_shape_is_refused_before_any_file_is_written(trained, tmp_path):
    directory = model_dir_copy(trained, tmp_path)
    weights = load_file(str(directory / "model.safetensors"))
    weights["model.layers.2.mlp.up_proj.weight"] = weights["model.layers.2.mlp.up_proj.weight"][:-1]
    save_file(weights, str(directory / "model.safetensors"))
    with pytest.raises(UserError, match="model.layers.2.mlp.up_proj.weight has shape"):
        write_gguf(directory, tmp_path / "out.gguf", "f16")
    assert not (tmp_path / "out.gguf").exists()


def test_a_missing_tensor_is_named(trained, tmp_path):
    directory = model_dir_copy(trained, tmp_path)
    weights = load_file(str(directory / "model.safetensors"))
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, str(directory / "model.safetensors"))
    with pytest.raises(UserError, match="layer 1's self_attn.k_proj.weight"):
        write_gguf(directory, tmp_path / "out.gguf", "f16")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gemma2"}, "model_type 'gemma2'"),
        ({"layer_types": ["full_attention", "sliding_attention"] * 2}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"vocab_size": None}, "lacks vocab_size"),
    ],
)
def test_an_architecture_llama_cpp_would_compute_differently_is_refused(trained, tmp_path, change, message):
    directory = model_dir_copy(trained, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
        write_gguf(directory, tmp_path / "out.gguf", "f16")


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(trained, tmp_path):
    directory = model_dir_copy(trained, tmp_path)
    data = json.loads((directory / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"
    (directory / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="pre-tokenizer"):
        write_gguf(directory, tmp_path / "out.gguf", "f16")


def test_unknown_format_or_dtype_is_a_clear_error(pipeline, trained):
    for config in (ExportConfig(format="onnx"), ExportConfig(dtype="q4_k")):
        with pytest.raises(UserError, match="unknown"):
            export(trained, pipeline.workdir, config)
