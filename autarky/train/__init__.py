"""Training: the recipe (config.py), the one loop (loop.py: `fit`), an unfinished run's state on disk
(checkpoint.py), and pretraining a model artifact from a tokens artifact (pretrain.py)."""

import importlib

from autarky.train.config import TrainConfig, lr_at

# The recipe loads with the CLI; the loop and torch only when a run starts.
_LAZY = {
    "Progress": "loop",
    "fit": "loop",
    "TOKENIZER_FILES": "pretrain",
    "get_batch": "pretrain",
    "train": "pretrain",
}

__all__ = ["TOKENIZER_FILES", "Progress", "TrainConfig", "fit", "get_batch", "lr_at", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"autarky.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autarky.train' has no attribute {name!r}")
