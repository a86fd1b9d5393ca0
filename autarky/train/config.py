"""The training recipe: every setting that shapes a model, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from autarky.console import UserError


@dataclass
class TrainConfig:
    preset: str = "tiny"
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    minutes: float | None = None
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_tokens: int = 16384
    checkpoint_interval: int = 100
    seed: int = 1337
    precision: str = "fp32"

    def validate(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose cosine or wsd")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {self.precision!r}; choose fp32 or bf16")
        if self.max_steps < 1 or self.batch_size < 1 or self.seq_len < 2 or self.grad_accum < 1:
            raise UserError("max_steps, batch_size and grad_accum must be at least 1, and seq_len at least 2")
        if self.minutes is not None and self.minutes <= 0:
            raise UserError("--minutes must be positive")
        if self.eval_interval < 1 or self.checkpoint_interval < 1 or self.eval_tokens < 1:
            raise UserError("--eval-interval, --checkpoint-interval and eval_tokens must be at least 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise UserError(
                "--lr and --grad-clip must be positive, min_lr_ratio in [0, 1], --warmup-steps ≥ 0"
            )
        if not 0 < self.decay_fraction <= 1:
            raise UserError("decay_fraction must be in (0, 1]")


def lr_at(config: TrainConfig, step: int, progress_fraction: float) -> float:
    """Linear warmup, then cosine to min_lr, or warmup-stable-decay (linear decay over the last part)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    p = min(max(progress_fraction, 0.0), 1.0)
    if config.schedule == "cosine":
        return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * p))
    start = 1.0 - config.decay_fraction
    if p < start:
        return config.lr
    return config.lr - (config.lr - floor) * (p - start) / config.decay_fraction
