"""The quality heuristics' thresholds per language: plain data, read by the config and the filters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QualityThresholds:
    # Gopher quality
    min_doc_words: int = 50
    max_doc_words: int = 0  # 0: no limit. Gopher's 100 000 would drop every novel.
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1  # '#' and '…' per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = (
        0.8  # datatrove's name: at least this share of words must hold a letter
    )
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = ()
    # Gopher repetition
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )
    # FineWeb quality
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


ENGLISH = QualityThresholds(stop_words=("the", "be", "to", "of", "and", "that", "have", "with"))
# FineWeb-2, configs/rus_Cyrl.yml and the pipeline's fixed settings (short-line and paragraph
# checks off, character duplicates 0.1).
RUSSIAN = QualityThresholds(
    min_avg_word_length=3,
    max_avg_word_length=11,
    max_non_alpha_words_ratio=0.713,
    stop_words=(
        "в",
        "и",
        "на",
        "с",
        "года",
        "по",
        "году",
        "из",
        "был",
        "к",
        "не",
        "от",
        "что",
        "за",
        "для",
        "его",
        "как",
        "а",
        "он",
        "также",
        "до",
        "после",
    ),
    dup_line_frac=0.322,
    dup_para_frac=0,
    dup_line_char_frac=0,
    dup_para_char_frac=0,
    top_n_grams=((2, 0.184), (3, 0.164), (4, 0.146)),
    dup_n_grams=((5, 0.168), (6, 0.156), (7, 0.145), (8, 0.133), (9, 0.121), (10, 0.109)),
    line_punct_thr=0.231,
    short_line_thr=999,
    char_duplicates_ratio=0.1,
    new_line_ratio=0.139,
)


def default_thresholds() -> dict[str, dict]:
    """The resolved per-language table (it goes into the config, so the manifest records it)."""
    return {"default": asdict(QualityThresholds()), "en": asdict(ENGLISH), "ru": asdict(RUSSIAN)}
