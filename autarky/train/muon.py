"""Muon: momentum orthogonalised by Newton-Schulz for the hidden weight matrices, AdamW for the rest.

The speedrun records (modded-nanogpt, nanochat) train a GPT of this size with Muon on every 2-D
matrix inside the blocks and AdamW on the embedding, the output head and the norms: the update of
a matrix is its Nesterov momentum replaced by the nearest semi-orthogonal matrix, so every
direction of the weight moves by the same amount, whatever the gradient's spectrum. Five steps of
a quintic Newton-Schulz iteration get close enough, in bf16 wherever the run computes in bf16 (a
GPU, a CPU with native bf16), in fp32 elsewhere. At the small widths a CPU trains, the iteration's
matrix products cost a third of a step in fp32; bf16 halves that, and the loss is the same.

Every matrix decays as in AdamW (decoupled, by `lr * weight_decay` a step, at Muon's own rate for
Muon's matrices), as Moonlight found Muon needs once a run is long: without it the weights and
their updates grow apart. On tinyshakespeare (1,871 steps) it took bits per byte from 1.991 to 1.962.

One optimizer holds both kinds of group (a group with `muon: True` is Muon's), so the training
loop, its learning-rate schedule and the checkpoint see one `torch.optim.Optimizer`. A Muon group
moves at `lr * lr_scale`: the schedule sets `lr` on every group, and Muon's rate is a multiple of
AdamW's (0.02 against 3e-3 in the records' settings).
"""

from __future__ import annotations

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Keller Jordan's Muon: fast, not exact


def orthogonalise(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with `g`'s singular vectors (U Vᵀ of its SVD); for a
    stack of matrices (..., m, n), each one's. Computed in `dtype` (default: bf16 on a GPU, fp32 elsewhere)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values at most 1, where it converges
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups marked `muon`, AdamW (decoupled weight decay) for the others."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas=(0.9, 0.95),
        momentum: float = 0.95,
        eps=1e-8,
        ns_dtype: torch.dtype | None = None,
    ):
        defaults = dict(
            lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0, muon=False, lr_scale=1.0
        )
        super().__init__(groups, defaults)
        self.ns_dtype = ns_dtype  # the Newton-Schulz iteration's (orthogonalise's default when None)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(group, params)
            else:
                self._adamw(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        """Matrices of one shape are orthogonalised together, as one batched iteration: a mixture of
        experts has dozens of equal experts, and one call for each would cost more than the maths."""
        lr = group["lr"] * group["lr_scale"]
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same in by_shape.items():
            nesterov = []
            for p in same:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                nesterov.append(p.grad.lerp(buf, group["momentum"]))
            updates = orthogonalise(torch.stack(nesterov), dtype=self.ns_dtype)
            # Scaled so a tall and a wide matrix move their weights by comparable amounts.
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            for p, update in zip(same, updates, strict=True):
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"] * group["lr_scale"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
            if group["weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))


def muon_groups(model: nn.Module, weight_decay: float, lr_scale: float) -> list[dict]:
    """Muon for the 2-D matrices inside the blocks; AdamW for embeddings, the head and every 1-D tensor.
    Every matrix decays by `weight_decay`; 1-D tensors (norms) do not."""
    hidden, embeddings, flat = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            flat.append(p)
        elif "embed" in name or "lm_head" in name:
            embeddings.append(p)
        else:
            hidden.append(p)
    seen: set[int] = set()
    embeddings = [p for p in embeddings if not (id(p) in seen or seen.add(id(p)))]  # a tied head once
    return [
        {"params": hidden, "muon": True, "lr_scale": lr_scale, "weight_decay": weight_decay},
        {"params": embeddings, "weight_decay": weight_decay},
        {"params": flat, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """The optimizer a TrainConfig names: AdamW (decay on matrices only), or Muon with AdamW beside it
    (its iteration in bf16 when the run's precision is bf16, settled before this is called)."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        groups = muon_groups(model, config.weight_decay, config.muon_lr / config.lr)
        ns_dtype = torch.bfloat16 if config.precision == "bf16" else None
        return Muon(groups, lr=config.lr, betas=betas, ns_dtype=ns_dtype)
    return model.configure_optimizer(config.lr, config.weight_decay, betas)
