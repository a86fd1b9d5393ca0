"""Serving precision: fp32, bf16, or int8 weight-only quantisation of the Linear layers.

int8 keeps one fp scale per output channel (row) of each Linear weight: w ≈ scale[o] · q[o, i] with
q in [-127, 127]. Decoding at batch 1 is bound by reading the weights, so a quarter of fp32's bytes
is the point. Two kernels: torch's `_weight_int8pack_mm` (fused int8 × bf16 on CPU; activations go
through bf16) when it runs here, else dequantise on the fly (int8 → fp, matmul, scale the output).
`bench/serve.py` measures both. Norms, embeddings and the KV cache stay in the model's dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from autarky.console import UserError
from autarky.model import Llama, load_pretrained

DTYPES = ("fp32", "bf16", "int8")


def int8pack_works() -> bool:
    """Whether torch's fused int8 weight kernel runs on this machine and agrees with a plain matmul."""
    try:
        w = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
        scale = torch.rand(16) + 0.5
        x = torch.randn(2, 32)
        got = torch._weight_int8pack_mm(x.bfloat16(), w, scale.bfloat16()).float()
        want = (x @ w.float().t()) * scale
        return bool(torch.allclose(got, want, rtol=0.05, atol=0.5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8Linear(nn.Module):
    """A Linear with int8 weights and a per-output-channel scale (a bias, as Qwen2's, stays in fp)."""

    def __init__(self, linear: nn.Linear, kernel: str = "auto"):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.bfloat16())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if kernel == "auto":
            kernel = "int8pack" if int8pack_works() else "dequant"
        if self.in_features % 32:  # torch's packed kernel crashes on such widths (24 inputs, 8+ rows)
            kernel = "dequant"
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "int8pack":
            flat = x.reshape(-1, self.in_features).bfloat16()
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale_bf16)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def quantize_int8(model: Llama, kernel: str = "auto") -> Llama:
    """Replace every Linear (lm_head included, even when tied to the embedding) with Int8Linear."""
    if kernel == "auto":
        kernel = "int8pack" if int8pack_works() else "dequant"
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear(linear, kernel))
    return model


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")


def prepare(model: Llama, dtype: str, kernel: str = "auto") -> Llama:
    """A loaded fp32 model set up for serving in `dtype`."""
    check_dtype(dtype)
    return _convert(model, dtype, kernel)


def load_model(path: Path, dtype: str = "fp32", kernel: str = "auto") -> Llama:
    """Load a model directory for serving in `dtype` (a wrong dtype fails before the weights are read)."""
    check_dtype(dtype)
    # bf16 is loaded as bf16: a bf16 checkpoint is then memory-mapped as it is, never widened to fp32.
    return _convert(
        load_pretrained(path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32), dtype, kernel
    )


def _convert(model: Llama, dtype: str, kernel: str) -> Llama:
    if dtype == "bf16":
        return model.to(torch.bfloat16).eval()
    if dtype == "int8":
        return quantize_int8(model, kernel).eval()
    return model.eval()


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every Linear (or Int8Linear) and norm weight.

    The embedding lookup reads one row per token, so it is left out (a tied lm_head still counts).
    """
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.weight.numel() + module.scale.numel() * 4
        elif isinstance(module, nn.Linear) or type(module).__name__ == "RMSNorm":
            total += module.weight.numel() * module.weight.element_size()
    return total
