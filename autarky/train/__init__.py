"""Training: the recipe (config.py), the one loop (fit.py), an unfinished run's state on disk
(checkpoint.py), and pretraining a model artifact from a tokens artifact (pretrain.py)."""

from autarky.train.config import TrainConfig, lr_at
from autarky.train.fit import Progress, fit
from autarky.train.pretrain import TOKENIZER_FILES, get_batch, train

__all__ = ["TOKENIZER_FILES", "Progress", "TrainConfig", "fit", "get_batch", "lr_at", "train"]
