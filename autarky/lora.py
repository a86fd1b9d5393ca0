"""LoRA: low-rank adapters on the projections of a frozen model, merged into it or saved for PEFT.

Each adapted projection computes `W x + (alpha / r) · B A x`, with W frozen, A (r × in) drawn as
PEFT draws it and B (out × r) zero, so training starts from the base model's exact outputs and
only A and B (a few per cent of the parameters, with their optimizer state) are learnt. The
result is written twice: merged (`W + (alpha / r) · B A`, an ordinary model directory) and as the
adapter alone in PEFT's format, `adapter_config.json` and `adapter_model.safetensors` with PEFT's
tensor names, so `peft.PeftModel.from_pretrained(base, dir)` applies it to the base model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from autarky.console import UserError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class LoRA(nn.Module):
    """The low-rank update of one projection: `scale · B A x`."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # PEFT's default init of lora_A
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaled at rank width, the narrowest point, so no full-width temporary is made for it.
        return F.linear(F.linear(x, self.A) * self.scale, self.B)

    def delta(self) -> torch.Tensor:
        """What the adapter adds to the base weight once merged."""
        return (self.B @ self.A) * self.scale


class LoRALinear(nn.Module):
    """A frozen projection with its adapter beside it."""

    def __init__(self, base: nn.Linear, lora: LoRA):
        super().__init__()
        self.base, self.lora = base, lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x).add_(self.lora(x))  # in place: no autograd step keeps the base's output


def adapted(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every adapted projection under its tensor-name prefix (`model.layers.0.self_attn.q_proj`)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def check_rank(model: nn.Module, rank: int) -> None:
    """Refuse a rank no update of these layers can have: at most the smaller side of every projection."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS and isinstance(module, nn.Linear):
            smallest = min(module.in_features, module.out_features)
            if rank > smallest:
                raise UserError(
                    f"--lora {rank} is larger than the layer {name} ({module.out_features} × "
                    f"{module.in_features}) can use; choose a rank of at most {smallest}"
                )


def add_lora(model: nn.Module, rank: int, alpha: float) -> nn.ModuleList:
    """Freeze `model` and put an adapter beside each target projection; return the adapters, in
    model order (the only parameters left to train, and what a checkpoint holds)."""
    check_rank(model, rank)
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = nn.ModuleList()
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in TARGETS and isinstance(m, nn.Linear)
    ]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        lora = LoRA(linear.in_features, linear.out_features, rank, alpha).to(linear.weight.device)
        setattr(model.get_submodule(parent_name), attr, LoRALinear(linear, lora))
        adapters.append(lora)
    return adapters


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight and put the plain projection back."""
    for name, module in adapted(model):
        module.base.weight += module.lora.delta().to(module.base.weight.dtype)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, module.base)


def save_adapter(model: nn.Module, directory: Path, rank: int, alpha: float, base_model: str) -> None:
    """The adapters in PEFT's format: its config keys and its tensor names."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in adapted(model):
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = module.lora.A.detach().cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = module.lora.B.detach().cpu().contiguous()
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name, _ in adapted(model)}),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
