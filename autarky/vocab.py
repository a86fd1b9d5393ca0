"""Extend a model's tokenizer with tokens learned on a corpus: a new tokenizer and model pair.

A byte-level BPE tokenizer trained on English splits a Russian word into many pieces (a Cyrillic
letter is two bytes); every extra piece costs a step of training and of generation. `extend` learns
merges on a corpus's train split, starting from the segmentation the old tokenizer gives each word,
until N new tokens come out, and appends them after the old merges, so:

- text in which no new merge fires is encoded exactly as before (the old ids, the old model rows);
- every new token is reachable: its merge rule is in the tokenizer, not only its vocabulary entry;
- decoding is unchanged (a token still stands for the bytes it concatenates).

The model gets one embedding row (and output row, if untied) per new token, the mean of the rows of
the old tokens the old tokenizer splits that token into, so continued pretraining (`train --init`)
starts from a model that already roughly knows each new token. The old rows are left untouched.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from autarky import artifact
from autarky.artifact import Artifact, Builder, compose_name, default_name
from autarky.console import UserError, console
from autarky.options import setting

# Files of a model directory that belong to its tokenizer (the new tokenizer artifact keeps them all).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SHORT_WORD = 2  # a word in this many tokens or fewer counts as "short" (the figure T-pro reports)
SAMPLE_TOKENS = 20
# Old token i is the character SYMBOL_BASE + i while new merges are learned: planes 2 and up, where no
# character is whitespace, for vocabularies of up to 800k tokens.
SYMBOL_BASE = 0x20000


@dataclass
class VocabConfig:
    tokens: int = setting(1000, help="New tokens to add to the model's vocabulary.", flags=("--tokens",))
    min_frequency: int = setting(
        2, help="A new token must join a pair of tokens seen at least this often in the train split."
    )
    max_train_bytes: int = setting(
        100_000_000, help="Read at most this much of the corpus's train split to learn the new tokens."
    )
    max_eval_bytes: int = setting(
        20_000_000, help="Measure tokens per word on at most this much of the val split."
    )

    def validate(self) -> None:
        if self.tokens <= 0:
            raise UserError(f"--tokens is {self.tokens}; extend adds at least one token")
        if self.min_frequency < 1 or self.max_train_bytes < 1 or self.max_eval_bytes < 1:
            raise UserError("min_frequency, max_train_bytes and max_eval_bytes must be positive")


# ---------------------------------------------------------------- learning merges


def as_symbols(hf, texts: Iterable[str], batch_size: int = 64) -> tuple[list[str], set[int]]:
    """Each text as the old tokenizer splits it: one character per old token (its id moved into
    Unicode's unassigned planes), a space between words; and the set of ids used.

    BPE's trainer then continues from the old segmentation as if each old token were a letter. The
    tokenizer encodes in Rust on all cores; `word_ids` says which word each token came from.
    """
    import numpy as np

    from autarky.tokenizer import _batched

    hf = type(hf).from_str(hf.to_str())  # a copy, so that switching truncation off leaves the caller's alone
    hf.no_truncation()
    hf.encode_special_tokens = True  # text is text: no control tokens from it, as `Tokenizer` encodes
    texts_out, seen = [], set()
    for batch in _batched(texts, batch_size):
        for enc in hf.encode_batch(batch, add_special_tokens=False):
            if not enc.ids:
                continue
            ids = np.array(enc.ids, dtype=np.uint32)
            words = np.array(enc.word_ids, dtype=np.int64)
            codes = np.insert(ids + SYMBOL_BASE, np.flatnonzero(words[1:] != words[:-1]) + 1, ord(" "))
            texts_out.append(codes.astype("<u4").tobytes().decode("utf-32-le"))
            seen.update(np.unique(ids).tolist())
    return texts_out, seen


def train_merges(symbols: list[str], alphabet: int, n: int, min_frequency: int) -> list[tuple[str, str]]:
    """Up to `n` merges of symbol strings, most frequent pair first: the `tokenizers` BPE trainer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=alphabet + n, min_frequency=min_frequency, show_progress=False)
    hf.train_from_iterator(symbols, trainer=trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def learn_merges(hf, texts: Iterable[str], n: int, min_frequency: int) -> tuple[list[tuple[str, str]], int]:
    """Merges, in the tokenizer's own token strings, that make `n` new tokens; and how many new
    tokens they make (fewer than `n` where the corpus offers no more).

    A merge whose result the vocabulary already holds (the old tokenizer reaches that token by
    another path) is kept as a rule, as the trainer learned it, but makes no new token; so the
    trainer is asked for more merges until `n` new tokens come out or no pair is seen
    `min_frequency` times any more.
    """
    symbols, used = as_symbols(hf, texts)
    vocab = hf.get_vocab(with_added_tokens=True)
    names = {i: t for t, i in vocab.items()}
    text_of = {chr(SYMBOL_BASE + i): names[i] for i in used}
    extra = n // 8 + 16
    while True:
        learned = train_merges(symbols, len(used), n + extra, min_frequency)
        merges, known = [], set(vocab)
        for a, b in learned:
            pair = ("".join(map(text_of.__getitem__, a)), "".join(map(text_of.__getitem__, b)))
            merges.append(pair)
            known.add(pair[0] + pair[1])
            if len(known) - len(vocab) == n:
                return merges, n
        if len(learned) < n + extra:  # the trainer ran out of pairs seen often enough
            return merges, len(known) - len(vocab)
        extra *= 2


def extended_json(hf, merges: list[tuple[str, str]]) -> tuple[str, list[int]]:
    """The tokenizer.json with the merges appended (after every old one) and each new token given a new id."""
    data = json.loads(hf.to_str())
    model, added = data["model"], data.get("added_tokens") or []
    vocab = model["vocab"]
    known = set(vocab) | {t["content"] for t in added}
    next_id = max([*vocab.values(), *(t["id"] for t in added)]) + 1
    ids = []
    for a, b in merges:
        if a + b not in known:
            vocab[a + b] = next_id
            known.add(a + b)
            ids.append(next_id)
            next_id += 1
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"] += [f"{a} {b}" if as_strings else [a, b] for a, b in merges]
    return json.dumps(data, ensure_ascii=False), ids


def check_extensible(hf, source: Path) -> None:
    """Only a BPE tokenizer that splits text into words first can take merges learned on words."""
    data = json.loads(hf.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(
            f"the tokenizer in {source} is a {model.get('type')} model; extend adds merges to a BPE one"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UserError(
            f"the tokenizer in {source} marks subwords with a prefix or suffix; extend cannot add to it"
        )
    if hf.pre_tokenizer is None:
        raise UserError(
            f"the tokenizer in {source} has no pre-tokenizer, so it has no words to learn merges on; extend "
            "takes a byte-level BPE that splits words first (GPT-2, Llama 3, Qwen, autarky's own)"
        )


# ---------------------------------------------------------------- measuring


def word_fertility(tokenizer, texts: Iterable[str], batch_size: int = 256) -> dict:
    """Bytes per token, tokens per word, and the share of words in at most two tokens.

    A word is a run of non-space characters; a token belongs to the word its last character lies
    in (found from the encoding's offsets), so a word's count is what encoding it in its running
    text costs, space and all. Tokens of whitespace alone count toward tokens/word but no word.
    """
    import numpy as np

    from autarky.tokenizer import _batched

    totals = {"documents": 0, "bytes": 0, "tokens": 0, "words": 0, "short_words": 0}
    for batch in _batched(texts, batch_size):
        for text, enc in zip(batch, tokenizer.hf.encode_batch(batch, add_special_tokens=False), strict=True):
            spans = np.array([m.span() for m in re.finditer(r"\S+", text)], dtype=np.int64).reshape(-1, 2)
            last = np.array([e - 1 for s, e in enc.offsets if e > s], dtype=np.int64)
            word = np.searchsorted(spans[:, 0], last, side="right") - 1
            inside = (word >= 0) & (last < spans[np.maximum(word, 0), 1])
            per_word = np.bincount(word[inside], minlength=len(spans))
            totals["documents"] += 1
            totals["bytes"] += len(text.encode())
            totals["tokens"] += len(enc.ids)
            totals["words"] += len(spans)
            totals["short_words"] += int((per_word <= SHORT_WORD).sum())
    return _ratios(totals)


def _ratios(totals: dict) -> dict:
    from autarky.tokenizer import _with_ratios

    words = totals["words"]
    return {
        **_with_ratios(totals),
        "short_word_share": round(totals["short_words"] / words, 4) if words else None,
    }


def val_fertility(tokenizer, corpus: Artifact, max_bytes: int) -> dict:
    """`val` (all languages) and `val_by_lang` on the corpus's val split, as `autarky tokenizer` reports them."""
    from autarky.tokenizer import _capped_texts

    by_lang: dict[str, list[str]] = defaultdict(list)
    for doc in _capped_texts(corpus, "val", max_bytes, "measuring on val", ("text", "lang")):
        by_lang[doc.get("lang") or "und"].append(doc["text"])
    if not by_lang:
        return {"val": None, "val_by_lang": {}}
    per = {lang: word_fertility(tokenizer, texts) for lang, texts in sorted(by_lang.items())}
    keys = ("documents", "bytes", "tokens", "words", "short_words")
    return {"val": _ratios({k: sum(m[k] for m in per.values()) for k in keys}), "val_by_lang": per}


# ---------------------------------------------------------------- the stage


def extend(
    model: Artifact,
    corpus: Artifact,
    workdir: Path,
    config: VocabConfig | None = None,
    name: str | None = None,
    force: bool = False,
) -> tuple[Artifact, Artifact]:
    """A tokenizer with `config.tokens` new tokens learned on `corpus`, and `model` resized to it."""
    from autarky.data.corpus import shard_paths

    config = config or VocabConfig()
    config.validate()
    if model.kind != "model" or corpus.kind != "corpus":
        raise UserError(f"extend takes a model and a corpus, not a {model.kind} and a {corpus.kind}")
    if not (model.path / "tokenizer.json").is_file():
        raise UserError(f"model {model.name} has no tokenizer.json, so there is no tokenizer to extend")
    if not shard_paths(corpus, "train"):
        raise UserError(f"corpus {corpus.name} has no train documents to learn new tokens from")
    recipe = {"type": "extend-bpe", **asdict(config)}
    name = name or default_name(
        compose_name(model.name, f"ext{config.tokens}"), "tokenizer", recipe, [model, corpus]
    )
    tok_builder = Builder(workdir, "tokenizer", name, recipe, [model, corpus])
    tokenizer = tok_builder.existing(force)
    if tokenizer is None:
        with tok_builder:
            tokenizer = _build_tokenizer(tok_builder, model, corpus, config)
    else:
        console.print(f"reusing tokenizer {name} (same model, corpus and settings)")
    model_builder = Builder(workdir, "model", name, recipe, [model, corpus, tokenizer])
    if (done := model_builder.existing(force)) is not None:
        console.print(f"reusing model {name} (same model, corpus and settings)")
        return tokenizer, done
    with model_builder:
        return tokenizer, _build_model(model_builder, model, tokenizer)


def _build_tokenizer(builder: Builder, model: Artifact, corpus: Artifact, config: VocabConfig) -> Artifact:
    from autarky.tokenizer import Tokenizer, _capped_texts

    old = Tokenizer.load(model.path)
    check_extensible(old.hf, model.path)
    texts = _capped_texts(corpus, "train", config.max_train_bytes, "reading train text")
    merges, offered = learn_merges(old.hf, texts, config.tokens, config.min_frequency)
    if not offered:
        raise UserError(
            f"the tokenizer of {model.name} already has every token corpus {corpus.name} offers (no pair of "
            f"its tokens that it leaves apart is seen {config.min_frequency} times): there is nothing to add"
        )
    if offered < config.tokens:
        raise UserError(
            f"corpus {corpus.name} offers only {offered} new tokens (pairs seen at least "
            f"{config.min_frequency} times that the tokenizer leaves apart); pass --tokens {offered} or "
            "less, or give it more text"
        )
    text, ids = extended_json(old.hf, merges)
    (builder.dir / "tokenizer.json").write_text(text, encoding="utf-8")
    for f in TOKENIZER_SIDE_FILES:
        if (model.path / f).is_file():
            shutil.copyfile(model.path / f, builder.dir / f)
    new = Tokenizer.load(builder.dir)
    builder.metrics = {
        "vocab_size": new.vocab_size,
        "old_vocab_size": old.vocab_size,
        "added_tokens": len(ids),
        "first_ids": [ids[0], ids[-1]],
        "sample": [new.decode([i]) for i in ids[:SAMPLE_TOKENS]],
        **val_fertility(new, corpus, config.max_eval_bytes),  # the shape a trained tokenizer's metrics have
        "before": val_fertility(old, corpus, config.max_eval_bytes),
    }
    return builder.finish()


def _build_model(builder: Builder, model: Artifact, tokenizer: Artifact) -> Artifact:
    """The old weights with one row per new token, the mean of its old pieces' rows; the new tokenizer beside."""
    import torch

    from autarky.model import load_pretrained, save_pretrained
    from autarky.tokenizer import Tokenizer

    old_tok, new_tok = Tokenizer.load(model.path), Tokenizer.load(tokenizer)
    net = load_pretrained(model.path, dtype=None)
    old_rows = net.model.embed_tokens.weight.shape[0]
    first, last = tokenizer.metrics["first_ids"]
    rows = max(old_rows, new_tok.vocab_size)
    pieces = {i: old_tok.hf.model.tokenize(new_tok.hf.id_to_token(i)) for i in range(first, last + 1)}
    tied = net.config.tie_word_embeddings
    with torch.no_grad():
        matrices = [net.model.embed_tokens.weight] + ([] if tied else [net.lm_head.weight])
        grown = []
        for weight in matrices:
            new = torch.cat([weight, weight.new_zeros(rows - old_rows, weight.shape[1])])
            for i, toks in pieces.items():
                new[i] = weight[[t.id for t in toks]].float().mean(0).to(weight.dtype)
            grown.append(torch.nn.Parameter(new))
    net.model.embed_tokens.weight = grown[0]
    net.lm_head.weight = grown[0] if tied else grown[1]
    net.config.vocab_size = rows
    save_pretrained(net, builder.dir)
    settings = json.loads((model.path / "config.json").read_text())
    artifact.write_json(builder.dir / "config.json", {**settings, "vocab_size": rows})
    if (model.path / "generation_config.json").is_file():
        shutil.copyfile(model.path / "generation_config.json", builder.dir / "generation_config.json")
    for f in tokenizer.manifest["files"]:
        shutil.copyfile(tokenizer.path / f, builder.dir / f)
    builder.metrics = {
        "parameters": sum(p.numel() for p in net.parameters()),
        "vocab_size": rows,
        "added_tokens": tokenizer.metrics["added_tokens"],
        **{k: tokenizer.metrics[k] for k in ("val", "val_by_lang", "before")},
    }
    return builder.finish()
