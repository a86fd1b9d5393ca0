"""Training on torchrun: two CPU processes (gloo) train the model one process does, DDP or sharded
(FSDP2), and a run killed at one world size resumes at another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autarky import artifact
from tests.conftest import cli_env
from tests.test_sft import toy as sft_toy

toy = sft_toy  # the fixture of test_sft: a chat corpus and a tiny base model

SETTINGS = dict(
    preset="tiny",
    seq_len=64,
    batch_size=2,
    grad_accum=4,  # each rank runs two micro-batches a step: the first without the gradient sync
    max_steps=20,
    lr=3e-3,
    warmup_steps=5,
    eval_interval=10,
    checkpoint_interval=10,
    eval_tokens=2048,
    precision="fp32",
    optimizer="adamw",  # --shard needs it; the one-process reference uses the same
)
# Resumed runs: each rank half of every micro-batch, and a gentler rate, so the last bits that two
# processes round differently stay small.
LONGER = {**SETTINGS, "batch_size": 8, "grad_accum": 1, "max_steps": 30, "lr": 1e-3, "checkpoint_interval": 3}


def flags(settings: dict) -> list[str]:
    return [w for k, v in settings.items() for w in (f"--{k.replace('_', '-')}", str(v))]


def train_command(pipeline, processes: int, name: str, settings: dict, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "autarky"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(processes), "-m", "autarky"]
    return [*launcher, "train", pipeline.tokens.name, "--name", name, *flags(settings), *extra]


def run(pipeline, processes: int, name: str, settings: dict, *extra: str) -> subprocess.CompletedProcess:
    command = train_command(pipeline, processes, name, settings, *extra)
    env = cli_env(pipeline.workdir)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_curve(
    ours: list[dict], theirs: list[dict], tolerance: float, up_to: int | None = None
) -> None:
    """Every logged step's loss and every evaluation within `tolerance`, relative."""
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if up_to is not None and a["step"] > up_to:
            break
        for key in ("loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) <= tolerance * abs(b[key]), (a, b)


@pytest.fixture(scope="module")
def reference(pipeline):
    """One process's run of SETTINGS: the curve the distributed runs must reproduce."""
    from autarky.train import TrainConfig, train

    return train(pipeline.tokens, pipeline.workdir, TrainConfig(**SETTINGS), name="one-process")


def test_two_processes_with_ddp_train_the_one_process_model(pipeline, reference):
    done = run(pipeline, 2, "ddp", SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    model = artifact.load(pipeline.workdir / "model" / "ddp")
    assert_same_curve(history(model.path), history(reference.path), 1e-5)
    assert model.metrics["processes"] == 2 and "processes" not in reference.metrics
    assert (
        abs(model.metrics["val_loss"] - reference.metrics["val_loss"]) <= 1e-5 * reference.metrics["val_loss"]
    )
    # rank 0 alone speaks and writes: one result line, one set of next steps, no checkpoint left
    assert done.stdout.count("model ") == 1 and done.stdout.count("next: autarky chat ddp") == 1
    assert done.stderr.count("training ") == 1
    assert not any(p.name.startswith(("checkpoint", ".checkpoint")) for p in model.path.iterdir())


def test_two_processes_sharding_the_model_with_fsdp2_train_it_too(pipeline, reference):
    done = run(pipeline, 2, "fsdp", SETTINGS, "--shard")
    assert done.returncode == 0, done.stderr[-3000:]
    model = artifact.load(pipeline.workdir / "model" / "fsdp")
    assert_same_curve(history(model.path), history(reference.path), 1e-5)
    # the sealed weights are the whole model, gathered from both shards
    from autarky.model import load_pretrained

    assert load_pretrained(model.path).num_params() == reference.metrics["parameters"]


def kill_after_a_checkpoint(pipeline, processes: int, name: str) -> Path:
    """Start a run and kill it once a checkpoint is down: torchrun is asked to stop (it ends its
    workers), one process is killed outright."""
    run_dir = pipeline.workdir / "model" / name
    command = train_command(pipeline, processes, name, LONGER)
    proc = subprocess.Popen(
        command, env=cli_env(pipeline.workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        (run_dir / c).exists() for c in ("checkpoint.safetensors", "checkpoint.dcp")
    ):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM if processes > 1 else signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "manifest.json").exists(), "the run finished before it could be killed"
    return run_dir


@pytest.fixture(scope="module")
def longer(pipeline):
    from autarky.train import TrainConfig, train

    return train(pipeline.tokens, pipeline.workdir, TrainConfig(**LONGER), name="one-process-longer")


def test_a_run_killed_on_two_processes_resumes_on_one(pipeline, longer):
    run_dir = kill_after_a_checkpoint(pipeline, 2, "two-then-one")
    assert (run_dir / "checkpoint.dcp").is_dir() and not (run_dir / "checkpoint.safetensors").exists()
    # another model's recipe cannot take this checkpoint: one sentence, and it stays as it was
    before = sorted(p.name for p in (run_dir / "checkpoint.dcp").iterdir())
    other = run(pipeline, 1, "two-then-one", {**LONGER, "preset": "small"}, "--resume")
    assert other.returncode == 2 and "config changed" in other.stderr and "Traceback" not in other.stderr
    assert sorted(p.name for p in (run_dir / "checkpoint.dcp").iterdir()) == before
    assert not (run_dir / "manifest.json").exists()

    resumed = run(pipeline, 1, "two-then-one", LONGER, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    model = artifact.load(run_dir)
    assert model.metrics["steps"] == LONGER["max_steps"]
    assert_same_curve(history(run_dir), history(longer.path), 1e-4)


def test_a_run_killed_on_one_process_resumes_on_two(pipeline, longer):
    run_dir = kill_after_a_checkpoint(pipeline, 1, "one-then-two")
    assert (run_dir / "checkpoint.safetensors").is_file()
    resumed = run(pipeline, 2, "one-then-two", LONGER, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming") == 1
    model = artifact.load(run_dir)
    assert model.metrics["steps"] == LONGER["max_steps"]
    assert_same_curve(history(run_dir), history(longer.path), 1e-4)


def test_shard_in_one_process_is_one_sentence(pipeline):
    refused = run(pipeline, 1, "shard-alone", SETTINGS, "--shard")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--shard" in refused.stderr and "torchrun" in refused.stderr
    assert not (pipeline.workdir / "model" / "shard-alone").exists()


def test_a_world_size_that_does_not_divide_the_batch_is_one_sentence(pipeline):
    refused = run(pipeline, 2, "uneven", {**SETTINGS, "batch_size": 3, "grad_accum": 1})
    assert refused.returncode != 0
    assert refused.stderr.count("2 processes cannot share a step of 3 rows") == 1
    assert not (pipeline.workdir / "model" / "uneven").exists()


@pytest.mark.parametrize("batch_size, grad_accum, world", [(8, 1, 2), (3, 2, 2), (4, 3, 2), (6, 2, 4)])
def test_the_ranks_slices_are_the_one_process_batch(batch_size, grad_accum, world):
    """Each rank's micro-batches are slices of the single-process ones, and together every row of
    the step exactly once, in equal shares."""
    import math

    from autarky.train.distributed import Group

    share = batch_size * grad_accum // world
    rows = math.gcd(share, batch_size)
    seen = []
    for rank in range(world):
        group = Group(rank=rank, world=world, rows=rows, micro_batches=share // rows, batch_size=batch_size)
        batches = group.batches(lambda step, micro, cut: [(micro, r) for r in range(batch_size)[cut]])
        mine = [row for j in range(group.micro_batches) for row in batches(0, j)]
        assert len(mine) == share and all(len(batches(0, j)) == rows for j in range(group.micro_batches))
        seen += mine
    assert seen == [(m, r) for m in range(grad_accum) for r in range(batch_size)]


def test_sft_on_two_processes_is_the_one_process_fine_tune(toy):
    """A rank's rows hold an uneven share of the assistant tokens; the ranks still compute the one
    process's loss, the mean over all of them."""
    from autarky.train.config import SFTConfig
    from autarky.train.sft import sft

    settings = dict(seq_len=64, batch_size=4, max_steps=6, lr=3e-3, warmup_steps=2, eval_interval=3)
    settings |= dict(checkpoint_interval=3, precision="fp32")
    one = sft(toy.base, toy.chat, toy.work, SFTConfig(**settings), name="sft-one-process")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [
        *launcher,
        "-m",
        "autarky",
        "sft",
        "base",
        toy.chat.name,
        "--name",
        "sft-ddp",
        *flags(settings),
    ]
    done = subprocess.run(command, env=cli_env(toy.work), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_curve(history(toy.work / "model" / "sft-ddp"), history(one.path), 1e-5)
