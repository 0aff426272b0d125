"""The settings tree: precedence, flat and sectioned YAML, validation messages."""

from __future__ import annotations

import re
import typing
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
        ({"learning_rate": -1.0}, "--learning-rate: must be > 0 (got -1.0)"),
        ({"min_lr": 1.0, "learning_rate": 0.1}, "min_lr (1.0) must not exceed learning_rate (0.1)"),
        ({"d_modle": 5}, "unknown setting 'd_modle' (did you mean 'd_model'?)"),
        ({"device": "tpu"}, "--device: must be 'auto', 'cuda' or 'cpu' (got tpu)"),
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



# --- each refused value is blamed on the layer that set it ---------------------------------------


def test_flag_value_blamed_on_the_flag_not_the_yaml(tmp_path: Path):
    cfg = tmp_path / "tiny_cpu.yaml"
    cfg.write_text("learning_rate: 1.0e-3\nd_model: 64\nnum_heads: 4\n")
    with pytest.raises(ConfigError) as e:
        resolve_settings(cfg, {"learning_rate": "-1"}, environ={})
    assert e.value.problems == ["--learning-rate: must be > 0 (got -1)"]


def test_env_value_blamed_on_the_variable(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("d_model: 64\n")
    with pytest.raises(ConfigError) as e:
        resolve_settings(cfg, environ={"LMKIT_D_MODEL": "0"})
    assert e.value.problems == ["LMKIT_D_MODEL: must be > 0 (got 0)"]


@pytest.mark.parametrize("text, key", [("d_model: -3\n", "d_model"), ("model:\n  d_model: -3\n", "model.d_model")])
def test_yaml_value_blamed_on_the_file_and_key(tmp_path: Path, text, key):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve_settings(cfg, environ={})
    assert e.value.problems == [f"{cfg}: {key}: must be > 0 (got -3)"]


def test_preset_value_blamed_on_the_preset():
    with pytest.raises(ConfigError) as e:
        resolve_settings(base={"batch_size": 0}, environ={}, base_source="--demo preset")
    assert e.value.problems == ["--demo preset: batch_size: must be > 0 (got 0)"]


@pytest.mark.parametrize(
    "yaml_text, env, flags, expected",
    [
        ("learning_rate: 0.1\n", {}, {"min_lr": "1.0"},
         "--min-lr and learning_rate in {cfg}: min_lr (1.0) must not exceed learning_rate (0.1)"),
        ("min_lr: 1.0\n", {"LMKIT_LEARNING_RATE": "0.1"}, {},
         "min_lr in {cfg} and LMKIT_LEARNING_RATE: min_lr (1.0) must not exceed learning_rate (0.1)"),
        ("", {}, {"num_heads": "7"}, "--num-heads and d_model (default): num_heads (7) must divide d_model (768)"),
        ("batch_size: 10\n", {"LMKIT_GRAD_ACCUM_STEPS": "3"}, {},
         "LMKIT_GRAD_ACCUM_STEPS and batch_size in {cfg}: grad_accum_steps (3) must divide batch_size (10)"),
    ],
)
def test_cross_field_problem_names_both_sources(tmp_path: Path, yaml_text, env, flags, expected):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        resolve_settings(cfg, flags, environ=env)
    assert e.value.problems == [expected.format(cfg=cfg)]


def test_saved_settings_without_origins_keep_their_source():
    from lmkit.settings import validate_tree

    with pytest.raises(ConfigError, match=r"^ck.pt \(saved settings\): model.d_model: must be > 0 \(got -1\)$"):
        validate_tree({"model": {"d_model": -1}}, "ck.pt (saved settings)")


# --- environment variables ------------------------------------------------------------------


@pytest.mark.parametrize("var, suggestion", [("LMKIT_MAX_ITER", "LMKIT_MAX_ITERS"), ("LMKIT_LEARNINGRATE", "LMKIT_LEARNING_RATE"),
                                             ("LMKIT_DMODEL", "LMKIT_D_MODEL")])
def test_unknown_env_variable_refused_with_did_you_mean(var, suggestion):
    with pytest.raises(ConfigError) as e:
        resolve_settings(environ={var: "5"})
    assert e.value.problems == [f"{var}: unknown setting in the environment (did you mean {suggestion}?)"]


def test_env_variables_lmkit_uses_elsewhere_are_not_settings_typos(tmp_path: Path):
    from lmkit.settings import OTHER_ENV_VARS

    env = {name: str(tmp_path) for name in OTHER_ENV_VARS} | {"LMKIT_MAX_ITERS": "7", "PATH": "/bin"}
    assert resolve_settings(environ=env).train.max_iters == 7
    assert "LMKIT_CACHE_DIR" in OTHER_ENV_VARS  # read by lmkit/app/demo.py


@pytest.mark.parametrize("value", ["[1", "!!python/name:os.system", "{a: b}", "'", "1 2", "\x00"])
def test_env_value_that_is_bad_yaml_is_one_line_naming_the_variable(value):
    with pytest.raises(ConfigError) as e:
        resolve_settings(environ={"LMKIT_D_MODEL": value})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("LMKIT_D_MODEL: must be a whole number (got ")


def test_env_strings_stay_strings_for_text_settings():
    s = resolve_settings(environ={"LMKIT_WANDB_NAME": "on", "LMKIT_WANDB_PROJECT": "123", "LMKIT_KEEP_LAST": ""})
    assert (s.logging.wandb_name, s.logging.wandb_project, s.checkpoint.keep_last) == ("on", "123", None)
    assert resolve_settings(environ={"LMKIT_WANDB": "false"}).logging.wandb is False
    assert resolve_settings(environ={"LMKIT_NO_WANDB": "no"}).logging.wandb is True  # the guide's alias, negated


# --- bounds ---------------------------------------------------------------------------------


def _fields_of(kind: type) -> list[tuple[str, str]]:
    from lmkit.settings import SECTIONS

    out = []
    for section, cls in SECTIONS.items():
        for name, field in cls.model_fields.items():
            args = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
            if kind in args:
                out.append((section, name))
    return out


INT_FIELDS = _fields_of(int)
FLOAT_FIELDS = _fields_of(float)


def test_every_integer_setting_has_both_bounds():
    from lmkit.settings import SECTIONS

    assert len(INT_FIELDS) >= 20
    for section, name in INT_FIELDS:
        kinds = {type(m).__name__ for m in SECTIONS[section].model_fields[name].metadata}
        assert kinds & {"Gt", "Ge"} and kinds & {"Lt", "Le"}, f"{section}.{name} lacks a lower or upper bound"


@pytest.mark.parametrize("section, name", INT_FIELDS)
@pytest.mark.parametrize("value", ["-1", "18446744073709551616", "1e23", str(2**64), "1e999999999"])
def test_absurd_integers_refused_with_the_limit(section, name, value):
    with pytest.raises(ConfigError) as e:
        resolve_settings(overrides={name: value}, environ={})
    (line,) = e.value.problems
    flag = "--" + name.replace("_", "-")
    assert line.startswith(f"{flag}: must be "), line
    if value != "-1" and value != "1e999999999":
        assert re.search(r"must be <= \d+ \(got ", line), line


@pytest.mark.parametrize("section, name", INT_FIELDS)
@pytest.mark.parametrize("value", ["nan", "inf", "1.5", "x", True])
def test_non_integers_refused_in_one_line(section, name, value):
    with pytest.raises(ConfigError) as e:
        resolve_settings(overrides={name: value}, environ={})
    (line,) = e.value.problems
    assert line.startswith("--" + name.replace("_", "-") + ": must be a "), line


@pytest.mark.parametrize("value, expected", [("1e3", 1000), (2.0, 2), ("16.0", 16), (" 8 ", 8), ("1_000", 1000)])
def test_integral_spellings_accepted(value, expected):
    assert resolve_settings(overrides={"max_iters": value}, environ={}).train.max_iters == expected
    assert resolve_settings(environ={"LMKIT_MAX_ITERS": str(value)}).train.max_iters == expected


def test_integral_float_in_yaml_accepted(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_iters: 1.0e+4\nwarmup_iters: 1e3\n")  # YAML reads the second as a string
    s = resolve_settings(cfg, environ={})
    assert (s.train.max_iters, s.optim.warmup_iters) == (10000, 1000)


@pytest.mark.parametrize("section, name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", float("inf"), float("nan")])
def test_every_float_setting_refuses_non_finite(section, name, value):
    with pytest.raises(ConfigError) as e:
        resolve_settings(overrides={name: value}, environ={})
    (line,) = e.value.problems
    assert line.startswith("--" + name.replace("_", "-") + ": must be a finite number"), line


@pytest.mark.parametrize("value", ["-1", str(2**64), "1e23", str(2**63)])
def test_seed_bounds(value):
    with pytest.raises(ConfigError, match=r"^--seed: must be (>= 0|<= 9223372036854775807) \(got "):
        resolve_settings(overrides={"seed": value}, environ={})
    assert resolve_settings(overrides={"seed": str(2**63 - 1)}, environ={}).runtime.seed == 2**63 - 1
