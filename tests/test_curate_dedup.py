"""Near dedup on planted duplicates, stable signatures, and resuming a killed run."""

from __future__ import annotations

import random

import numpy as np
import pytest

from autarky.data import curate as curate_module
from autarky.data import read as read_module
from autarky.data.corpus import iter_documents, iter_dropped
from autarky.data.curate import CurateConfig, curate
from autarky.data.dedup import MinHasher, word_hashes

VOCABULARY = [f"w{i}" for i in range(5000)]


def random_text(rng: random.Random, words: int = 200) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def mutate(text: str, rng: random.Random, share: float) -> str:
    """Replace `share` of the words, at random places."""
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * share)):
        words[i] = rng.choice(VOCABULARY)
    return " ".join(words)


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    sa = {tuple(a.split()[i : i + n]) for i in range(len(a.split()) - n + 1)}
    sb = {tuple(b.split()[i : i + n]) for i in range(len(b.split()) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_signatures_are_stable_across_versions():
    """Pinned values: a change here silently re-clusters every corpus ever made, so it must be deliberate."""
    hasher = MinHasher()
    assert hasher.signature("The quick brown fox jumps over the lazy dog again and again")[:3].tolist() == [
        7153739819691251200,
        2918265742909469256,
        2815953948480802227,
    ]
    assert hasher.signature("Съешь же ещё этих мягких французских булок, да выпей чаю")[:3].tolist() == [
        664065094269079736,
        5749483875000170464,
        489824391263174119,
    ]
    assert (hasher.signature("") == np.uint64(2**64 - 1)).all()


def test_word_hashes_ignore_case_and_punctuation():
    a, b = word_hashes("Hello, World!"), word_hashes("hello world")
    assert len(a) == 2 and (a == b).all()
    assert len(word_hashes("по-своему, 2024 год_1")) == 4


def test_signature_estimates_jaccard():
    rng = random.Random(1)
    hasher = MinHasher()
    for share in (0.02, 0.05, 0.2):
        a = random_text(rng, 400)
        b = mutate(a, rng, share)
        true = shingle_jaccard(a, b)
        estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        assert abs(estimate - true) < 0.15, (share, true, estimate)


def test_near_duplicates_are_dropped_and_counted(tmp_path):
    rng = random.Random(7)
    src = tmp_path / "src"
    src.mkdir()
    originals = [random_text(rng) for _ in range(6)]
    for i, text in enumerate(originals):
        (src / f"{i}-a.txt").write_text(text)
    (src / "0-b.txt").write_text(mutate(originals[0], rng, 0.01))  # J ≈ 0.95
    (src / "0-c.txt").write_text(mutate(originals[0], rng, 0.01))
    (src / "1-b.txt").write_text(originals[1])  # exact copy: exact dedup, still counted in the cluster
    (src / "2-b.txt").write_text(mutate(originals[2], rng, 0.3))  # J ≈ 0.2: a different document
    corpus = curate([src], tmp_path / "work", workers=1)
    m = corpus.metrics
    assert m["dropped"]["near_dedup"] == {"near_duplicate": 2}
    assert m["dropped"]["exact_dedup"] == {"exact_duplicate": 1}
    assert m["documents_kept"] == 7
    kept = {
        d["source"].rsplit("/", 1)[1]: d["dup_cluster_size"]
        for split in ("train", "val")
        for d in iter_documents(corpus, split, ("source", "dup_cluster_size"))
    }
    assert kept["0-a.txt"] == 3 and kept["1-a.txt"] == 2 and kept["2-b.txt"] == 1
    assert {d["reason"] for d in iter_dropped(corpus)} == {"near_duplicate", "exact_duplicate"}


def test_resume_after_interruption_redoes_only_unfinished_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(curate_module, "TASK_FILES", 2)
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.txt").write_text(random_text(rng, 50))
    config = CurateConfig()
    reference = curate([src], tmp_path / "reference", config=config, workers=1)

    real = curate_module.process_task
    done = []

    def killed_after_two(task):
        if len(done) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill leaves: some batches done, the rest not
        done.append(task.index)
        return real(task)

    monkeypatch.setattr(curate_module, "process_task", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        curate([src], tmp_path / "work", config=config, workers=1)
    assert not any((tmp_path / "work" / "corpus").glob("*/manifest.json"))
    assert len(list((tmp_path / "work" / "corpus").glob(".parts-*/*.json"))) == 2

    monkeypatch.setattr(curate_module, "process_task", real)
    reads = []
    real_read = read_module.read_source
    monkeypatch.setattr(
        curate_module, "read_source", lambda s, *rest: reads.append(s.path) or real_read(s, *rest)
    )
    resumed = curate([src], tmp_path / "work", config=config, workers=1)
    assert len(reads) == 4  # the two unfinished batches of two files, not all eight
    assert resumed.id == reference.id  # same bytes as a run that was never interrupted
    assert not any((tmp_path / "work" / "corpus").glob(".parts-*"))  # staging is cleaned up


def test_near_dedup_recall_at_jaccard_08_and_above():
    """Planted pairs of J ≥ 0.8: LSH (14 × 8) proposes them ≥ 92% of the time and the threshold confirms them."""
    from autarky.data.dedup import NearDedup

    rng = random.Random(11)
    hasher = MinHasher()
    texts, pairs = [], []
    while len(pairs) < 150:
        a = random_text(rng, 150)
        b = mutate(a, rng, rng.uniform(0.007, 0.027))  # 1 to 4 words of 150
        if shingle_jaccard(a, b) >= 0.8:
            pairs.append((len(texts), len(texts) + 1))
            texts += [a, b]
    for _ in range(100):  # unrelated documents: none of them may go
        texts.append(random_text(rng, 150))
    sigs = np.stack([hasher.signature(t) for t in texts])
    alive = np.ones(len(texts), dtype=bool)
    near = NearDedup(hasher, 0.7)
    near.select(
        hasher.band_keys(sigs), np.arange(len(texts)), lambda i: sigs[i], alive, np.ones(len(texts), np.int32)
    )
    recall = sum(not alive[j] for _, j in pairs) / len(pairs)
    assert recall >= 0.9, recall
    assert all(alive[i] for i, _ in pairs) and alive[2 * len(pairs) :].all()
