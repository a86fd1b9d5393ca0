"""The model: a Llama-family decoder whose config.json and tensor names are exactly Hugging Face's.

A model directory is at once an autarky artifact and a standard checkpoint that
`transformers.AutoModelForCausalLM` loads. One set of modules covers four families, which differ
only in a few switches on `ModelConfig`: Llama 2/3 (grouped-query attention, Llama 3's rope
scaling), Mistral, Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm, its own head_dim). A setting of a
checkpoint that this model would compute differently (another rope type, a sliding window that
matters, experts) is refused by name. Modules are in data-flow order: RMSNorm, rotary embedding,
attention, MLP, block, the backbone, and the causal LM on top; loading and saving come last.
Attention can read and append to a `KVCache`, which generation and the serving engine share.
The DeepSeek-V3 family (latent attention, mixture of experts) is autarky/deepseek.py, a subclass of
`Llama`; `read_config` and `build_model` choose between them by `model_type`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from autarky.console import UserError

# The families whose config.json and tensor names this model reads and writes, and their HF class.
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# Older checkpoints saved this buffer; it is computed from the config, never read.
IGNORED_TENSORS = ("rotary_emb.inv_freq",)


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = 2
    model_type: str = "llama"
    head_dim: int | None = None  # None: hidden_size / heads; Qwen3 sets its own
    attention_bias: bool = False  # Llama/Qwen3: bias on q, k, v and o; Qwen2 has q/k/v bias always
    rope_scaling: dict | None = None  # None, or Llama 3's {"rope_type": "llama3", ...}
    dropout: float = 0.0  # of each block's attention and MLP output, training only (not in config.json)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise UserError(
                    f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises each head's query and key (RMSNorm over head_dim) before the rotation."""
        return self.model_type == "qwen3"

    def validate(self) -> None:
        if self.model_type not in FAMILIES:
            raise UserError(f"model_type {self.model_type!r} is not one of {', '.join(FAMILIES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError("num_attention_heads must be a multiple of num_key_value_heads")

    def to_hf(self) -> dict:
        """config.json as transformers' config class of this family writes it."""
        hf = {
            "architectures": [FAMILIES[self.model_type]],
            **asdict(self),
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "torch_dtype": "float32",
        }
        if self.model_type in ("mistral", "qwen2", "qwen3"):
            hf.update(sliding_window=None, use_sliding_window=False)
        del hf["dropout"]  # how it was trained (its manifest's recipe says), not how it computes
        return hf

    @classmethod
    def from_hf(cls, config: dict) -> ModelConfig:
        """Read a config.json of a supported family; refuse by name whatever it would compute differently."""
        model_type = config.get("model_type") or "llama"
        if model_type not in FAMILIES:
            raise UserError(
                f"model_type {model_type!r} is not supported; autarky loads {', '.join(FAMILIES)} models"
            )
        if missing := [k for k in REQUIRED_KEYS if not (isinstance(config.get(k), int) and config[k] > 0)]:
            raise UserError(
                f"config.json lacks a positive {', '.join(missing)}, which every {model_type} config has"
            )
        theta, scaling = _rope(config)
        if refused := _differences(config, model_type):
            raise UserError(
                f"this {model_type} checkpoint uses {', '.join(refused)}, which autarky's model does not "
                "compute the same way; it is refused rather than loaded wrongly"
            )
        known = {f.name for f in fields(cls)} - {"rope_theta", "rope_scaling"}
        values = {k: v for k, v in config.items() if k in known}
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(values.get(token), list):
                values[token] = values[token][0] if values[token] else None
        # transformers' defaults where config.json leaves a key out (they differ from ours)
        values.setdefault("tie_word_embeddings", False)
        values.setdefault("rms_norm_eps", 1e-6)
        if values.get("num_key_value_heads") is None:
            values["num_key_value_heads"] = config["num_attention_heads"]
        values["attention_bias"] = bool(values.get("attention_bias")) and model_type != "qwen2"
        return cls(**{**values, "model_type": model_type, "rope_theta": theta, "rope_scaling": scaling})


def rope_settings(config: dict, supported: str) -> tuple[float, str, dict]:
    """(theta, rope type, its other settings) from transformers 5's `rope_parameters` or 4's
    `rope_theta`/`rope_scaling`; a type other than default and `supported` is refused by name."""
    params = dict(config.get("rope_parameters") or {})
    params.update(config.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind not in ("default", supported):
        raise UserError(
            f"rope type {kind!r} is not supported for {config.get('model_type') or 'llama'} (autarky "
            f"computes default and {supported} rotary embeddings); the checkpoint is refused rather "
            "than loaded wrongly"
        )
    return theta, kind, params


def _rope(config: dict) -> tuple[float, dict | None]:
    theta, kind, params = rope_settings(config, "llama3")
    if kind == "default":
        return theta, None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if missing := [k for k in keys if k not in params]:
        raise UserError(f"the llama3 rope scaling lacks {', '.join(missing)}")
    return theta, {"rope_type": "llama3", **{k: params[k] for k in keys}}


def _differences(config: dict, model_type: str) -> list[str]:
    """The settings of `config` this model would silently compute differently, as `key=value`."""
    window = config.get("sliding_window")
    windowed = (
        model_type == "mistral"
        or config.get("use_sliding_window")
        or "sliding_attention" in (config.get("layer_types") or [])
    )
    context = config.get("max_position_embeddings") or 0
    bad = {
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "mlp_bias": bool(config.get("mlp_bias")),
        "sliding_window": bool(windowed) and window is not None and window < context,
        "partial_rotary_factor": config.get("partial_rotary_factor", 1.0) != 1.0,
        "quantization_config": bool(config.get("quantization_config")),
        **{key: bool(config.get(key)) for key in MOE_KEYS},
    }
    names = {"sliding_window": "a sliding attention window"}
    for key in MOE_KEYS:
        names[key] = "a mixture of experts"
    return [f"{names.get(key, key)} ({key}={config.get(key)!r})" for key, b in bad.items() if b]


# Architecture per preset; the vocabulary size comes from the tokenizer.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
    ),
    "base": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    ),
    # DeepSeek-V3 family (autarky/deepseek.py): about the active parameters per token of the dense
    # preset beside it (the shared and the routed experts a token uses ≈ the dense MLP), with several
    # times its total parameters; attention is MLA with a latent cache.
    "moe-tiny": dict(
        model_type="deepseek_v3",
        tie_word_embeddings=True,
        hidden_size=256,
        intermediate_size=688,
        moe_intermediate_size=224,
        num_hidden_layers=4,
        num_attention_heads=4,
        kv_lora_rank=128,
        qk_nope_head_dim=32,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
    ),
    "moe-small": dict(
        model_type="deepseek_v3",
        tie_word_embeddings=True,
        hidden_size=512,
        intermediate_size=1376,
        moe_intermediate_size=448,
        num_hidden_layers=8,
        num_attention_heads=8,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=16,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        max_position_embeddings=1024,
    ),
    "moe-base": dict(
        model_type="deepseek_v3",
        tie_word_embeddings=True,
        hidden_size=768,
        intermediate_size=2048,
        moe_intermediate_size=512,
        num_hidden_layers=12,
        num_attention_heads=12,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        max_position_embeddings=2048,
    ),
    "moe-1b": dict(
        model_type="deepseek_v3",
        tie_word_embeddings=True,
        hidden_size=2048,
        intermediate_size=8192,
        moe_intermediate_size=1408,
        num_hidden_layers=16,
        num_attention_heads=16,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_shared_experts=2,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    ),
}


def preset_config(preset: str, vocab_size: int, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    if values.get("model_type") == "deepseek_v3":
        from autarky.deepseek import DeepseekV3Config

        config = DeepseekV3Config(vocab_size=vocab_size, **values)
        config.validate()
        return config
    config = ModelConfig(vocab_size=vocab_size, **values)
    config.validate()
    return config


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as HF does, so bf16 runs and exported checkpoints agree.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos and sin of each position's rotation, computed for the positions asked (no table of the
    whole context: Llama 3's 128k positions would cost more memory than a small model's weights)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.unsqueeze(-1).float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """The rotation speed of each pair of dimensions; Llama 3 slows the slow ones down by `factor`
    and blends smoothly between, so the model reads contexts longer than it was pretrained on."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if not config.rope_scaling:
        return inv_freq
    s = config.rope_scaling
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, blended, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class KVCache:
    """Keys and values for `batch` sequences of up to `max_len` tokens, one tensor pair per layer.

    Row b holds `lengths[b]` tokens. A forward pass with a cache uses rows 0..B-1 for its B input
    rows; the serving engine keeps its running requests packed at the top by moving rows.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    def take(self, other: KVCache, src: int, dst: int) -> None:
        """Copy row `src` of `other` (a staged prompt's cache) into row `dst` of this one."""
        n = int(other.lengths[src])
        for k, v, ok, ov in zip(self.k, self.v, other.k, other.v, strict=True):
            k[dst, :, :n] = ok[src, :, :n]
            v[dst, :, :n] = ov[src, :, :n]
        self.lengths[dst] = n

    def move(self, src: int, dst: int) -> None:
        """Copy row `src` into row `dst` (to keep running sequences packed)."""
        self.take(self, src, dst)

    def scrub(self, row: int) -> None:
        for k, v in zip(self.k, self.v, strict=True):
            k[row].zero_()
            v[row].zero_()

    def bytes_per_token(self) -> int:
        return sum(t[0, :, 0].numel() * t.element_size() for t in self.k + self.v)

    def reset(self, row: int) -> None:
        self.lengths[row] = 0


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.n_kv_head = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, positions=None, mask=None):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_head, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:
            rows = torch.arange(B, device=x.device).unsqueeze(1)
            cache.k[layer][rows, :, positions] = k.transpose(1, 2).to(cache.k[layer].dtype)
            cache.v[layer][rows, :, positions] = v.transpose(1, 2).to(cache.v[layer].dtype)
            span = mask.shape[-1]
            k = cache.k[layer][:B, :, :span].to(q.dtype)
            v = cache.v[layer][:B, :, :span].to(q.dtype)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One layer: attention and an MLP (the family's own, where it has its own), each behind a norm."""

    def __init__(self, config: ModelConfig, attention: nn.Module | None = None, mlp: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention if attention is not None else Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp if mlp is not None else MLP(config)
        self.dropout = nn.Dropout(getattr(config, "dropout", 0.0))  # nn.Dropout: active in train mode only

    def forward(self, x, cos, sin, cache=None, layer=0, positions=None, mask=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, positions, mask))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """HF's `LlamaModel` (`DeepseekV3Model` with DeepSeek's blocks): named `model` inside the causal
    LM so tensor names match."""

    def __init__(self, config: ModelConfig, layers: list[nn.Module], rotary: nn.Module):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = rotary


def packed_layout(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention mask for rows that pack several sequences, each a run of one id in
    `segment_ids` (B, T): a token sees only the earlier tokens of its own run, and positions restart
    at 0 with each run, so no sequence sees another and each is computed exactly as it is alone."""
    B, T = segment_ids.shape
    index = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    positions = index - torch.where(starts, index, 0).cummax(dim=1).values
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    mask = (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)) & causal
    return positions, mask.unsqueeze(1)


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        layers = [self.new_block(i) for i in range(config.num_hidden_layers)]
        self.model = Backbone(config, layers, self.new_rotary())
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # Scale the projections that write into the residual stream, as GPT-2 does, so its variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.num_hidden_layers))
            elif name.endswith("gate.weight"):  # a router's (DeepSeek-V3): a bare parameter
                nn.init.normal_(p, mean=0.0, std=0.02)

    def new_block(self, layer: int) -> nn.Module:
        """Layer `layer` of this family (multi-token prediction builds its own blocks with it too)."""
        return Block(self.config)

    def new_rotary(self) -> nn.Module:
        return RotaryEmbedding(self.config)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_dropout(self, p: float) -> None:
        """Train with dropout `p` from now on: the recipe's, whatever the weights were trained with."""
        self.config.dropout = p
        for block in self.modules():
            if isinstance(block, Block):
                block.dropout.p = p

    def new_cache(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> KVCache:
        """The cache this model's attention reads and appends to (DeepSeek's differs)."""
        return KVCache(self.config, batch, max_len, device=device, dtype=dtype)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for `input_ids` (B, T); with `targets`, also the mean cross-entropy.

        With a cache, row b's new tokens go to positions lengths[b].. and attend to everything
        before them in that row; the cache's lengths advance by T. With `segment_ids` (B, T), a row
        packs several sequences (see `packed_layout`), each computed as it would be alone.
        """
        return self.head(self.hidden(input_ids, cache, segment_ids), targets, last_only)

    def hidden(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last block's output (B, T, hidden), before the final norm: what the head reads, and
        what multi-token prediction modules build on."""
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        mask = positions = None
        if cache is None:
            if T > self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence of {T} tokens exceeds the context of {self.config.max_position_embeddings}"
                )
            positions = torch.arange(T, device=input_ids.device).unsqueeze(0)
            if segment_ids is not None:
                positions, mask = packed_layout(segment_ids)
        else:
            positions = cache.lengths[:B].unsqueeze(1) + torch.arange(T, device=input_ids.device)
            span = int(positions.max()) + 1
            if span > cache.max_len:
                raise ValueError(f"the KV cache holds {cache.max_len} tokens; this step needs {span}")
            mask = torch.arange(span, device=input_ids.device).view(1, 1, 1, span) <= positions.view(
                B, 1, T, 1
            )
        cos, sin = self.model.rotary(positions, x.dtype)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, cache, i, positions, mask)
        if cache is not None:
            cache.lengths[:B] += T
        return x

    def head(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final norm and output projection of hidden states; with `targets`, the mean cross-entropy."""
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def configure_optimizer(
        self, lr: float, weight_decay: float, betas: tuple[float, float]
    ) -> torch.optim.AdamW:
        """AdamW with decay on matrices only; norms (1-D) are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **adamw_kernel(params))


def adamw_kernel(params: list[torch.Tensor]) -> dict[str, bool]:
    """AdamW's implementation for these tensors: on a GPU the fused kernel (one launch for every
    tensor), elsewhere the foreach one (fused saves nothing on a CPU)."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {"foreach": True}


def state_dict_for_export(model: Llama) -> dict[str, torch.Tensor]:
    """Tensors under HF names; a tied lm_head is left out, as transformers does."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_pretrained(model: Llama, directory: Path, generation: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_export(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(
        json.dumps({**model.config.to_hf(), "torch_dtype": dtype}, indent=2) + "\n"
    )
    gen = {
        "bos_token_id": model.config.bos_token_id,
        "eos_token_id": model.config.eos_token_id,
        "pad_token_id": model.config.pad_token_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
        **(generation or {}),
    }
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def read_config(directory: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint directory's config.json (refusing what we would compute differently)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a model directory: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    if config.get("model_type") == "deepseek_v3":
        from autarky.deepseek import DeepseekV3Config

        return DeepseekV3Config.from_hf(config)
    return ModelConfig.from_hf(config)


def build_model(config) -> Llama:
    """The causal LM of a config's family: `Llama` for ModelConfig, `DeepseekV3` for DeepseekV3Config."""
    if config.model_type == "deepseek_v3":
        from autarky.deepseek import DeepseekV3

        return DeepseekV3(config)
    return Llama(config)


def _ignored(name: str, config) -> bool:
    """Tensors a checkpoint may hold that this model does not use: a stale rotary buffer, a tied head,
    DeepSeek-V3's multi-token prediction layers (numbered after the last layer)."""
    if name.endswith(IGNORED_TENSORS) or (config.tie_word_embeddings and name == "lm_head.weight"):
        return True
    layer = re.match(r"model\.layers\.(\d+)\.", name)
    return config.model_type == "deepseek_v3" and bool(layer) and int(layer[1]) >= config.num_hidden_layers


def checkpoint_shards(directory: Path) -> dict[Path, list[str]]:
    """Each safetensors file of a checkpoint and the tensor names it holds: the one `model.safetensors`,
    or every shard `model.safetensors.index.json` names, each checked to hold exactly what the index says.
    Only the files' headers are read."""
    directory = Path(directory)
    index = directory / INDEX
    if not index.is_file():
        if not (directory / WEIGHTS).is_file():
            raise UserError(f"{directory} holds no weights: neither {WEIGHTS} nor a sharded {INDEX}")
        return {directory / WEIGHTS: _tensor_names(directory / WEIGHTS)}
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        wanted: dict[str, set[str]] = {}
        for name, shard in weight_map.items():
            wanted.setdefault(shard, set()).add(name)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index} is not a safetensors index with a weight_map ({e})") from e
    shards = {}
    for shard, names in sorted(wanted.items()):
        path = directory / str(shard)
        if Path(str(shard)).name != shard or not path.is_file():
            raise UserError(f"the shard {shard!r} that {INDEX} names is missing from {directory}")
        held = _tensor_names(path)
        if set(held) != names:
            odd = sorted(set(held) ^ names)[0]
            raise UserError(
                f"the shard {shard} does not match {INDEX}: {odd} is in one and not the other; "
                "the checkpoint is incomplete or mixes shards of different saves"
            )
        shards[path] = held
    return shards


def _tensor_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{path} is not a readable safetensors file ({e})") from e


FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def check_checkpoint(directory: Path, config: ModelConfig) -> dict[Path, list[str]]:
    """The tensors to read from each weight file, once every name, shape and dtype in the files'
    headers has been checked against `config` (no weight is read)."""
    with torch.device("meta"):
        expected = build_model(config).state_dict()
    plan: dict[Path, list[str]] = {}
    for path, names in checkpoint_shards(directory).items():
        with safe_open(str(path), "pt") as f:
            for name in names:
                if _ignored(name, config):
                    continue
                piece = f.get_slice(name)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                if name in expected and shape != tuple(expected[name].shape):
                    raise UserError(
                        f"the tensor {name} in {path} has shape {shape}, but config.json makes it "
                        f"{tuple(expected[name].shape)}"
                    )
                if dtype not in FLOAT_DTYPES:
                    raise UserError(
                        f"the tensor {name} in {path} is stored as {dtype}; autarky reads float32, bfloat16 "
                        "and float16 weights (a quantised checkpoint would be computed differently)"
                    )
                plan.setdefault(path, []).append(name)
    found = {name for names in plan.values() for name in names}
    if config.tie_word_embeddings:
        found.add("lm_head.weight")
    missing, unexpected = sorted(expected.keys() - found), sorted(found - expected.keys())
    if missing or unexpected:
        raise UserError(
            f"the weights in {directory} do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return plan


def load_pretrained(
    directory: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32
) -> Llama:
    """Load a model directory (ours, or an HF checkpoint of a supported family in safetensors).

    The files are memory-mapped and each tensor becomes the model's parameter as it is (`assign`),
    converted only when `dtype` differs from the stored one (None keeps the stored dtype), so the
    weights are never held twice.
    """
    directory = Path(directory)
    config = read_config(directory)
    state: dict[str, torch.Tensor] = {}
    for path, names in check_checkpoint(directory, config).items():
        with safe_open(str(path), "pt", device=str(device)) as f:
            for name in names:
                state[name] = f.get_tensor(name)
    dtype = dtype or state["model.embed_tokens.weight"].dtype
    for name, tensor in state.items():
        state[name] = tensor.to(dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    with torch.device("meta"):
        model = build_model(config)
    model.load_state_dict(state, assign=True)
    model.model.rotary = type(model.model.rotary)(config).to(device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


NOT_CHAT_TUNED = (
    "this model was never chat-tuned (no sft in its lineage): it continues text rather than answering. "
    "`autarky sft MODEL CHAT` teaches it to chat"
)


def chat_tuned(directory: Path) -> bool | None:
    """Whether a model learned to chat (sft on a chat corpus) anywhere in its lineage.

    A model only pretrained continues text rather than answering, and `chat` says so. None where
    the lineage cannot tell: a checkpoint without a manifest, weights imported from elsewhere (their
    maker's training is not recorded here), or an upstream model since deleted.
    """
    from autarky import artifact

    if not (Path(directory) / artifact.MANIFEST).is_file():
        return None
    pending, unknown = [artifact.load(directory)], False
    while pending:
        model = pending.pop()
        unknown |= model.config.get("origin") == "imported"
        for ref in model.manifest["inputs"]:
            if ref["kind"] == "chat":
                return True
            if ref["kind"] == "model":
                try:
                    pending.append(artifact.load(artifact.input_dir(model.workspace, ref), "model"))
                except UserError:
                    unknown = True
    return None if unknown else False
