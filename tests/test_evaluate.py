"""Bits per byte: an exact per-token byte table, fixed windows, and one quantity everywhere."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autarky.evaluate import bits_per_byte, token_byte_lengths
from autarky.evaluate.bpb import windows
from autarky.model import load_pretrained
from autarky.tokenizer import Tokenizer
from autarky.tokens import load_tokens
from tests.conftest import RUSSIAN, TINY_TRAIN


@pytest.fixture(scope="module")
def tok(pipeline) -> Tokenizer:
    return Tokenizer.load(pipeline.tokenizer)


def test_the_byte_table_adds_up_to_the_text_exactly(tok):
    table = token_byte_lengths(tok)
    assert table.shape == (tok.vocab_size,)
    for special in (tok.bos_id, tok.eos_id, tok.pad_id, tok.end_id):
        assert table[special] == 0
    for text in [*RUSSIAN, "def f(x):\n    return x ** 2  # 🙂", "<|end|> typed as text"]:
        assert int(table[tok.encode(text)].sum()) == len(text.encode("utf-8"))


class Uniform(nn.Module):
    """Every token equally likely: each target costs ln V nats."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor):
        return torch.zeros(*ids.shape, self.vocab_size), None


def test_bits_per_byte_counts_each_target_once_and_special_tokens_not_at_all():
    ids = torch.tensor([0, 5, 6, 7, 0, 8, 9, 5, 6, 7, 8])  # id 0 stands for no bytes
    token_bytes = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 3, 3])
    assert windows(ids, 4).tolist() == [[0, 5, 6, 7, 0], [0, 8, 9, 5, 6]]  # one token of overlap
    assert windows(ids, 4, max_tokens=4).shape == (1, 5)
    score = bits_per_byte(Uniform(10), ids, token_bytes, seq_len=4, batch_size=1)
    targets = ids[1:9]
    assert score.tokens == 8 and score.bytes == int(token_bytes[targets].sum()) == 16
    assert score.loss == pytest.approx(math.log(10))
    counted = int((token_bytes[targets] > 0).sum())  # the <|bos|> target carries no bytes
    assert score.bpb == pytest.approx(counted * math.log(10) / math.log(2) / 16)


def test_training_reports_the_same_bits_per_byte_as_the_sealed_model_scores(pipeline, trained, tok):
    """Scored as training scored it: with the precision its manifest records (bf16 autocast where
    `--precision auto` chose it on this machine)."""
    from autarky.train.loop import autocast_for

    score = bits_per_byte(
        load_pretrained(trained.path),
        load_tokens(pipeline.tokens, "val"),
        token_byte_lengths(tok),
        seq_len=TINY_TRAIN["seq_len"],
        max_tokens=TINY_TRAIN["eval_tokens"],
        batch_size=TINY_TRAIN["batch_size"],
        autocast=autocast_for(trained.config["precision"], torch.device("cpu")),
    )
    assert trained.metrics["val_bpb"] == pytest.approx(score.bpb, rel=1e-6)
    assert trained.metrics["val_loss"] == pytest.approx(score.loss, rel=1e-6)
