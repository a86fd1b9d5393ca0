"""Deduplication: exact (by text hash) and near (MinHash LSH over word 5-grams, our own code).

Both run after the per-document steps, over compact per-document keys only (16 bytes of text hash,
the MinHash signature in a memory-mapped array), so memory grows with the number of documents and
never with their text. In each group of duplicates the first document in source order is kept.

Near dedup finds candidates with LSH: the 112 MinHash values of a signature are cut into 14 bands of 8
rows, and two documents whose word 5-gram sets have Jaccard similarity J share at least one band's key
with probability 1 - (1 - J^8)^14, an S-curve centred near J = 0.72:

    J            0.5   0.6   0.7   0.8   0.9
    candidate    5%    21%   56%   92%   99.96%

Only candidates are compared at all; `near_dup_threshold` (0.7 by default) then confirms a pair
when the share of equal values in the two full signatures (an estimate of J, ±0.04 near 0.8) reaches
it. So the threshold can only remove candidates, never add them: lowering it below ~0.7 finds few
more pairs, and a pair at J = 0.8 is missed 8% of the time whatever it is. Moving the curve means other
bands and rows (`minhash_bands`, `minhash_rows`), which changes every signature's band keys.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

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
    codes = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if not len(codes):
        return np.zeros(0, dtype=np.uint64)
    table = _word_chars()
    is_word = np.where(
        codes < 0x10000, table[np.minimum(codes, 0xFFFF)], codes >= 0x20000
    )  # CJK ext. are words
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return np.zeros(0, dtype=np.uint64)
    size = 1 << int(len(codes)).bit_length()  # powers cached by size class, not by every length
    powers, inverse = _powers(size + 1)
    prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes.astype(np.uint64) * powers[: len(codes)])))
    h = (prefix[ends] - prefix[starts]) * inverse[starts]
    return _mix(h ^ (ends - starts).astype(np.uint64))


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
    bands: int = 14
    rows: int = 8
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


class NearDedup(GlobalStep):
    """Drops documents that are near-duplicates of an earlier one (estimated Jaccard ≥ `threshold`).

    LSH with `bands` × `rows` finds candidates (two documents sharing one band's key; how likely
    that is for each similarity, the module's docstring says); the full signatures then confirm
    them, which keeps false removals rare below the threshold. The threshold only confirms: a pair
    LSH does not propose is never compared. Confirmed pairs join clusters (union-find); the
    earliest member is kept and counts the whole cluster.
    """

    name = "near_dedup"
    reason = "near_duplicate"

    def __init__(self, hasher: MinHasher, threshold: float = 0.7) -> None:
        super().__init__()
        self.hasher = hasher
        self.threshold = threshold

    def select(
        self, keys: np.ndarray, index: np.ndarray, rows, alive: np.ndarray, copies: np.ndarray
    ) -> None:
        """Cluster the documents `index` (band `keys` row by row; `rows(indices)` gives full signatures).

        Clears `alive` for every dropped member and adds its copies to its cluster's kept one.
        """
        start = time.perf_counter()
        considered = int(alive.sum())
        pairs: set[tuple[int, int]] = set()
        for j in range(keys.shape[1]):
            order = np.argsort(keys[:, j], kind="stable")
            same = np.flatnonzero(keys[order[1:], j] == keys[order[:-1], j])
            pairs.update(zip(index[order[same]].tolist(), index[order[same + 1]].tolist(), strict=True))
        found = _UnionFind()
        pair_array = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        for at in range(0, len(pair_array), 65536):  # bounded memory: 1 MB of signatures per 1000 pairs
            batch = pair_array[at : at + 65536]
            similar = (rows(batch[:, 0]) == rows(batch[:, 1])).mean(axis=1) >= self.threshold
            for i, j in batch[similar].tolist():
                found.union(i, j)
        dropped = 0
        for member in sorted(found.parent):
            root = found.find(member)
            if root != member:
                alive[member] = False
                copies[root] += copies[member]
                dropped += 1
        self.count(considered, {self.reason: dropped}, time.perf_counter() - start)
