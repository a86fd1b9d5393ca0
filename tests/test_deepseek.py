"""The DeepSeek-V3 family: parity with transformers both ways, the latent cache, expert balancing,
training, generation and serving with it, and the settings it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autarky.console import UserError
from autarky.deepseek import DeepseekV3, DeepseekV3Config, LatentCache
from autarky.generate import SamplingParams, complete
from autarky.interop import import_model
from autarky.model import build_model, load_pretrained, preset_config, read_config, save_pretrained
from autarky.runner import TorchRunner
from autarky.serve.engine import Engine
from tests.test_engine import TOK, finished, request
from tests.test_import import save_tokenizer

SIZE = dict(
    vocab_size=320,
    hidden_size=48,
    intermediate_size=80,
    moe_intermediate_size=24,
    num_hidden_layers=4,
    num_attention_heads=4,
    kv_lora_rank=24,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    n_group=4,
    topk_group=2,
    num_experts_per_tok=3,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    max_position_embeddings=128,
)
YARN = {
    "rope_theta": 10000.0,
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "beta_fast": 32,
    "beta_slow": 1,
}
VARIANTS = {  # a low-rank query, interleaved rotary, default rope; a full-rank query, yarn, plain rotary
    "q-lora": dict(q_lora_rank=32, rope_interleave=True),
    "q-full-yarn": dict(q_lora_rank=None, rope_interleave=False, rope_parameters=YARN),
}


def save_hf_checkpoint(directory: Path, variant: str):
    """A random DeepseekV3ForCausalLM saved by transformers, its router biases and norms moved off
    their zero/one start so that a missing one shows."""
    from transformers import DeepseekV3Config as HFConfig
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(0)
    config = HFConfig(**SIZE, **VARIANTS[variant], bos_token_id=0, eos_token_id=[2, 0])
    hf = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in list(hf.parameters()) + [b for n, b in hf.named_buffers() if "e_score" in n]:
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(directory)
    save_tokenizer(directory, "qwen")
    return hf


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_transformers_checkpoint_imports_with_its_logits(variant, tmp_path):
    hf = save_hf_checkpoint(tmp_path / "source", variant)
    model, _ = import_model(tmp_path / "source", tmp_path / "work")
    assert model.config["architecture"] == "deepseek_v3"
    ours = load_pretrained(model.path)
    assert isinstance(ours, DeepseekV3) and ours.num_params() == hf.num_parameters()
    x = torch.randint(0, SIZE["vocab_size"], (2, 50))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() <= 1e-4


def test_our_moe_preset_loads_in_transformers_with_its_logits(tmp_path):
    from transformers import AutoModelForCausalLM, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    ours = build_model(preset_config("moe-tiny", 320, num_hidden_layers=3)).eval()
    with torch.no_grad():
        for router in ours.routers():
            router.e_score_correction_bias.normal_(0, 0.05)
    save_pretrained(ours, tmp_path / "moe")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    assert type(hf) is DeepseekV3ForCausalLM
    x = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() <= 1e-4
    # and it reads back as it was written
    assert read_config(tmp_path / "moe") == ours.config


def random_model(**overrides) -> DeepseekV3:
    torch.manual_seed(1)
    model = DeepseekV3(DeepseekV3Config(**{**SIZE, "q_lora_rank": 32, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("absorb", [True, False])
def test_decoding_with_the_latent_cache_equals_a_full_forward(absorb):
    """Three prompts of different lengths join a batch and decode together; each row's logits at
    every step are those of its whole sequence computed without a cache."""
    model = random_model()
    for block in model.model.layers:
        block.self_attn.absorb = absorb
    runner = TorchRunner(model, slots=3, context=64)
    sequences = [torch.randint(0, 320, (n,)).tolist() for n in (5, 11, 8)]
    for row, ids in enumerate(sequences):
        runner.stage()
        runner.prefill(ids[:3])
        runner.prefill(ids[3:])
        runner.join(row)
    for _ in range(4):
        new = torch.randint(0, 320, (3,)).tolist()
        logits = runner.decode(new)
        for row, token in enumerate(new):
            sequences[row].append(token)
            with torch.no_grad():
                full, _ = model(torch.tensor([sequences[row]]))
            assert (logits[row] - full[0, -1]).abs().max().item() <= 1e-4
    # what MLA promises: per token and layer, the latent and one rotary key part, nothing per head
    cache = runner.cache
    assert isinstance(cache, LatentCache)
    assert [tuple(t.shape) for t in cache.latent] == [(3, 64, 24)] * 4
    assert [tuple(t.shape) for t in cache.rope] == [(3, 64, 8)] * 4
    assert cache.bytes_per_token() == 4 * (24 + 8) * 4
    per_head_kv = 4 * 4 * (16 + 8 + 12) * 4  # what expanded keys and values would take
    assert cache.bytes_per_token() * 4 < per_head_kv


def test_the_router_bias_moves_load_off_an_overloaded_expert():
    """Every token chooses expert 0; the loss-free balancing lowers its bias step by step until
    it gets fewer tokens, and the bias never touches the gate weights."""
    model = random_model(router_bias_update=0.05).train()
    router = model.routers()[0]
    with torch.no_grad():
        router.e_score_correction_bias.zero_()[0] = 0.3  # every token chooses expert 0
    x = torch.randint(0, 320, (4, 32))
    loads = []
    for _ in range(12):
        with torch.no_grad():
            model(x)
        loads.append(router.load[0].item() / router.load.sum().item())
        before = router.weight.clone()
        router.after_step()
        assert torch.equal(router.weight, before) and router.load is None
    assert loads[0] > 0.3 and loads[-1] < loads[0] / 2
    bias = router.e_score_correction_bias
    assert bias[0] < 0.3 - 0.1 and bias[1:].max() > 0  # the busy expert's fell, idle ones' rose


def test_a_training_step_balances_the_experts():
    """The training loop's step calls the balancing after the optimizer step (autarky/train/loop.py)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from autarky.train import TrainConfig
    from autarky.train.distributed import Group
    from autarky.train.loop import train_step

    model = random_model().train()
    optimizer = model.configure_optimizer(1e-3, 0.0, (0.9, 0.95))
    x = torch.randint(0, 320, (2, 16))
    batches = lambda step, micro: (x, x)  # noqa: E731
    before = [r.e_score_correction_bias.clone() for r in model.routers()]
    session = SimpleNamespace(tokens=0)
    train_step(model, optimizer, batches, TrainConfig(), Group(), nullcontext, session, 0, x, x, 1e-3)
    after = [r.e_score_correction_bias for r in model.routers()]
    assert all((a - b).abs().max() == 1e-3 for a, b in zip(after, before, strict=True))
    assert all(r.load is None for r in model.routers())


@pytest.mark.slow  # about 10 s on a quiet 2-core machine, minutes on a busy one
def test_moe_tiny_trains_through_autarky_train(pipeline, tmp_path):
    from autarky.train import TrainConfig, train

    config = TrainConfig(
        preset="moe-tiny",
        seq_len=32,
        batch_size=4,
        max_steps=6,
        lr=3e-3,
        warmup_steps=1,
        eval_interval=6,
        checkpoint_interval=6,
        eval_tokens=512,
        precision="fp32",
    )
    model = train(pipeline.tokens, tmp_path, config, name="moe-test")
    assert model.metrics["val_loss"] < model.metrics["initial_val_loss"] - 0.3
    assert json.loads((model.path / "config.json").read_text())["architectures"] == ["DeepseekV3ForCausalLM"]
    trained = load_pretrained(model.path)
    # the training loop called the balancing: the saved biases moved
    assert all(r.e_score_correction_bias.abs().sum() > 0 for r in trained.routers())


def clear_winner_model() -> DeepseekV3:
    """A tiny DeepSeek model over the engine tests' byte vocabulary whose next tokens are clear
    winners (no near ties for batch arithmetic to flip), never a special token."""
    model = random_model(vocab_size=TOK.vocab_size, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
        model.lm_head.weight[256:] = 0
    return model


def test_generate_and_the_engine_run_a_deepseek_model():
    model = clear_winner_model()
    ids = [TOK.bos_id, 72, 101, 108, 108, 111]
    done = complete(model, TOK, ids, SamplingParams(max_tokens=10, temperature=0))
    # greedy generation is the model's argmax, step by step, without a cache
    sequence = list(ids)
    for token in done.token_ids:
        with torch.no_grad():
            assert model(torch.tensor([sequence]))[0][0, -1].argmax().item() == token
        sequence.append(token)
    # the serving engine's batch gives each request what it gets alone
    engine = Engine(TorchRunner(model, slots=2), TOK, prefill_chunk=4)
    r1, r2 = request(ids, max_tokens=10, temperature=0), request(ids[:4], max_tokens=6, temperature=0)
    engine.submit(r1[0])
    engine.submit(r2[0])
    for _ in range(100):
        engine.step()
        if finished(r1[1]) and finished(r2[1]):
            break
    assert "".join(e.text for e in r1[1]) == done.text
    alone = complete(model, TOK, ids[:4], SamplingParams(max_tokens=6, temperature=0))
    assert "".join(e.text for e in r2[1]) == alone.text


def test_serving_precisions_and_engine_choice(tmp_path):
    from autarky.gguf import read_architecture
    from autarky.runner import open_runner
    from autarky.serve.precision import load_model

    model = clear_winner_model()
    save_pretrained(model, tmp_path / "m")
    ids = torch.tensor([[TOK.bos_id, 72, 101, 108]])
    with torch.no_grad():
        reference = model(ids)[0][0, -1]  # logits of about ±25
        for dtype in ("bf16", "int8"):
            runner = TorchRunner(load_model(tmp_path / "m", dtype), slots=1)
            runner.stage()
            assert (runner.prefill(ids[0].tolist()).float() - reference).abs().max() < 1.0
    with pytest.raises(UserError, match="DeepSeek-V3 model .* runs on PyTorch"):
        read_architecture(tmp_path / "m")
    assert isinstance(open_runner(tmp_path / "m", "auto"), TorchRunner)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(n_routed_experts=6, n_group=4), "n_routed_experts 6 is not divisible by n_group 4"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok 9 is larger than n_routed_experts 8"),
        (dict(topk_group=5), "topk_group 5 is larger than n_group 4"),
        (dict(n_group=8, topk_group=4), "needs at least 2 experts"),
        (dict(num_experts_per_tok=5, topk_group=1), "more than the 1 chosen groups of 2 experts hold"),
        (dict(scoring_func="softmax"), "scoring_func='softmax'.* refused"),
        (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "rope type 'longrope'"),
    ],
)
def test_bad_settings_are_one_sentence(settings, message, tmp_path):
    hf = {"model_type": "deepseek_v3", **SIZE, **settings}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match=message):
        read_config(tmp_path)


def test_multi_token_prediction_layers_of_a_checkpoint_are_skipped(tmp_path):
    """DeepSeek-V3's own checkpoints hold their MTP module as a layer after the last; it is not part
    of the causal LM, so loading skips it (as transformers does), while a missing tensor is refused."""
    from safetensors.torch import load_file, save_file

    model = random_model()
    save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(weights)
    save_file(
        {**state, "model.layers.4.eh_proj.weight": torch.zeros(48, 96)}, weights, metadata={"format": "pt"}
    )
    x = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "m")(x)[0], model(x)[0])
    del state["model.layers.3.mlp.experts.7.up_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"missing \['model.layers.3.mlp.experts.7.up_proj.weight'\]"):
        load_pretrained(tmp_path / "m")


def test_moe_presets_match_their_dense_neighbours_in_active_parameters():
    """Each MoE preset uses about the parameters per token of the dense preset beside it (within 10%),
    and holds more in all; its latent cache is under a third of the dense model's per token."""
    with torch.device("meta"):
        models = {
            name: build_model(preset_config(name, 8192))
            for name in ("tiny", "moe-tiny", "small", "moe-small")
        }
    for dense in ("tiny", "small"):
        moe, lm = models[f"moe-{dense}"], models[dense]
        assert abs(moe.active_params() / lm.num_params(non_embedding=True) - 1) < 0.1
        assert moe.num_params() > 1.5 * lm.num_params()
        assert 3 * moe.new_cache(1, 1).bytes_per_token() < lm.new_cache(1, 1).bytes_per_token()
    with torch.device("meta"):
        big = build_model(preset_config("moe-1b", 32000))
    assert 0.9e9 < big.active_params() < 1.2e9


def test_the_cli_refuses_a_bad_routing_in_one_sentence(tmp_path):
    import subprocess
    import sys

    from tests.conftest import cli_env

    source = tmp_path / "bad"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", **SIZE, "n_group": 3}))
    (source / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    done = subprocess.run(
        [sys.executable, "-m", "autarky", "import", str(source)],
        env=cli_env(tmp_path / "work"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "n_routed_experts 8 is not divisible by n_group 3" in done.stderr
    assert not (tmp_path / "work" / "model").exists()
