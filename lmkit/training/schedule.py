"""The learning-rate schedule: linear warmup, cosine decay, then a floor.

A pure function of the step so a resumed run lands on exactly the same LR with no scheduler state.
"""

from __future__ import annotations

import math


def get_lr(step: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Args:
        step: the optimizer step about to be taken.
        learning_rate: peak LR, reached at the end of warmup.
        min_lr: floor, reached at ``lr_decay_iters`` and held after.
        warmup_iters: steps of linear warmup.
        lr_decay_iters: step at which the cosine reaches ``min_lr``.

    Returns:
        The LR for this step.

    Example:
        >>> get_lr(0, 1e-3, 1e-4, 10, 100)    # first warmup step is not zero: (0+1)/10 of peak
        0.0001
        >>> get_lr(100, 1e-3, 1e-4, 10, 100)  # end of decay: the floor
        0.0001
    """
    # 1) warmup: ramp linearly; (step + 1) so the very first step already learns something.
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    # 2) past the decay horizon: hold the floor.
    if step >= lr_decay_iters:
        return min_lr
    # 3) in between: cosine from learning_rate down to min_lr.
    span = max(1, lr_decay_iters - warmup_iters)
    progress = (step - warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)
