"""Evaluation: the one bits per byte, tasks in lm-eval's format, the built-in suite and the eval stage.

The package itself stays light (the CLI reads `autarky.evaluate.config` before it may import torch),
so the torch-backed names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Score", "bits_per_byte", "token_byte_lengths"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("autarky.evaluate.bpb"), name)
    raise AttributeError(f"module 'autarky.evaluate' has no attribute {name!r}")
