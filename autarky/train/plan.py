"""What a run will do, said before it does it: the model's and the data's size, the steps and what
limits them, and, once the first steps are timed, how long it will take; with a warning when the plan
looks wrong. Pure functions of numbers, so the recipes print them and the tests read them."""

from __future__ import annotations

from dataclasses import dataclass

from autarky.train.config import TrainConfig

# Pretraining sees ~20 tokens per parameter when compute-optimal (Hoffmann et al. 2022), and data
# repeated beyond ~4 epochs adds little (Muennighoff et al. 2023). Under 1 token of data per parameter
# no number of steps reaches that: the model is far too large and memorises its data. Over 1000, 50×
# compute-optimal and past even models trained long for cheap inference (a few hundred), it is far
# too small: a larger preset would learn much more from the same data.
TOO_LARGE_BELOW = 1.0  # tokens of data per parameter
TOO_SMALL_ABOVE = 1000.0
CUT_SHORT_BELOW = 0.9  # --max-steps ending a run before this share of --minutes is worth a warning


@dataclass
class Plan:
    """The numbers a run is planned from."""

    parameters: int  # those that train
    data_tokens: int  # one pass over the training data
    tokens_per_step: int
    max_steps: int | None
    minutes: float | None


def plan_of(config: TrainConfig, parameters: int, data_tokens: int) -> Plan:
    tokens_per_step = config.batch_size * config.seq_len * config.grad_accum
    return Plan(parameters, data_tokens, tokens_per_step, config.max_steps, config.minutes)


def size_line(plan: Plan, of: int | None = None) -> str:
    """Parameters (that train, `of` a larger model's), training tokens, and tokens per parameter."""
    ratio = plan.data_tokens / max(plan.parameters, 1)
    whole = f" of {human(of)}" if of and of != plan.parameters else ""
    return (
        f"{human(plan.parameters)}{whole} parameters on {plan.data_tokens:,} tokens "
        f"({ratio:,.2f} tokens per parameter)"
    )


def steps_line(plan: Plan) -> str:
    """The steps, what limits them, and the tokens they take."""
    per_step = f"{plan.tokens_per_step:,} tokens a step"
    if plan.max_steps is None:
        return f"steps: as many as --minutes {plan.minutes:g} allows, {per_step}; time estimated after the first steps"
    seen = plan.max_steps * plan.tokens_per_step
    limit = f"--max-steps, unless --minutes {plan.minutes:g} ends it first" if plan.minutes else "--max-steps"
    return (
        f"steps: {plan.max_steps:,} ({limit}), {per_step}: {human(seen)} tokens, "
        f"{seen / max(plan.data_tokens, 1):.1f} epochs; time estimated after the first steps"
    )


def size_warning(plan: Plan) -> str | None:
    """A warning when the model is far too large or too small for its data (pretraining only:
    fine-tuning adapts a model on far fewer tokens than it has parameters by design)."""
    ratio = plan.data_tokens / max(plan.parameters, 1)
    if ratio < TOO_LARGE_BELOW:
        return (
            f"the model is far too large for the data: {ratio:.2f} tokens per parameter (a model learns "
            "from ~20 and repeating data adds little), so it will memorise; use a smaller --preset or more data"
        )
    if ratio > TOO_SMALL_ABOVE:
        return (
            f"the model is far too small for the data: {ratio:,.0f} tokens per parameter (~20 is "
            "compute-optimal); a larger --preset would learn much more from it"
        )
    return None


def remaining_evaluations(config: TrainConfig, step: int, end: int) -> int:
    """Evaluations after `step` up to the run's end at `end` (the last step is always evaluated)."""
    return end // config.eval_interval - step // config.eval_interval + (end % config.eval_interval != 0)


def estimate(
    config: TrainConfig, step: int, step_seconds: float, eval_seconds: float, elapsed: float
) -> tuple[str, str | None]:
    """The time (or, under --minutes, the steps) left, from the seconds a step and an evaluation
    took so far; and a warning when --max-steps ends the run well before --minutes is spent."""
    pace = f"estimate: {step_seconds:.3g} s a step"
    ends_at = None
    if config.max_steps is not None:
        to_go = config.max_steps - step
        evals = remaining_evaluations(config, step, config.max_steps)
        ends_at = elapsed + to_go * step_seconds + evals * eval_seconds
    budget = config.minutes * 60 if config.minutes else None
    if budget is None or (ends_at is not None and ends_at <= budget):
        line = f"{pace}: {config.max_steps:,} steps end in about {duration(ends_at - elapsed)}"
        if budget is not None and ends_at < CUT_SHORT_BELOW * budget:
            return line, (
                f"--max-steps {config.max_steps} ends the run after about {duration(ends_at)} of the "
                f"{duration(budget)} --minutes gives it; leave out --max-steps to train for all of them"
            )
        return line, None
    steps = step + int(max(budget - elapsed, 0) / (step_seconds + eval_seconds / config.eval_interval))
    of = f" of the {config.max_steps:,} --max-steps" if config.max_steps is not None else " steps"
    return f"{pace}: about {steps:,}{of} fit in --minutes {config.minutes:g}", None


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def human(n: float) -> str:
    """12,345 → 12.3K; a count at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,.0f}"
