"""Deduplication: exact (by text hash) and near (MinHash LSH over word 5-grams, then their exact Jaccard).

Both run after the per-document steps, over compact per-document keys (16 bytes of text hash, the
MinHash signature in a memory-mapped array), so memory grows with the number of documents and never
with their text. In each group of duplicates the first document in source order is kept.

Near dedup is two steps. LSH proposes candidates: the 110 MinHash values of a signature are cut into
22 bands of 5 rows, and two documents whose word 5-gram sets have Jaccard similarity J share at least
one band's key with probability 1 - (1 - J^5)^22, an S-curve loose enough that a pair a reader would
call copies is almost never missed:

    J            0.3    0.5    0.6    0.7    0.75    0.8
    candidate    5%     50%    83%    98.3%  99.74%  99.98%

Then each candidate pair is confirmed by the exact Jaccard of the two documents' 5-gram sets (their
64-bit hashes, read back from the kept text of the candidates alone), not by the estimate two
signatures give (±0.04 near 0.8, which would cut both ways at the threshold). A pair is a duplicate
when J ≥ `near_dup_threshold` (0.75 by default): so recall at the threshold is LSH's, and a pair
below it is never removed, however many candidates the looser bands propose. Datatrove stops at
the first step, with 14 bands of 8 rows: it misses a pair at J = 0.76 about one time in five, and
removes one at J = 0.5 one time in twenty.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from autarky.data.document import Document
from autarky.data.steps import GlobalStep, Transform


class ExactDedup(GlobalStep):
    """Drops a document whose normalised text is identical to an earlier one's."""

    name = "exact_dedup"
    reason = "exact_duplicate"

    def __init__(self, hashes: list[bytes]) -> None:
        super().__init__()
        self.hashes = hashes

    def select(self, alive: np.ndarray, copies: np.ndarray) -> None:
        """Clear `alive` for every repeat and add its copies to the first one's."""
        start = time.perf_counter()
        first: dict[bytes, int] = {}
        total = dropped = 0
        for i, h in enumerate(self.hashes):
            if not alive[i]:
                continue
            total += 1
            j = first.setdefault(h, i)
            if j != i:
                alive[i] = False
                copies[j] += copies[i]
                dropped += 1
        self.count(total, {self.reason: dropped}, time.perf_counter() - start)


# ------------------------------------------------------------------ near dedup: MinHash LSH

_MASK = (1 << 64) - 1
_P = np.uint64(0x100000001B3)
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))  # P is odd, so it has an inverse modulo 2**64
_EMPTY = np.uint64(_MASK)


def _stable64(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.cache
def _word_chars() -> np.ndarray:
    """Which code points of the Basic Multilingual Plane are word characters (letters, digits, _)."""
    table = np.array([chr(c).isalnum() for c in range(0x10000)], dtype=bool)
    table[ord("_")] = True
    return table


@functools.cache
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.full(n, _P, dtype=np.uint64)
    p[0] = 1
    q = np.full(n, _P_INV, dtype=np.uint64)
    q[0] = 1
    return np.cumprod(p), np.cumprod(q)


def word_hashes(text: str) -> np.ndarray:
    """A stable 64-bit hash of every word (a run of letters, digits or _) of the lower-cased text.

    All in numpy over the UTF-32 code points: a polynomial hash of each word from one prefix sum,
    (sum c_t P^t over the word) times P^-start, so a word hashes the same wherever it stands.
    """
    return _words(text.lower())[0]


def _words(lowered: str) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every word of an already lower-cased text, and where each starts (in code points)."""
    codes = np.frombuffer(lowered.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    none = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    if not len(codes):
        return none
    table = _word_chars()
    is_word = np.where(
        codes < 0x10000, table[np.minimum(codes, 0xFFFF)], codes >= 0x20000
    )  # CJK ext. are words
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return none
    size = 1 << int(len(codes)).bit_length()  # powers cached by size class, not by every length
    powers, inverse = _powers(size + 1)
    prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes.astype(np.uint64) * powers[: len(codes)])))
    h = (prefix[ends] - prefix[starts]) * inverse[starts]
    return _mix(h ^ (ends - starts).astype(np.uint64)), starts


def pieces(text: str, size: int) -> Iterator[str]:
    """The text in pieces of at most `size` characters, each cut after a space or newline where one is
    in its second half (a text without one for that long is cut anywhere)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind(c, start + size // 2, end) for c in " \n\t") + 1
            end = cut or end
        yield text[start:end]
        start = end


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A polynomial hash (mod 2**64) of every run of `n` consecutive uint64 ids; 1 <= n <= len(ids)."""
    h = ids[: len(ids) - n + 1].copy()
    for k in range(1, n):
        h = h * _P + ids[k : len(ids) - n + 1 + k]
    return h


@dataclass(frozen=True)
class MinHasher:
    """MinHash over word n-grams with our own 64-bit hashes, so signatures never change with a library.

    Words are lower-cased runs of letters and digits (`word_hashes`); an n-gram's hash mixes its words'; each
    of the `bands * rows` permutations is `a * x + b (mod 2**64)` with odd `a`, the constants drawn
    from blake2b of their index. A text with fewer than `n` words is one n-gram of all of them.
    """

    n: int = 5
    bands: int = 22
    rows: int = 5
    seed: int = 1

    @property
    def size(self) -> int:
        return self.bands * self.rows

    @functools.cached_property
    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.array([_stable64(f"a/{self.seed}/{i}") | 1 for i in range(self.size)], dtype=np.uint64)
        b = np.array([_stable64(f"b/{self.seed}/{i}") for i in range(self.size)], dtype=np.uint64)
        return a, b

    def shingles(self, text: str, piece_chars: int = 1 << 20) -> Iterator[np.ndarray]:
        """The n-gram hashes of the text, a piece at a time, so memory stays bounded however long it is.

        Each piece's words follow the last n-1 words of the one before, so together the pieces hold
        every n-gram of the whole text, as one pass would. A text of fewer than n words is one n-gram.
        """
        carry = np.zeros(0, dtype=np.uint64)
        emitted = False
        for piece in pieces(text, piece_chars):
            ids = np.concatenate((carry, word_hashes(piece)))
            if len(ids) >= self.n:
                yield _mix(ngram_hashes(ids, self.n))
                emitted, carry = True, ids[len(ids) - self.n + 1 :]
            else:
                carry = ids
        if not emitted and len(carry):
            yield _mix(ngram_hashes(carry, len(carry)))

    def shingle_set(self, text: str) -> np.ndarray:
        """The text's distinct n-gram hashes, sorted: the set whose Jaccard the signature estimates."""
        parts = list(self.shingles(text))
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def shingle_sets(self, texts: list[str]) -> list[np.ndarray]:
        """`shingle_set` of each text, short texts in one numpy pass over them all (for the thousands of
        candidates near dedup confirms, where a pass per text would cost as much as signing it).

        The texts are joined with newlines, which no word crosses, and an n-gram whose words are not
        all in one text is left out. A text of fewer than n words, or one long enough to be read in
        pieces, goes through `shingle_set`.
        """
        alone = [len(t) >= 1 << 20 for t in texts]
        together = ["" if a else t.lower() for t, a in zip(texts, alone, strict=True)]
        hashes, starts = _words("\n".join(together))
        ends = np.cumsum([len(t) + 1 for t in together])
        doc = np.searchsorted(ends, starts, side="right")
        words = np.bincount(doc, minlength=len(texts))
        out = [np.zeros(0, dtype=np.uint64)] * len(texts)
        if len(hashes) >= self.n:
            grams = ngram_hashes(hashes, self.n)
            first = doc[: len(grams)]
            inside = first == doc[self.n - 1 :]
            grams, first = _mix(grams[inside]), first[inside]
            order = np.lexsort((grams, first))
            grams, first = grams[order], first[order]
            keep = np.concatenate(([True], (grams[1:] != grams[:-1]) | (first[1:] != first[:-1])))
            grams, first = grams[keep], first[keep]
            bounds = np.searchsorted(first, np.arange(len(texts) + 1))
            out = [grams[bounds[i] : bounds[i + 1]] for i in range(len(texts))]
        for i, text in enumerate(texts):
            if alone[i] or 0 < words[i] < self.n:
                out[i] = self.shingle_set(text)
        return out

    def signature(self, text: str, chunk: int = 2048) -> np.ndarray:
        """`size` uint64 minima; all ones (`_EMPTY`) for a text without words."""
        sig = np.full(self.size, _EMPTY, dtype=np.uint64)
        a, b = self._params
        for x in self.shingles(text):  # repeats do not change a minimum, so no np.unique
            buffer = np.empty((min(chunk, len(x)), self.size), dtype=np.uint64)
            for start in range(0, len(x), chunk):
                part = x[start : start + chunk, None]
                block = buffer[: len(part)]
                np.multiply(part, a, out=block)  # wraps modulo 2**64, as it should
                np.add(block, b, out=block)
                np.minimum(sig, block.min(axis=0), out=sig)
        return sig

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """One uint64 per band per signature: equal keys make two documents candidates."""
        out = np.empty((len(sigs), self.bands), dtype=np.uint64)
        for j in range(self.bands):
            h = np.full(len(sigs), np.uint64(j + 1), dtype=np.uint64)
            for r in range(self.rows):
                h = h * _P + sigs[:, j * self.rows + r]
            out[:, j] = _mix(h)
        return out


class MinHashSignature(Transform):
    """Computes the document's MinHash signature for near dedup (kept in `doc.cache`, never dropped)."""

    name = "minhash"

    def __init__(self, hasher: MinHasher) -> None:
        super().__init__()
        self.hasher = hasher

    def apply(self, doc: Document) -> Document:
        doc.cache["signature"] = self.hasher.signature(doc.text)
        return doc


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:  # the smaller index (earlier in source order) becomes the root: it is kept
            self.parent[max(rx, ry)] = min(rx, ry)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity of two sorted arrays of distinct values (0 when either is empty)."""
    if not len(a) or not len(b):
        return 0.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def candidate_pairs(keys: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sorted, distinct (i, j), i < j, of documents `index` that share a band's key (`keys`, row by row).

    Within each group of one key every member is paired with the group's first (the earliest, as
    copies of one text usually are) and with the one before it: linear in the group's size, where all
    pairs would be quadratic in a group of thousands.
    """
    found = [np.zeros((0, 2), dtype=np.int64)]
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        first = np.flatnonzero(starts)[np.cumsum(starts) - 1]
        later = np.flatnonzero(~starts)
        ids = index[order].astype(np.int64)
        found.append(np.stack((ids[first[later]], ids[later]), axis=1))
        found.append(np.stack((ids[later - 1], ids[later]), axis=1))
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)


class ShingleStore:
    """The shingle sets of the candidate documents, written once to a file and read back memory-mapped,
    so confirming pairs holds the sets of two documents at a time, however many candidates there are."""

    def __init__(
        self, path: Path, hasher: MinHasher, texts: Iterable[tuple[int, str]], batch_chars: int = 1 << 18
    ) -> None:
        self.offsets: dict[int, tuple[int, int]] = {}
        self.size = 0
        with open(path, "wb") as f:
            batch: list[tuple[int, str]] = []
            chars = 0
            for i, text in texts:
                batch.append((i, text))
                chars += len(text)
                if chars >= batch_chars:
                    self._write(f, hasher, batch)
                    batch, chars = [], 0
            self._write(f, hasher, batch)
        self.values = np.memmap(path, dtype=np.uint64, mode="r") if self.size else np.zeros(0, np.uint64)

    def _write(self, f: BinaryIO, hasher: MinHasher, batch: list[tuple[int, str]]) -> None:
        for (i, _), values in zip(batch, hasher.shingle_sets([t for _, t in batch]), strict=True):
            f.write(values.tobytes())
            self.offsets[i] = (self.size, self.size + len(values))
            self.size += len(values)

    def __getitem__(self, i: int) -> np.ndarray:
        start, end = self.offsets[i]
        return self.values[start:end]


Shingles = Callable[[np.ndarray], Mapping[int, np.ndarray]]  # candidates' indices → their shingle sets


class NearDedup(GlobalStep):
    """Drops documents that are near-duplicates of an earlier one (exact word 5-gram Jaccard ≥ `threshold`).

    LSH with `bands` × `rows` proposes candidates (how likely for each similarity, the module's
    docstring says); the exact Jaccard of their shingle sets confirms them, so the threshold is
    exact and a pair below it is never removed. Confirmed pairs join clusters (union-find); the
    earliest member is kept and counts the whole cluster. The clusters are the connected parts of
    the confirmed pairs, so a pair already joined through others is not compared.
    """

    name = "near_dedup"
    reason = "near_duplicate"

    def __init__(self, hasher: MinHasher, threshold: float = 0.75) -> None:
        super().__init__()
        self.hasher = hasher
        self.threshold = threshold

    def select(
        self, keys: np.ndarray, index: np.ndarray, shingles: Shingles, alive: np.ndarray, copies: np.ndarray
    ) -> None:
        """Cluster the documents `index` (band `keys` row by row; `shingles(indices)` gives their sets).

        Clears `alive` for every dropped member and adds its copies to its cluster's kept one.
        """
        start = time.perf_counter()
        considered = int(alive.sum())
        pairs = candidate_pairs(keys, index)
        sets = shingles(np.unique(pairs))
        found = _UnionFind()
        compared = 0
        for i, j in pairs.tolist():
            if found.find(i) == found.find(j):
                continue
            a, b = sets[i], sets[j]
            if min(len(a), len(b)) < self.threshold * max(len(a), len(b)):  # J ≤ the smaller / the larger
                continue
            compared += 1
            if jaccard(a, b) >= self.threshold:
                found.union(i, j)
        dropped = 0
        for member in sorted(found.parent):
            root = found.find(member)
            if root != member:
                alive[member] = False
                copies[root] += copies[member]
                dropped += 1
        self.stats["candidate_pairs"] += len(pairs)
        self.stats["compared_pairs"] += compared
        self.count(considered, {self.reason: dropped}, time.perf_counter() - start)
