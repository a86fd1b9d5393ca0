"""Export a model artifact as GGUF, the one-file format llama.cpp and Ollama run.

The file holds the weights (f32, f16, bf16 or q8_0), the hyperparameters under llama.cpp's keys,
and the tokenizer with its merges, special tokens and chat template, so `llama-cli -m model.gguf`
or an Ollama Modelfile saying `FROM ./model.gguf` needs nothing else. Tensors are read one at a
time from memory-mapped safetensors and written straight to the file: the export holds one tensor
in memory, never the model.

Llama (and Mistral without a sliding window) becomes llama.cpp's `llama` architecture, Qwen2 (q/k/v
biases) `qwen2` and Qwen3 (q/k RMSNorm per head) `qwen3`; anything they would compute differently
is refused by name. Two layouts differ between Hugging Face and GGML, and are converted here:
- Rotary pairs. HF rotates the two halves of each head against each other (`rotate_half`), and so
  do llama.cpp's `qwen2` and `qwen3`; its `llama` rotates adjacent pairs. For `llama`, permuting the
  rows of q_proj and k_proj within each head (first half to even rows, second half to odd) gives
  the same dot products, which is what llama.cpp's own converter does.
- Shapes. GGML lists dimensions innermost first; the gguf writer reverses numpy's order itself, so a
  (out, in) weight goes in as it is.

Imports of numpy, torch and gguf stay inside the functions: the CLI imports this module for
`ExportConfig` before it isolates the network, and must not start their threads.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from autarky.artifact import Artifact, Builder, default_name
from autarky.console import UserError, console
from autarky.options import setting

FORMATS = ("gguf",)
DTYPES = ("f32", "f16", "bf16", "q8_0")
FILE = "model.gguf"

# The pre-tokenizer split regex of a byte-level BPE, and the name llama.cpp knows it by.
PRE_TOKENIZERS = {
    # Llama 3's (GPT-4's cl100k split); autarky's own tokenizers use it too.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen2's: the same, but digits one at a time.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

# HF tensor name (within a layer, or whole) → (gguf's MODEL_TENSOR member, weight or bias).
LAYER_TENSORS = {
    "input_layernorm.weight": ("ATTN_NORM", "weight"),
    "self_attn.q_proj.weight": ("ATTN_Q", "weight"),
    "self_attn.k_proj.weight": ("ATTN_K", "weight"),
    "self_attn.v_proj.weight": ("ATTN_V", "weight"),
    "self_attn.o_proj.weight": ("ATTN_OUT", "weight"),
    "post_attention_layernorm.weight": ("FFN_NORM", "weight"),
    "mlp.gate_proj.weight": ("FFN_GATE", "weight"),
    "mlp.up_proj.weight": ("FFN_UP", "weight"),
    "mlp.down_proj.weight": ("FFN_DOWN", "weight"),
    "self_attn.q_proj.bias": ("ATTN_Q", "bias"),
    "self_attn.k_proj.bias": ("ATTN_K", "bias"),
    "self_attn.v_proj.bias": ("ATTN_V", "bias"),
    "self_attn.q_norm.weight": ("ATTN_Q_NORM", "weight"),
    "self_attn.k_norm.weight": ("ATTN_K_NORM", "weight"),
}
LLAMA_LAYER = tuple(LAYER_TENSORS)[:9]
MODEL_TENSORS = {
    "model.embed_tokens.weight": ("TOKEN_EMBD", "weight"),
    "model.norm.weight": ("OUTPUT_NORM", "weight"),
    "lm_head.weight": ("OUTPUT", "weight"),
}
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Family:
    """How llama.cpp computes one HF model_type: its architecture, rotary layout and layer tensors."""

    arch: str
    rotary_pairs: bool  # llama.cpp's `llama` rotates adjacent pairs; qwen2 and qwen3 rotate halves, as HF
    layer: tuple[str, ...] = LLAMA_LAYER


FAMILIES = {
    "llama": Family("llama", True),
    "mistral": Family("llama", True),  # without a sliding window, Mistral is Llama
    "qwen2": Family("qwen2", False, LLAMA_LAYER + tuple(LAYER_TENSORS)[9:12]),  # q/k/v biases
    "qwen3": Family("qwen3", False, LLAMA_LAYER + tuple(LAYER_TENSORS)[12:]),  # q/k RMSNorm per head
}


@dataclass
class ExportConfig:
    format: str = setting("gguf", help="File format: gguf (llama.cpp, Ollama, LM Studio).")
    dtype: str = setting(
        "f16",
        help="Weights in the file: f32, f16, bf16, or q8_0 (8 bits in blocks of 32, about a quarter of "
        "f32). Norms stay f32.",
    )

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown export format {self.format!r}; autarky exports {', '.join(FORMATS)}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class Shape:
    """What the model's config.json says the tensors must be."""

    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int

    @classmethod
    def of(cls, config: dict) -> Shape:
        heads = config["num_attention_heads"]
        return cls(
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            ffn=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            context=config.get("max_position_embeddings", 2048),
        )

    def expected(self, kind: str, part: str = "weight") -> tuple[int, ...]:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if part == "bias":
            return self.expected(kind)[:1]
        return {
            "TOKEN_EMBD": (self.vocab, self.hidden),
            "OUTPUT": (self.vocab, self.hidden),
            "OUTPUT_NORM": (self.hidden,),
            "ATTN_NORM": (self.hidden,),
            "FFN_NORM": (self.hidden,),
            "ATTN_Q": (q, self.hidden),
            "ATTN_K": (kv, self.hidden),
            "ATTN_V": (kv, self.hidden),
            "ATTN_OUT": (self.hidden, q),
            "FFN_GATE": (self.ffn, self.hidden),
            "FFN_UP": (self.ffn, self.hidden),
            "FFN_DOWN": (self.hidden, self.ffn),
            "ATTN_Q_NORM": (self.head_dim,),
            "ATTN_K_NORM": (self.head_dim,),
        }[kind]


# ---------------------------------------------------------------- the stage


def export(
    model: Artifact, workdir: Path, config: ExportConfig, name: str | None = None, force: bool = False
) -> Artifact:
    """Write `model` as one GGUF file, an artifact of kind `export` with the model as its input."""
    config.validate()
    read_architecture(model.path)
    require_tokenizer(model.path)
    recipe = asdict(config)
    name = name or default_name(f"{model.name}-{config.dtype}", "export", recipe, [model])
    builder = Builder(workdir, "export", name, recipe, [model])
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing export {name} (same model and settings)")
        return done
    with builder:
        started = time.perf_counter()
        summary = write_gguf(
            model.path, builder.dir / FILE, config.dtype, title=model.name, licence=declared_licence(model)
        )
        builder.metrics = {**summary, "seconds": round(time.perf_counter() - started, 2)}
        return builder.finish()


def write_gguf(
    directory: Path, path: Path, dtype: str, title: str | None = None, licence: str | None = None
) -> dict:
    """Write the model in `directory` (config.json, safetensors, tokenizer.json) to `path` as GGUF.

    Returns what was written: tensors, parameters, bytes, and the gguf package's version.
    """
    import gguf

    directory = Path(directory)
    config, family = read_architecture(directory)
    shape = Shape.of(config)
    sources = weight_files(directory)
    plan = tensor_plan(sources, shape, config, family)
    writer = gguf.GGUFWriter(str(path), family.arch)
    try:
        write_hyperparameters(writer, config, shape, dtype, title or directory.name)
        if licence:
            writer.add_license(licence)
        write_tokenizer(writer, directory, shape.vocab)
        qtypes = [plan_dtype(dtype, t.shape) for t in plan]
        extra = rope_factors(config, shape)
        for t, qtype in zip(plan, qtypes, strict=True):
            writer.add_tensor_info(t.gguf_name, *stored_form(t.shape, qtype))
        if extra is not None:
            writer.add_tensor_info(_gguf_name("ROPE_FREQS", None), *stored_form(extra.shape))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, qtype in zip(plan, qtypes, strict=True):
            tensor = read_tensor(sources[t.hf_name], t.hf_name)
            if family.rotary_pairs and t.kind in ("ATTN_Q", "ATTN_K"):
                tensor = rotary_pairs(tensor, shape.heads if t.kind == "ATTN_Q" else shape.kv_heads)
            writer.write_tensor_data(encode(tensor, qtype))
        if extra is not None:
            writer.write_tensor_data(extra)
    finally:
        writer.close()
    return {
        "architecture": family.arch,
        "tensors": len(plan) + (extra is not None),
        "parameters": sum(math.prod(t.shape) for t in plan),
        "bytes": Path(path).stat().st_size,
        "dtype": dtype,
        "gguf": _gguf_version(),
    }


# ---------------------------------------------------------------- what the model is


def declared_licence(model: Artifact) -> str | None:
    """The licence an imported ancestor declared (`import` records it), for the file's `general.license`."""
    licence = model.config.get("license")
    if isinstance(licence, dict) and licence.get("declared"):
        return str(licence["declared"])
    return next(filter(None, (declared_licence(m) for m in model.inputs("model"))), None)


def read_architecture(directory: Path) -> tuple[dict, Family]:
    """config.json and its family, refusing by name anything llama.cpp would compute differently."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    if lacking := [key for key in needed if not isinstance(config.get(key), int)]:
        raise UserError(f"{path} lacks {', '.join(lacking)}; it is not a complete model config")
    family = FAMILIES.get(config.get("model_type"))
    if config.get("model_type") == "deepseek_v3":
        raise UserError(
            f"{directory} is a DeepSeek-V3 model (latent attention and experts), which GGUF export does not "
            "map to llama.cpp; it runs on PyTorch (`--engine torch`, which `--engine auto` picks for it)"
        )
    if family is None:
        raise UserError(
            f"GGUF export writes {', '.join(FAMILIES)} models; {directory} is model_type "
            f"{config.get('model_type')!r}"
        )
    _, rope = rope_settings(config)
    window = config.get("sliding_window")
    rope_types = ("default", "llama3") if family.arch == "llama" else ("default",)
    unsupported = {
        "rope_scaling": rope.get("rope_type", "default") not in rope_types,
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "sliding_window": "sliding_attention" in (config.get("layer_types") or [])
        or (
            config.get("use_sliding_window", True)
            and window is not None
            and window < config.get("max_position_embeddings", 0)
        ),
    }
    shown = {**config, "rope_scaling": rope}
    if refused := [f"{key}={shown.get(key)!r}" for key, bad in unsupported.items() if bad]:
        raise UserError(f"{directory} uses {', '.join(refused)}, which GGUF export does not write yet")
    return config, family


def rope_settings(config: dict) -> tuple[float, dict]:
    """(theta, scaling) from transformers 5's `rope_parameters` or 4's `rope_theta` and `rope_scaling`."""
    scaling = {**(config.get("rope_parameters") or {}), **(config.get("rope_scaling") or {})}
    theta = float(scaling.pop("rope_theta", config.get("rope_theta", 10000.0)))
    if "type" in scaling:  # the older spelling
        scaling.setdefault("rope_type", scaling.pop("type"))
    return theta, scaling


def weight_files(directory: Path) -> dict[str, Path]:
    """Each tensor's safetensors file: `model.safetensors`, or the shards its index names."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {name: directory / shard for name, shard in weight_map.items()}
        if missing := sorted({p.name for p in files.values() if not p.is_file()}):
            raise UserError(f"{index} names shards that are not there: {', '.join(missing[:3])}")
        return files
    single = directory / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{directory} holds no weights (model.safetensors or a sharded index)")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


class Planned(NamedTuple):
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    kind: str


def tensor_plan(sources: dict[str, Path], shape: Shape, config: dict, family: Family) -> list[Planned]:
    """Every tensor to write, in llama.cpp's order, each checked against config.json; none missing."""
    from safetensors import safe_open

    tied = config.get("tie_word_embeddings", False)
    plan, seen = [], set()
    with ExitStack() as stack:
        files = {p: stack.enter_context(safe_open(str(p), framework="pt")) for p in set(sources.values())}
        for hf_name in sorted(sources, key=_layer_order):
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd when there is no output tensor
            key, bid = _place_of(hf_name, shape.layers, family)
            kind, part = {**MODEL_TENSORS, **LAYER_TENSORS}[key]
            found = tuple(files[sources[hf_name]].get_slice(hf_name).get_shape())
            if found != shape.expected(kind, part):
                raise UserError(
                    f"tensor {hf_name} has shape {list(found)}, but config.json makes it "
                    f"{list(shape.expected(kind, part))}"
                )
            plan.append(Planned(_gguf_name(kind, bid, part), hf_name, found, kind))
            seen.add((key, bid))
    needed = {(k, None) for k in MODEL_TENSORS if k != "lm_head.weight" or not tied}
    needed |= {(k, i) for k in family.layer for i in range(shape.layers)}
    if missing := sorted(needed - seen, key=str):
        key, bid = missing[0]
        where = f"layer {bid}'s " if bid is not None else ""
        raise UserError(f"the weights lack {where}{key} ({len(missing)} tensors missing in all)")
    return plan


def _gguf_name(kind: str, bid: int | None, part: str = "weight") -> str:
    import gguf

    return f"{gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)].format(bid=bid)}.{part}"


def _place_of(hf_name: str, layers: int, family: Family) -> tuple[str, int | None]:
    """(the name within a layer, the layer), or (the whole name, None) for the model's own tensors."""
    if hf_name in MODEL_TENSORS:
        return hf_name, None
    match = LAYER_NAME.fullmatch(hf_name)
    if match and match.group(2) in family.layer and int(match.group(1)) < layers:
        return match.group(2), int(match.group(1))
    raise UserError(
        f"tensor {hf_name} has no place in a {family.arch} GGUF file; refusing to drop it silently"
    )


def _layer_order(hf_name: str) -> tuple:
    """Embedding, then layer by layer, then the final norm and head: the order llama.cpp reads."""
    match = LAYER_NAME.fullmatch(hf_name)
    if match:
        return (1, int(match.group(1)), hf_name)
    return (0 if "embed" in hf_name else 2, 0, hf_name)


# ---------------------------------------------------------------- keys


def write_hyperparameters(writer, config: dict, shape: Shape, dtype: str, title: str) -> None:
    """The architecture's keys llama.cpp reads (`llama.*`, `qwen2.*`, …), and what the file is."""
    import gguf

    writer.add_name(title)
    writer.add_file_type(
        getattr(gguf.LlamaFileType, "ALL_F32" if dtype == "f32" else f"MOSTLY_{dtype.upper()}")
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(shape.vocab)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(rope_settings(config)[0])
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))


def require_tokenizer(directory: Path) -> Path:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"{directory} has no tokenizer.json; a GGUF file carries its tokenizer, so export a model "
            "that has one (every model autarky trains or imports does)"
        )
    return path


def write_tokenizer(writer, directory: Path, vocab_size: int) -> None:
    """A byte-level BPE as llama.cpp's `gpt2` tokenizer: tokens, types, merges, special ids, chat template."""
    import gguf

    from autarky.tokenizer import END

    data = json.loads(require_tokenizer(directory).read_text())
    bpe = data.get("model") or {}
    if (
        bpe.get("type") != "BPE"
        or bpe.get("byte_fallback")
        or (data.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise UserError(
            f"{directory}'s tokenizer is not a byte-level BPE (it is {bpe.get('type')!r}); GGUF export writes "
            "byte-level BPE tokenizers (autarky's, Llama 3's, Qwen's)"
        )
    tokens, types = token_table(data, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(data))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with _quiet("gguf"):  # it warns about template shapes it half understands, as a converter would
        gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
    specials = {a["content"]: a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    if END in specials:  # our chat template ends a turn with it; llama.cpp then stops there
        writer.add_eot_token_id(specials[END])


def token_table(data: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text and type, padded with unused tokens up to the model's vocabulary."""
    from gguf import TokenType

    tokens: list[str | None] = [None] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    entries = [(text, i, TokenType.NORMAL) for text, i in data["model"]["vocab"].items()]
    entries += [
        (a["content"], a["id"], TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED)
        for a in data.get("added_tokens", [])
    ]
    for text, token_id, kind in entries:
        if token_id >= vocab_size:
            raise UserError(
                f"the tokenizer has token id {token_id}, beyond the model's vocabulary of {vocab_size}"
            )
        tokens[token_id], types[token_id] = text, int(kind)
    return [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)], types


def pre_tokenizer(data: dict) -> str:
    """llama.cpp's name for the tokenizer's split regex; one it would split differently is refused."""
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    regexes = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if (
        len(regexes) == 1
        and regexes[0] in PRE_TOKENIZERS
        and len(byte_level) == 1
        and not byte_level[0].get("use_regex", True)
        and not byte_level[0].get("add_prefix_space", False)
    ):
        return PRE_TOKENIZERS[regexes[0]]
    raise UserError(
        "the tokenizer splits text with a pre-tokenizer llama.cpp does not know by name "
        "(GGUF export knows Llama 3's and Qwen2's); llama.cpp would tokenize differently"
    )


# ---------------------------------------------------------------- tensors


def plan_dtype(dtype: str, shape: tuple[int, ...]):
    """The GGML type of one tensor: norms stay f32, and q8_0 needs rows in whole blocks of 32."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1 or dtype == "f32":
        return Q.F32
    if dtype == "q8_0" and shape[-1] % 32:
        return Q.F16  # as llama.cpp's converter does for a row that is not whole blocks
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]


def stored_form(shape: tuple[int, ...], qtype=None) -> tuple:
    """add_tensor_info's (shape, numpy dtype, bytes, raw type): quantized tensors go in as bytes."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quant_shape_to_byte_shape

    if qtype in (None, Q.F32, Q.F16):
        dtype = np.float16 if qtype == Q.F16 else np.float32
        return shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize, None
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape), qtype


def read_tensor(path: Path, hf_name: str):
    """One tensor from its memory-mapped safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(hf_name)


def rotary_pairs(weight, heads: int):
    """Rows of each head from HF's halves order (0..d/2-1, d/2..d-1) to interleaved pairs (0, d/2, 1, …)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def encode(tensor, qtype):
    """A torch tensor as the numpy array GGUF stores for `qtype`."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if qtype == Q.F32:
        return tensor.float().numpy()
    if qtype == Q.F16:
        return tensor.half().numpy()
    if qtype == Q.BF16:  # bf16 bits as bytes: exact for bf16 weights, round-to-nearest-even otherwise
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
    return quantize(tensor.float().numpy(), qtype)


def rope_factors(config: dict, shape: Shape):
    """Llama 3's rope scaling as llama.cpp takes it: a per-frequency divisor (`rope_freqs`)."""
    base, scaling = rope_settings(config)
    if scaling.get("rope_type") != "llama3":
        return None
    import numpy as np

    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / base ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high,
        1.0,
        np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _gguf_version() -> str:
    from importlib import metadata

    return metadata.version("gguf")
