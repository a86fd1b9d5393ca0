"""How many threads llama.cpp gets for its next call, learned from how fast its calls run.

llama.cpp splits each operation across its threads and meets them at a barrier after every one,
spinning there on the assumption that each thread has a core to itself. On a machine whose cores
other processes also want (a training run beside the server), a barrier waits a whole time slice
for a thread that lost its core, and two threads on two busy cores decode many times slower than
one. The right count depends on what else runs, which changes while the server does, so it is
measured, not guessed: now and then one call runs at the other count, and if it is clearly faster
than the calls just before it (same number of tokens, per token), that count is kept.

A probe costs at most one call at the worse count, and a probe that loses doubles the wait before
the next, so a steady machine pays almost nothing; calls that turn twice as slow as the best seen
at their count and size bring the next probe forward to within `period` calls.
"""

from __future__ import annotations

from collections import deque
from statistics import median


class ThreadGovernor:
    def __init__(
        self, most: int, period: int = 128, longest: int = 2048, margin: float = 0.8, probe: int = 3
    ):
        """`most`: every core, the count to start at. `period`: calls before the first probe;
        `longest`: the most calls between probes after losing ones. `margin`: a probe wins when its
        calls take at most this share of the current count's time per token; `probe` calls each."""
        self.most, self.now = most, most
        self.base, self.longest, self.margin, self.probe = period, longest, margin, probe
        self.wait = period  # calls until the next probe
        self.calls = 0
        self.recent: deque[tuple[int, float]] = deque(maxlen=probe)  # (tokens, s per token) at `now`
        self.trial: list[float] | None = None  # seconds per token at `other`, while probing
        self.best: dict[tuple[int, int], float] = {}  # least seconds per token by (threads, tokens)

    @property
    def other(self) -> int:
        """The count a probe tries: half the cores from every core, every core from fewer."""
        return max(1, self.most // 2) if self.now == self.most else self.most

    def threads(self) -> int:
        """The count for the next call."""
        return self.other if self.trial is not None else self.now

    def observe(self, tokens: int, seconds: float) -> None:
        """Record the call just made (at `threads()`): `tokens` in the batch, `seconds` it took."""
        per = seconds / max(tokens, 1)
        key = (self.threads(), tokens)
        self.best[key] = min(per, self.best.get(key, per))
        if self.trial is not None:
            self._probe_step(tokens, per)
            return
        self.recent.append((tokens, per))
        self.calls += 1
        if len(self.recent) < self.probe or len({t for t, _ in self.recent}) > 1 or self.other == self.now:
            return
        slowed = median(p for _, p in self.recent) > 2 * self.best[(self.now, tokens)]
        if self.calls >= (min(self.wait, self.base) if slowed else self.wait):
            self.trial = []

    def _probe_step(self, tokens: int, per: float) -> None:
        baseline = median(p for _, p in self.recent)
        if tokens != self.recent[-1][0] or per > baseline:  # not comparable, or already losing
            self._end_probe(won=False)
            return
        self.trial.append(per)
        if len(self.trial) == self.probe:
            self._end_probe(won=median(self.trial) <= self.margin * baseline)

    def _end_probe(self, won: bool) -> None:
        if won:
            self.now = self.other
        self.wait = self.base if won else min(2 * self.wait, self.longest)
        self.trial, self.calls = None, 0
        self.recent.clear()
