import dataclasses
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from autarky import artifact
from autarky.console import UserError
from autarky.train import TrainConfig, lr_at, train
from tests.conftest import TINY_TRAIN, cli_env, ctrl_c_while_step_trains


def test_loss_falls_and_the_artifact_is_complete(trained):
    m = trained.metrics
    assert m["val_loss"] < m["initial_val_loss"] - 0.5
    assert m["steps"] == TINY_TRAIN["max_steps"]
    for f in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "loss.png",
    ):
        assert (trained.path / f).is_file(), f
    assert not (trained.path / "checkpoint.safetensors").exists()  # training state is dropped once sealed
    tokenizer_config = json.loads((trained.path / "tokenizer_config.json").read_text())
    assert (
        tokenizer_config["model_max_length"]
        == json.loads((trained.path / "config.json").read_text())["max_position_embeddings"]
    )
    history = [json.loads(line) for line in (trained.path / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, TINY_TRAIN["max_steps"] + 1))
    assert {i["kind"] for i in trained.manifest["inputs"]} == {"tokens", "tokenizer"}
    assert artifact.verify(trained.path)[1] == []


def test_rerun_reuses_the_finished_model(pipeline, trained):
    again = train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="tiny-test")
    assert again.id == trained.id


def test_same_name_different_config_is_refused(pipeline, trained):
    with pytest.raises(UserError, match="--force"):
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**{**TINY_TRAIN, "lr": 1e-3}), name="tiny-test")


def test_schedules():
    cosine = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cosine, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cosine, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(cosine, 100, 1.0) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(wsd, 50, 0.7) == 1.0
    assert lr_at(wsd, 90, 0.9) == pytest.approx(0.5)


def _train_cli(pipeline, name, *extra):
    args = [
        sys.executable,
        "-m",
        "autarky.cli",
        "train",
        str(pipeline.tokens.path),
        "--name",
        name,
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "60",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--eval-interval",
        "30",
        "--checkpoint-interval",
        "10",
        *extra,
    ]
    return args


@pytest.mark.slow  # about a minute; Ctrl-C resume exactness (below) and a killed two-process run stay in CI
def test_killed_run_resumes_to_the_same_loss(pipeline):
    env = cli_env(pipeline.workdir)
    reference = subprocess.run(
        _train_cli(pipeline, "uninterrupted"), env=env, capture_output=True, text=True, timeout=300
    )
    assert reference.returncode == 0, reference.stderr
    run_dir = pipeline.workdir / "model" / "killed"
    proc = subprocess.Popen(
        _train_cli(pipeline, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        history = run_dir / "metrics.jsonl"
        if (
            (run_dir / "checkpoint.safetensors").exists()
            and history.exists()
            and len(history.read_text().splitlines()) >= 15
        ):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "manifest.json").exists(), "the run finished before it could be killed"
    refused = subprocess.run(
        _train_cli(pipeline, "killed"), env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr
    changed = subprocess.run(
        _train_cli(pipeline, "killed", "--resume", "--lr", "1e-3"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        changed.returncode == 2 and "config changed" in changed.stderr and "Traceback" not in changed.stderr
    )
    resumed = subprocess.run(
        _train_cli(pipeline, "killed", "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    a = artifact.load(pipeline.workdir / "model" / "uninterrupted").metrics
    b = artifact.load(run_dir).metrics
    assert b["final_train_loss"] == a["final_train_loss"]
    assert b["val_loss"] == a["val_loss"]
    # the artifacts are the same bytes: no wall-clock time leaks into any hashed file
    assert artifact.load(run_dir).id == artifact.load(pipeline.workdir / "model" / "uninterrupted").id


def test_resuming_a_run_that_had_reached_its_last_step_seals_it_with_its_quality(pipeline, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(pipeline.workdir, work, ignore=shutil.ignore_patterns("model"))
    tokens = artifact.load(work / "tokens" / pipeline.tokens.name)
    config = TrainConfig(**{**TINY_TRAIN, "max_steps": 3})
    reference = train(tokens, work, config, name="reference")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the last checkpoint is written; the model is not yet sealed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("autarky.train.pretrain.save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tokens, work, config, name="short")
    assert (work / "model" / "short" / "checkpoint.safetensors").exists()
    again = train(tokens, work, config, name="short", resume=True)
    assert again.metrics["val_loss"] == reference.metrics["val_loss"] and again.metrics["steps"] == 3
    assert again.id == reference.id


def test_fine_tuning_needs_the_same_tokenizer(pipeline, trained):
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize

    other_tokenizer = train_tokenizer(pipeline.corpus, pipeline.workdir, vocab_size=400)
    other_tokens = tokenize(pipeline.corpus, other_tokenizer, pipeline.workdir)
    with pytest.raises(UserError, match="another tokenizer"):
        train(other_tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), init=trained)


@pytest.mark.parametrize(
    "setting", [{"eval_interval": 0}, {"checkpoint_interval": 0}, {"lr": 0}, {"schedule": "step"}]
)
def test_bad_settings_are_clear_errors(setting):
    with pytest.raises(UserError):
        TrainConfig(**{**TINY_TRAIN, **setting}).validate()


def test_corrupt_checkpoint_is_a_clear_error(pipeline):
    env = cli_env(pipeline.workdir)
    run_dir = pipeline.workdir / "model" / "corrupt"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    out = subprocess.run(
        _train_cli(pipeline, "corrupt", "--resume"), env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "damaged" in out.stderr and "Traceback" not in out.stderr


def test_unknown_preset_is_a_clear_error(pipeline):
    out = subprocess.run(
        _train_cli(pipeline, "nopreset", "--preset", "huge"),
        env=cli_env(pipeline.workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "unknown preset" in out.stderr and "Traceback" not in out.stderr
    assert not (pipeline.workdir / "model" / "nopreset").exists()


def test_force_replaces_a_finished_model(pipeline):
    first = train(
        pipeline.tokens, pipeline.workdir, TrainConfig(**{**TINY_TRAIN, "max_steps": 2}), name="forced"
    )
    (first.path / "stale.txt").write_text("left by the first run")
    second = train(
        pipeline.tokens,
        pipeline.workdir,
        TrainConfig(**{**TINY_TRAIN, "max_steps": 3}),
        name="forced",
        force=True,
    )
    assert second.id != first.id and second.metrics["steps"] == 3
    assert artifact.load(pipeline.workdir / "model" / "forced").id == second.id
    files = {p.name for p in second.path.iterdir()} - {"manifest.json"}
    assert files == set(second.manifest["files"])  # nothing of the first run is left
    assert artifact.verify(second.path)[1] == []


class _RunsCode:
    """Unpickling this makes a directory: the stand-in for a planted payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_checkpoint_is_never_loaded(pipeline, tmp_path):
    """Issue 8.1: `train --resume` unpickled checkpoint.pt with weights_only=False, so a checkpoint
    planted in an unfinished run ran its code. Checked against the code before the fix: the marker
    directory was made and the resume died with a KeyError."""
    import torch

    marker = tmp_path / "code-ran"
    run_dir = pipeline.workdir / "model" / "planted"
    run_dir.mkdir(parents=True)
    torch.save({"model": _RunsCode(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(UserError, match="never loads"):
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="planted", resume=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("header", "tensors", "error"),
    [
        ({"step": 1, "elapsed": 0.0}, {"model/lm_head.weight": (3, 3)}, "does not fit this model"),
        ({"step": -1, "elapsed": 0.0}, {}, "no valid step"),
        ({"step": 1, "elapsed": 0.0, "config": {"lr": 1.0}}, {}, "config changed"),
        (None, {}, "no valid step"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_clear_error(pipeline, tmp_path, header, tensors, error):
    """A checkpoint is untrusted input: its header and every tensor's name and shape are checked."""
    import torch
    from safetensors.torch import save_file

    from autarky.train.loop import settle_precision

    config = TrainConfig(**TINY_TRAIN)
    settle_precision(config)  # as train does before it reads the checkpoint: the header names bf16 or fp32
    run_dir = pipeline.workdir / "model" / tmp_path.name
    run_dir.mkdir(parents=True)
    if header is not None:
        header = {"config": dataclasses.asdict(config), **header}
    metadata = {"autarky": json.dumps(header)} if header is not None else None
    save_file(
        {k: torch.zeros(shape) for k, shape in tensors.items()} or {"x": torch.zeros(1)},
        str(run_dir / "checkpoint.safetensors"),
        metadata=metadata,
    )
    with pytest.raises(UserError, match=error):
        train(pipeline.tokens, pipeline.workdir, config, name=run_dir.name, resume=True)


def _killed_at_forward(pipeline, name: str, calls: int) -> None:
    """Run TINY_TRAIN and stop it, as a kill would, at the model's `calls`-th forward pass."""
    from autarky.model import Llama

    forward, seen = Llama.forward, []

    def counted(self, *args, **kwargs):
        seen.append(1)
        if len(seen) == calls:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(Llama, "forward", counted)
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name=name)


def test_a_torn_last_line_of_the_metrics_log_is_dropped_on_resume(pipeline, trained):
    """Issue 8.18: a kill mid-write leaves metrics.jsonl with a torn last line, and `--resume`
    crashed on it with a JSONDecodeError traceback. Checked against the code before the fix (same
    test, the old train module): it raised JSONDecodeError. A damaged line elsewhere is refused,
    and a file the run did not write is removed rather than sealed into the artifact."""
    import shutil

    _killed_at_forward(pipeline, "torn", calls=45)  # step 0 and 20 evaluated, checkpoint at 20
    run_dir = pipeline.workdir / "model" / "torn"
    assert any(run_dir.glob("checkpoint.*"))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "lo')
    damaged = run_dir.with_name("torn-damaged")
    shutil.copytree(run_dir, damaged)
    lines = (damaged / "metrics.jsonl").read_text().splitlines(keepends=True)
    (damaged / "metrics.jsonl").write_text("".join([lines[0], "not json\n", *lines[1:]]))
    (run_dir / "model.safetensors").write_bytes(b"planted")  # anything stray would be sealed too
    resumed = train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="torn", resume=True)
    assert resumed.id == trained.id
    with pytest.raises(UserError, match="line 2 of"):
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name=damaged.name, resume=True)


class _Bigram(torch.nn.Module):
    """The smallest model `fit` can train: next-token logits from the current token alone."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.logits = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, x, y):
        logits = self.logits(x)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_fit_reads_the_device_only_at_sync_points_and_prefetches_in_order(monkeypatch):
    """fit works on any model, batch function and evaluation; losses stay tensors between sync points."""
    from autarky.train import Progress, fit

    fit_module = importlib.import_module("autarky.train.loop")

    data = torch.arange(1000) % 7
    asked, synced, saved = [], [], []

    def batches(step, micro):
        asked.append((step, micro))
        i = (step * 2 + micro) % 900
        return data[i : i + 8].view(1, 8), data[i + 1 : i + 9].view(1, 8)

    read_back = fit_module.read_back
    monkeypatch.setattr(
        fit_module, "read_back", lambda records: synced.append(records[-1]["step"]) or read_back(records)
    )
    model = _Bigram(7)
    config = TrainConfig(
        max_steps=25, grad_accum=2, eval_interval=20, checkpoint_interval=100, lr=0.1, warmup_steps=0
    )
    done = fit(
        model,
        torch.optim.AdamW(model.parameters()),
        batches,
        lambda: {"val_loss": 1.0},
        config,
        Progress(),
        checkpoint=lambda step, elapsed: saved.append(step),
    )
    assert asked == [(s, m) for s in range(25) for m in (0, 1)] + [(25, 0)]
    assert synced == [0, 10, 20, 25] and saved == [25] and done.step == 25
    assert [h["step"] for h in done.history if "loss" in h] == list(range(1, 26))
    assert all(
        type(h["loss"]) is float and type(h["grad_norm"]) is float for h in done.history if "loss" in h
    )
    assert [h["step"] for h in done.history if "val_loss" in h] == [0, 20, 25]
    assert done.history[-1]["loss"] < done.history[1]["loss"]


def test_the_estimate_leaves_out_the_first_step(monkeypatch):
    """The first step allocates and, under --compile, compiles: a minute on a GPU that would make
    the printed estimate many times too long. The pace is read from the steps after it."""
    from autarky.train import Progress, fit

    fit_module = importlib.import_module("autarky.train.loop")
    paces = []
    real_estimate = fit_module.estimate
    monkeypatch.setattr(
        fit_module,
        "estimate",
        lambda config, step, pace, *a: paces.append(pace) or real_estimate(config, step, pace, *a),
    )

    class SlowFirstStep(_Bigram):
        calls = 0

        def forward(self, x, y):
            self.calls += 1
            time.sleep(2.0 if self.calls == 1 else 0.01)
            return super().forward(x, y)

    data = torch.arange(1000) % 7
    model = SlowFirstStep(7)
    config = TrainConfig(max_steps=30, eval_interval=100, checkpoint_interval=100, warmup_steps=0)
    fit(
        model,
        torch.optim.AdamW(model.parameters()),
        lambda step, micro: (data[:8].view(1, 8), data[1:9].view(1, 8)),
        lambda: {},
        config,
        Progress(),
    )
    assert len(paces) == 1 and 0.01 <= paces[0] < 0.1  # with the first step: over 0.1 s a step


def test_compile_traces_the_training_step_and_trains_the_same_model(monkeypatch):
    """--compile on: fit's step runs through torch.compile (here its eager backend, which traces the
    model, the autocast and the loss as inductor would but compiles no C++ in a test) and gives
    the losses and weights of the uncompiled step; auto leaves a CPU run alone; evaluation is never
    compiled; a bad value is one sentence."""
    from autarky.train import Progress, fit
    from autarky.train.muon import make_optimizer
    from tests.test_muon import tiny

    compiled = []

    def eager_compile(module, **kw):
        compiled.append(module)
        torch._dynamo.reset()
        return real_compile(module, backend="eager")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", eager_compile)
    data = torch.arange(4000) % 61

    def run(compile_setting):
        model = tiny()
        config = TrainConfig(
            max_steps=6,
            batch_size=2,
            seq_len=16,
            eval_interval=3,
            warmup_steps=0,
            checkpoint_interval=100,
            precision="fp32",
            compile=compile_setting,
        )
        evaluated = []

        def batches(step, micro):
            i = step * 40
            return data[i : i + 32].view(2, 16), data[i + 1 : i + 33].view(2, 16)

        done = fit(
            model,
            make_optimizer(model, config),
            batches,
            lambda: evaluated.append(type(model).__name__) or {"val_loss": 1.0},
            config,
            Progress(),
        )
        assert evaluated == ["Llama"] * 3  # steps 0, 3 and the last: the plain module
        return [h["loss"] for h in done.history if "loss" in h], model.state_dict()

    eager_losses, eager_weights = run("off")
    assert compiled == [] and run("auto")[0] == eager_losses  # auto: no compile on a CPU
    losses, weights = run("on")
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for name, w in eager_weights.items():
        torch.testing.assert_close(weights[name], w, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="--compile"):
        TrainConfig(compile="always").validate()


# ------------------------------------------------------------------ what a run says, Ctrl-C, train more


def test_the_plan_says_what_a_run_will_do():
    from autarky.train.plan import estimate, plan_of, size_line, size_warning, steps_line

    by_steps = TrainConfig(max_steps=1000, batch_size=8, seq_len=64, eval_interval=100)
    plan = plan_of(by_steps, parameters=2_000_000, data_tokens=512_000)
    assert size_line(plan) == "2.0M parameters on 512,000 tokens (0.26 tokens per parameter)"
    assert steps_line(plan).startswith(
        "steps: 1,000 (--max-steps), 512 tokens a step: 512.0K tokens, 1.0 epochs"
    )
    assert "far too large" in size_warning(plan) and "--preset" in size_warning(plan)
    assert size_warning(plan_of(by_steps, 1_000_000, 20_000_000)) is None  # compute-optimal
    assert "far too small" in size_warning(plan_of(by_steps, 1_000, 2_000_000))
    # 0.5 s a step and 2 s an evaluation from step 10: 990 steps and 10 evaluations to go
    assert estimate(by_steps, 10, 0.5, 2.0, 10.0) == (
        "estimate: 0.5 s a step: 1,000 steps end in about 8.6 min",
        None,
    )

    by_time = TrainConfig(minutes=10)
    assert by_time.max_steps is None  # --minutes alone: no default step cap cuts it short
    assert steps_line(plan_of(by_time, 1, 1)).startswith("steps: as many as --minutes 10 allows")
    line, warning = estimate(by_time, 10, 0.5, 0.0, 5.0)
    assert line.endswith("about 1,200 steps fit in --minutes 10") and warning is None

    both = TrainConfig(minutes=10, max_steps=100, eval_interval=100)
    assert "unless --minutes 10 ends it first" in steps_line(plan_of(both, 1, 1))
    line, warning = estimate(both, 10, 0.5, 0.0, 5.0)
    assert line.endswith("100 steps end in about 45 s")
    assert warning.startswith(
        "--max-steps 100 ends the run after about 50 s of the 10.0 min --minutes gives it"
    )
    line, warning = estimate(TrainConfig(minutes=1, max_steps=1000), 10, 0.5, 0.0, 5.0)
    assert line.endswith("about 120 of the 1,000 --max-steps fit in --minutes 1") and warning is None


class _Clock:
    """Time as `fit` sees it: one second a training step, so tests of time budgets take none."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _fit_by_clock(monkeypatch, **settings):
    from autarky.train import Progress, fit

    clock, saved = _Clock(), []
    monkeypatch.setattr(importlib.import_module("autarky.train.loop"), "time", clock)
    data = torch.arange(1000) % 7

    def batches(step, micro):
        clock.now += 1.0 if micro == 0 else 0.0
        i = step % 900
        return data[i : i + 8].view(1, 8), data[i + 1 : i + 9].view(1, 8)

    model = _Bigram(7)
    config = TrainConfig(lr=0.1, warmup_steps=0, eval_interval=1000, checkpoint_interval=1000, **settings)
    done = fit(
        model,
        torch.optim.AdamW(model.parameters()),
        batches,
        lambda: {"val_loss": 1.0},
        config,
        Progress(),
        checkpoint=lambda step, elapsed: saved.append(step),
    )
    return done, saved


def test_minutes_alone_run_past_the_default_step_cap(monkeypatch):
    """Issue 12.5: --minutes alone ran at most the default --max-steps of 1000 however long it was given."""
    done, _ = _fit_by_clock(monkeypatch, minutes=1010 / 60, checkpoint_minutes=0)
    assert done.step == 1009 and TrainConfig().max_steps == 1000  # the clock reads step + 1 at the loop top


def test_checkpoints_are_also_written_by_time(monkeypatch):
    done, saved = _fit_by_clock(monkeypatch, max_steps=30, checkpoint_minutes=0.1)
    assert saved == [5, 11, 17, 23, 29, 30]  # every 6 s (steps), and the last step
    assert done.step == 30


def test_the_checkpoint_interval_by_time_is_no_part_of_the_recipe():
    a, b = TrainConfig(checkpoint_minutes=5), TrainConfig(checkpoint_minutes=1)
    assert a.recipe() == b.recipe() and "checkpoint_minutes" not in a.recipe()


def test_the_smoothed_loss_is_a_debiased_moving_average():
    from autarky.train.loop import SmoothedLoss

    smoothed = SmoothedLoss([{"step": 0}, {"step": 1, "loss": 2.0}])
    assert smoothed.update([]) == pytest.approx(2.0)  # debiased: no pull towards 0 at the start
    assert smoothed.update([{"step": 2, "loss": 12.0}]) == pytest.approx(2 + 10 * 0.1 / (1 - 0.9**2))


def test_ctrl_c_checkpoints_at_the_step_it_stops_and_resume_is_exact(pipeline, trained, monkeypatch):
    """A Ctrl-C between checkpoints (every 10 steps here) stops at step 23 with a checkpoint there,
    and the resumed run is the very model of one never interrupted."""
    import signal

    from autarky.train import pretrain
    from autarky.train.checkpoint import Interrupted

    get_batch = ctrl_c_while_step_trains(monkeypatch, 22)
    with pytest.raises(Interrupted) as stop:
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="ctrl-c")
    run_dir = pipeline.workdir / "model" / "ctrl-c"
    assert stop.value.step == 23 and stop.value.run_dir == run_dir
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before
    monkeypatch.setattr(pretrain, "get_batch", get_batch)
    resumed = train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="ctrl-c", resume=True)
    assert resumed.id == trained.id


def test_ctrl_c_on_the_command_line_says_how_to_resume(pipeline):
    env = cli_env(pipeline.workdir)
    args = _train_cli(pipeline, "interrupted", "--max-steps", "40", "--minutes", "30")
    run_dir = pipeline.workdir / "model" / "interrupted"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        history = run_dir / "metrics.jsonl"
        if history.exists() and len(history.read_text().splitlines()) >= 11:  # step 10 is done
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert not (run_dir / "manifest.json").exists(), "the run finished before it could be interrupted"
    # what it said before the run, and once the first steps were timed
    assert "parameters on" in stderr and "tokens per parameter" in stderr
    assert "steps: 40 (--max-steps, unless --minutes 30 ends it first)" in stderr
    assert "warning: the model is far too large for the data" in stderr
    assert "estimate: " in stderr and "--max-steps 40 ends the run after about" in stderr
    # what it says on Ctrl-C, and the command it gives continues the run
    from autarky.train.checkpoint import checkpoint_step

    step = checkpoint_step(run_dir / "checkpoint.safetensors")
    assert f"holds a checkpoint at step {step}" in " ".join(stderr.split()) and "Traceback" not in stderr
    again = [line.removeprefix("next: ") for line in stdout.splitlines() if line.startswith("next: ")]
    assert len(again) == 1 and again[0].endswith("--minutes 30 --resume"), stdout
    words = shlex.split(again[0])
    assert words[0] == "autarky"
    resumed = subprocess.run(
        [sys.executable, "-m", "autarky.cli", *words[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} at step {step}" in " ".join(resumed.stderr.split())
    assert artifact.load(run_dir).metrics["steps"] == 40


def test_a_finished_model_trains_more_from_its_weights_with_init(pipeline, trained):
    from autarky.train import pretrain

    longer = TrainConfig(**{**TINY_TRAIN, "max_steps": 80})
    with pytest.raises(UserError, match=f"--init {trained.name}"):
        train(pipeline.tokens, pipeline.workdir, longer, name=trained.name)
    # a longer run under another name starts from scratch, and names the model it could continue
    inputs = [pipeline.tokens, pipeline.tokenizer]
    assert trained.id in [a.id for a in pretrain.other_budgets(pipeline.workdir, longer.recipe(), inputs)]
    other_lr = TrainConfig(**{**TINY_TRAIN, "lr": 1e-3})
    assert pretrain.other_budgets(pipeline.workdir, other_lr.recipe(), inputs) == []
    more = train(
        pipeline.tokens, pipeline.workdir, TrainConfig(**{**TINY_TRAIN, "max_steps": 5}), init=trained
    )
    assert more.name != trained.name and trained.id in [i["id"] for i in more.manifest["inputs"]]
    # it starts where the finished model ended, not from random weights
    assert more.metrics["initial_val_loss"] == pytest.approx(trained.metrics["val_loss"], abs=1e-4)


def test_muon_trains_and_a_stopped_run_resumes_to_the_same_model(pipeline, monkeypatch):
    """--optimizer muon: the loss falls as with AdamW, and a Ctrl-C at step 23 resumed gives the very
    model of a run never stopped (Muon's momentum is in the checkpoint)."""

    from autarky.train import pretrain
    from autarky.train.checkpoint import Interrupted

    config = dict(TINY_TRAIN, optimizer="muon")
    whole = train(pipeline.tokens, pipeline.workdir, TrainConfig(**config), name="muon-whole")
    assert whole.config["optimizer"] == "muon"
    assert whole.metrics["val_loss"] < whole.metrics["initial_val_loss"] - 0.5
    get_batch = ctrl_c_while_step_trains(monkeypatch, 22)
    with pytest.raises(Interrupted):
        train(pipeline.tokens, pipeline.workdir, TrainConfig(**config), name="muon-stopped")
    monkeypatch.setattr(pretrain, "get_batch", get_batch)
    resumed = train(
        pipeline.tokens, pipeline.workdir, TrainConfig(**config), name="muon-stopped", resume=True
    )
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]
    assert resumed.metrics["final_train_loss"] == whole.metrics["final_train_loss"]


def test_precision_auto_is_decided_by_the_hardware_and_recorded(trained, monkeypatch):
    from autarky import machine

    assert trained.config["precision"] in ("fp32", "bf16")  # auto never reaches the manifest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    assert machine.training_precision("auto")[0] == "fp32"
    monkeypatch.setattr(machine, "native_bf16", lambda: True)
    monkeypatch.setattr(machine, "bf16_speedup", lambda: 3.0)
    assert machine.training_precision("auto") == (
        "bf16",
        "native bf16 on this CPU, 3.0x fp32's matmul speed in a probe",
    )
    monkeypatch.setattr(machine, "bf16_speedup", lambda: 1.0)
    assert machine.training_precision("auto")[0] == "fp32"
    assert machine.training_precision("fp32")[0] == "fp32" and machine.training_precision("bf16")[0] == "bf16"
    config = TrainConfig(precision="auto")
    from autarky.train.loop import settle_precision

    settle_precision(config)
    assert config.precision == "fp32" and "precision" in config.recipe()
