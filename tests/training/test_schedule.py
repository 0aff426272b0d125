import math

import pytest

from lmkit.training.schedule import get_lr

LR, MIN, WARM, DECAY = 1e-3, 1e-4, 100, 1100


def test_warmup_starts_small_and_reaches_peak():
    assert get_lr(0, LR, MIN, WARM, DECAY) == pytest.approx(LR / WARM)
    assert get_lr(WARM - 1, LR, MIN, WARM, DECAY) == pytest.approx(LR)
    assert get_lr(WARM, LR, MIN, WARM, DECAY) == pytest.approx(LR)  # cosine starts at the peak


def test_cosine_midpoint_and_end():
    mid = WARM + (DECAY - WARM) // 2
    assert get_lr(mid, LR, MIN, WARM, DECAY) == pytest.approx(MIN + 0.5 * (LR - MIN))
    assert get_lr(DECAY, LR, MIN, WARM, DECAY) == pytest.approx(MIN)
    assert get_lr(DECAY + 10_000, LR, MIN, WARM, DECAY) == MIN


def test_monotone_decay_after_warmup():
    lrs = [get_lr(s, LR, MIN, WARM, DECAY) for s in range(WARM, DECAY + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert all(MIN <= x <= LR for x in lrs)


def test_no_warmup():
    assert get_lr(0, LR, MIN, 0, 10) == pytest.approx(LR)
    assert math.isfinite(get_lr(5, LR, MIN, 10, 10))
