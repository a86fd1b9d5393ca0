"""`autarky import`: small random checkpoints that transformers builds from a config and saves, one
per supported family, imported and compared with transformers' own logits and greedy generation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from autarky import artifact
from autarky.console import UserError
from autarky.generate import SamplingParams, complete
from autarky.interop import ImportConfig, import_model
from autarky.model import load_pretrained, save_pretrained
from autarky.tokenizer import Tokenizer

TEXTS = ["the quick brown fox jumps over the lazy dog", "Мороз и солнце; день чудесный!", "print(1 + 2)"] * 20
QWEN_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- set ns = namespace(system='') %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'system' %}{% set ns.system = message['content'] | trim %}{% continue %}{% endif %}\n"
    "    {%- if ns.system and loop.index0 == 1 %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}{% endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\n"
)
STYLES = {
    "qwen": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        settings=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        template=QWEN_TEMPLATE,
        stops=[2, 0],
    ),
    "llama3": dict(
        specials=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        settings=dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
        template=LLAMA3_TEMPLATE,
        stops=[1, 4],
    ),
}
CHAT = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": "Hello 🙂 — как дела?"},
    {"role": "assistant", "content": "Fine.\nThanks"},
    {"role": "user", "content": "and <|im_end|> <|eot_id|> as text"},
]


def save_tokenizer(directory: Path, style: str) -> None:
    """A byte-level BPE trained here, saved by transformers with a chat template written here."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = STYLES[style]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=spec["specials"], initial_alphabet=alphabet, show_progress=False
    )
    hf.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=hf, chat_template=spec["template"], **spec["settings"])
    fast.save_pretrained(directory)


FAMILIES = {  # name: (transformers config class, settings, tokenizer style, sharded, dtype)
    "llama2": ("LlamaConfig", dict(tie_word_embeddings=False), "llama3", False, torch.float32),
    "llama2-fp16": ("LlamaConfig", dict(tie_word_embeddings=False), "llama3", False, torch.float16),
    "llama3": (
        "LlamaConfig",
        dict(
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
        "llama3",
        True,
        torch.float32,
    ),
    "mistral": ("MistralConfig", dict(sliding_window=4096), "llama3", False, torch.float32),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), "qwen", True, torch.float32),
    "qwen3": ("Qwen3Config", dict(head_dim=24), "qwen", True, torch.float32),
    "qwen3-bf16": ("Qwen3Config", dict(head_dim=24), "qwen", False, torch.bfloat16),
}
SIZE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def save_checkpoint(directory: Path, family: str):
    """A random model of `family` saved by transformers, with its tokenizer, a licence and a README."""
    import transformers

    config_class, settings, style, sharded, dtype = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(
        **SIZE, bos_token_id=0, eos_token_id=STYLES[style]["stops"], **settings
    )
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and norms away from their zero/one start, so a missing one shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.to(dtype).save_pretrained(directory, max_shard_size="40KB" if sharded else "1GB")
    save_tokenizer(directory, style)
    (directory / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# A test model\n")
    (directory / "LICENSE").write_text("\n   Apache License\nVersion 2.0\n")
    return hf


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("import-work")


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_models_compute_what_transformers_computes(family, tmp_path, workdir):
    from transformers import AutoModelForCausalLM

    source = tmp_path / family
    save_checkpoint(source, family)
    dtype = FAMILIES[family][4]
    model, tokenizer = import_model(source, workdir)

    # the manifests: every source file by sha256, the licence, the origin; the weights kept in their dtype
    recorded = {Path(s["path"]).name: s["sha256"] for s in model.manifest["sources"]}
    weights = {p.name for p in source.iterdir() if p.name.startswith("model")}
    assert weights | {"config.json", "generation_config.json", "LICENSE", "README.md"} == recorded.keys()
    assert all(artifact.sha256_file(source / n) == h for n, h in recorded.items())
    assert (len(weights) > 1) == FAMILIES[family][3]  # sharded with an index, or one file
    assert {Path(s["path"]).name for s in tokenizer.manifest["sources"]} >= {
        "tokenizer.json",
        "chat_template.jinja",
    }
    assert model.config["origin"] == "imported" == tokenizer.config["origin"]
    assert model.config["license"]["declared"] == "apache-2.0"
    assert model.config["license"]["title"] == "Apache License"
    assert model.metrics["dtype"] == [
        {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    ]
    assert model.manifest["inputs"][0]["id"] == tokenizer.id

    ours = load_pretrained(model.path, dtype=None)
    assert ours.model.embed_tokens.weight.dtype == dtype
    # both read the same files in fp32 (a model object moved to bf16 and back has lost its rotary precision)
    ours = ours.float()
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    x = torch.randint(0, SIZE["vocab_size"], (2, 70))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() <= 1e-4
    # and what autarky saves of it (after fine-tuning, say) is again a checkpoint of its family
    save_pretrained(ours, tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    assert type(again) is type(hf)
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max().item() <= 1e-4

    tok = Tokenizer.load(model.path)
    prompt = tok.apply_chat_template(CHAT[:2])
    mine = complete(ours, tok, prompt, SamplingParams(temperature=0, max_tokens=24)).token_ids
    ids = torch.tensor([prompt])
    theirs = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=24,
        eos_token_id=sorted(tok.stop_ids),
    )[0, len(prompt) :].tolist()
    assert len(mine) > 4 and mine == [t for t in theirs if t not in tok.stop_ids][: len(mine)]
    assert len(mine) >= len(theirs) - 1  # a stop token ends both


def test_weights_convert_only_when_asked(tmp_path, workdir):
    source = tmp_path / "qwen3-bf16"
    save_checkpoint(source, "qwen3-bf16")
    model, _ = import_model(source, workdir, ImportConfig(dtype="float32"), name="widened")
    assert model.metrics["dtype"] == ["float32"]
    assert json.loads((model.path / "config.json").read_text())["torch_dtype"] == "float32"
    kept = load_pretrained(model.path, dtype=None)
    assert kept.model.norm.weight.dtype == torch.float32
    again, _ = import_model(source, workdir, ImportConfig(dtype="float32"), name="widened")
    assert again.id == model.id  # the same files and settings are reused, not imported twice


def broken(source: Path, how: str) -> None:
    """Spoil a saved checkpoint in one way."""
    index = source / "model.safetensors.index.json"
    if how == "no weights":
        for p in source.glob("*.safetensors"):
            p.unlink()
        index.unlink()
    elif how == "pickled":
        for p in source.glob("*.safetensors"):
            p.unlink()
        index.unlink()
        (source / "pytorch_model.bin").write_bytes(b"\x80\x04not to be unpickled")
    elif how == "missing shard":
        next(source.glob("model-00002-*.safetensors")).unlink()
    elif how == "mismatched shard":
        weights = json.loads(index.read_text())
        name = next(iter(weights["weight_map"]))
        weights["weight_map"][name] = next(
            p.name for p in source.glob("model-*") if p.name != weights["weight_map"][name]
        )
        index.write_text(json.dumps(weights))
    elif how in ("wrong shape", "gemma", "sliding window", "yarn", "no tokenizer"):
        config = json.loads((source / "config.json").read_text())
        change = {
            "wrong shape": {"intermediate_size": 80},
            "gemma": {"model_type": "gemma"},
            "sliding window": {"model_type": "mistral", "sliding_window": 32},
            "yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "no tokenizer": {},
        }[how]
        (source / "config.json").write_text(json.dumps({**config, **change}))
        if how == "no tokenizer":
            (source / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    "how, message",
    [
        ("no weights", "holds no weights"),
        ("pickled", r"only as pickles \(pytorch_model.bin\); unpickling can run any code"),
        (
            "missing shard",
            r"the shard 'model-00002-of-\d+.safetensors' that model.safetensors.index.json names is missing",
        ),
        ("mismatched shard", "does not match model.safetensors.index.json"),
        ("wrong shape", r"has shape \(96, 64\), but config.json makes it \(80, 64\)"),
        ("gemma", "model_type 'gemma' is not supported"),
        ("sliding window", r"a sliding attention window \(sliding_window=32\)"),
        ("yarn", "rope type 'yarn' is not supported"),
        ("no tokenizer", "has no tokenizer.json"),
    ],
)
def test_bad_checkpoints_are_one_sentence_and_leave_nothing(how, message, tmp_path, monkeypatch, capsys):
    from autarky import cli

    source, work = tmp_path / "src", tmp_path / "work"
    save_checkpoint(source, "qwen2")
    broken(source, how)
    with pytest.raises(UserError, match=message):
        import_model(source, work)
    assert not work.exists() or not any(work.rglob("*.json"))  # no artifact, not even half of one
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["autarky", "import", str(source), "-w", str(work)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_cli_imports_and_the_model_serves_and_trains_with_its_own_tokenizer(
    tmp_path, monkeypatch, capsys
):
    """A foreign tokenizer is first-class: tokenize, train --init, generate and serve use it."""
    from fastapi.testclient import TestClient

    from autarky import cli
    from autarky.serve import ServeConfig, build_app
    from autarky.tokens import tokenize
    from autarky.train import TrainConfig, train
    from tests.test_tokenizer import make_corpus

    source, work = tmp_path / "qwen", tmp_path / "work"
    save_checkpoint(source, "qwen2")
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["autarky", "import", str(source), "-w", str(work), "--name", "qwen"])
    cli.main()
    said = " ".join(capsys.readouterr().out.split())
    assert "qwen2" in said and "licence apache-2.0" in said and "320 tokens" in said
    model = artifact.load(work / "model" / "qwen")
    tokenizer = artifact.load(work / "tokenizer" / "qwen")
    assert artifact.verify(model.path)[1] == []  # the lineage checks, down to the source files

    tokens = tokenize(make_corpus(work, n_train=40, n_val=10), tokenizer, work)
    assert (
        tokens.metrics["train"]["documents"] == 40
    )  # each document starts with <|endoftext|> (Qwen has no bos)
    steps = dict(
        preset="tiny", seq_len=32, batch_size=2, max_steps=2, eval_interval=2, eval_tokens=256, warmup_steps=1
    )
    tuned = train(tokens, work, TrainConfig(**steps), init=model, name="tuned")
    assert json.loads((tuned.path / "config.json").read_text())["model_type"] == "qwen2"
    assert Tokenizer.load(tuned.path).chat_template is not None

    app, settings = build_app(model.path, ServeConfig(slots=2, allow_no_key=True))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        body = {"model": "qwen", "messages": CHAT[:2], "max_tokens": 8, "temperature": 0}
        reply = client.post("/v1/chat/completions", json=body)
    settings.audit.close()
    assert reply.status_code == 200, reply.text
    tok, net = Tokenizer.load(model.path), load_pretrained(model.path)
    alone = complete(net, tok, tok.apply_chat_template(CHAT[:2]), SamplingParams(temperature=0, max_tokens=8))
    assert reply.json()["choices"][0]["message"]["content"] == alone.text
