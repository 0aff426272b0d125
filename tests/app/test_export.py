"""lmkit.app.export: safetensors round trip, and HuggingFace Llama parity (logits and tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch
from trained_model import make_tiny_run

from lmkit.errors import ConfigError
from lmkit.app.export import HF_NAMES, export_checkpoint, to_hf_names
from lmkit.app.inference import load_trained
from lmkit.training.checkpoint import load_checkpoint

TRICKY = ["", "The cat sat on the mat.", "Caf\u00e9 cr\u00e8me \U0001f44b\U0001f3fd", "\u4f60\u597d, \u043c\u0438\u0440!",
          "  double  spaces\n\n\ttabs ", "a<|endoftext|>b", "it's 12,345 o'clock"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    export_checkpoint(run.checkpoint, out, "hf")
    return out


def test_safetensors_round_trip(run, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    written = export_checkpoint(run.checkpoint, tmp_path / "out", "safetensors")
    assert sorted(p.name for p in written) == ["model.safetensors", "model_config.json"]
    state = load_checkpoint(run.checkpoint)
    loaded = load_file(tmp_path / "out" / "model.safetensors")
    assert loaded.keys() == state["model"].keys()
    assert all(torch.equal(loaded[k], state["model"][k]) for k in loaded)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert json.loads(f.metadata()["model_config"]) == state["model_config"]
    assert json.loads((tmp_path / "out" / "model_config.json").read_text()) == state["model_config"]


def test_hf_names_cover_every_tensor(run) -> None:
    state = load_checkpoint(run.checkpoint)
    renamed = to_hf_names(state["model"], state["model_config"]["num_layers"])
    assert len(renamed) == len(state["model"])
    assert len(HF_NAMES) == 12


def test_hf_llama_gives_lmkit_logits(run, hf_dir) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF parity oracle")
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    ours = load_trained(run.checkpoint, device="cpu", dtype="float32").model
    torch.manual_seed(0)
    idx = torch.randint(0, ours.config.vocab_size, (2, ours.config.context_length))  # the full context
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["rope_theta"] == 500.0 and config["tie_word_embeddings"] is False


@pytest.mark.parametrize("loader", ["AutoTokenizer", "GPT2TokenizerFast"])
def test_hf_tokenizer_encodes_like_lmkit(run, hf_dir, loader) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the tokenizer oracle")
    hf_tok = getattr(transformers, loader).from_pretrained(hf_dir)
    ours = load_trained(run.checkpoint, device="cpu").tokenizer
    for text in TRICKY:
        ids = ours.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == ours.token_id("<|endoftext|>")


def test_non_empty_output_needs_force(run, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty.*--force"):
        export_checkpoint(run.checkpoint, out, "safetensors")
    export_checkpoint(run.checkpoint, out, "safetensors", force=True)
    assert (out / "model.safetensors").is_file() and (out / "keep.txt").is_file()


def test_unknown_format(run, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown export format"):
        export_checkpoint(run.checkpoint, tmp_path / "o", "onnx")  # type: ignore[arg-type]
