"""One settings tree for every lmkit command.

Sections group the knobs (model, data, optim, train, checkpoint, logging, runtime, generate;
their fields live in ``lmkit/settings_sections.py``) but every field name is unique across the
tree, so the flat names users know from the training guide (``d_model``, ``batch_size``,
``learning_rate`` ...) address a field without its section: in flat YAML files, in
``LMKIT_<NAME>`` environment variables and as ``--name`` / ``--name-with-dashes`` flags.

Precedence, resolved in one place (``resolve_settings``):
    defaults < YAML file (``--config``) < environment (``LMKIT_...``) < command-line flags.

This module imports no torch, so the CLI can validate settings before paying for that import.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmkit.errors import ConfigError
from lmkit.settings_sections import (  # noqa: F401  (the sections are imported from here too)
    MAX_SEED,
    MAX_STEPS,
    MAX_VOCAB,
    MAX_WIDTH,
    CheckpointSettings,
    Conflict,
    DataSettings,
    GenerateSettings,
    KernelSettings,
    LoggingSettings,
    ModelSettings,
    OptimSettings,
    RuntimeSettings,
    Section,
    TrainSettings,
)
from lmkit.settings_sources import Origin, format_validation_error


class Settings(BaseModel):
    """The whole tree. Build it with ``resolve_settings`` (or ``Settings()`` for all defaults)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    kernels: KernelSettings = Field(default_factory=KernelSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)

    @model_validator(mode="after")
    def _muon_needs_whole_matrices(self) -> Settings:
        if self.optim.optimizer == "muon" and self.train.parallel == "fsdp":
            raise Conflict(
                "optimizer muon does not work with parallel fsdp: Muon orthogonalises whole matrices and FSDP shards them; use --parallel ddp",
                "optim.optimizer", "train.parallel",
            )
        return self

    def flat(self) -> dict[str, Any]:
        """All fields as ``{flat_name: value}`` (JSON-friendly), e.g. for W&B's config."""
        return {k: v for sec in self.model_dump(mode="json").values() for k, v in sec.items()}


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in Settings.model_fields.items()  # type: ignore[misc]
}
# flat name -> section name; field names are unique across sections by design.
FIELD_SECTION: dict[str, str] = {f: s for s, cls in SECTIONS.items() for f in cls.model_fields}
assert len(FIELD_SECTION) == sum(len(c.model_fields) for c in SECTIONS.values()), "duplicate field"

# Keys of the training guide's flat files that lmkit spells differently: name -> the negated bool.
_NEGATED_ALIASES: dict[str, str] = {"no_wandb": "wandb"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}

# LMKIT_* variables that lmkit reads for other purposes than settings, so not typos of one.
OTHER_ENV_VARS: dict[str, str] = {
    "LMKIT_CACHE_DIR": "lmkit's user cache: the demo corpus (lmkit/app/demo.py), the fast encoder's live merges (lmkit/tokenizer/live_cache.py)",
    "LMKIT_DASH_TEXT": "the text the dashboard-capture test script trains on (tests/observe/fixtures)",
    "LMKIT_DASH_SLOW": "how much longer the dashboard-capture test script waits on a busy machine (tests/observe/fixtures)",
}


def _negate(value: Any) -> Any:
    word = str(value).strip().lower()
    if isinstance(value, bool) or word in _TRUE | _FALSE:
        return not (value if isinstance(value, bool) else word in _TRUE)
    return value  # not a boolean: left for validation to refuse, under the alias's name


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELD_SECTION) + list(SECTIONS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


Entry = tuple[str, str, Any, str]  # (section, field, value, the key as the user wrote it)


def _entries(flat_or_nested: Mapping[str, Any], source: str) -> tuple[list[Entry], list[str]]:
    """Flat keys (``d_model: 512``) and/or sections (``model: {d_model: 512}``) as entries, plus problems."""
    entries: list[Entry] = []
    problems = []
    for written, value in flat_or_nested.items():
        written = str(written)
        key = written.replace("-", "_")
        if key in _NEGATED_ALIASES:
            key, value = _NEGATED_ALIASES[key], _negate(value)
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                problems.append(f"{source}: '{key}' must be a mapping of settings, got {value!r}")
                continue
            sub_entries, sub_problems = _entries(value, source)
            problems += sub_problems
            for section, name, v, sub_written in sub_entries:
                if section != key:
                    problems.append(f"{source}: '{name}' belongs in section '{section}', not '{key}'")
                entries.append((section, name, v, f"{written}.{sub_written}"))
        elif key in FIELD_SECTION:
            entries.append((FIELD_SECTION[key], key, value, written))
        else:
            problems.append(f"{source}: unknown setting {key!r}{_did_you_mean(key)}")
    return entries, problems


def nest(flat_or_nested: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Turn flat keys (``d_model: 512``) and/or sections (``model: {d_model: 512}``) into a tree.

    Args:
        flat_or_nested: keys from a YAML file, the environment or the command line.
        source: where they came from, named in error messages (a file path, "environment" ...).

    Raises:
        ConfigError: listing every unknown key, each with a did-you-mean suggestion.
    """
    entries, problems = _entries(flat_or_nested, source)
    if problems:
        raise ConfigError(problems)
    tree: dict[str, dict[str, Any]] = {}
    for section, name, value, _ in entries:
        tree.setdefault(section, {})[name] = value
    return tree


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file (flat guide-style keys or sections) into a mapping."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (pass an existing YAML file to --config)")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected a YAML config)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return dict(data)


def _env_entries(environ: Mapping[str, str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``LMKIT_<NAME>`` variables as ``(variable, flat name, raw value)``, plus one problem per unknown one.

    Values stay strings: pydantic parses them for the field's type (so ``LMKIT_WANDB_NAME=on``
    stays a name and ``LMKIT_D_MODEL='[1'`` is a refused integer, not a YAML error).
    """
    found, problems = [], []
    names = list(FIELD_SECTION) + list(_NEGATED_ALIASES)
    for var, value in sorted(environ.items()):
        if not var.startswith("LMKIT_") or var in OTHER_ENV_VARS:
            continue
        key = var[len("LMKIT_"):].lower()
        if key in names:
            found.append((var, key, value))
            continue
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean LMKIT_{close[0].upper()}?" if close else "settings variables are LMKIT_ and a setting's name, e.g. LMKIT_MAX_ITERS"
        problems.append(f"{var}: unknown setting in the environment ({hint})")
    return found, problems


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``LMKIT_<FLAT_NAME>=value`` variables as ``{flat_name: value}`` (pydantic parses the strings).

    Raises:
        ConfigError: an ``LMKIT_*`` variable that names no setting, with a did-you-mean.
    """
    found, problems = _env_entries(os.environ if environ is None else environ)
    if problems:
        raise ConfigError(problems)
    return {key: value for _, key, value in found}


def validate_tree(tree: Mapping[str, Any], source: str = "settings",
                  origins: Mapping[tuple[str, str], Origin] | None = None) -> Settings:
    """Validate a nested mapping into ``Settings``, raising ``ConfigError`` with one line per problem."""
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, origins)) from None


def resolve_settings(
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base_source: str = "preset",
) -> Settings:
    """Build the settings tree. The one place precedence is decided.

    Each value's layer is remembered, so a refused value is blamed on its flag, variable, file
    or preset, never on a layer it was only passed through.

    Args:
        config: optional YAML file (flat or sectioned keys).
        overrides: flat ``{name: value}`` from the command line (None values are ignored).
        base: a preset to start from instead of the defaults (e.g. the built-in demo).
        environ: the environment to read ``LMKIT_*`` from (default: ``os.environ``).
        base_source: how errors name the preset's values.

    Returns:
        Validated ``Settings``.

    Raises:
        ConfigError: unknown keys, invalid values or an unreadable file, one line per problem.
    """
    tree: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], Origin] = {}
    problems: list[str] = []

    def apply(entries: list[Entry], origin_of: Any) -> None:
        for section, name, value, written in entries:
            tree.setdefault(section, {})[name] = value
            origins[(section, name)] = origin_of(name, written, value)

    if base is not None:
        flat_base = base.flat() if isinstance(base, Settings) else base
        entries, found = _entries(flat_base, base_source)
        problems += found
        apply(entries, lambda name, written, value: Origin("preset", base_source, written, value))
    if config is not None:
        entries, found = _entries(load_yaml(config), str(config))
        problems += found
        apply(entries, lambda name, written, value: Origin("file", str(config), written, value))
    env, found = _env_entries(os.environ if environ is None else environ)
    problems += found
    for var, key, value in env:
        entries, _ = _entries({key: value}, var)
        apply(entries, lambda name, written, value, var=var: Origin("env", var, written, value))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    entries, found = _entries(flags, "command line")
    problems += found
    apply(entries, lambda name, written, value: Origin("flag", "--" + written.replace("_", "-"), written, value))
    if problems:
        raise ConfigError(problems)
    return validate_tree(tree, str(config) if config is not None else "settings", origins)


def settings_to_yaml(settings: Settings) -> str:
    """The resolved settings as sectioned YAML (what ``--print-config`` shows and runs save)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
