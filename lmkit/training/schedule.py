"""The learning-rate schedule: linear warmup, then cosine, linear or warmup-stable-decay, then a floor.

A pure function of the step so a resumed run lands on exactly the same LR with no scheduler state.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "linear")


def decay_start(warmup_iters: int, lr_decay_iters: int, decay_fraction: float) -> int:
    """First step of a wsd schedule's decay: the last ``decay_fraction`` of the steps after warmup.

    Example:
        >>> decay_start(100, 1100, 0.2)  # 1000 steps after warmup, the last 200 decay
        900
    """
    span = max(0, lr_decay_iters - warmup_iters)
    return lr_decay_iters - round(decay_fraction * span)


def get_lr(step: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int,
           schedule: str = "cosine", decay_fraction: float = 1.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Args:
        step: the optimizer step about to be taken.
        learning_rate: peak LR, reached at the end of warmup.
        min_lr: floor, reached at ``lr_decay_iters`` and held after.
        warmup_iters: steps of linear warmup.
        lr_decay_iters: step at which the decay reaches ``min_lr``.
        schedule: ``cosine`` or ``linear`` (decay over all steps after warmup), or ``wsd`` (hold
            ``learning_rate``, then decay linearly over the last ``decay_fraction`` of them).
        decay_fraction: wsd only, in (0, 1].

    Returns:
        The LR for this step.

    Raises:
        ValueError: an unknown schedule.

    Example:
        >>> get_lr(0, 1e-3, 1e-4, 10, 100)    # first warmup step is not zero: (0+1)/10 of peak
        0.0001
        >>> get_lr(100, 1e-3, 1e-4, 10, 100)  # end of decay: the floor
        0.0001
        >>> get_lr(80, 1e-3, 0.0, 10, 110, "wsd", 0.2)  # stable phase: the peak until step 90
        0.001
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")
    # 1) warmup: ramp linearly; (step + 1) so the very first step already learns something.
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    # 2) past the decay horizon: hold the floor.
    if step >= lr_decay_iters:
        return min_lr
    # 3) in between: the decay, from learning_rate (coefficient 1) down to min_lr (0).
    start = decay_start(warmup_iters, lr_decay_iters, decay_fraction) if schedule == "wsd" else warmup_iters
    if step < start:  # wsd's stable phase
        return learning_rate
    progress = (step - start) / max(1, lr_decay_iters - start)
    if schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    else:
        coeff = 1.0 - progress
    return min_lr + coeff * (learning_rate - min_lr)


def schedule_lr(step: int, optim) -> float:
    """``get_lr`` with the fields of an ``OptimSettings``."""
    return get_lr(step, optim.learning_rate, optim.min_lr, optim.warmup_iters, optim.lr_decay_iters,
                  optim.schedule, optim.decay_fraction)
