"""Dropout: a training-only regulariser of each block's attention and MLP output (`train --dropout`)."""

import json

import pytest
import torch

from autarky.model import Llama, ModelConfig, load_pretrained, save_pretrained
from autarky.train import TrainConfig, train
from tests.conftest import TINY_TRAIN

IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def tiny(dropout: float) -> Llama:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, dropout=dropout
    )
    return Llama(config)


def test_dropout_changes_training_outputs_only_in_train_mode():
    plain, dropped = tiny(0.0), tiny(0.3)
    assert torch.equal(plain.state_dict()["lm_head.weight"], dropped.state_dict()["lm_head.weight"])
    plain.train(), dropped.train()
    first, second = dropped(IDS, IDS)[1], dropped(IDS, IDS)[1]
    assert not torch.equal(first, second)  # a fresh mask each pass
    assert not torch.equal(first, plain(IDS, IDS)[1])
    plain.eval(), dropped.eval()
    logits = dropped(IDS)[0]
    assert torch.equal(logits, dropped(IDS)[0])  # evaluation is deterministic
    assert torch.equal(logits, plain(IDS)[0])  # and computes what the same weights without dropout do
    dropped.set_dropout(0.0)
    dropped.train()
    assert torch.equal(dropped(IDS, IDS)[1], plain.train()(IDS, IDS)[1])


def test_dropout_is_no_part_of_the_exported_checkpoint(tmp_path):
    save_pretrained(tiny(0.2), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "dropout" not in config and config["attention_dropout"] == 0.0
    assert load_pretrained(tmp_path).config.dropout == 0.0


def test_train_with_dropout_records_it_and_trains_another_model(pipeline):
    # fp32: `auto` probes the machine, and a busy one could answer differently for the two runs
    short = {
        **TINY_TRAIN,
        "max_steps": 6,
        "eval_interval": 3,
        "checkpoint_interval": 100,
        "precision": "fp32",
    }
    plain = TrainConfig(**short)
    assert "dropout" not in plain.recipe()  # runs without it keep the names they had
    dropped = train(pipeline.tokens, pipeline.workdir, TrainConfig(**short, dropout=0.2), name="dropout")
    assert dropped.config["dropout"] == 0.2
    again = train(pipeline.tokens, pipeline.workdir, plain, name="no-dropout")
    assert dropped.metrics["initial_val_loss"] == again.metrics["initial_val_loss"]  # the same start
    assert dropped.metrics["final_train_loss"] != again.metrics["final_train_loss"]


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_dropout_outside_0_to_1_is_refused(p):
    from autarky.console import UserError

    with pytest.raises(UserError, match="--dropout"):
        TrainConfig(dropout=p).validate()
