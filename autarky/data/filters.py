"""Quality heuristics: Gopher quality, Gopher repetition and FineWeb quality, per language.

The definitions follow the Gopher paper (Rae et al. 2021, appendix A) and FineWeb (Penedo et al.
2024) as datatrove implements them; the thresholds for Russian are FineWeb-2's `rus_Cyrl` ones.
Words are `\\w+` runs; the n-gram statistics are computed with numpy over word ids, so a novel of
150 000 words costs milliseconds, not seconds. Each filter reads its thresholds from a
`QualityThresholds` chosen by the document's language (`default` for a language not listed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from autarky.data.dedup import ngram_hashes
from autarky.data.document import Document
from autarky.data.steps import Filter
from autarky.data.thresholds import QualityThresholds, default_thresholds

_WORD = re.compile(r"\w+")
_ALPHA = re.compile(r"[^\W\d_]")
_TERMINAL = (".", "!", "?", "…", '"', "'", "»", "”", ";", ":", ")")


def _from_dict(d: dict) -> QualityThresholds:
    d = dict(d)
    d["stop_words"] = tuple(d.get("stop_words", ()))
    for key in ("top_n_grams", "dup_n_grams"):
        if key in d:
            d[key] = tuple((int(n), float(t)) for n, t in d[key])
    return replace(QualityThresholds(), **d)


@dataclass
class Stats:
    """What the three filters measure on one text, computed once and shared."""

    words: list[str]
    lines: list[str] = field(default_factory=list)
    ids: np.ndarray | None = None
    lengths: np.ndarray | None = None


def text_stats(doc: Document) -> Stats:
    cached = doc.cache.get("stats")
    if cached is not None and cached[0] is doc.text:
        return cached[1]
    words = _WORD.findall(doc.text)
    stats = Stats(words, [line for line in doc.text.split("\n") if line.strip()])
    doc.cache["stats"] = (doc.text, stats)
    return stats


def _word_arrays(stats: Stats) -> tuple[np.ndarray, np.ndarray]:
    if stats.ids is None:
        vocab: dict[str, int] = {}
        stats.ids = np.fromiter(
            (vocab.setdefault(w, len(vocab)) for w in stats.words), np.uint64, len(stats.words)
        )
        stats.lengths = np.fromiter(map(len, stats.words), np.int64, len(stats.words))
    return stats.ids, stats.lengths


WEB_FORMATS = ("html", "warc")


class _PerLanguage(Filter):
    """Picks the thresholds by language; with scope "web", passes documents that did not come from the web.

    These rules were tuned on web crawls: applied to books, manuals or code they drop most of them
    (verse fails the line rules, a reference manual the repetition ones), so by default they judge
    only text extracted from HTML and WARC files.
    """

    def __init__(self, thresholds: dict[str, dict] | None = None, scope: str = "web") -> None:
        super().__init__()
        table = thresholds or default_thresholds()
        self.table = {lang: _from_dict(d) for lang, d in table.items()}
        self.default = self.table.get("default", QualityThresholds())
        self.scope = scope

    def thresholds(self, doc: Document) -> QualityThresholds:
        return self.table.get(doc.lang, self.default)

    def apply(self, doc: Document) -> Document | str:
        if self.scope == "web" and doc.meta.get("format") not in WEB_FORMATS:
            self.stats["not_judged"] += 1
            return doc
        return super().apply(doc)


class GopherQuality(_PerLanguage):
    """Gopher's quality rules: length, word length, symbols, bullets, ellipses, letters, stop words."""

    name = "gopher_quality"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        t = self.thresholds(doc)
        stats = text_stats(doc)
        words, n = stats.words, len(stats.words)
        if n < t.min_doc_words:
            return False, "too_few_words"
        if t.max_doc_words and n > t.max_doc_words:
            return False, "too_many_words"
        _, lengths = _word_arrays(stats)
        avg = float(lengths.mean())
        if avg < t.min_avg_word_length:
            return False, "short_words"
        if avg > t.max_avg_word_length:
            return False, "long_words"
        text = doc.text
        if (text.count("#") + text.count("...") + text.count("…")) / n > t.max_symbol_word_ratio:
            return False, "symbols"
        lines = stats.lines or [""]
        if (
            sum(line.lstrip().startswith(("•", "-", "*", "‣", "–", "—")) for line in lines) / len(lines)
            > t.max_bullet_lines_ratio
        ):
            return False, "bullet_lines"
        if (
            sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines)
            > t.max_ellipsis_lines_ratio
        ):
            return False, "ellipsis_lines"
        if sum(1 for w in words if _ALPHA.search(w)) / n < t.max_non_alpha_words_ratio:
            return False, "non_alpha_words"
        if t.stop_words and t.min_stop_words:
            stop = set(t.stop_words)
            found = 0
            for w in words:
                if w.lower() in stop:
                    found += 1
                    if found >= t.min_stop_words:
                        break
            else:
                return False, "few_stop_words"
        return True


def _duplicate_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in them)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup / max(len(items), 1), dup_chars / max(total_chars, 1)


class GopherRepetition(_PerLanguage):
    """Gopher's repetition rules: duplicated lines and paragraphs, top n-grams, duplicated n-grams."""

    name = "gopher_repetition"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        t = self.thresholds(doc)
        text = doc.text
        paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
        para_frac, para_chars = _duplicate_fraction(paragraphs)
        if t.dup_para_frac and para_frac > t.dup_para_frac:
            return False, "dup_paragraphs"
        if t.dup_para_char_frac and para_chars > t.dup_para_char_frac:
            return False, "dup_paragraph_chars"
        stats = text_stats(doc)
        line_frac, line_chars = _duplicate_fraction(stats.lines)
        if t.dup_line_frac and line_frac > t.dup_line_frac:
            return False, "dup_lines"
        if t.dup_line_char_frac and line_chars > t.dup_line_char_frac:
            return False, "dup_line_chars"
        ids, lengths = _word_arrays(stats)
        total = int(lengths.sum())
        if not total:
            return True
        for n, threshold in t.top_n_grams:
            if len(ids) < n:
                break
            _, first, counts = np.unique(ngram_hashes(ids, n), return_index=True, return_counts=True)
            top = int(np.argmax(counts))
            if (
                counts[top] > 1
                and counts[top] * int(lengths[first[top] : first[top] + n].sum()) / total > threshold
            ):
                return False, f"top_{n}_gram"
        for n, threshold in t.dup_n_grams:
            if len(ids) < n:
                break
            h = ngram_hashes(ids, n)
            _, first = np.unique(h, return_index=True)
            repeat = np.ones(len(h), dtype=bool)
            repeat[first] = False
            starts = np.flatnonzero(repeat)
            if not len(starts):
                continue
            cover = np.zeros(len(ids) + 1, dtype=np.int64)
            np.add.at(cover, starts, 1)
            np.add.at(cover, starts + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            if int(lengths[covered].sum()) / total > threshold:
                return False, f"dup_{n}_gram"
        return True


class FineWebQuality(_PerLanguage):
    """FineWeb's rules: lines ending in punctuation, short lines, duplicated line characters, list-likeness."""

    name = "fineweb_quality"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        t = self.thresholds(doc)
        stats = text_stats(doc)
        lines = [line.strip() for line in stats.lines]
        if not lines:
            return False, "empty"
        if sum(line.endswith(_TERMINAL) for line in lines) / len(lines) < t.line_punct_thr:
            return False, "line_punct_ratio"
        if sum(len(line) <= t.short_line_length for line in lines) / len(lines) > t.short_line_thr:
            return False, "short_line_ratio"
        _, dup_chars = _duplicate_fraction(lines)
        if dup_chars > t.char_duplicates_ratio:
            return False, "char_dup_ratio"
        if doc.text.count("\n") / max(len(stats.words), 1) > t.new_line_ratio:
            return False, "list_ratio"
        return True
