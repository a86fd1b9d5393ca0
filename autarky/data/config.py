"""The curation recipe: every setting that shapes a corpus, with its default and help, and no
heavy imports, so the CLI reads it (and enters its network namespace) before numpy or pyarrow start
their threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autarky.console import UserError
from autarky.data.thresholds import default_thresholds
from autarky.options import setting

if TYPE_CHECKING:
    from autarky.data.dedup import MinHasher
    from autarky.data.read import ReadOptions


@dataclass
class CurateConfig:
    """Every setting that shapes the corpus (how many workers run it does not, so it is not here)."""

    # reading
    text_field: str = setting("text", help="Field holding the text in .jsonl/.parquet.")
    id_field: str = setting(
        "id", help="Field kept as the source's own id (`source_id` in meta) in .jsonl/.parquet."
    )
    tags: dict[str, str] = setting(
        factory=dict, cli=False, help="key=value carried by every document (`tags` column); set with --tag."
    )
    source_tags: dict[str, dict[str, str]] = setting(
        factory=dict,
        cli=False,
        help="Per source argument: key=value carried by its documents only, over `tags`; --tag SRC::key=value.",
    )
    follow_links: bool = setting(
        False, help="Follow links that lead out of the given directories, and links to directories."
    )
    max_expansion: int = setting(
        100, help="A source may decompress to this many times its size on disk, within the two bounds below."
    )
    min_budget_bytes: int = setting(
        256 << 20, help="Decompressed bytes any source may produce, however small."
    )
    max_budget_bytes: int = setting(4 << 30, help="Decompressed bytes no source may pass, however large.")
    entries_per_kib: int = setting(
        64,
        help="Archive members, JSON lines, Parquet rows and WARC records a source may hold per KiB on disk "
        "(at least --min-entries): past it, it is a bomb, not data.",
    )
    min_entries: int = setting(10_000, help="Entries any source may hold, however small.")
    max_document_chars: int = setting(
        10_000_000,
        help="Longer documents are dropped (reason too_long), cut to this length in the dropped rows.",
    )
    # per-document steps
    normalize: bool = setting(
        True, flags=("--normalize/--no-normalize",), help="Normalise Unicode, newlines, controls and spaces."
    )
    fix_mojibake: bool = setting(
        True, flags=("--mojibake-fix/--no-mojibake-fix",), help="Repair mis-decoded text (ftfy)."
    )
    langid: bool = setting(True, flags=("--langid/--no-langid",), help="Identify each document's language.")
    languages: list[str] = setting(
        factory=list,
        flags=("--lang",),
        help="Keep only these languages (ISO 639-1); empty: keep all, label only.",
    )
    language_min_score: float = setting(0.65, help="Score an allowed language must reach (0 to 1).")
    language_thresholds: dict[str, float] = setting(
        factory=lambda: {"ru": 0.9}, help="Per-language score thresholds (FineWeb-2's for Russian)."
    )
    langid_chars: int = setting(
        4_000, help="Characters language ID reads: four windows of a long text (fastText reads ~1.4 MB/s)."
    )
    gopher_quality: bool = setting(True, help="Gopher quality heuristics.")
    gopher_repetition: bool = setting(True, help="Gopher repetition heuristics.")
    fineweb_quality: bool = setting(True, help="FineWeb quality heuristics.")
    quality_scope: str = setting(
        "web", help="web: the heuristics judge only text from HTML/WARC; all: every document."
    )
    quality_thresholds: dict[str, dict] = setting(
        factory=default_thresholds, help="Heuristic thresholds per language (`default` for the others)."
    )
    pii: bool = setting(
        True,
        flags=("--pii/--no-pii",),
        help="Redact e-mails, phones, cards, IP addresses, SNILS, INN, passports.",
    )
    # global steps
    exact_dedup: bool = setting(
        True, flags=("--dedup/--no-dedup",), help="Drop exact duplicates (the first in source order is kept)."
    )
    near_dedup: bool = setting(
        True,
        flags=("--near-dedup/--no-near-dedup",),
        help="Drop near duplicates (MinHash LSH over word n-grams, confirmed by their exact Jaccard).",
    )
    minhash_ngram: int = setting(5, help="Words per shingle for MinHash.")
    minhash_bands: int = setting(
        22,
        help="LSH bands: 22 bands of 5 rows propose pairs of Jaccard 0.75 as candidates 99.7% of the time, "
        "0.7 98%, 0.6 83% (dedup.py).",
    )
    minhash_rows: int = setting(5, help="LSH rows per band.")
    near_dup_threshold: float = setting(
        0.75,
        help="In (0, 1]: the Jaccard similarity of two documents' word 5-gram sets at which they are near "
        "duplicates, computed exactly for every pair LSH proposes. Below ~0.65 LSH (22 bands x 5 rows) "
        "proposes fewer of the pairs: 83% at 0.6, 50% at 0.5.",
    )
    # balance
    max_doc_share: float = setting(
        0.2,
        help="Warn when one document holds more than this share of the kept text (above 0, at most 1).",
    )
    cap_doc_share: bool = setting(
        False,
        help="Cut the documents over --max-doc-share down to that share instead of only warning: each "
        "keeps its start, up to a line end; the rest is left out (report.md lists what was cut).",
    )
    # output
    val_fraction: float = setting(0.02, help="Share of documents (or of text, split by position) for val.")
    val_split: str = setting(
        "auto",
        help="document: whole documents go to val, chosen by their text's hash; position: val is the last "
        "--val-fraction of every document's text; auto: document, or position when one document is kept.",
    )
    shard_bytes: int = setting(64 << 20, help="UTF-8 text per shard file.")

    @property
    def hasher(self) -> MinHasher:
        from autarky.data.dedup import MinHasher

        return MinHasher(self.minhash_ngram, self.minhash_bands, self.minhash_rows)

    @property
    def read_options(self) -> ReadOptions:
        from autarky.data.read import ReadOptions

        return ReadOptions(
            self.text_field,
            self.id_field,
            self.max_expansion,
            self.min_budget_bytes,
            self.max_budget_bytes,
            self.entries_per_kib,
            self.min_entries,
        )

    def validate(self) -> None:
        """A `UserError` for a setting no run can use, before any work starts."""
        if self.quality_scope not in ("web", "all"):
            raise UserError(f"the quality scope is 'web' or 'all', not {self.quality_scope!r}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be at least 0 and below 1, not {self.val_fraction}")
        if self.val_split not in ("auto", "document", "position"):
            raise UserError(f"--val-split is auto, document or position, not {self.val_split!r}")
        if not 0 < self.max_doc_share <= 1:
            raise UserError(f"--max-doc-share must be above 0 and at most 1, not {self.max_doc_share}")
        if not 0 < self.near_dup_threshold <= 1:
            raise UserError(
                f"--near-dup-threshold must be above 0 and at most 1, not {self.near_dup_threshold}"
            )
        if self.languages:
            from autarky.data.langid import check_languages

            check_languages(self.languages)
        if not 0 <= self.language_min_score <= 1:
            raise UserError(f"the language score must be between 0 and 1, not {self.language_min_score}")
        positive = ("minhash_ngram", "minhash_bands", "minhash_rows", "shard_bytes", "langid_chars")
        limits = ("max_expansion", "min_budget_bytes", "max_budget_bytes", "entries_per_kib", "min_entries")
        for name in (*positive, *limits, "max_document_chars"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be 1 or more, not {getattr(self, name)}")
        if self.min_budget_bytes > self.max_budget_bytes:
            raise UserError("min_budget_bytes must not be above max_budget_bytes")


@dataclass
class ChatConfig:
    """Every setting that shapes a chat corpus (autarky curate-chat)."""

    normalize: bool = setting(
        True, flags=("--normalize/--no-normalize",), help="Normalise each message as curate does a document."
    )
    pii: bool = setting(
        True,
        flags=("--pii/--no-pii",),
        help="Redact e-mails, phones, cards, IP addresses, SNILS, INN, passports in every message.",
    )
    exact_dedup: bool = setting(
        True, flags=("--dedup/--no-dedup",), help="Drop repeated conversations (the first is kept)."
    )
    max_chars: int = setting(
        200_000, help="A conversation with more characters than this is dropped (reason too_long)."
    )
    val_fraction: float = setting(0.05, help="Share of conversations held out for evaluation (val split).")

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be at least 0 and below 1, not {self.val_fraction}")
        if self.max_chars < 1:
            raise UserError(f"--max-chars must be 1 or more, not {self.max_chars}")
