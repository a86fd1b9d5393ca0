"""Multi-token prediction (DeepSeek-V3, §2.2): D extra modules that each predict one token further.

Module k reads the previous depth's hidden state h^{k-1} (the model's last block output for k = 1)
and the embedding of token i+k, each through its own RMSNorm (`hnorm`, `enorm`), concatenates them
(embedding first, as DeepSeek's checkpoints are read), projects 2H → H (`eh_proj`), runs one fresh
transformer block of the model's own kind, and predicts token i+k+1 through its own `shared_head.norm`
and the model's shared output head; the embedding is the model's too. The training loss is the main
next-token loss plus `mtp_weight / D` times the sum of the depths' losses: the extra depths densify
the training signal, and at inference the modules are dropped (the sealed model is the plain one)
or kept beside it, in `mtp.safetensors` under DeepSeek-V3's names, for speculative decoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from autarky.console import UserError
from autarky.model import RMSNorm, packed_layout

IGNORE = -100
MTP_WEIGHTS = "mtp.safetensors"


def new_block(lm: nn.Module, layer: int) -> nn.Module:
    """A fresh transformer block of `lm`'s family (numbered `layer`: DeepSeek's MTP layer comes after
    the model's own)."""
    if not hasattr(lm, "new_block"):
        raise UserError(
            f"--mtp needs a fresh block of this model's kind, and {type(lm).__name__} cannot make one"
        )
    return lm.new_block(layer)


class MTPModule(nn.Module):
    """One depth: the norms, the projection and the block; the embedding and head are the model's."""

    def __init__(self, lm: nn.Module, layer: int):
        super().__init__()
        config = lm.config
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = RMSNorm(hidden, eps)
        self.hnorm = RMSNorm(hidden, eps)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.block = new_block(lm, layer)
        self.shared_head = nn.ModuleDict({"norm": RMSNorm(hidden, eps)})

    def forward(self, h: torch.Tensor, embedded: torch.Tensor, cos, sin, positions, mask) -> torch.Tensor:
        x = self.eh_proj(torch.cat((self.enorm(embedded), self.hnorm(h)), dim=-1))
        return self.block(x, cos, sin, None, 0, positions, mask)


def depth_targets(targets: torch.Tensor, k: int, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Depth k's targets for a window whose next-token targets are `targets` (B, T): position i
    predicts token i+k+1, which is `targets[i+k]`; IGNORE where that is past the row or, in a packed
    row, in another sequence than position i's (runs of one id in `segment_ids` are sequences, and the
    token after the row is taken to continue its last one, as the main targets do)."""
    B, T = targets.shape
    shifted = torch.full_like(targets, IGNORE)
    if k >= T:
        return shifted
    shifted[:, : T - k] = targets[:, k:]
    if segment_ids is not None:
        after = torch.cat((segment_ids, segment_ids[:, -1:]), dim=1)  # the token after the row
        same = torch.zeros_like(targets, dtype=torch.bool)
        same[:, : T - k] = after[:, k + 1 :] == segment_ids[:, : T - k]
        shifted = shifted.masked_fill(~same, IGNORE)
    return shifted


class MTP(nn.Module):
    """The model with its prediction modules, as `fit` trains it: `model(x, y)` → (losses, total),
    where `losses` holds the main loss and each depth's (detached, what the step logs) in place of the
    logits, which training never reads, and `total` is what the backward pass takes."""

    def __init__(self, lm: nn.Module, depth: int, weight: float):
        super().__init__()
        self.lm, self.weight = lm, weight
        layers = lm.config.num_hidden_layers
        self.mtp = nn.ModuleList(MTPModule(lm, layers + k) for k in range(depth))
        for name, p in self.mtp.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif not name.endswith("norm.weight"):
                nn.init.zeros_(p)

    @property
    def config(self):
        return self.lm.config

    def num_params(self, non_embedding: bool = False) -> int:
        return self.lm.num_params(non_embedding) + sum(p.numel() for p in self.mtp.parameters())

    def configure_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float]):
        return type(self.lm).configure_optimizer(self, lr, weight_decay, betas)

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lm.hidden(input_ids, segment_ids=segment_ids)
        _, main = self.lm.head(h, targets)
        losses = [main, *self.depth_losses(h, input_ids, targets, segment_ids)]
        total = main + self.weight / len(self.mtp) * torch.stack(losses[1:]).sum()
        return torch.stack([loss.detach() for loss in losses]), total

    def depth_losses(
        self,
        h: torch.Tensor,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        segment_ids: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """Each depth's mean cross-entropy over the positions that have a target at that depth."""
        # The next tokens, one step further per depth; the row's end is padded (those targets are ignored).
        following = torch.cat((input_ids[:, 1:], targets[:, -1:].clamp(min=0)), dim=1)
        losses = []
        for k, logits in enumerate(self.depth_logits(h, following, segment_ids), 1):
            wanted = depth_targets(targets, k, segment_ids)
            total = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                wanted.view(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            losses.append(total / (wanted != IGNORE).sum().clamp(min=1))
        return losses

    def depth_logits(
        self, h: torch.Tensor, following: torch.Tensor, segment_ids: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Each depth's logits in turn, from the last block's output `h` and `following` (B, T), the
        token after each position: depth k at position i predicts the token k+1 after it."""
        T = following.size(1)
        if segment_ids is None:
            positions, mask = torch.arange(T, device=following.device).unsqueeze(0), None
        else:
            positions, mask = packed_layout(segment_ids)
        embed = self.lm.model.embed_tokens
        cos, sin = self.lm.model.rotary(positions, embed.weight.dtype)
        for module in self.mtp:
            h = module(h, embed(following), cos, sin, positions, mask)
            yield self.lm.lm_head(module.shared_head["norm"](h))
            following = torch.cat((following[:, 1:], following[:, -1:]), dim=1)

    @torch.no_grad()
    def accepted_per_step(self, ids: torch.Tensor) -> float:
        """Tokens a greedy self-speculative decoding step yields on `ids` (1, T), a greedy
        continuation of the main model: its own next token plus the drafts of depths 1..D up to the
        first the main model would not have chosen, averaged over every position with all D drafts
        checkable. On a greedy trajectory teacher forcing is exactly what verification computes."""
        h = self.lm.hidden(ids)
        T, D = ids.size(1), len(self.mtp)
        following = torch.cat((ids[:, 1:], ids[:, -1:]), dim=1)
        matched = []
        for k, logits in enumerate(self.depth_logits(h, following), 1):
            matched.append(logits[0, : T - D - 1].argmax(-1) == ids[0, k + 1 : T - D + k])
        accepted = torch.stack(matched).long().cumprod(dim=0).sum(dim=0)  # the longest matching prefix
        return 1.0 + accepted.float().mean().item()


def attach(lm: nn.Module, config) -> nn.Module:
    """What pretraining trains: the model itself, or (with `--mtp D`) the model with D modules."""
    if not getattr(config, "mtp", 0):
        return lm
    return MTP(lm, config.mtp, config.mtp_weight).to(next(lm.parameters()).device)


def exported_state(trainable: nn.Module) -> dict[str, torch.Tensor]:
    """The prediction modules' tensors under DeepSeek-V3's names: depth k is `model.layers.{L+k-1}.*`
    (after the model's L layers), its block's tensors directly under it. The embedding and output head
    are the model's own and are not repeated."""
    state = {}
    layers = trainable.config.num_hidden_layers
    for k, module in enumerate(trainable.mtp):
        for name, tensor in module.state_dict().items():
            state[f"model.layers.{layers + k}.{name.removeprefix('block.')}"] = (
                tensor.detach().cpu().contiguous()
            )
    return state


def keep(trainable: nn.Module, directory: Path, config) -> None:
    """With `--mtp-keep`, write the modules beside the sealed model (the manifest hashes the file)."""
    if isinstance(trainable, MTP) and config.mtp_keep:
        # One key: safetensors writes a header's keys in no fixed order, and the file must be byte-stable.
        metadata = {"mtp": json.dumps({"depth": len(trainable.mtp), "weight": trainable.weight})}
        save_file(exported_state(trainable), str(Path(directory) / MTP_WEIGHTS), metadata=metadata)


def load_kept(lm: nn.Module, directory: Path) -> MTP:
    """The modules kept beside a model (`mtp.safetensors`), around `lm`, for speculative decoding."""
    from safetensors import safe_open

    path = Path(directory) / MTP_WEIGHTS
    if not path.is_file():
        raise UserError(
            f"{directory} keeps no prediction modules ({MTP_WEIGHTS}); train it with --mtp D --mtp-keep"
        )
    with safe_open(str(path), "pt") as f:
        try:
            header = json.loads((f.metadata() or {})["mtp"])
            depth, weight = int(header["depth"]), float(header["weight"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path} does not say its depth and weight ({e!r})") from e
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = MTP(lm, depth, weight).to(next(lm.parameters()).device)
    expected = exported_state(model)
    if expected.keys() != tensors.keys() or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise UserError(f"{path} does not fit {directory}'s model")
    layers = lm.config.num_hidden_layers
    with torch.no_grad():
        for k, module in enumerate(model.mtp):
            for name, p in module.state_dict(keep_vars=True).items():
                p.copy_(tensors[f"model.layers.{layers + k}.{name.removeprefix('block.')}"])
    return model.eval()
