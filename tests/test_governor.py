"""ThreadGovernor: llama.cpp's thread count follows what the machine gives, at little cost when quiet."""

from __future__ import annotations

from autarky.governor import ThreadGovernor


def drive(governor: ThreadGovernor, seconds_at, calls: int, tokens: int = 1) -> list[int]:
    """Make `calls` calls that take `seconds_at(threads)`; the thread counts they ran at."""
    used = []
    for _ in range(calls):
        threads = governor.threads()
        used.append(threads)
        governor.observe(tokens, seconds_at(threads) * tokens)
    return used


def quiet(threads: int) -> float:
    return {2: 0.0033, 1: 0.0055}[threads]  # two cores of their own: two threads are faster


def busy(threads: int) -> float:
    return {2: 0.3, 1: 0.009}[threads]  # other work on both cores: two spinning threads collapse


def test_on_a_quiet_machine_it_keeps_every_core_and_probes_ever_more_rarely():
    governor = ThreadGovernor(2)
    used = drive(governor, quiet, 20_000)
    assert governor.now == 2
    probes = [i for i, threads in enumerate(used) if threads == 1]
    assert 1 <= len(probes) <= 14  # each lost probe is one call, and doubles the wait before the next
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] >= 2048


def test_when_other_work_takes_the_cores_it_drops_to_half_and_comes_back_when_they_are_free():
    governor = ThreadGovernor(2)
    drive(governor, quiet, 200)
    used = drive(governor, busy, 1000)
    assert governor.now == 1 and used[-800:].count(2) <= 4  # switched within one period
    drive(governor, quiet, 2100)
    assert governor.now == 2  # a probe at every core wins again once the cores are free


def test_a_slowdown_after_a_long_quiet_spell_is_answered_within_one_period():
    governor = ThreadGovernor(2)
    drive(governor, quiet, 20_000)  # lost probes have pushed the next one far out
    drive(governor, busy, 200)
    assert governor.now == 1


def test_a_probe_against_calls_of_another_size_is_dropped():
    governor = ThreadGovernor(2, period=4)
    drive(governor, busy, 4, tokens=1)
    assert governor.threads() == 1  # probing now
    governor.observe(16, busy(1) * 16)  # a prefill chunk: not comparable with one-token calls
    assert governor.now == 2 and governor.threads() == 2


def test_one_core_never_probes():
    governor = ThreadGovernor(1)
    assert set(drive(governor, lambda threads: 0.01, 5000)) == {1}
