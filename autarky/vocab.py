"""Extend a model's tokenizer with tokens learned on a corpus: a new tokenizer and model pair.

A byte-level BPE tokenizer trained on English splits a Russian word into many pieces (a Cyrillic
letter is two bytes); every extra piece costs a step of training and of generation. `extend` learns
N new merges on a corpus's train split, starting from the segmentation the old tokenizer gives each
word, and appends them after the old merges, so:

- text in which no new merge fires is encoded exactly as before (the old ids, the old model rows);
- every new token is reachable: its merge rule is in the tokenizer, not only its vocabulary entry;
- decoding is unchanged (a token still stands for the bytes it concatenates).

The model gets one embedding row (and output row, if untied) per new token, the mean of the rows of
the old tokens the old tokenizer splits that token into, so continued pretraining (`train --init`)
starts from a model that already roughly knows each new token. The old rows are left untouched.
"""

from __future__ import annotations

import heapq
import json
import re
import shutil
from collections import Counter, defaultdict
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
            raise UserError(f"tokens is {self.tokens}; extend adds at least one token")
        if self.min_frequency < 1 or self.max_train_bytes < 1 or self.max_eval_bytes < 1:
            raise UserError("min_frequency, max_train_bytes and max_eval_bytes must be positive")


# ---------------------------------------------------------------- learning merges


def word_counts(hf, texts: Iterable[str]) -> Counter:
    """How often each pre-tokenized piece (a word, in the tokenizer's own alphabet) occurs."""
    counts: Counter = Counter()
    for text in texts:
        if hf.normalizer is not None:
            text = hf.normalizer.normalize_str(text)
        counts.update(piece for piece, _ in hf.pre_tokenizer.pre_tokenize_str(text))
    return counts


def learn_merges(
    segments: dict[tuple[str, ...], int], known: set[str], n: int, min_frequency: int
) -> list[tuple[str, str]]:
    """Up to `n` merges, most frequent pair first, on words already split as the old tokenizer splits them.

    A pair whose concatenation the vocabulary already holds is never merged: it would give an old
    token a second way in, and old text would then be encoded differently. Pair counts are kept up to
    date incrementally (a heap with stale entries skipped), so each merge costs only the words it touches.
    """
    words = [list(w) for w in segments]
    counts = list(segments.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:], strict=False):
            pairs[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    known = set(known)
    while heap and len(merges) < n:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair) or pair[0] + pair[1] in known:
            continue  # a stale entry (its count changed since) or a token the vocabulary has
        if -count < min_frequency:
            break
        merges.append(pair)
        known.add(pair[0] + pair[1])
        changed = set()
        for i in where.pop(pair):
            changed |= _merge_word(words, counts[i], i, pair, pairs, where)
        for p in changed:
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], p))
    return merges


def _merge_word(words, count, i, pair, pairs, where) -> set:
    """Merge `pair` in word i, left to right as the tokenizer does; update the pair counts; return the pairs touched."""
    old = words[i]
    new, j = [], 0
    while j < len(old):
        if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
            new.append(old[j] + old[j + 1])
            j += 2
        else:
            new.append(old[j])
            j += 1
    if len(new) == len(old):
        return set()  # the pair was gone from this word already
    for p in zip(old, old[1:], strict=False):
        pairs[p] -= count
    for p in zip(new, new[1:], strict=False):
        pairs[p] += count
        where[p].add(i)
    words[i] = new
    return set(zip(old, old[1:], strict=False)) | set(zip(new, new[1:], strict=False))


def extended_json(hf, merges: list[tuple[str, str]]) -> tuple[str, list[int]]:
    """The tokenizer.json with the merges appended (after every old one) and their tokens given new ids."""
    data = json.loads(hf.to_str())
    model = data["model"]
    taken = [*model["vocab"].values(), *(t["id"] for t in data.get("added_tokens") or [])]
    next_id = max(taken) + 1
    ids = []
    for a, b in merges:
        model["vocab"][a + b] = next_id
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
    words = word_counts(old.hf, _capped_texts(corpus, "train", config.max_train_bytes, "reading train text"))
    segments: Counter = Counter()
    for word, count in words.items():
        segments[tuple(t.value for t in old.hf.model.tokenize(word))] += count
    known = set(old.hf.get_vocab(with_added_tokens=True))
    merges = learn_merges(segments, known, config.tokens, config.min_frequency)
    if not merges:
        raise UserError(
            f"the tokenizer of {model.name} already has every token corpus {corpus.name} offers (no pair of "
            f"its tokens that it leaves apart is seen {config.min_frequency} times): there is nothing to add"
        )
    if len(merges) < config.tokens:
        raise UserError(
            f"corpus {corpus.name} offers only {len(merges)} new tokens (pairs seen at least "
            f"{config.min_frequency} times that the tokenizer leaves apart); pass --tokens {len(merges)} or "
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
