"""Multi-token prediction (`train --mtp D`): the extra depths learn, the sealed model is the plain one
(the modules dropped, or kept in their own hashed file), a stopped run resumes exactly, and depth k
never predicts across a packed document boundary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from autarky import artifact
from autarky.console import UserError
from autarky.model import Llama, ModelConfig, state_dict_for_export
from autarky.tokens import load_tokens
from autarky.train import TrainConfig, train
from autarky.train.mtp import IGNORE, MTP, MTP_WEIGHTS, depth_targets, load_kept, new_block
from tests.conftest import cli_env, ctrl_c_while_step_trains

SETTINGS = dict(
    preset="tiny",
    seq_len=32,
    batch_size=4,
    max_steps=12,
    lr=3e-3,
    warmup_steps=2,
    eval_interval=6,
    checkpoint_interval=4,
    eval_tokens=512,
    precision="fp32",
    mtp=2,
    mtp_keep=True,
)


@pytest.fixture(scope="module")
def mtp_model(pipeline):
    return train(pipeline.tokens, pipeline.workdir, TrainConfig(**SETTINGS), name="mtp-2")


def records(model: artifact.Artifact) -> list[dict]:
    lines = (model.path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_depth_targets_never_cross_a_packed_document_boundary():
    # two documents packed in one row: tokens 10..13 and 20..23; targets are the next tokens
    tokens = torch.tensor([[10, 11, 12, 13, 20, 21, 22, 23, 24]])
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    y[0, 3] = IGNORE  # the main targets already stop at the boundary (as sft's do)
    i = IGNORE
    assert depth_targets(y, 1, segments).tolist() == [[12, 13, i, i, 22, 23, 24, i]]
    assert depth_targets(y, 2, segments).tolist() == [[13, i, i, i, 23, 24, i, i]]
    assert depth_targets(y, 1).tolist() == [[12, 13, i, 21, 22, 23, 24, i]]  # one document: no mask
    assert depth_targets(y, 8, segments).eq(IGNORE).all()
    # what each position is asked at depth k is the token k+1 after it, in its own document
    for k in (1, 2, 3):
        wanted = depth_targets(y, k, segments)[0]
        for pos, target in enumerate(wanted.tolist()):
            if target != IGNORE:
                assert target == x[0, pos].item() + k + 1


def test_mtp_losses_fall_and_the_sealed_model_is_the_plain_one(mtp_model):
    steps = records(mtp_model)
    assert [r["step"] for r in steps] == list(range(1, SETTINGS["max_steps"] + 1))
    for key in ("loss", "mtp_loss_1", "mtp_loss_2"):
        first, last = steps[0][key], sum(r[key] for r in steps[-3:]) / 3
        assert last < first - 0.3, (key, first, last)
    m = mtp_model.metrics
    assert m["val_loss"] < m["initial_val_loss"] - 0.3 and "final_mtp_loss_2" in m
    assert mtp_model.config["mtp"] == 2 and mtp_model.config["mtp_weight"] == 0.3
    # the sealed weights have exactly the names of a model trained without --mtp
    config = json.loads((mtp_model.path / "config.json").read_text())
    plain = Llama(ModelConfig.from_hf(config))
    with safe_open(str(mtp_model.path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(state_dict_for_export(plain))


def test_the_sealed_model_loads_in_transformers_with_equal_logits(mtp_model):
    from transformers import AutoModelForCausalLM

    from autarky.model import load_pretrained

    ours = load_pretrained(mtp_model.path)
    hf = AutoModelForCausalLM.from_pretrained(mtp_model.path, dtype=torch.float32).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], hf(x).logits, atol=1e-4)


def test_kept_modules_are_their_own_hashed_file_under_deepseek_names(pipeline, mtp_model, tmp_path):
    from autarky.model import load_pretrained

    assert MTP_WEIGHTS in mtp_model.manifest["files"] and artifact.verify(mtp_model.path)[1] == []
    layers = json.loads((mtp_model.path / "config.json").read_text())["num_hidden_layers"]
    with safe_open(str(mtp_model.path / MTP_WEIGHTS), "pt") as f:
        names = set(f.keys())
    for k in range(2):
        for part in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "self_attn.q_proj", "mlp.down_proj"):
            assert f"model.layers.{layers + k}.{part}.weight" in names
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)  # shared, not repeated
    # they load back around the model and predict what they learned: better than fresh modules
    lm = load_pretrained(mtp_model.path)
    kept = load_kept(lm, mtp_model.path)
    assert isinstance(kept, MTP) and len(kept.mtp) == 2
    tokens = torch.from_numpy(load_tokens(pipeline.tokens, "train")[:257].astype("int64")).view(1, -1)
    torch.manual_seed(0)
    with torch.no_grad():
        learned, _ = kept(tokens[:, :-1], tokens[:, 1:])
        fresh, _ = MTP(lm, 2, 0.3)(tokens[:, :-1], tokens[:, 1:])
    assert (learned[1:] < fresh[1:] - 0.3).all(), (learned, fresh)
    # greedy self-speculation: 1 token a step when no draft is accepted, up to 1 + D
    steps = kept.accepted_per_step(tokens[:, :64])
    assert 1.0 <= steps <= 3.0
    # a changed byte is found by verify
    copy = tmp_path / "copy"
    shutil.copytree(mtp_model.path, copy)
    data = bytearray((copy / MTP_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (copy / MTP_WEIGHTS).write_bytes(bytes(data))
    assert artifact.verify(copy)[1] != []


def test_a_run_without_mtp_keep_drops_the_modules_and_keeps_its_old_recipe():
    assert "mtp" not in TrainConfig().recipe()  # names of runs without --mtp are unchanged
    assert TrainConfig(mtp=1).recipe()["mtp"] == 1


def test_a_stopped_mtp_run_resumes_to_the_same_model(pipeline, mtp_model, monkeypatch):
    from autarky.train import pretrain
    from autarky.train.checkpoint import Interrupted

    get_batch = ctrl_c_while_step_trains(monkeypatch, 6)
    with pytest.raises(Interrupted) as stop:
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**SETTINGS), name="mtp-stopped")
    assert stop.value.step == 7
    with safe_open(str(stop.value.run_dir / "checkpoint.safetensors"), "pt") as f:
        assert any(k.startswith("optimizer/mtp.1.block.") for k in f.keys())  # the modules' state too
    monkeypatch.setattr(pretrain, "get_batch", get_batch)
    resumed = train(
        pipeline.tokens, pipeline.workdir, TrainConfig(**SETTINGS), name="mtp-stopped", resume=True
    )
    assert records(resumed) == records(mtp_model)
    assert resumed.id == mtp_model.id  # the same weights, modules included, and the same records


def test_muon_gives_the_modules_matrices_to_muon():
    from autarky.train.muon import muon_groups

    torch.manual_seed(0)
    lm = Llama(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2))
    model = MTP(lm, 1, 0.3)
    hidden = {id(p) for p in muon_groups(model, 0.1, 10.0)[0]["params"]}
    for name, p in model.mtp.named_parameters():
        assert (id(p) in hidden) == (p.dim() == 2), name


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(mtp=-1), "--mtp -1 must be 0"),
        (dict(mtp=32, seq_len=32), "below --seq-len 32"),
        (dict(mtp=1, mtp_weight=0.0), "--mtp-weight must be positive"),
        (dict(mtp=1, shard=True), "--shard"),
    ],
)
def test_bad_settings_are_one_clear_sentence(settings, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**settings).validate()


def test_a_model_that_cannot_make_a_block_is_refused():
    class Foreign(torch.nn.Module):  # a model of no family autarky knows
        pass

    with pytest.raises(UserError, match="--mtp needs a fresh block"):
        new_block(Foreign(), 2)


def test_the_cli_refuses_bad_depths_and_sft(pipeline):
    env = cli_env(pipeline.workdir)
    command = [sys.executable, "-m", "autarky"]
    bad = subprocess.run(
        [*command, "train", pipeline.tokens.name, "--mtp", "64", "--seq-len", "64"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--mtp 64 must be 0" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr
    sft = subprocess.run(
        [*command, "sft", "x", "y", "--mtp", "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert sft.returncode == 2 and "--mtp" in sft.stderr


def test_a_moe_model_takes_mtp_with_a_block_of_its_own_kind():
    deepseek = pytest.importorskip("autarky.deepseek")
    from autarky.model import PRESETS, preset_config

    if "moe-tiny" not in PRESETS:
        pytest.skip("the moe-tiny preset has not landed")
    torch.manual_seed(0)
    lm = deepseek.DeepseekV3(preset_config("moe-tiny", 128))
    model = MTP(lm, 1, 0.3)
    assert type(model.mtp[0].block) is type(lm.model.layers[-1])
    x = torch.randint(0, 128, (2, 16))
    losses, total = model(x[:, :-1], x[:, 1:])
    total.backward()
    assert losses.shape == (2,) and torch.isfinite(total)
    assert model.mtp[0].eh_proj.weight.grad is not None


@pytest.mark.slow
def test_two_processes_with_ddp_train_the_one_process_mtp_model(pipeline):
    from tests.test_distributed import flags

    settings = {k: v for k, v in SETTINGS.items() if k != "mtp_keep"} | {"optimizer": "adamw"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "autarky", "train", pipeline.tokens.name, "--name", "mtp-ddp", *flags(settings)]
    done = subprocess.run(
        command,
        env=cli_env(pipeline.workdir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(pipeline.tokens, pipeline.workdir, TrainConfig(**settings), name="mtp-one")
    ddp = artifact.load(pipeline.workdir / "model" / "mtp-ddp")
    for a, b in zip(records(ddp), records(one), strict=True):
        for key in ("loss", "mtp_loss_1", "mtp_loss_2"):
            assert abs(a[key] - b[key]) <= 1e-5 * b[key], (key, a, b)
