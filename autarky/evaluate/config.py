"""What an evaluation and the built-in task suite are made with: every setting, its default and help once.

A light module (no torch, numpy or pyarrow), so the CLI can build its options from it before it
isolates the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from autarky.console import UserError
from autarky.options import setting

DEFAULT_PROMPTS = ["The", "Однажды"]


@dataclass
class EvalConfig:
    bpb_tokens: int = setting(
        100_000, help="Held-out tokens of each corpus's val split scored for bits per byte."
    )
    seq_len: int = setting(
        512, help="Tokens per window for bits per byte (cut to the model's context if longer)."
    )
    batch_size: int = setting(8, help="Windows or choices scored per forward pass.")
    limit: int = setting(0, help="Score at most this many documents of each task (0: all of them).")
    prompts: list[str] = setting(
        factory=lambda: list(DEFAULT_PROMPTS),
        flags=("--prompt",),
        help="A fixed prompt whose continuation the eval records as a sample (default: The, Однажды).",
    )
    sample_tokens: int = setting(48, help="Most tokens generated for each fixed prompt.")
    temperature: float = setting(0.7, help="Sampling temperature of the fixed-prompt samples (0: greedy).")
    seed: int = setting(0, help="Seeds the fixed-prompt samples, so a re-run writes the same text.")

    def validate(self) -> None:
        if self.bpb_tokens < 2 or self.seq_len < 2 or self.batch_size < 1:
            raise UserError("--bpb-tokens and --seq-len must be at least 2, --batch-size at least 1")
        if self.limit < 0 or self.sample_tokens < 1 or self.temperature < 0:
            raise UserError("--limit must be 0 or more, --sample-tokens at least 1, --temperature 0 or more")


@dataclass
class SuiteConfig:
    """The built-in tasks made from a corpus: how many items, how many choices, in which languages."""

    suite_items: int = setting(200, help="Items per built-in task (fewer if the corpus has fewer sentences).")
    suite_choices: int = setting(4, help="Choices per built-in item: the true one and distractors.")
    suite_languages: list[str] = setting(
        factory=lambda: ["ru", "en"],
        flags=("--suite-lang",),
        help="Languages of the built-in tasks, as the corpus's language ID names them.",
    )
    suite_seed: int = setting(0, help="Seeds the choice of items and distractors of the built-in tasks.")

    def validate(self) -> None:
        if self.suite_items < 1 or self.suite_choices < 2:
            raise UserError("--suite-items must be at least 1 and --suite-choices at least 2")
