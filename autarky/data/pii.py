"""PII redaction: e-mail, phone numbers, IP addresses, payment cards, SNILS, INN, passport numbers.

Each kind is a pattern and, where the number has one, its check: a card must pass Luhn, a SNILS
and an INN their check digits, an IP address must parse. A number that fails its check is not
personal data as far as we can tell and is left alone, so order numbers and ISBNs survive. INN and
passport numbers are plain digit runs, so they are taken only next to their label, in any case and
in Cyrillic or Latin ("ИНН 7707…", "инн", "ИНН/КПП 7707…/7707…", "паспорт 45 06 123456", "серия
45 06 номер 123456"); a SNILS is taken grouped (spaces or hyphens) anywhere, or bare after its label.
A redaction becomes a placeholder such as `<EMAIL>`, and the document's meta counts them.

Not covered: names, postal addresses, dates of birth, numbers written in words or spelled out
with other separators, e-mail addresses obfuscated as "at"/"dot", and documents of other countries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from autarky.data.document import Document
from autarky.data.steps import Transform

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b")
_CARD = re.compile(
    r"(?<![\d-])(?:[2-6]\d{3}(?:[ -]?\d{4}){2}[ -]?\d{1,7}"  # 4-4-4-4 and longer: Visa, Mastercard, Mir
    r"|3\d{3}[ -]?\d{6}[ -]?\d{4,5})(?![\d-])"  # 4-6-5 (American Express) and 4-6-4 (Diners)
)
_LABEL_START = r"(?<![^\W\d_])"  # a label starts a word: not the tail of "длинный"
_SNILS = re.compile(
    r"(?<![\d-])\d{3}[- ]\d{3}[- ]\d{3}[- ]\d{2}(?![\d-])"  # 112-233-445 95, 112 233 445 95, 112-233-445-95
    rf"|{_LABEL_START}(?i:снилс|snils)[: \t№]*(?P<bare>\d{{11}})(?!\d)"  # снилс 11223344595
)
_INN = re.compile(
    rf"{_LABEL_START}(?i:инн|inn)(?:\s*/\s*(?i:кпп|kpp))?[:\s№]*(?P<number>\d{{12}}|\d{{10}})(?!\d)"
)
_PASSPORT = re.compile(
    r"(?i)(?:паспорт\w*|passport|сери[яи])(?:[^\d\n]{0,25})"
    r"(?P<number>\d{2} ?\d{2}(?:[^\d\n]{0,12})\d{6}|\d{2} ?\d{7})(?!\d)"  # 45 06 № 123456; abroad 75 1234567
    r"|(?i:passport)(?: no\.?| number| #)?[:\s]*(?P<intl>(?=[A-Z0-9]*\d)[A-Z0-9]{6,9})\b"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+7|8)[\s(-]*\d{3}[\s)-]*\d{3}[\s-]*\d{2}[\s-]*\d{2}(?![\d-])"  # Russian
    r"|(?<![\w+])(?:(?:\+7|8)[\s-]*)?\(\d{3,5}\)[\s-]*\d{1,3}(?:[\s-]?\d{2}){2}(?![\d-])"  # (495) 123-45-67
    r"|(?<![\w-])\d{3}-\d{3}-\d{2}-\d{2}(?![\d-])"  # 495-123-45-67
    r"|(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}(?![\d-])"  # international, with a +
    r"|(?<![\w-])\(\d{3}\)\s?\d{3}-\d{4}(?![\d-])|(?<![\w-])\d{3}-\d{3}-\d{4}(?![\d-])"  # North American
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def snils_valid(digits: str) -> bool:
    """The last two digits check the first nine (weights 9…1, modulo 101, 100 counting as 00)."""
    if len(digits) != 11 or int(digits[:9]) <= 1001998:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(9, 0, -1), strict=True))
    check = total % 101
    return (0 if check == 100 else check) == int(digits[9:])


def inn_valid(digits: str) -> bool:
    """A 10-digit (organisation) INN has one check digit, a 12-digit (person) INN two."""

    def check(ds: str, weights: tuple[int, ...]) -> int:
        return sum(int(d) * w for d, w in zip(ds, weights, strict=True)) % 11 % 10

    if len(digits) == 10:
        return check(digits[:9], (2, 4, 10, 3, 5, 9, 4, 6, 8)) == int(digits[9])
    if len(digits) == 12:
        return check(digits[:10], (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == int(digits[10]) and check(
            digits[:11], (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
        ) == int(digits[11])
    return False


def _ip_valid(text: str) -> bool:
    if ":" in text and not re.search(r"[0-9A-Fa-f]", text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _replace_group(match: re.Match, group: str, placeholder: str) -> str:
    start, end = match.span(group)
    whole = match.group(0)
    offset = match.start()
    return whole[: start - offset] + placeholder + whole[end - offset :]


# (kind, pattern, replacement for a match or None to leave it), in the order they run: cards
# before phones, so that a card's digit groups are not taken for a phone number.
Rule = tuple[str, re.Pattern, Callable[[re.Match], str | None]]
RULES: list[Rule] = [
    ("email", _EMAIL, lambda m: "<EMAIL>"),
    (
        "card",
        _CARD,
        lambda m: "<CARD>" if 13 <= len(_digits(m[0])) <= 19 and luhn_valid(_digits(m[0])) else None,
    ),
    (
        "snils",
        _SNILS,
        lambda m: (
            (_replace_group(m, "bare", "<SNILS>") if m["bare"] else "<SNILS>")
            if snils_valid(_digits(m["bare"] or m[0]))
            else None
        ),
    ),
    ("inn", _INN, lambda m: _replace_group(m, "number", "<INN>") if inn_valid(m["number"]) else None),
    ("passport", _PASSPORT, lambda m: _replace_group(m, "number" if m["number"] else "intl", "<PASSPORT>")),
    ("phone", _PHONE, lambda m: "<PHONE>" if 10 <= len(_digits(m[0])) <= 15 else None),
    ("ip", _IPV4, lambda m: "<IP>" if _ip_valid(m[0]) else None),
    ("ip", _IPV6, lambda m: "<IP>" if _ip_valid(m[0]) else None),
]


_HIT = re.compile(r"[0-9@]")
_DIGIT = re.compile(r"[0-9]")


def _could_hold(kind: str, line: str, digits: int) -> bool:
    """A cheap necessary condition, so that a line with a year in it costs one count, not eight scans."""
    if kind == "email":
        return "@" in line
    if kind == "ip":
        return (digits >= 4 and "." in line) or line.count(":") >= 2
    if kind == "passport":
        lower = line.lower()
        return "паспорт" in lower or "passport" in lower or "сери" in lower
    return digits >= 10  # phones, cards, SNILS and INN all have ten digits or more


def _redact_line(line: str, counts: dict[str, int]) -> str:
    digits = len(_DIGIT.findall(line))
    for kind, pattern, replace in RULES:
        if not _could_hold(kind, line, digits):
            continue

        def sub(match: re.Match, kind=kind, replace=replace) -> str:
            out = replace(match)
            if out is None:
                return match[0]
            counts[kind] = counts.get(kind, 0) + 1
            return out

        line = pattern.sub(sub, line)
    return line


def redact(text: str) -> tuple[str, dict[str, int]]:
    """The text with every PII match replaced, and how many of each kind were replaced.

    Every kind holds a digit or an @, and none spans lines, so only the lines with one are searched:
    the patterns' look-behinds make a scan of a whole book slow (2 MB/s), finding the lines is not.
    """
    counts: dict[str, int] = {}
    pieces: list[str] = []
    last = 0
    hit = _HIT.search(text)
    while hit:
        start = text.rfind("\n", 0, hit.start()) + 1
        end = text.find("\n", hit.start())
        end = len(text) if end < 0 else end
        pieces += [text[last:start], _redact_line(text[start:end], counts)]
        last = end
        hit = _HIT.search(text, end)
    if not pieces:
        return text, counts
    pieces.append(text[last:])
    return "".join(pieces), counts


class RedactPII(Transform):
    """Replaces personal data with placeholders; counts `redacted_<kind>` per kind."""

    name = "pii"

    def transform(self, doc: Document) -> Document:
        text, counts = redact(doc.text)
        if counts:
            doc.text = text
            doc.meta["pii"] = counts
            for kind, n in counts.items():
                self.stats[f"redacted_{kind}"] += n
        return doc
