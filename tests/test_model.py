import torch

from autarky.model import PRESETS, KVCache, Llama, load_pretrained, preset_config, save_pretrained


def test_presets_have_the_documented_sizes():
    vocab = {"tiny": 4096, "small": 8192, "base": 32000, "1b": 32000}
    with torch.device("meta"):
        sizes = {name: Llama(preset_config(name, vocab[name])).num_params() for name in vocab}
    moe = {"moe-tiny", "moe-small", "moe-base", "moe-1b"}  # their sizes: tests/test_deepseek.py
    assert set(PRESETS) - set(vocab) == moe
    assert 2e6 < sizes["tiny"] < 6e6
    assert 20e6 < sizes["small"] < 40e6
    assert 100e6 < sizes["base"] < 150e6
    assert 0.9e9 < sizes["1b"] < 1.3e9


def test_kv_cache_gives_the_same_logits_as_a_full_pass():
    torch.manual_seed(0)
    config = preset_config("tiny", 300, num_key_value_heads=2)  # exercise grouped-query attention too
    model = Llama(config).eval()
    x = torch.randint(0, 300, (3, 24))
    full, _ = model(x)
    cache = KVCache(config, 3, 32)
    pieces = [model(x[:, :10], cache=cache)[0]]
    for t in range(10, 24):
        pieces.append(model(x[:, t : t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert cache.lengths.tolist() == [24, 24, 24]


def test_kv_cache_rows_at_different_lengths():
    """The serving engine decodes rows that started at different times in one batch."""
    torch.manual_seed(0)
    config = preset_config("tiny", 200)
    model = Llama(config).eval()
    a, b = torch.randint(0, 200, (1, 9)), torch.randint(0, 200, (1, 5))
    cache = KVCache(config, 2, 16)
    model(a[:, :8], cache=cache)  # row 0 holds 8 tokens
    cache.move(0, 1)
    cache.reset(0)
    model(b[:, :4], cache=cache)  # row 0 now holds b's 4 tokens, row 1 a's 8
    # swap so row order matches (b, a) and decode one token for each in one batch
    step = torch.cat([b[:, 4:5], a[:, 8:9]])
    logits, _ = model(step, cache=cache)
    assert torch.allclose(logits[0, -1], model(b)[0][0, -1], atol=1e-5)
    assert torch.allclose(logits[1, -1], model(a)[0][0, -1], atol=1e-5)


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = Llama(preset_config("tiny", 512, num_key_value_heads=2)).eval()
    save_pretrained(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    again = load_pretrained(tmp_path)
    assert torch.equal(again(x)[0], ours)


def test_a_checkpoint_saved_by_transformers_loads_with_the_same_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    x = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() <= 1e-4


def test_unsupported_checkpoints_are_refused_clearly(tmp_path):
    import json

    import pytest

    from autarky.console import UserError

    torch.manual_seed(0)
    save_pretrained(Llama(preset_config("tiny", 100)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    refusals = {
        "rope type 'yarn'": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        "sliding attention window": {"model_type": "mistral", "sliding_window": 64},
        "mixture of experts": {"num_local_experts": 8},
        "hidden_act": {"hidden_act": "gelu"},
        "model_type 'gemma'": {"model_type": "gemma"},
    }
    for message, change in refusals.items():
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UserError, match=message):
            load_pretrained(tmp_path)
    # a window as long as the context changes nothing, so it loads
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "model_type": "mistral", "sliding_window": 512})
    )
    assert load_pretrained(tmp_path).config.model_type == "mistral"
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(
        UserError,
        match=r"has shape \(256, 688\), but config.json makes it \(256, 100\)",
    ):
        load_pretrained(tmp_path)


def test_weights_keep_their_dtype_and_are_not_copied(tmp_path):
    torch.manual_seed(0)
    model = Llama(preset_config("tiny", 100)).to(torch.bfloat16)
    save_pretrained(model, tmp_path)
    kept = load_pretrained(tmp_path, dtype=None)
    assert kept.model.embed_tokens.weight.dtype == torch.bfloat16
    assert kept.lm_head.weight is kept.model.embed_tokens.weight
    assert torch.equal(kept.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert load_pretrained(tmp_path).model.norm.weight.dtype == torch.float32


def test_int8_serving_keeps_a_bias():
    """Qwen2's q/k/v projections have biases; int8 weights must not drop them."""
    from autarky.serve.precision import Int8Linear, int8pack_works

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=True)
    with torch.no_grad():
        linear.bias.add_(1.0)
    x = torch.randn(3, 64)
    for kernel in ["dequant"] + (["int8pack"] if int8pack_works() else []):
        assert torch.allclose(Int8Linear(linear, kernel)(x), linear(x), atol=0.05)
