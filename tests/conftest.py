"""Shared fixtures: a small real pipeline (corpus → tokenizer → tokens → model) made once per session."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from autarky import offline

RUSSIAN = [
    "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный.",
    "Вечор, ты помнишь, вьюга злилась, на мутном небе мгла носилась.",
    "Под голубыми небесами великолепными коврами, блестя на солнце, снег лежит.",
    "Прозрачный лес один чернеет, и ель сквозь иней зеленеет, и речка подо льдом блестит.",
]


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_as_at_a_terminal():
    """Ctrl-C reaches the tests and the commands they start as it does a user at a terminal, even
    when the suite itself was started in the background (where the shell ignores SIGINT, and an
    ignored signal stays ignored in every child). The Ctrl-C tests need it; nothing else changes."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="session")
def network_guard():
    """Every test runs as the CLI does: with the network guard on (it has no off switch).

    The test process itself never enters a network namespace: a test that calls `cli.main()` in
    process would otherwise move the whole session, servers already listening and all, into a fresh
    network. The CLI run as a subprocess is isolated as it is for a user.
    """
    offline.install()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offline, "_enter_namespace", lambda: "the test process stays in the host's network")
        yield


def write_sources(root: Path, n_docs: int = 60) -> Path:
    """Python's help topics plus some Russian verse, as .txt files: real text, made locally."""
    from pydoc_data.topics import topics

    root.mkdir(parents=True, exist_ok=True)
    for i, (name, text) in enumerate(sorted(topics.items())[:n_docs]):
        (root / f"{i:03d}-{name}.txt").write_text(text, encoding="utf-8")
    rng = random.Random(0)
    for i in range(20):
        lines = [rng.choice(RUSSIAN) for _ in range(12)]
        (root / f"ru-{i:02d}.txt").write_text("\n".join(lines) + f"\nСтрофа {i}.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize

    root = tmp_path_factory.mktemp("pipeline")
    workdir = root / "work"
    source = write_sources(root / "src")
    corpus = curate([source], workdir)
    tokenizer = train_tokenizer(corpus, workdir, vocab_size=512)
    tokens = tokenize(corpus, tokenizer, workdir)
    return SimpleNamespace(
        root=root, workdir=workdir, source=source, corpus=corpus, tokenizer=tokenizer, tokens=tokens
    )


TINY_TRAIN = dict(
    preset="tiny",
    seq_len=64,
    batch_size=8,
    max_steps=40,
    lr=3e-3,
    warmup_steps=5,
    eval_interval=20,
    checkpoint_interval=10,
    eval_tokens=4096,
)


@pytest.fixture(scope="session")
def trained(pipeline):
    from autarky.train import TrainConfig, train

    return train(pipeline.tokens, pipeline.workdir, TrainConfig(**TINY_TRAIN), name="tiny-test")


def ctrl_c_while_step_trains(monkeypatch, step: int):
    """Press Ctrl-C while pretraining's step `step` trains: when the next step's first micro-batch is
    fetched (the loop fetches it ahead), as a user's key press would land. Returns the batch function
    it replaced, to put back before resuming."""
    from autarky.train import pretrain

    get_batch = pretrain.get_batch

    def fetch(data, seed, at, micro, *args):
        if (at, micro) == (step + 1, 0):
            signal.raise_signal(signal.SIGINT)
        return get_batch(data, seed, at, micro, *args)

    monkeypatch.setattr(pretrain, "get_batch", fetch)
    return get_batch


def cli_env(workdir: Path) -> dict:
    return {**os.environ, "AUTARKY_WORKDIR": str(workdir), "COLUMNS": "200"}
