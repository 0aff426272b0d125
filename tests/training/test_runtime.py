"""lmkit.training.runtime, directly: device, dtype and rank resolution, and their errors."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.training.runtime import launch, resolve_runtime


@pytest.fixture(autouse=True)
def _no_torchrun(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_defaults() -> None:
    rt = resolve_runtime("cpu", "auto", None)
    assert rt.device == torch.device("cpu") and rt.dtype == torch.float32 and rt.compile is False
    assert (rt.rank, rt.world_size, rt.is_main) == (0, 1, True)
    assert rt.weights == "float32" and rt.weight_dtype == torch.float32
    with rt.autocast():
        assert not torch.is_autocast_enabled("cpu")  # float32: no autocast at all


def test_dtype_is_the_compute_precision_either_way() -> None:
    # Training/eval: float32 weights, matmuls under autocast in dtype.
    train = resolve_runtime("cpu", "bfloat16", False)
    assert train.weight_dtype == torch.float32
    with train.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # Generation: the weights are held in dtype, so no autocast is needed (or applied).
    gen = resolve_runtime("cpu", "bfloat16", False, weights="compute")
    assert gen.dtype == torch.bfloat16 and gen.weight_dtype == torch.bfloat16
    with gen.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="runtime.device: cuda requested but no CUDA device is visible"):
        resolve_runtime("cuda", "auto", None)


@pytest.mark.parametrize(("args", "match"), [
    (("gpu", "auto", None), "runtime.device: 'gpu' is not one of auto, cuda, cpu"),
    (("cpu", "float16", None), "runtime.dtype: 'float16' is not one of auto, bfloat16, float32"),
])
def test_unknown_values_are_refused(args, match) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_runtime(*args)


def test_rank_comes_from_torchrun_once(monkeypatch) -> None:
    assert launch() == launch() and not launch().under_torchrun and launch().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    where = launch()
    assert (where.rank, where.local_rank, where.world_size, where.under_torchrun, where.is_main) == (3, 1, 4, True, False)
    rt = resolve_runtime("cpu", "auto", None)
    assert (rt.rank, rt.local_rank, rt.world_size, rt.is_main) == (3, 1, 4, False)


@pytest.mark.parametrize(("env", "match"), [
    ({"RANK": "one"}, "RANK='one': must be a whole number >= 0"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': must be a whole number >= 1"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
])
def test_malformed_launch_environment_is_refused(monkeypatch, env, match) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        launch()
