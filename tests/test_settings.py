"""The settings tree: precedence, flat and sectioned YAML, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.settings import FIELD_SECTION, Settings, resolve_settings, settings_to_yaml


def test_defaults_match_training_guide():
    s = Settings()
    assert (s.model.vocab_size, s.model.context_length, s.model.d_model) == (50257, 1024, 768)
    assert (s.model.num_layers, s.model.num_heads, s.model.d_ff, s.model.rope_theta) == (12, 12, 3072, 10000.0)
    assert (s.train.batch_size, s.train.max_iters, s.optim.learning_rate) == (32, 100000, 1e-4)
    assert (s.optim.weight_decay, s.optim.grad_clip, s.optim.warmup_iters, s.optim.min_lr) == (0.1, 1.0, 1000, 1e-5)
    assert (s.checkpoint.checkpoint_interval, s.train.eval_interval, s.train.log_interval, s.runtime.seed) == (1000, 100, 10, 42)


def test_precedence_defaults_yaml_env_flags(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("d_model: 512\nnum_heads: 8\nbatch_size: 4\nlearning_rate: 1.0e-3\n")
    env = {"LMKIT_BATCH_SIZE": "16", "LMKIT_LEARNING_RATE": "2e-3"}
    s = resolve_settings(cfg, {"learning_rate": 5e-4, "num_layers": None}, environ=env)
    assert s.model.d_model == 512  # yaml over default
    assert s.train.batch_size == 16  # env over yaml
    assert s.optim.learning_rate == 5e-4  # flag over env
    assert s.model.num_layers == 12  # a flag left out (None) does not override


def test_guide_flat_yaml_and_sectioned_yaml_agree(tmp_path: Path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("vocab_size: 50257\nd_model: 768\nbatch_size: 32\ntrain_data_path: data/x.txt\nno_wandb: true\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"model": {"vocab_size": 50257, "d_model": 768}, "train": {"batch_size": 32},
                                      "data": {"train_data_path": "data/x.txt"}, "logging": {"wandb": False}}))
    a, b = resolve_settings(flat, environ={}), resolve_settings(nested, environ={})
    assert a == b and a.logging.wandb is False and a.data.train_data_path == Path("data/x.txt")


def test_saved_yaml_round_trips(tmp_path: Path):
    s = resolve_settings(overrides={"d_model": 256, "num_heads": 4, "keep_last": 3}, environ={})
    p = tmp_path / "s.yaml"
    p.write_text(settings_to_yaml(s))
    assert resolve_settings(p, environ={}) == s


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"num_heads": 7}, "num_heads (7) must divide d_model (768)"),
        ({"learning_rate": -1.0}, "optim.learning_rate"),
        ({"min_lr": 1.0, "learning_rate": 0.1}, "min_lr (1.0) must not exceed learning_rate (0.1)"),
        ({"d_modle": 5}, "unknown setting 'd_modle' (did you mean 'd_model'?)"),
        ({"device": "tpu"}, "runtime.device"),
        ({"batch_size": 10, "grad_accum_steps": 3}, "grad_accum_steps (3) must divide batch_size (10)"),
    ],
)
def test_invalid_values_fail_with_field_named(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        resolve_settings(overrides=overrides, environ={})
    assert any(fragment in p for p in e.value.problems), e.value.problems


def test_every_problem_listed_at_once(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bach_size: 3\nlerning_rate: 1\n")
    with pytest.raises(ConfigError) as e:
        resolve_settings(cfg, environ={})
    assert len(e.value.problems) == 2 and all(str(cfg) in p for p in e.value.problems)


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("d_model: 512\n  num_heads: [8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        resolve_settings(cfg, environ={})


def test_every_field_has_a_description():
    from lmkit.settings import SECTIONS

    for section, cls in SECTIONS.items():
        for name, field in cls.model_fields.items():
            assert field.description, f"{section}.{name} has no description"
    assert len(FIELD_SECTION) > 40


@hsettings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(st.integers(), st.text(max_size=8), st.floats(allow_nan=True), st.none(), st.booleans()), max_size=5))
def test_fuzzed_config_mappings_raise_only_config_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        resolve_settings(path, environ={})
    except ConfigError as e:
        assert e.problems and all("\n" not in p for p in e.problems)
