"""Chat fine-tuning: the loss reaches the assistant's tokens only, packed conversations never see each
other, the held-out assistant loss falls, a killed run resumes to the same artifact, and a LoRA
run's adapter loads in PEFT with the merged model's logits."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from autarky import artifact
from autarky.console import UserError
from autarky.data.chat import curate_chat
from autarky.model import Llama, ModelConfig, load_pretrained, save_pretrained
from autarky.tokenizer import Tokenizer, _write_files, train_bpe
from autarky.train.config import SFTConfig
from autarky.train.plan import human
from autarky.train.sft import IGNORE, assistant_mask, example, pack, sft
from tests.conftest import cli_env

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "elk", "yak"]
COLOURS = ["red", "blue", "green", "gold", "grey", "pink"]
FAST = dict(seq_len=64, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=5, checkpoint_interval=5)


def toy_chats(n: int) -> list[dict]:
    rng = random.Random(0)
    chats = []
    for i in range(n):
        animal, colour = rng.choice(ANIMALS), rng.choice(COLOURS)
        messages = [
            {"role": "user", "content": f"What colour is {animal} {i}?"},
            {"role": "assistant", "content": f"{animal.title()} {i} is {colour}."},
        ]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one sentence."})
        chats.append({"messages": messages})
    return chats


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return ModelConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A chat corpus, and a random model artifact with our tokenizer and chat template."""
    root = tmp_path_factory.mktemp("sft")
    work = root / "work"
    chats = toy_chats(240)
    (root / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in chats) + "\n")
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir()
    _write_files(train_bpe([json.dumps(c) for c in chats], 400), tokenizer_dir)
    tokenizer = Tokenizer.load(tokenizer_dir)
    builder = artifact.Builder(work, "model", "base", {"random": "tiny test model"})
    with builder:
        torch.manual_seed(0)
        save_pretrained(Llama(tiny_config(tokenizer.vocab_size)), builder.dir)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (builder.dir / f).write_bytes((tokenizer_dir / f).read_bytes())
        base = builder.finish()
    chat = curate_chat([root / "chat.jsonl"], work)
    return type("Toy", (), dict(root=root, work=work, base=base, chat=chat, tokenizer=tokenizer))


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What colour is fox 7?"},
    {"role": "assistant", "content": "Fox 7 is red."},
    {"role": "user", "content": "And owl 3?"},
    {"role": "assistant", "content": "Owl 3 is gold."},
]


def test_only_the_assistant_tokens_are_targets(toy):
    tok = toy.tokenizer
    ids, mine = assistant_mask(tok, CONVERSATION)
    assert ids == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    assistant_text = tok.decode([i for i, m in zip(ids, mine, strict=True) if m], skip_special=False)
    assert assistant_text == "Fox 7 is red.<|end|>\nOwl 3 is gold.<|end|>\n"
    inputs, targets, cut = example(tok, CONVERSATION, 512)
    assert not cut and inputs == ids[:-1]
    assert [t for t in targets if t != IGNORE] == [i for i, m in zip(ids, mine, strict=True) if m]


def test_user_and_system_tokens_carry_no_gradient(toy):
    tok = toy.tokenizer
    inputs, targets, _ = example(tok, CONVERSATION, 512)
    torch.manual_seed(0)
    model = Llama(tiny_config(tok.vocab_size))
    kept = {}

    def keep_logits(module, args, logits):
        logits.retain_grad()
        kept["logits"] = logits

    model.lm_head.register_forward_hook(keep_logits)
    _, loss = model(torch.tensor([inputs]), torch.tensor([targets]))
    loss.backward()
    grad = kept["logits"].grad[0].abs().sum(-1)
    scored = torch.tensor(targets) != IGNORE
    assert grad[~scored].max() == 0 and (grad[scored] > 0).all()
    assert scored.sum() < len(targets) / 2  # the system and user turns are most of this conversation


LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] | trim }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n\n{% endif %}"
)


def test_the_mask_follows_the_models_own_jinja_template(toy, tmp_path):
    for f in ("tokenizer.json", "special_tokens_map.json"):
        (tmp_path / f).write_bytes((toy.base.path / f).read_bytes())
    settings = json.loads((toy.base.path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": LLAMA3_STYLE}))
    tok = Tokenizer.load(tmp_path)
    ids, mine = assistant_mask(tok, CONVERSATION)
    assert tok.decode(ids, skip_special=False).startswith("<|bos|><|system|>\n\nBe brief.<|end|><|user|>")
    assistant_text = tok.decode([i for i, m in zip(ids, mine, strict=True) if m], skip_special=False)
    assert assistant_text == "Fox 7 is red.<|end|>Owl 3 is gold.<|end|>"


class TemplateThatRewritesEarlierTurns:
    """A chat template that, like Qwen3's, renders an earlier assistant turn differently from the last."""

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids = []
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            ids += [
                1 if m["role"] == "user" else 2,
                *map(ord, m["content"] if last or m["role"] == "user" else "x"),
                3,
            ]
        return ids + ([2] if add_generation_prompt else [])


def test_a_template_that_rewrites_turns_never_marks_a_user_token():
    messages = CONVERSATION[1:]
    ids, mine = assistant_mask(TemplateThatRewritesEarlierTurns(), messages)
    marked = [i for i, m in zip(ids, mine, strict=True) if m]
    assert "".join(chr(i) for i in marked if i > 3) == "Owl 3 is gold."  # the first reply is lost, no more


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_conversations_compute_exactly_as_alone(kv_heads):
    torch.manual_seed(0)
    model = Llama(tiny_config(100, num_key_value_heads=kv_heads)).eval()
    g = torch.Generator().manual_seed(1)
    lengths = [[5, 17, 9, 1], [30, 2]]
    sequences = [[torch.randint(0, 100, (n,), generator=g) for n in row] for row in lengths]
    width = max(sum(row) for row in lengths) + 3  # padding after the last sequence
    ids = torch.zeros(2, width, dtype=torch.long)
    segments = torch.zeros(2, width, dtype=torch.long)
    for r, row in enumerate(sequences):
        at = 0
        for s, seq in enumerate(row):
            ids[r, at : at + len(seq)], segments[r, at : at + len(seq)] = seq, s
            at += len(seq)
        segments[r, at:] = len(row)
    with torch.no_grad():
        packed = model(ids, segment_ids=segments)[0]
        for r, row in enumerate(sequences):
            at = 0
            for seq in row:
                alone = model(seq.unsqueeze(0))[0][0]
                torch.testing.assert_close(packed[r, at : at + len(seq)], alone, atol=1e-5, rtol=1e-5)
                at += len(seq)


def test_packing_fills_rows_in_order_and_pads_with_its_own_segment():
    examples = [([1] * 5, [IGNORE] * 4 + [7], False), ([2] * 4, [8] * 4, False), ([3] * 6, [9] * 6, True)]
    rows = pack(examples, 10)
    assert rows.inputs.tolist() == [[1] * 5 + [2] * 4 + [0], [3] * 6 + [0] * 4]
    assert rows.segments.tolist() == [[0] * 5 + [1] * 4 + [2], [0] * 6 + [1] * 4]
    assert rows.targets[0].tolist() == [IGNORE] * 4 + [7] + [8] * 4 + [IGNORE]
    assert (rows.conversations, rows.truncated, rows.tokens) == (3, 1, 15)


def test_sft_lowers_the_held_out_assistant_loss(toy):
    model = sft(toy.base, toy.chat, toy.work, SFTConfig(**FAST, max_steps=30), name="full")
    m = model.metrics
    assert m["val_loss"] < m["initial_val_loss"] - 1.5, m
    assert m["steps"] == 30 and m["trainable_parameters"] == m["parameters"] and m["lora_rank"] is None
    assert 0.5 < m["packing"] <= 1 and m["conversations"]["val"] >= 1
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "loss.png"):
        assert (model.path / f).is_file(), f
    records = [json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 5, 10, 15, 20, 25, 30]
    assert not (model.path / "checkpoint.safetensors").exists()
    assert artifact.verify(model.path)[1] == []
    assert [i["name"] for i in model.manifest["inputs"]] == ["base", toy.chat.name]
    assert sft(toy.base, toy.chat, toy.work, SFTConfig(**FAST, max_steps=30), name="full").id == model.id


def _killed_at_step(step: int, *args, **kwargs) -> None:
    """Run sft and stop it, as a kill would, in the forward pass of training step `step` (from 1)."""
    forward, seen = Llama.forward, []

    def counted(self, *a, **k):
        seen.append(self.training)  # evaluation runs in eval mode
        if sum(seen) == step:
            raise KeyboardInterrupt
        return forward(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(Llama, "forward", counted)
        sft(*args, **kwargs)


@pytest.mark.parametrize("lora", [0, 4])
def test_a_killed_run_resumes_to_the_same_numbers_and_artifact(toy, lora):
    config = SFTConfig(**FAST, max_steps=8, lora_rank=lora)
    reference = sft(toy.base, toy.chat, toy.work, config, name=f"reference-{lora}")
    _killed_at_step(7, toy.base, toy.chat, toy.work, config, name=f"killed-{lora}")  # checkpoint at 5
    run_dir = toy.work / "model" / f"killed-{lora}"
    assert (run_dir / "checkpoint.safetensors").exists() and not (run_dir / "manifest.json").exists()
    with pytest.raises(UserError, match="--resume"):
        sft(toy.base, toy.chat, toy.work, config, name=f"killed-{lora}")
    resumed = sft(toy.base, toy.chat, toy.work, config, name=f"killed-{lora}", resume=True)
    assert resumed.metrics["val_loss"] == reference.metrics["val_loss"]
    assert resumed.metrics["final_train_loss"] == reference.metrics["final_train_loss"]
    assert resumed.id == reference.id


def test_lora_trains_adapters_only_and_peft_loads_them_with_the_merged_logits(toy):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    model = sft(toy.base, toy.chat, toy.work, SFTConfig(**FAST, max_steps=15, lora_rank=4), name="lora")
    m = model.metrics
    assert m["lora_rank"] == 4 and m["trainable_parameters"] < m["parameters"] / 5
    assert m["val_loss"] < m["initial_val_loss"]
    config = json.loads((model.path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    ids = torch.tensor([toy.tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)])
    ours = load_pretrained(model.path)(ids)[0]
    base = transformers.AutoModelForCausalLM.from_pretrained(toy.base.path, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, model.path / "adapter").eval()
    with torch.no_grad():
        logits = theirs(ids).logits
    assert (logits - ours).abs().max() <= 1e-4
    plain = load_pretrained(toy.base.path)(ids)[0]
    assert (plain - ours).abs().max() > 1e-3  # the adapter did change the model


def test_a_lora_rank_larger_than_the_layer_is_one_clear_error(toy):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "autarky.cli",
            "sft",
            "base",
            toy.chat.name,
            "--lora",
            "65",
            "--seq-len",
            "64",
            "--name",
            "wide",
        ],
        env=cli_env(toy.work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "--lora 65 is larger than the layer" in out.stderr and "Traceback" not in out.stderr
    assert not (toy.work / "model" / "wide").exists()


def test_the_cli_fine_tunes_and_reports_the_held_out_loss(toy):
    args = ["--seq-len", "64", "--batch-size", "4", "--max-steps", "3", "--eval-interval", "3", "--lora", "2"]
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "sft", "base", toy.chat.name, *args, "--name", "cli"],
        env=cli_env(toy.work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "held-out assistant loss" in out.stdout and "PEFT adapter in" in out.stdout
    made = artifact.load(toy.work / "model" / "cli")
    # before the run: what trains on how much, and the steps; the bar shows a smoothed loss
    m, slots = made.metrics, made.metrics["rows"] * 64
    trained = f"{human(m['trainable_parameters'])} of {human(m['parameters'])} parameters"
    ratio = f"{slots / m['trainable_parameters']:.2f} tokens per parameter"
    assert f"fine-tuning {trained} on {slots:,} tokens ({ratio})" in out.stderr
    assert "steps: 3 (--max-steps), 256 tokens a step" in out.stderr
    assert "(smoothed)" in out.stderr
    assert made.config["lora_rank"] == 2 and (made.path / "adapter" / "adapter_model.safetensors").is_file()


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_resume_is_exact(toy, monkeypatch):
    """Ctrl-C between checkpoints (every 5 steps) stops sft at step 7 with a checkpoint there."""
    import signal

    from autarky.train import sft as sft_module
    from autarky.train.checkpoint import Interrupted

    config = SFTConfig(**FAST, max_steps=8)
    reference = sft(toy.base, toy.chat, toy.work, config, name="reference-0")  # made above, or now
    make_batches = sft_module.make_batches

    def ctrl_c_during_step_6(*args):
        batches = make_batches(*args)

        def fetch(step, micro):
            if (step, micro) == (7, 0):  # fetched while step 6 trains
                signal.raise_signal(signal.SIGINT)
            return batches(step, micro)

        return fetch

    monkeypatch.setattr(sft_module, "make_batches", ctrl_c_during_step_6)
    with pytest.raises(Interrupted) as stop:
        sft(toy.base, toy.chat, toy.work, config, name="ctrl-c")
    assert stop.value.step == 7 and (stop.value.run_dir / "checkpoint.safetensors").exists()
    monkeypatch.setattr(sft_module, "make_batches", make_batches)
    assert sft(toy.base, toy.chat, toy.work, config, name="ctrl-c", resume=True).id == reference.id
