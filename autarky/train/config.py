"""The training recipe: every setting that shapes a model, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from autarky.console import UserError
from autarky.options import setting

# Settings that say how a run keeps itself, not what it computes: left out of the recipe, so
# changing one neither renames a model nor stops a run from resuming (--shard: at another layout).
RUN_SETTINGS = ("checkpoint_minutes", "shard", "compile")
# Settings in the recipe only when not 0, so a run without them keeps the recipe (and name) it had.
OPTIONAL_SETTINGS = ("dropout",)
# Settings of multi-token prediction: in the recipe only when it is on, so a run without it keeps
# the recipe (and name) it had before the option existed.
MTP_SETTINGS = ("mtp", "mtp_weight", "mtp_keep")


@dataclass
class TrainConfig:
    default_steps: ClassVar[int] = 1000  # --max-steps when neither it nor --minutes is given

    preset: str = setting(
        "tiny",
        help="Model size: tiny (~4M), small (~30M), base (~125M), 1b; mixtures of experts (DeepSeek-V3): "
        "moe-tiny, moe-small, moe-base, moe-1b.",
    )
    seq_len: int = setting(256, help="Tokens per training window.")
    batch_size: int = setting(16, help="Windows per micro-batch.")
    grad_accum: int = setting(1, help="Micro-batches per optimizer step.")
    max_steps: int | None = setting(
        None,
        help="Optimizer steps: the run ends at this or at --minutes, whichever comes first "
        "(default 1000; with --minutes alone, no step limit: the minutes decide).",
    )
    minutes: float | None = setting(None, help="Wall-clock budget; the schedule follows elapsed time.")
    lr: float = setting(2e-3, help="Peak learning rate.")
    min_lr_ratio: float = setting(0.1, help="The schedule's floor, as a share of --lr.")
    warmup_steps: int = setting(50, help="Steps of linear warmup from 0 to --lr.")
    schedule: str = setting("cosine", help="cosine, or wsd (warmup-stable-decay).")
    decay_fraction: float = setting(0.2, help="wsd: the share of the run spent decaying to the floor.")
    weight_decay: float = setting(
        0.1,
        help="Decoupled weight decay on every matrix, AdamW's and (at --muon-lr's pace) Muon's; norm "
        "weights are not decayed.",
    )
    dropout: float = setting(
        0.0,
        help="Dropout of each block's attention and MLP output while training (0: none): a regulariser "
        "for a model that sees a small corpus many times (tinyshakespeare in docs/benchmarks.md).",
    )
    beta1: float = setting(0.9, help="AdamW beta1.")
    beta2: float = setting(0.95, help="AdamW beta2.")
    grad_clip: float = setting(1.0, help="Clip the gradient's global norm to this.")
    eval_interval: int = setting(100, help="Steps between validation evaluations.")
    eval_tokens: int = setting(16384, help="Validation tokens each evaluation scores.")
    checkpoint_interval: int = setting(100, help="Steps between checkpoints (what --resume starts from).")
    checkpoint_minutes: float = setting(
        5.0, help="Also checkpoint when this many minutes have passed since the last one (0: by steps only)."
    )
    seed: int = setting(1337, help="Seeds the initial weights and the choice of every batch.")
    precision: str = setting(
        "auto",
        help="fp32, bf16 autocast, or auto: bf16 where the hardware computes it natively and faster "
        "(a GPU with bf16, a CPU with AVX-512 BF16 or AMX), fp32 elsewhere. The manifest records the choice.",
    )
    optimizer: str = setting(
        "muon",
        help="muon: orthogonalised momentum for the hidden matrices (at --muon-lr) and AdamW for "
        "embeddings, head and norms (at --lr), which reached tinyshakespeare's target in 0.63x AdamW's "
        "time (docs/benchmarks.md); or adamw for all (needed with --shard).",
    )
    muon_lr: float = setting(0.02, help="Muon's peak learning rate (with --optimizer muon).")
    shard: bool = setting(
        False,
        help="Under torchrun: shard the model, gradients and optimizer state across the processes "
        "(FSDP2), for a model too large for one device; without it each process holds the whole model (DDP).",
    )
    compile: str = setting(
        "auto",
        help="torch.compile the model for the training step: auto compiles on a GPU and not on a CPU (there "
        "compiling took 98 s and the steps were no faster, docs/benchmarks.md); on or off forces it.",
    )
    mtp: int = setting(
        0,
        help="Multi-token prediction (DeepSeek-V3): train D extra modules, module k predicting the token "
        "k+1 ahead from the one before it, for a denser training signal (0: off). The sealed model is "
        "the plain one either way.",
    )
    mtp_weight: float = setting(
        0.3,
        help="--mtp: the extra depths' loss weight, their mean added to the main loss times this "
        "(DeepSeek-V3: 0.3 for its first 10T tokens, 0.1 after; runs here are all early).",
    )
    mtp_keep: bool = setting(
        False,
        help="--mtp: keep the modules beside the sealed model, in mtp.safetensors (DeepSeek-V3's tensor "
        "names), for speculative decoding; by default they are dropped.",
    )

    def __post_init__(self) -> None:
        # Resolved here rather than defaulted, so --minutes alone is not cut short by a step cap, and
        # a run given neither keeps the recipe (and name) it always had.
        if self.max_steps is None and self.minutes is None:
            self.max_steps = self.default_steps

    def recipe(self) -> dict:
        """The settings that shape the model: what its manifest records and its name hashes."""
        dropped = RUN_SETTINGS + (() if self.mtp else MTP_SETTINGS)
        dropped += tuple(k for k in OPTIONAL_SETTINGS if not getattr(self, k))
        return {k: v for k, v in asdict(self).items() if k not in dropped}

    def validate(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose cosine or wsd")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"unknown --precision {self.precision!r}; choose auto, fp32 or bf16")
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"unknown --compile {self.compile!r}; choose auto, on or off")
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"unknown --optimizer {self.optimizer!r}; choose adamw or muon")
        if self.muon_lr <= 0:
            raise UserError("--muon-lr must be positive")
        if (self.max_steps is not None and self.max_steps < 1) or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--max-steps, --batch-size and --grad-accum must be at least 1")
        if self.seq_len < 2:
            raise UserError("--seq-len must be at least 2")
        if self.minutes is not None and self.minutes <= 0:
            raise UserError("--minutes must be positive")
        if self.eval_interval < 1 or self.checkpoint_interval < 1 or self.eval_tokens < 1:
            raise UserError("--eval-interval, --checkpoint-interval and --eval-tokens must be at least 1")
        if self.checkpoint_minutes < 0:
            raise UserError("--checkpoint-minutes must be 0 (by steps only) or positive")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise UserError(
                "--lr and --grad-clip must be positive, --min-lr-ratio in [0, 1], --warmup-steps ≥ 0"
            )
        if not 0 <= self.dropout < 1:
            raise UserError("--dropout must be in [0, 1)")
        if not 0 < self.decay_fraction <= 1:
            raise UserError("--decay-fraction must be in (0, 1]")
        self._validate_mtp()

    def _validate_mtp(self) -> None:
        if self.mtp < 0 or self.mtp >= self.seq_len:
            raise UserError(
                f"--mtp {self.mtp} must be 0 (off) or a depth below --seq-len {self.seq_len}, "
                "so that every depth has a token to predict"
            )
        if self.mtp and self.mtp_weight <= 0:
            raise UserError("--mtp-weight must be positive (--mtp 0 turns multi-token prediction off)")
        if self.mtp and self.shard:
            raise UserError("--mtp does not combine with --shard yet; use DDP (leave --shard off) or --mtp 0")


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


@dataclass
class SFTConfig(TrainConfig):
    """Chat fine-tuning: the training recipe with fine-tuning's defaults, plus LoRA.

    The architecture is the input model's, so there is no preset to choose.
    """

    default_steps: ClassVar[int] = 200

    preset: str | None = setting(None, cli=False, help="Unused: sft keeps its input model's architecture.")
    dropout: float = setting(0.0, cli=False, help="Unused: sft trains without dropout.")
    seq_len: int = setting(512, help="Tokens per packed row; a longer conversation is cut to it.")
    batch_size: int = setting(8, help="Packed rows per micro-batch.")
    max_steps: int | None = setting(
        None,
        help="Optimizer steps: the run ends at this or at --minutes, whichever comes first "
        "(default 200; with --minutes alone, no step limit: the minutes decide).",
    )
    lr: float = setting(1e-4, help="Peak learning rate (fine-tuning wants far less than pretraining).")
    optimizer: str = setting(
        "adamw", help="adamw, or muon (full fine-tuning only; its --muon-lr suits pretraining, not this)."
    )
    warmup_steps: int = setting(10, help="Steps of linear warmup from 0 to --lr.")
    weight_decay: float = setting(0.0, help="AdamW weight decay on matrices.")
    eval_interval: int = setting(50, help="Steps between held-out evaluations.")
    checkpoint_interval: int = setting(50, help="Steps between checkpoints (what --resume starts from).")
    eval_tokens: int = setting(16384, help="Held-out packed tokens each evaluation scores.")
    lora_rank: int = setting(
        0,
        flags=("--lora",),
        help="Train rank-R adapters on the attention and MLP projections of a frozen base (0: full fine-tuning).",
    )
    lora_alpha: float = setting(16.0, help="LoRA scale numerator: each update is scaled by alpha / rank.")
    mtp: int = setting(
        0, cli=False, help="Unused: multi-token prediction is a pretraining option (train --mtp)."
    )
    mtp_weight: float = setting(0.3, cli=False, help="Unused: see train --mtp-weight.")
    mtp_keep: bool = setting(False, cli=False, help="Unused: see train --mtp-keep.")

    def validate(self) -> None:
        super().validate()
        if self.mtp:
            raise UserError("--mtp is a pretraining option (autarky train --mtp D); sft does not take it")
        if self.lora_rank and self.optimizer == "muon":
            raise UserError("--optimizer muon is for full fine-tuning; LoRA adapters train with AdamW")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise UserError(
                "--lora must be 0 (full fine-tuning) or a positive rank, and --lora-alpha positive"
            )
