"""The step base classes: each step sees one document, keeps, changes or drops it, and counts.

In the manner of datatrove, a filter only says yes or no (with a reason) and a transform only
returns the changed document; the base class counts `total`, `forwarded` and `dropped_<reason>`
and times itself, so the accounting lives in one place and no step can forget it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from autarky.data.document import Document


@dataclass
class StepStats:
    """What one step counted (`total`, `forwarded`, `dropped_<reason>`, …) and the seconds it took.

    Two add up, so the reports of every worker and batch sum into the run's, whatever ran them.
    """

    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __add__(self, other: StepStats) -> StepStats:
        counts = dict(self.counts)
        for key, n in other.counts.items():
            counts[key] = counts.get(key, 0) + n
        return StepStats(counts, self.seconds + other.seconds)

    def as_dict(self) -> dict:
        """The shape the manifest and stats.json hold: {"stats": counts, "seconds": seconds}."""
        return {"stats": dict(self.counts), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> StepStats:
        return cls(dict(data["stats"]), data["seconds"])


def add_stats(into: dict[str, StepStats], more: dict[str, StepStats]) -> dict[str, StepStats]:
    """Step-by-step sum of two {step name: StepStats}, in the order the steps first appear."""
    return {name: into.get(name, StepStats()) + more.get(name, StepStats()) for name in into | more}


class Step:
    """One stage of the per-document pipeline. `__call__` returns the document, or a drop reason."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.seconds = 0.0

    def apply(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def __call__(self, doc: Document) -> Document | str:
        """The step on one document; one that raises drops it (reason `error: <ExceptionType>`) and the run goes on.

        A library failing on one odd document, or a bug a document uncovers, must cost that document, not
        the run: the drop is counted like any other and its message kept in the dropped row's meta.
        """
        start = time.perf_counter()
        try:
            result = self.apply(doc)
        except Exception as e:
            doc.meta["error"] = f"{self.name}: {type(e).__name__}: {e}"[:300]
            result = f"error: {type(e).__name__}"
        self.seconds += time.perf_counter() - start
        self.stats["total"] += 1
        if isinstance(result, str):
            self.stats[f"dropped_{result}"] += 1
        else:
            self.stats["forwarded"] += 1
        return result

    def report(self) -> StepStats:
        return StepStats(dict(self.stats), self.seconds)


class Filter(Step):
    """Keeps a document when `filter` says True; False or (False, reason) drops it."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def apply(self, doc: Document) -> Document | str:
        verdict = self.filter(doc)
        if verdict is True:
            return doc
        if isinstance(verdict, tuple):
            return doc if verdict[0] else verdict[1]
        return doc if verdict else self.name


class Transform(Step):
    """Changes a document; drops it (reason `empty`) when nothing is left of its text."""

    def transform(self, doc: Document) -> Document:
        raise NotImplementedError

    def apply(self, doc: Document) -> Document | str:
        doc = self.transform(doc)
        return doc if doc.text.strip() else "empty"


def run_steps(doc: Document, steps: list[Step]) -> tuple[Document | None, str, str]:
    """Pass one document through the steps: (document, "", "") if kept, else (None, step, reason)."""
    for step in steps:
        result = step(doc)
        if isinstance(result, str):
            return None, step.name, result
        doc = result
    return doc, "", ""


class GlobalStep(Step):
    """A step that must see every document at once (dedup); it marks drops in bulk and counts them.

    `reason` names what it drops, for the dropped rows and the manifest.
    """

    reason: str = "dropped"

    def count(self, total: int, dropped: dict[str, int], seconds: float) -> None:
        self.stats["total"] += total
        self.stats["forwarded"] += total - sum(dropped.values())
        for reason, n in dropped.items():
            if n:
                self.stats[f"dropped_{reason}"] += n
        self.seconds += seconds
