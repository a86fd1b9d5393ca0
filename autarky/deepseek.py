"""A DeepSeek-V3-family model: multi-head latent attention and a mixture of experts, beside Llama.

config.json and tensor names are exactly those of Hugging Face's `DeepseekV3ForCausalLM`
(`model_type: deepseek_v3`), so a checkpoint of ours loads in `transformers` and theirs imports here.
What differs from Llama (autarky/model.py), in data-flow order:

- Attention (MLA) projects each token down to a small latent (`kv_lora_rank`, normalised) plus one
  rotary key part shared by all heads (`qk_rope_head_dim`); `kv_b_proj` expands the latent to each
  head's key (`qk_nope_head_dim`) and value (`v_head_dim`). The cache (`LatentCache`) keeps only the
  latent and the rotary part, and decoding folds `kv_b_proj` into the query and output ("weight
  absorption") instead of expanding the whole cache every step.
- After `first_k_dense_replace` dense layers, each MLP is a mixture: a shared expert every token
  goes through, plus `num_experts_per_tok` of `n_routed_experts` routed experts chosen by sigmoid
  scores (plus `e_score_correction_bias`, within the best `topk_group` of `n_group` groups).
  Tokens are sorted by expert and each expert runs once on its tokens: no loop over tokens.
- Auxiliary-loss-free balancing (DeepSeek-V3 §2.1.2): the training loop calls each router's
  `after_step`, which nudges its bias toward the experts that got fewer tokens in that step (the
  routers of multi-token prediction blocks too: the loop finds every module with an `after_step`).

The model subclasses `Llama` for what is the same: `forward` = `hidden` then `head`, packed
`segment_ids`, the optimizer, so generation, serving and training take either family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from autarky.console import UserError
from autarky.model import MLP, Block, Llama, RMSNorm, rope_settings, rotate_half

ARCHITECTURE = "DeepseekV3ForCausalLM"
# A cached step of at most this many new tokens (decoding) runs with kv_b_proj absorbed: its cost grows
# with the cache by 2·kv_lora_rank + rope per head and cached token, where expanding re-projects the
# whole cache every step. A longer chunk (a prompt's prefill) expands, which costs less per score and
# keeps the fused attention kernel. An int8-quantised kv_b_proj always expands (it has no float weight).
ABSORB_MAX_TOKENS = 16


@dataclass
class DeepseekV3Config:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688  # the dense layers' MLP
    moe_intermediate_size: int = 224  # each expert's
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # unused by MLA; transformers keeps it
    n_shared_experts: int = 1
    n_routed_experts: int = 8
    routed_scaling_factor: float = 1.0
    kv_lora_rank: int = 128
    q_lora_rank: int | None = None  # None: a full-rank q_proj
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    qk_nope_head_dim: int = 32
    n_group: int = 1
    topk_group: int = 1
    num_experts_per_tok: int = 2
    first_k_dense_replace: int = 1
    norm_topk_prob: bool = True
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None, or yarn's {"rope_type": "yarn", "factor": ..., ...}
    rope_interleave: bool = True
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = 2
    model_type: str = "deepseek_v3"
    # Training only, not in config.json: the step of the balancing bias per optimizer step (γ).
    router_bias_update: float = field(default=1e-3, metadata={"hf": False})

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def head_dim(self) -> int:
        """What transformers calls head_dim here: the rotary part's width."""
        return self.qk_rope_head_dim

    def validate(self) -> None:
        """Refuse a routing the router cannot compute, in one sentence."""
        E, groups = self.n_routed_experts, self.n_group
        if E < 1 or groups < 1 or self.num_experts_per_tok < 1 or self.topk_group < 1:
            raise UserError("n_routed_experts, n_group, topk_group and num_experts_per_tok must be positive")
        if E % groups:
            raise UserError(f"n_routed_experts {E} is not divisible by n_group {groups}")
        if self.topk_group > groups:
            raise UserError(f"topk_group {self.topk_group} is larger than n_group {groups}")
        if self.num_experts_per_tok > E:
            raise UserError(
                f"num_experts_per_tok {self.num_experts_per_tok} is larger than n_routed_experts {E}"
            )
        if E // groups < 2 and groups > 1:
            raise UserError(
                f"each of the {groups} groups needs at least 2 experts (a group scores its best two)"
            )
        if self.num_experts_per_tok > self.topk_group * (E // groups):
            raise UserError(
                f"num_experts_per_tok {self.num_experts_per_tok} is more than the {self.topk_group} chosen "
                f"groups of {E // groups} experts hold"
            )
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise UserError(f"first_k_dense_replace must be between 0 and {self.num_hidden_layers}")

    def to_hf(self) -> dict:
        """config.json as transformers' DeepseekV3Config writes it."""
        hf = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("hf", True)}
        hf.pop("rope_theta"), hf.pop("rope_scaling")
        rope = {"rope_theta": self.rope_theta, "rope_type": "default", **(self.rope_scaling or {})}
        return {
            "architectures": [ARCHITECTURE],
            **hf,
            "rope_parameters": rope,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "num_nextn_predict_layers": 0,
            "pretraining_tp": 1,
            "use_cache": True,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, config: dict) -> DeepseekV3Config:
        """Read a deepseek_v3 config.json; refuse by name whatever this model would compute differently."""
        refused = {
            "hidden_act": config.get("hidden_act", "silu") != "silu",
            "scoring_func": config.get("scoring_func", "sigmoid") != "sigmoid",
            "topk_method": config.get("topk_method", "noaux_tc") != "noaux_tc",
            "moe_layer_freq": config.get("moe_layer_freq", 1) != 1,
            "quantization_config": bool(config.get("quantization_config")),
        }
        if bad := [f"{k}={config.get(k)!r}" for k, b in refused.items() if b]:
            raise UserError(
                f"this deepseek_v3 checkpoint uses {', '.join(bad)}, which autarky's model does not compute "
                "the same way; it is refused rather than loaded wrongly"
            )
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank")
        if missing := [k for k in required if not (isinstance(config.get(k), int) and config[k] > 0)]:
            raise UserError(
                f"config.json lacks a positive {', '.join(missing)}, which every deepseek_v3 config has"
            )
        known = {f.name for f in fields(cls)} - {
            "rope_theta",
            "rope_scaling",
            "router_bias_update",
            "model_type",
        }
        values = {k: v for k, v in config.items() if k in known and v is not None}
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(values.get(token), list):
                values[token] = values[token][0] if values[token] else None
            values.setdefault(token, None)
        # transformers' defaults where config.json leaves a key out
        defaults = dict(
            intermediate_size=18432, moe_intermediate_size=2048, n_shared_experts=1, n_routed_experts=256,
            routed_scaling_factor=2.5, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
            qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
            max_position_embeddings=4096, rope_interleave=True, tie_word_embeddings=False,
        )  # fmt: skip
        values = {**defaults, **values}
        if "q_lora_rank" in config:
            values["q_lora_rank"] = config["q_lora_rank"]
        theta, scaling = _rope(config, values["max_position_embeddings"])
        made = cls(**values, rope_theta=theta, rope_scaling=scaling)
        made.validate()
        return made


def _rope(config: dict, context: int) -> tuple[float, dict | None]:
    """(theta, yarn scaling or None) from a deepseek_v3 config.json."""
    theta, kind, params = rope_settings(config, "yarn")
    if kind == "default":
        return theta, None
    if "factor" not in params:
        raise UserError("the yarn rope scaling lacks its factor")
    params.setdefault("original_max_position_embeddings", context)
    return theta, {"rope_type": "yarn", **params}


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_frequencies(config: DeepseekV3Config) -> tuple[torch.Tensor, float]:
    """The rotation speed of each pair of rotary dimensions and the factor on cos/sin, as transformers
    computes them: yarn interpolates the slow dimensions by `factor` and keeps the fast ones."""
    dim, base = config.qk_rope_head_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    s = config.rope_scaling
    if not s:
        return 1.0 / pos_freqs, 1.0
    factor, mscale, mscale_all = s["factor"], s.get("mscale"), s.get("mscale_all_dim")
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            _mscale(factor, mscale) / _mscale(factor, mscale_all)
            if mscale and mscale_all
            else _mscale(factor)
        )
    old = s["original_max_position_embeddings"]

    def correction(rotations: float) -> float:
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction(s.get("beta_fast") or 32), correction(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos and sin of the rotary part for the positions asked (the same call as Llama's)."""

    def __init__(self, config: DeepseekV3Config):
        super().__init__()
        inv_freq, self.scale = yarn_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.unsqueeze(-1).float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate `x` (B, heads, T, rope); interleaved checkpoints pair dimensions (0,1), (2,3)... and the
    result is laid out de-interleaved, as transformers does (queries and keys alike, so scores agree)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if not interleave:
        return x * cos + rotate_half(x) * sin
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LatentCache:
    """What MLA caches per layer: the normalised latent (kv_lora_rank) and the rotated key part shared
    by the heads (qk_rope_head_dim), for `batch` sequences of up to `max_len` tokens. The same
    interface as `KVCache` (lengths, max_len, move, reset, take, scrub)."""

    def __init__(self, config: DeepseekV3Config, batch: int, max_len: int, device=None, dtype=torch.float32):
        layers = config.num_hidden_layers
        self.latent = [
            torch.zeros(batch, max_len, config.kv_lora_rank, device=device, dtype=dtype)
            for _ in range(layers)
        ]
        self.rope = [
            torch.zeros(batch, max_len, config.qk_rope_head_dim, device=device, dtype=dtype)
            for _ in range(layers)
        ]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    def bytes_per_token(self) -> int:
        return sum(t[0, 0].numel() * t.element_size() for t in self.latent + self.rope)

    def take(self, other: LatentCache, src: int, dst: int) -> None:
        """Copy row `src` of `other` (a staged prompt's cache) into row `dst` of this one."""
        n = int(other.lengths[src])
        for mine, theirs in zip(self.latent + self.rope, other.latent + other.rope, strict=True):
            mine[dst, :n] = theirs[src, :n]
        self.lengths[dst] = n

    def move(self, src: int, dst: int) -> None:
        """Copy row `src` into row `dst` (to keep running sequences packed)."""
        self.take(self, src, dst)

    def scrub(self, row: int) -> None:
        for t in self.latent + self.rope:
            t[row].zero_()

    def reset(self, row: int) -> None:
        self.lengths[row] = 0


class Attention(nn.Module):
    """Multi-head latent attention; without a cache it computes exactly as transformers does."""

    def __init__(self, config: DeepseekV3Config):
        super().__init__()
        self.config = config
        H, bias = config.num_attention_heads, config.attention_bias
        self.n_head, self.nope, self.rope, self.v_dim = (
            H,
            config.qk_nope_head_dim,
            config.qk_rope_head_dim,
            config.v_head_dim,
        )
        self.rank = config.kv_lora_rank
        qk = config.qk_head_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(config.hidden_size, H * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(config.q_lora_rank, H * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.rank + self.rope, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.rank, 1e-6)
        self.kv_b_proj = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_dim, config.hidden_size, bias=bias)
        self.scaling = qk**-0.5
        if (s := config.rope_scaling) and s.get("mscale_all_dim"):
            self.scaling *= _mscale(s["factor"], s["mscale_all_dim"]) ** 2
        self.absorb = True  # decode with kv_b_proj folded into query and output (see `_absorbed`)

    def forward(
        self, x, cos, sin, cache: LatentCache | None = None, layer: int = 0, positions=None, mask=None
    ):
        B, T, _ = x.shape
        if self.config.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)
        q_nope, q_rot = q.split([self.nope, self.rope], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent)
        interleave = self.config.rope_interleave
        q_rot = rotate(q_rot, cos, sin, interleave)
        k_rot = rotate(k_rot.unsqueeze(1), cos, sin, interleave).squeeze(1)
        if cache is not None:
            rows = torch.arange(B, device=x.device).unsqueeze(1)
            cache.latent[layer][rows, positions] = latent.to(cache.latent[layer].dtype)
            cache.rope[layer][rows, positions] = k_rot.to(cache.rope[layer].dtype)
            span = mask.shape[-1]
            latent = cache.latent[layer][:B, :span].to(q.dtype)
            k_rot = cache.rope[layer][:B, :span].to(q.dtype)
            if self.absorb and T <= ABSORB_MAX_TOKENS and isinstance(self.kv_b_proj, nn.Linear):
                return self.o_proj(self._absorbed(q_nope, q_rot, latent, k_rot, mask))
        y = self._expanded(q_nope, q_rot, latent, k_rot, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _expanded(self, q_nope, q_rot, latent, k_rot, mask) -> torch.Tensor:
        """Attention over keys and values expanded from the latent, per head (B, H, T, v_head_dim)."""
        B, S, _ = latent.shape
        kv = self.kv_b_proj(latent).view(B, S, self.n_head, -1).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rot.unsqueeze(1).expand(-1, self.n_head, -1, -1)], dim=-1)
        q = torch.cat([q_nope, q_rot], dim=-1)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)

    def _absorbed(self, q_nope, q_rot, latent, k_rot, mask) -> torch.Tensor:
        """The same attention computed in the latent space: q·(W_k c) = (W_kᵀ q)·c and the values'
        W_v moves after the weighted sum, so the cached latents are never expanded per head.
        Returns (B, T, H·v_head_dim)."""
        B, H, T, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(H, self.nope + self.v_dim, self.rank)
        w_k, w_v = w[:, : self.nope], w[:, self.nope :]
        # Heads and new tokens share one matrix dimension, so each product is one batched matmul
        # against the cache as it is (a broadcast over heads would copy the cache per head).
        q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_k).reshape(B, H * T, self.rank)
        scores = q_latent @ latent.transpose(1, 2) + q_rot.reshape(B, H * T, -1) @ k_rot.transpose(1, 2)
        scores = (scores.view(B, H, T, -1) * self.scaling).masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(q_nope.dtype).view(B, H * T, -1)
        out = torch.einsum("bhtr,hvr->bthv", (weights @ latent).view(B, H, T, self.rank), w_v)
        return out.reshape(B, T, H * self.v_dim)


class Router(nn.Module):
    """Top-k routing as transformers' DeepseekV3TopkRouter computes it; in training it also counts
    each expert's tokens (`load`) for the balancing in `DeepseekV3.after_step`."""

    def __init__(self, config: DeepseekV3Config):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))
        # Tokens per expert since the last `after_step`: a plain tensor, not a buffer, which DDP would
        # overwrite with rank 0's at every forward.
        self.load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, experts), each (N, num_experts_per_tok), for the N token rows of `x`."""
        c = self.config
        E, groups = c.n_routed_experts, c.n_group
        with torch.autocast(x.device.type, enabled=False):  # routing in fp32 under bf16 autocast too
            scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias.float()
        group_scores = choice.view(-1, groups, E // groups).topk(min(2, E // groups), dim=-1)[0].sum(dim=-1)
        best = group_scores.topk(c.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, best, 1)
        allowed = group_mask.unsqueeze(-1).expand(-1, groups, E // groups).reshape(-1, E).bool()
        experts = choice.masked_fill(~allowed, float("-inf")).topk(
            c.num_experts_per_tok, dim=-1, sorted=False
        )[1]
        weights = scores.gather(1, experts)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        if self.training:
            counts = torch.bincount(experts.flatten(), minlength=E).float()
            self.load = counts if self.load is None else self.load + counts
        return weights * c.routed_scaling_factor, experts

    @torch.no_grad()
    def after_step(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Auxiliary-loss-free balancing, which the training loop calls after each optimizer step: the
        bias rises by γ (`router_bias_update`) for the experts that got fewer tokens than the mean in
        this step and falls for those that got more. It changes which experts are chosen, never their
        weights, and no gradient sees it. `reduce` averages the loads over ranks, so every rank makes
        the same update. A frozen router (LoRA fine-tuning) keeps its bias: the adapters are trained
        for the base model's routing, and the adapter file holds no bias."""
        if not self.weight.requires_grad:
            self.load = None
            return
        load = self.load if self.load is not None else torch.zeros_like(self.e_score_correction_bias)
        if reduce is not None:
            load = reduce(load)
        step = self.config.router_bias_update * torch.sign(load.mean() - load)
        self.e_score_correction_bias += step.to(self.e_score_correction_bias.dtype)
        self.load = None


def dispatch(
    experts: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """The routed experts' weighted sum for each row of `x` (N, hidden): token-slots are sorted by
    expert and each expert runs once on its rows, so nothing loops over tokens."""
    k = chosen.shape[1]
    order = chosen.flatten().argsort(stable=True)
    counts = torch.bincount(chosen.flatten(), minlength=len(experts)).tolist()
    tokens = order // k
    parts = x[tokens].split(counts)
    # In training every expert runs, on no rows if none chose it, so each has a gradient (DDP needs
    # one); in inference an idle one is skipped (int8's packed kernel cannot take zero rows).
    grad = torch.is_grad_enabled()
    y = torch.cat(
        [expert(part) if grad or len(part) else part for expert, part in zip(experts, parts, strict=True)]
    )
    y = y * weights.flatten()[order, None]
    return torch.zeros_like(x).index_add_(0, tokens, y.to(x.dtype))


@dataclass
class _Sized:
    """The two sizes `MLP` reads from a config."""

    hidden_size: int
    intermediate_size: int


class MoE(nn.Module):
    """A shared expert every token goes through plus its routed experts, each a SwiGLU MLP saved
    under transformers' per-expert names (`mlp.experts.{i}.gate_proj.weight`...)."""

    def __init__(self, config: DeepseekV3Config):
        super().__init__()
        expert = _Sized(config.hidden_size, config.moe_intermediate_size)
        self.gate = Router(config)
        self.experts = nn.ModuleList(MLP(expert) for _ in range(config.n_routed_experts))
        shared = _Sized(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
        self.shared_experts = MLP(shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, chosen = self.gate(flat)
        return dispatch(self.experts, flat, weights, chosen).view_as(x) + self.shared_experts(x)


class DeepseekV3(Llama):
    """The causal LM: Llama's, with MLA attention, mixture-of-experts MLPs after the dense layers,
    and DeepSeek's rotary embedding."""

    def new_block(self, layer: int) -> Block:
        c = self.config
        return Block(c, Attention(c), MoE(c) if layer >= c.first_k_dense_replace else MLP(c))

    def new_rotary(self) -> RotaryEmbedding:
        return RotaryEmbedding(self.config)

    def new_cache(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> LatentCache:
        return LatentCache(self.config, batch, max_len, device=device, dtype=dtype)

    def routers(self) -> list[Router]:
        return [m for m in self.modules() if isinstance(m, Router)]

    def active_params(self) -> int:
        """Parameters one token uses: all but the routed experts it was not sent to and the embedding."""
        c = self.config
        per_expert = 3 * c.hidden_size * c.moe_intermediate_size
        idle = len(self.routers()) * (c.n_routed_experts - c.num_experts_per_tok) * per_expert
        return self.num_params(non_embedding=True) - idle
