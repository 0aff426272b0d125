"""A RunInfo for sink tests, and metric dicts shaped like the trainer's."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmkit.observe import RunInfo

_TRAIN = {
    "loss": 3.2154,
    "lr": 3e-4,
    "grad_norm": 0.84,
    "tokens_per_s": 12_345.0,
    "step_ms": 45.1,
    "mfu": 0.412,
    "gpu_mem_gb": 10.2,
    "tokens_seen": 52_428_800.0,
    "skipped_steps": 0.0,
    "elapsed_s": 61.0,
}
_EVAL = {"val_loss": 3.3012, "best_val_loss": 3.299}


@pytest.fixture
def train_metrics() -> dict[str, float]:
    """Every train-side key the trainer may send, with round values."""
    return dict(_TRAIN)


@pytest.fixture
def eval_metrics() -> dict[str, float]:
    """What the trainer sends at an eval step."""
    return dict(_EVAL)


@pytest.fixture
def make_info(tmp_path: Path):
    """Build a RunInfo in tmp_path; keyword arguments override the defaults."""

    def make(**overrides) -> RunInfo:
        fields = dict(
            run_dir=tmp_path / "run",
            max_iters=5000,
            start_iter=0,
            resumed=False,
            device="cuda",
            dtype="bfloat16",
            num_params=124_439_808,
            tokens_per_step=524_288,
            settings={"d_model": 768, "learning_rate": 3e-4, "wandb_api_key": "hunter2"},
        )
        fields.update(overrides)
        return RunInfo(**fields)

    return make
