"""`autarky tokenizer extend`: new tokens learned on a corpus, a resized model, continued pretraining."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from autarky.artifact import Builder
from autarky.console import UserError
from autarky.model import Llama, load_pretrained, preset_config, save_pretrained
from autarky.tokenizer import Tokenizer
from autarky.vocab import VocabConfig, extend, extended_json
from tests.conftest import RUSSIAN, cli_env, write_sources

ADDED = 48
SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
)


def random_model(workdir, tokenizer, name: str, tied: bool):
    """A model artifact of random weights beside `tokenizer`: what extend needs, with no training."""
    import shutil

    torch.manual_seed(0)
    net = Llama(
        preset_config("tiny", Tokenizer.load(tokenizer).vocab_size, tie_word_embeddings=tied, **SMALL)
    )
    builder = Builder(workdir, "model", name, {"random": True, "tied": tied}, [tokenizer])
    with builder:
        save_pretrained(net, builder.dir)
        for f in tokenizer.manifest["files"]:
            shutil.copyfile(tokenizer.path / f, builder.dir / f)
        return builder.finish()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """English and Russian text with a quarter held out, a 400-token BPE, an untied random model."""
    from autarky.data.config import CurateConfig
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("vocab")
    workdir = root / "work"
    corpus = curate([write_sources(root / "src", n_docs=30)], workdir, config=CurateConfig(val_fraction=0.25))
    tokenizer = train_tokenizer(corpus, workdir, vocab_size=400)
    model = random_model(workdir, tokenizer, "base", tied=False)
    return SimpleNamespace(workdir=workdir, corpus=corpus, tokenizer=tokenizer, model=model)


@pytest.fixture(scope="module")
def extended(base):
    return extend(base.model, base.corpus, base.workdir, VocabConfig(tokens=ADDED))


def test_russian_words_take_fewer_tokens_and_every_text_round_trips(extended, base):
    tokenizer, model = extended
    after, before = tokenizer.metrics["val_by_lang"]["ru"], tokenizer.metrics["before"]["val_by_lang"]["ru"]
    assert after["tokens_per_word"] < before["tokens_per_word"]
    assert after["short_word_share"] >= before["short_word_share"]
    assert after["bytes_per_token"] > before["bytes_per_token"]
    assert {"en", "ru"} <= set(tokenizer.metrics["val_by_lang"])
    assert tokenizer.metrics["val"]["words"] == sum(
        v["words"] for v in tokenizer.metrics["val_by_lang"].values()
    )
    assert model.metrics["val_by_lang"] == tokenizer.metrics["val_by_lang"]
    old, new = Tokenizer.load(base.model.path), Tokenizer.load(tokenizer)
    assert new.vocab_size == old.vocab_size + ADDED == model.metrics["vocab_size"]
    ru = " ".join(RUSSIAN)
    ids = new.encode(ru)
    assert any(i >= old.vocab_size for i in ids), "no new token is used on the text it was learned on"
    assert len(ids) < len(old.encode(ru))
    texts = [ru, "".join(map(chr, range(1, 0x250))), "ёжик 🦔 в тумане\r\n\t\x00 ЁЖ", *RUSSIAN]
    for text in texts:
        assert new.decode(new.encode(text)) == text
        assert b"".join(new.token_bytes(i) for i in new.encode(text)) == text.encode()
    for i in range(old.vocab_size, new.vocab_size):  # a new token stands for the bytes of its old pieces
        pieces = old.hf.model.tokenize(new.hf.id_to_token(i))
        assert new.token_bytes(i) == b"".join(old.token_bytes(p.id) for p in pieces)


def test_the_old_rows_are_untouched_and_a_new_row_is_the_mean_of_its_pieces(extended, base):
    tokenizer, model = extended
    old_net, new_net = load_pretrained(base.model.path), load_pretrained(model.path)
    old, new = Tokenizer.load(base.model.path), Tokenizer.load(model.path)
    from pydoc_data.topics import topics

    # words that no new merge touches: encoded exactly as before, so the model must compute as before
    words = [w for w in topics["assert"].split()[:80] if new.encode(" " + w) == old.encode(" " + w)]
    ids = new.encode(" ".join(words))
    assert len(words) > 20 and ids == old.encode(" ".join(words)) and max(ids) < old.vocab_size
    x = torch.tensor([ids])
    with torch.no_grad():
        before, after = old_net(x)[0], new_net(x)[0]
    assert after.shape[-1] == new.vocab_size
    assert torch.equal(after[..., : old.vocab_size], before)
    weight, old_weight = new_net.model.embed_tokens.weight, old_net.model.embed_tokens.weight
    for i in (old.vocab_size, new.vocab_size - 1):
        pieces = [p.id for p in old.hf.model.tokenize(new.hf.id_to_token(i))]
        assert len(pieces) >= 2
        assert torch.allclose(weight[i], old_weight[pieces].mean(0))
    config = json.loads((model.path / "config.json").read_text())
    assert config["vocab_size"] == new.vocab_size
    assert (new.bos_id, new.eos_id, new.pad_id) == (old.bos_id, old.eos_id, old.pad_id)


def test_lineage_names_both_inputs_and_verify_passes(extended, base):
    tokenizer, model = extended
    assert {a.name for a in tokenizer.inputs()} == {base.model.name, base.corpus.name}
    assert {a.name for a in model.inputs()} == {base.model.name, base.corpus.name, tokenizer.name}
    run = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "verify", str(model.path)],
        capture_output=True,
        text=True,
        env=cli_env(base.workdir),
    )
    assert run.returncode == 0, run.stderr
    from autarky.evaluate.report import tokenizer_section

    assert any(
        "ru" in line for line in tokenizer_section(tokenizer)
    )  # `autarky report` reads it as any tokenizer
    again = extend(base.model, base.corpus, base.workdir, VocabConfig(tokens=ADDED))
    assert [a.id for a in again] == [tokenizer.id, model.id]  # the same recipe is reused, not remade


def test_continued_pretraining_on_the_new_tokenizer_lowers_the_loss(extended, base):
    from autarky.tokens import load_tokens, tokenize
    from autarky.train import TrainConfig, train

    tokenizer, model = extended
    tokens = tokenize(base.corpus, tokenizer, base.workdir)
    config = TrainConfig(
        seq_len=32,
        batch_size=4,
        max_steps=8,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=8,
        eval_tokens=256,
        checkpoint_interval=8,
        precision="fp32",
    )
    continued = train(tokens, base.workdir, config, init=model)
    val = torch.from_numpy(load_tokens(tokens, "val")[:257].astype("int64"))
    x, y = val[:-1].unsqueeze(0), val[1:].unsqueeze(0)
    with torch.no_grad():
        before = load_pretrained(model.path)(x, y)[1]
        after = load_pretrained(continued.path)(x, y)[1]
    assert after < before
    assert model.name in {a.name for a in continued.inputs("model")}


def test_the_cli_prints_before_and_after_and_the_next_commands(extended, base):
    run = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "tokenizer", "extend", base.model.name, base.corpus.name]
        + ["--tokens", str(ADDED)],
        capture_output=True,
        text=True,
        env=cli_env(base.workdir),
    )
    assert run.returncode == 0, run.stderr
    assert "tokens/word" in run.stdout and "→" in run.stdout
    assert f"next: autarky tokenize {base.corpus.name} {extended[0].name}" in run.stdout
    assert f"next: autarky train --init {extended[1].name}" in run.stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (VocabConfig(tokens=-3), "adds at least one token"),
        (VocabConfig(tokens=100_000), "offers only"),
        (VocabConfig(min_frequency=1_000_000), "there is nothing to add"),
    ],
)
def test_bad_counts_are_one_sentence(base, config, message):
    with pytest.raises(UserError, match=message):
        extend(base.model, base.corpus, base.workdir, config)
    assert not list((base.workdir / "tokenizer").glob("*-ext100000-*"))  # nothing half-made is left


def test_the_cli_says_it_in_one_sentence_and_exits_2(base):
    run = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "tokenizer", "extend", base.model.name, base.corpus.name]
        + ["--tokens", "0"],
        capture_output=True,
        text=True,
        env=cli_env(base.workdir),
    )
    assert run.returncode == 2 and "--tokens is 0; extend adds at least one token" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_model_without_a_tokenizer_and_a_corpus_without_train_text_are_refused(base, tmp_path):
    import shutil

    from autarky import artifact

    bare = tmp_path / "model" / "bare"
    shutil.copytree(base.model.path, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="has no tokenizer.json"):
        extend(artifact.Artifact(bare, base.model.manifest), base.corpus, tmp_path)
    empty = Builder(tmp_path, "corpus", "empty", {"empty": True})
    with empty:
        (empty.dir / "shards").mkdir()
        corpus = empty.finish()
    with pytest.raises(UserError, match="no train documents"):
        extend(base.model, corpus, tmp_path)


def test_a_merge_onto_a_token_the_vocabulary_has_is_a_rule_not_a_new_token(base):
    """The old tokenizer may leave "a" "b" apart in a word though it has "ab" (reached another way):
    the merge is kept as a rule onto the old id, and only the genuinely new strings get ids."""
    old = Tokenizer.load(base.model.path)
    a, b = next(
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        for m in json.loads(old.hf.to_str())["model"]["merges"]
    )
    text, ids = extended_json(old.hf, [(a, b), ("Ж", "Щ"), (a + b, "ЖЩ"), ("Ж", "Щ")])
    assert ids == [old.vocab_size, old.vocab_size + 1]
    data = json.loads(text)
    assert (
        data["model"]["vocab"]["ЖЩ"] == old.vocab_size
        and data["model"]["vocab"][a + b + "ЖЩ"] == old.vocab_size + 1
    )
    assert len(data["model"]["merges"]) == len(json.loads(old.hf.to_str())["model"]["merges"]) + 4


def test_a_tied_model_keeps_one_matrix_for_embedding_and_output(base):
    tied = random_model(base.workdir, base.tokenizer, "tied", tied=True)
    _, model = extend(tied, base.corpus, base.workdir, VocabConfig(tokens=8))
    old_net, new_net = load_pretrained(tied.path), load_pretrained(model.path)
    assert new_net.lm_head.weight is new_net.model.embed_tokens.weight
    rows = old_net.model.embed_tokens.weight.shape[0]
    assert new_net.model.embed_tokens.weight.shape[0] == rows + 8
    assert torch.equal(new_net.model.embed_tokens.weight[:rows], old_net.model.embed_tokens.weight)


def test_both_spellings_reach_their_stage_with_every_setting(monkeypatch, base):
    """`autarky tokenizer CORPUS` trains as it always did; `autarky tokenizer extend` takes every VocabConfig field."""
    from typer.testing import CliRunner

    from autarky.cli import app

    seen = {}

    def stage(*args, **kwargs):
        seen.update(args=args, **kwargs)
        raise UserError("stopped here")

    monkeypatch.setattr("autarky.vocab.extend", stage)
    monkeypatch.setattr("autarky.tokenizer.train_tokenizer", stage)
    flags = ["--tokens", "7", "--min-frequency", "3", "--max-train-bytes", "1000", "--max-eval-bytes", "2000"]
    model, corpus = str(base.model.path), str(base.corpus.path)
    CliRunner().invoke(app, ["tokenizer", "extend", model, corpus, *flags])
    assert seen["config"] == VocabConfig(7, 3, 1000, 2000)
    assert [a.name for a in seen["args"][:2]] == [base.model.name, base.corpus.name]
    seen.clear()
    CliRunner().invoke(app, ["tokenizer", "-w", str(base.workdir), corpus, "--vocab-size", "300"])
    assert seen["vocab_size"] == 300 and seen["args"][0].name == base.corpus.name
    seen.clear()
    wrong = CliRunner().invoke(app, ["tokenizer", corpus, "extend"])  # not silently the newest model
    assert wrong.exit_code == 2 and "unexpected extra argument 'extend'" in wrong.output and not seen


def test_transformers_reads_the_new_pair_with_the_same_ids_and_logits(extended):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer, model = extended
    text = " ".join(RUSSIAN)
    ids = Tokenizer.load(tokenizer).encode(text)
    assert (
        AutoTokenizer.from_pretrained(str(tokenizer.path))(text, add_special_tokens=False)["input_ids"] == ids
    )
    theirs = LlamaForCausalLM.from_pretrained(str(model.path)).eval()
    x = torch.tensor([ids[:64]])
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, load_pretrained(model.path)(x)[0], atol=1e-4)
