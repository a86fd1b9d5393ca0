"""Shares of the kept text: a document that would fill the corpus, and val carved by position.

One log of 40 MB beside a hundred pages of documentation is most of what a model trained on them
sees; curate names such a document and, asked to (`--cap-doc-share`), cuts it down to the share
allowed. A corpus of one document has no whole document to spare for val; its val split is then
the end of its text (a position split), as nanoGPT's `prepare.py` holds out the last tenth of
Shakespeare.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autarky.console import UserError


def share_cap(sizes: np.ndarray, share: float) -> int:
    """The byte length that leaves no document above `share` of the kept text once every longer
    document is cut to it (0: none is above). Raises UserError when too few documents can share it.

    Cutting the k longest to c leaves c = share * (k * c + rest), so c = share * rest / (1 - share * k),
    for the first k at which c falls between the k-th and the (k+1)-th longest.
    """
    s = np.sort(np.asarray(sizes, dtype=np.float64))[::-1]
    total = s.sum()
    if not len(s) or s[0] <= share * total:
        return 0
    rest = total - np.cumsum(s)  # rest[k - 1]: the bytes of all but the k longest
    for k in range(1, len(s)):  # cutting every document to one length cannot lower anyone's share
        if share * k >= 1:
            break
        cap = share * rest[k - 1] / (1 - share * k)
        if s[k] <= cap <= s[k - 1]:
            return int(cap)
    raise UserError(
        f"--cap-doc-share cannot hold each of {len(s)} documents to {share:.0%} of the corpus: "
        "raise --max-doc-share or add documents"
    )


def cut_to(text: str, max_bytes: int) -> str:
    """The start of `text` in at most `max_bytes` of UTF-8, ended at a line end when one is in its last tenth."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    head = raw[:max_bytes].decode("utf-8", "ignore")
    line_end = head.rfind("\n")
    return head[: line_end + 1] if line_end >= len(head) * 0.9 else head


def carve(text: str, fraction: float) -> tuple[str, str]:
    """(train, val): val is about the last `fraction` of the text, starting at a line when it can."""
    n = len(text)
    if fraction <= 0:
        return text, ""
    cut = n - max(1, round(n * fraction))
    if cut < 1:
        return text, ""
    line = text.rfind("\n", 0, cut) + 1  # the start of the line the cut falls in
    if line > n // 2:
        cut = line
    return text[:cut], text[cut:]


def cap_rows(table: pa.Table, cap: int) -> tuple[pa.Table, list[dict]]:
    """Kept rows with every text longer than `cap` bytes cut to it (`capped_from_bytes` in its meta);
    and what was cut: [{id, source, bytes, kept_bytes}]."""
    lengths = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False)
    over = np.flatnonzero(lengths > cap).tolist()
    if not over:
        return table, []
    texts, meta = table.column("text").to_pylist(), table.column("meta").to_pylist()
    cut = []
    for i in over:
        texts[i] = cut_to(texts[i], cap)
        note = {**json.loads(meta[i] or "{}"), "capped_from_bytes": int(lengths[i])}
        meta[i] = json.dumps(note, ensure_ascii=False, sort_keys=True)
        row = {"id": table.column("id")[i].as_py(), "source": table.column("source")[i].as_py()}
        cut.append({**row, "bytes": int(lengths[i]), "kept_bytes": len(texts[i].encode())})
    for name, values in (("text", texts), ("meta", meta)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table, cut


def carve_rows(table: pa.Table, fraction: float) -> tuple[pa.Table, pa.Table]:
    """(train rows, val rows) of a position split: each document's start to train, its end to val
    under the id `<id>:val`. A document too short to split stays whole in train."""
    pairs = [carve(t, fraction) for t in table.column("text").to_pylist()]
    heads = pa.array([h for h, _ in pairs], pa.string())
    tails = pa.array([t for _, t in pairs], pa.string())
    split, text = table.schema.get_field_index("split"), table.schema.get_field_index("text")
    train = table.set_column(text, "text", heads).set_column(split, "split", pa.array(["train"] * len(table)))
    ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(":val"), "")
    val = (
        table.set_column(text, "text", tails)
        .set_column(split, "split", pa.array(["val"] * len(table)))
        .set_column(table.schema.get_field_index("id"), "id", ids)
    )
    return train, val.filter(pc.greater(pc.binary_length(tails), 0))
