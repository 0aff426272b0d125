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


# ---- wsd and linear (issue #23)
from lmkit.training.schedule import decay_start  # noqa: E402


def test_wsd_phase_edges():
    # 1000 steps after warmup, the last 20 % (200) decay: stable through step 899, decay 900..1099.
    assert decay_start(WARM, DECAY, 0.2) == 900
    lr = lambda s: get_lr(s, LR, MIN, WARM, DECAY, "wsd", 0.2)  # noqa: E731
    assert lr(WARM - 1) == pytest.approx(LR)  # end of warmup
    assert lr(WARM) == LR and lr(899) == LR  # the stable phase holds the peak exactly
    assert lr(900) == LR  # the decay's first step is still the peak (progress 0)
    assert lr(1000) == pytest.approx(MIN + 0.5 * (LR - MIN))  # halfway down, linearly
    assert lr(DECAY - 1) == pytest.approx(MIN + (LR - MIN) / 200)
    assert lr(DECAY) == MIN and lr(DECAY + 50) == MIN


def test_wsd_with_whole_decay_is_linear():
    for s in (0, WARM, 300, 777, DECAY - 1, DECAY):
        assert get_lr(s, LR, MIN, WARM, DECAY, "wsd", 1.0) == pytest.approx(get_lr(s, LR, MIN, WARM, DECAY, "linear"))


def test_linear_decays_straight_to_the_floor():
    mid = WARM + (DECAY - WARM) // 2
    assert get_lr(WARM, LR, MIN, WARM, DECAY, "linear") == LR
    assert get_lr(mid, LR, MIN, WARM, DECAY, "linear") == pytest.approx(MIN + 0.5 * (LR - MIN))
    assert get_lr(DECAY, LR, MIN, WARM, DECAY, "linear") == MIN


def test_cosine_is_unchanged_by_the_new_arguments():
    for s in range(0, DECAY + 2, 37):
        assert get_lr(s, LR, MIN, WARM, DECAY) == get_lr(s, LR, MIN, WARM, DECAY, "cosine", 0.3)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_decay_fraction_outside_0_1_is_refused(fraction):
    from lmkit.errors import ConfigError
    from lmkit.settings import resolve_settings

    with pytest.raises(ConfigError, match="--decay-fraction: must be"):
        resolve_settings(overrides={"decay_fraction": fraction}, environ={})


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        get_lr(0, LR, MIN, WARM, DECAY, "step")
