"""``LmkitLM`` on CUDA: bf16 autocast agrees with float32 on CPU, and KV-cached generation with the
CUDA-graph decode step gives the same continuations as eager decoding."""

from __future__ import annotations

import pytest
import torch
from trained_model import make_tiny_run

pytest.importorskip("lm_eval", reason="needs the eval extra (uv sync --extra eval)")
pytestmark = pytest.mark.gpu

from lmkit.harness.model import LmkitLM  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return make_tiny_run(tmp_path_factory.mktemp("harness_cuda"), max_iters=60)


class _Req:
    def __init__(self, *args):
        self.args = args


def test_bf16_scores_match_fp32_cpu(run) -> None:
    pairs = [("The cat sat on the", " mat."), ("A bird sang in the", " tree;"), ("", "The dog sat on the log.")]
    cpu = LmkitLM(run.checkpoint, device="cpu", dtype="float32").loglikelihood([_Req(*p) for p in pairs])
    gpu = LmkitLM(run.checkpoint, device="cuda", dtype="bfloat16").loglikelihood([_Req(*p) for p in pairs])
    for (a, _), (b, _) in zip(cpu, gpu):
        assert b == pytest.approx(a, rel=0.05, abs=0.1)
    text = ["The cat sat on the mat. " * 12]
    (a,), (b,) = (LmkitLM(run.checkpoint, device=d, dtype=t).loglikelihood_rolling([_Req(*text)])
                  for d, t in (("cpu", "float32"), ("cuda", "bfloat16")))
    assert b == pytest.approx(a, rel=0.02)


def test_generation_with_cuda_graphs_matches_eager(run) -> None:
    reqs = [_Req("The cat", {"until": ["\n"], "max_gen_toks": 20}), _Req("A bird", {"until": ["tree"], "max_gen_toks": 20}),
            _Req("The dog", {"until": ["\n"], "max_gen_toks": 20})]
    eager = LmkitLM(run.checkpoint, device="cuda", dtype="float32", compile=False).generate_until(reqs)
    graphed = LmkitLM(run.checkpoint, device="cuda", dtype="float32", compile=True).generate_until(reqs)
    cpu = LmkitLM(run.checkpoint, device="cpu", dtype="float32").generate_until(reqs)
    assert eager == graphed == cpu
    assert all("\n" not in t for t in eager) and "tree" not in eager[1]
