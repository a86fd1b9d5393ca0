"""The tokens stage: packed train/val files, and what goes wrong."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from autarky import artifact
from autarky.console import UserError
from autarky.data.corpus import iter_texts
from autarky.tokenizer import Tokenizer, train_tokenizer
from autarky.tokens import dtype_for, load_tokens, tokenize
from tests.test_tokenizer import make_corpus


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tokens")


@pytest.fixture(scope="module")
def corpus(work):
    return make_corpus(work)


@pytest.fixture(scope="module")
def tokenizer(corpus, work):
    return train_tokenizer(corpus, work, vocab_size=400)


@pytest.fixture(scope="module")
def tokens(corpus, tokenizer, work):
    return tokenize(corpus, tokenizer, work)


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_document_is_bos_then_its_tokens(tokens, corpus, tokenizer, split):
    tok = Tokenizer.load(tokenizer)
    data = load_tokens(tokens, split)
    assert isinstance(data, np.memmap) and data.dtype == np.uint16
    m = tokens.metrics[split]
    texts = list(iter_texts(corpus, split))
    assert len(data) == m["tokens"] == (tokens.path / f"{split}.bin").stat().st_size // 2
    index = np.flatnonzero(data == tok.bos_id)  # no <|bos|> anywhere but at a document's start
    assert len(index) == m["documents"] == len(texts) and index[0] == 0
    ends = [*index[1:], len(data)]
    for text, start, end in zip(texts, index, ends, strict=True):
        assert data[start + 1 : end].tolist() == tok.encode(text)
    assert m["bytes"] == sum(len(t.encode()) for t in texts)
    assert m["bytes_per_token"] == round(m["bytes"] / (m["tokens"] - m["documents"]), 4)


def test_manifest_names_inputs_and_dtype(tokens, corpus, tokenizer):
    assert tokens.config["dtype"] == "uint16" == tokens.metrics["dtype"]
    assert [i["id"] for i in tokens.manifest["inputs"]] == [corpus.id, tokenizer.id]
    assert set(tokens.manifest["files"]) == {"train.bin", "val.bin"}


def test_dtype_follows_the_vocabulary():
    assert dtype_for(4096) == "uint16" and dtype_for(65536) == "uint16"
    assert dtype_for(65537) == "uint32" and dtype_for(151_936) == "uint32"


def test_worker_processes_write_the_same_bytes(tokens, corpus, tokenizer, work):
    pooled = tokenize(corpus, tokenizer, work, name="pooled", workers=2)
    assert pooled.id == tokens.id  # same inputs, config and bytes: the same content-addressed id
    for f in ("train.bin", "val.bin"):
        assert (pooled.path / f).read_bytes() == (tokens.path / f).read_bytes()
    assert pooled.metrics == tokens.metrics


def test_rerun_reuses(tokens, corpus, tokenizer, work):
    again = tokenize(corpus, tokenizer, work)
    assert again.id == tokens.id and again.manifest["created"] == tokens.manifest["created"]


def test_changed_byte_is_named_by_verify(corpus, tokenizer, work):
    copy = tokenize(corpus, tokenizer, work, name="tampered")
    assert artifact.verify(copy.path)[1] == []
    path = copy.path / "train.bin"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    problems = artifact.verify(copy.path)[1]
    assert [p.path for p in problems] == ["train.bin"] and "changed" in problems[0].what


@pytest.mark.parametrize("missing", ["val", "train"])
def test_a_split_without_documents_is_refused(work, tokenizer, missing):
    n = {"train": 0, "val": 0} | {"train" if missing == "val" else "val": 10}
    lopsided = make_corpus(work, name=f"no-{missing}", n_train=n["train"], n_val=n["val"])
    with pytest.raises(UserError, match=f"no {missing} documents"):
        tokenize(lopsided, tokenizer, work, name=f"no-{missing}")
    assert not (work / "tokens" / f"no-{missing}").exists()


def test_inputs_of_the_wrong_kind_are_refused(corpus, tokenizer, work):
    with pytest.raises(UserError, match="needs a corpus first"):
        tokenize(tokenizer, tokenizer, work)
    with pytest.raises(UserError, match="must be 1 or more"):
        tokenize(corpus, tokenizer, work, workers=0)


def test_cli_resolves_names_and_prints_the_table(tokens, tokenizer, work, monkeypatch, capsys):
    from autarky import cli

    monkeypatch.setattr(cli.offline, "install", lambda: None)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["autarky", "tokenize", "mix", tokenizer.name, "-w", str(work)])
    cli.main()
    said = capsys.readouterr()  # results on stdout, what it reused on stderr
    assert "reusing tokens" in said.err
    assert "bytes/token" in said.out and f"{tokens.metrics['train']['tokens']:,}" in said.out
