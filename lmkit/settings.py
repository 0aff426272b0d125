"""One settings tree for every lmkit command.

Sections group the knobs (model, data, optim, train, checkpoint, logging, runtime, generate) but
every field name is unique across the tree, so the flat names users know from the training guide
(``d_model``, ``batch_size``, ``learning_rate`` ...) address a field without its section: in flat
YAML files, in ``LMKIT_<NAME>`` environment variables and as ``--name`` / ``--name-with-dashes``
flags.

Precedence, resolved in one place (``resolve_settings``):
    defaults < YAML file (``--config``) < environment (``LMKIT_...``) < command-line flags.

This module imports no torch, so the CLI can validate settings before paying for that import.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmkit.errors import ConfigError


class Section(BaseModel):
    """Base for a settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    """The transformer's shape. Changing any of these makes a different (incompatible) model."""

    vocab_size: int = Field(50257, gt=0, description="Number of token ids the model embeds and predicts (GPT-2: 50257).")
    context_length: int = Field(1024, gt=0, description="Longest sequence the model sees; RoPE tables and the KV cache are sized to it.")
    d_model: int = Field(768, gt=0, description="Width of the residual stream.")
    num_layers: int = Field(12, gt=0, description="Number of transformer blocks.")
    num_heads: int = Field(12, gt=0, description="Attention heads per block; must divide d_model.")
    d_ff: int = Field(3072, gt=0, description="Hidden width of the SwiGLU feed-forward (about 8/3 x d_model keeps its cost equal to a 4x GELU MLP).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base period; larger values suit longer contexts.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSettings:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(f"head size d_model/num_heads = {self.d_model // self.num_heads} must be even for RoPE")
        return self


class DataSettings(Section):
    """Where the token data lives."""

    train_data_path: Path = Field(Path("data/owt_train.txt"), examples=["data/train.bin"], description="Training tokens: a .bin from `lmkit tokenize encode`, or a text file of token ids.")
    val_data_path: Path | None = Field(Path("data/owt_valid.txt"), examples=["data/val.bin"], description="Validation tokens (same formats); empty to skip validation.")
    tokenizer_dir: Path | None = Field(None, examples=["tokenizers/tinyshakespeare"], description="Tokenizer directory recorded with the run so `lmkit generate` can decode; found from the data's metadata when unset.")

    @field_validator("val_data_path", "tokenizer_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        # An empty value on the command line or in YAML means "none", not the current directory.
        return None if v in ("", "none", "None") else v


class OptimSettings(Section):
    """AdamW and its learning-rate schedule."""

    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate, reached at the end of warmup.")
    min_lr: float = Field(1e-5, ge=0, description="Floor of the cosine decay, held after lr_decay_iters.")
    warmup_iters: int = Field(1000, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    lr_decay_iters: int = Field(100000, gt=0, description="Step at which the cosine decay reaches min_lr (usually = max_iters).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, applied to matrices only (not gains or norms).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay (0.95 is steadier than 0.999 for LMs).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this value; 0 disables clipping.")

    @model_validator(mode="after")
    def _floor_below_peak(self) -> OptimSettings:
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        return self


class TrainSettings(Section):
    """The training loop."""

    batch_size: int = Field(32, gt=0, description="Sequences per optimizer step (split into grad_accum_steps micro-batches; summed over GPUs).")
    max_iters: int = Field(100000, gt=0, description="Optimizer steps to train for.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step; must divide batch_size. Lowers memory at equal batch.")
    eval_interval: int = Field(100, gt=0, description="Steps between validation passes.")
    eval_iters: int = Field(20, gt=0, description="Validation batches per pass (drawn with a fixed seed, so passes are comparable).")
    log_interval: int = Field(10, gt=0, description="Steps between reading the loss back from the device (and logging it).")
    on_nan: Literal["stop", "skip"] = Field("stop", examples=["skip"], description="On a non-finite loss or gradient: stop (keep the last good checkpoint) or skip the step.")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", examples=["fsdp"], description="Multi-GPU strategy under torchrun: replicate (ddp) or shard (fsdp).")
    activation_checkpointing: bool = Field(
        False, examples=[True],
        description="Recompute each block's activations in backward instead of keeping them: about a third more compute per step for much less activation memory, for models or batches that would not fit.",
    )

    @model_validator(mode="after")
    def _accum_divides_batch(self) -> TrainSettings:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"grad_accum_steps ({self.grad_accum_steps}) must divide batch_size ({self.batch_size})")
        return self


class CheckpointSettings(Section):
    """Checkpoints and resume; checkpoint_dir is also the run directory (metrics, settings)."""

    checkpoint_dir: Path = Field(Path("checkpoints"), examples=["runs/small"], description="Run directory: checkpoints, latest.pt, metrics.jsonl, settings.yaml.")
    checkpoint_interval: int = Field(1000, gt=0, description="Steps between checkpoints (a final one is always written).")
    keep_last: int | None = Field(None, gt=0, examples=[3], description="Keep only the newest K step checkpoints (latest.pt is always kept).")
    resume: str = Field("auto", examples=["never"], description="auto: resume from checkpoint_dir/latest.pt if present; never: start fresh; or a checkpoint path.")
    init_from: Path | None = Field(
        None, examples=["runs/pretrain"],
        description="Start a new run from this checkpoint's weights (a file, or a run directory's latest.pt): fresh optimizer, schedule and step count; the architecture comes from it (model settings that differ are refused) and the data must use its tokenizer. If checkpoint_dir already holds this run's latest.pt, resume wins.",
    )

    @field_validator("init_from", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        # As for the data paths: an empty value means "none", not the current directory.
        return None if v in ("", "none", "None") else v


class LoggingSettings(Section):
    """Metric sinks: console/dashboard, metrics.jsonl, Weights & Biases."""

    wandb: bool = Field(True, description="Log to Weights & Biases (falls back to offline mode without credentials or network).")
    wandb_project: str = Field("lmkit", examples=["my-lm"], description="W&B project.")
    wandb_name: str | None = Field(None, examples=["small-lr6e-4"], description="W&B run name (default: W&B picks one).")
    wandb_entity: str | None = Field(None, examples=["my-team"], description="W&B entity (user or team).")
    dashboard: Literal["auto", "rich", "plain"] = Field("auto", examples=["plain"], description="auto: live dashboard on a terminal, plain log lines otherwise.")


class RuntimeSettings(Section):
    """Where and how the math runs."""

    device: Literal["auto", "cuda", "cpu"] = Field("auto", examples=["cpu"], description="auto picks CUDA when available.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", examples=["float32"], description="Autocast dtype: auto = bfloat16 on CUDA, float32 on CPU.")
    compile: bool | None = Field(None, examples=[False], description="torch.compile the model (unset: on for CUDA, off for CPU).")
    cuda_graphs: bool | None = Field(
        None, examples=[False],
        description="Replay the compiled training step as CUDA graphs, removing the per-kernel launch cost (unset: on when compiling on one CUDA device without gradient accumulation, the case where a graph can be replayed safely).",
    )
    fp32_residual: bool = Field(
        False, examples=[True],
        description="Under bfloat16 autocast, keep the residual stream between blocks in float32 (as nanoGPT and HF do) instead of bfloat16 (as Megatron and torchtitan do, and lmkit by default: about 3% faster at GPT-2 small, no loss difference measured). No effect in float32.",
    )
    seed: int = Field(42, description="Random seed: weights and data order when training, sampling when generating.")


class GenerateSettings(Section):
    """Sampling."""

    max_new_tokens: int = Field(200, gt=0, description="Tokens to sample after the prompt.")
    temperature: float = Field(0.8, ge=0, description="Softmax temperature; 0 means greedy.")
    top_k: int | None = Field(None, gt=0, examples=[50], description="Sample only among the k most likely tokens.")
    top_p: float | None = Field(None, gt=0, le=1, examples=[0.9], description="Nucleus sampling: the smallest set of tokens with this total probability.")
    num_samples: int = Field(1, gt=0, description="Independent samples to draw.")


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
    generate: GenerateSettings = Field(default_factory=GenerateSettings)

    def flat(self) -> dict[str, Any]:
        """All fields as ``{flat_name: value}`` (JSON-friendly), e.g. for W&B's config."""
        return {k: v for sec in self.model_dump(mode="json").values() for k, v in sec.items()}


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in Settings.model_fields.items()  # type: ignore[misc]
}
# flat name -> section name; field names are unique across sections by design.
FIELD_SECTION: dict[str, str] = {f: s for s, cls in SECTIONS.items() for f in cls.model_fields}
assert len(FIELD_SECTION) == sum(len(c.model_fields) for c in SECTIONS.values()), "duplicate field"

# Keys of the training guide's flat files that lmkit spells differently.
_ALIASES: dict[str, tuple[str, Any]] = {"no_wandb": ("wandb", lambda v: not v)}


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELD_SECTION) + list(SECTIONS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def nest(flat_or_nested: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Turn flat keys (``d_model: 512``) and/or sections (``model: {d_model: 512}``) into a tree.

    Args:
        flat_or_nested: keys from a YAML file, the environment or the command line.
        source: where they came from, named in error messages (a file path, "environment" ...).

    Raises:
        ConfigError: listing every unknown key, each with a did-you-mean suggestion.
    """
    tree: dict[str, dict[str, Any]] = {}
    problems = []
    for key, value in flat_or_nested.items():
        key = str(key).replace("-", "_")
        if key in _ALIASES:
            key, convert = _ALIASES[key]
            value = convert(value)
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                problems.append(f"{source}: '{key}' must be a mapping of settings, got {value!r}")
                continue
            for sub_key, sub_value in nest(value, source).items():
                for name, v in sub_value.items():
                    if sub_key != key:
                        problems.append(f"{source}: '{name}' belongs in section '{sub_key}', not '{key}'")
                    tree.setdefault(sub_key, {})[name] = v
        elif key in FIELD_SECTION:
            tree.setdefault(FIELD_SECTION[key], {})[key] = value
        else:
            problems.append(f"{source}: unknown setting {key!r}{_did_you_mean(key)}")
    if problems:
        raise ConfigError(problems)
    return tree


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file (flat guide-style keys or sections) into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected a YAML config)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return dict(data)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``LMKIT_<FLAT_NAME>=value`` variables as ``{flat_name: value}`` (pydantic parses the strings)."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, value in environ.items():
        if name.startswith("LMKIT_"):
            key = name[len("LMKIT_"):].lower()
            if key in FIELD_SECTION or key in _ALIASES:
                out[key] = yaml.safe_load(value) if value.strip() else None
    return out


def _merge(base: dict[str, dict[str, Any]], top: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in top.items():
        base.setdefault(section, {}).update(values)


def format_validation_error(err: ValidationError, source: str = "settings") -> list[str]:
    """One line per problem: ``<source>: <section.field>: <message> (got <value>)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "settings"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return lines


def validate_tree(tree: Mapping[str, Any], source: str = "settings") -> Settings:
    """Validate a nested mapping into ``Settings``, raising ``ConfigError`` with one line per problem."""
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def resolve_settings(
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings tree. The one place precedence is decided.

    Args:
        config: optional YAML file (flat or sectioned keys).
        overrides: flat ``{name: value}`` from the command line (None values are ignored).
        base: a preset to start from instead of the defaults (e.g. the built-in demo).
        environ: the environment to read ``LMKIT_*`` from (default: ``os.environ``).

    Returns:
        Validated ``Settings``.

    Raises:
        ConfigError: unknown keys, invalid values or an unreadable file, one line per problem.
    """
    tree: dict[str, dict[str, Any]] = {}
    if base is not None:
        base_tree = base.model_dump() if isinstance(base, Settings) else nest(base, "preset")
        _merge(tree, base_tree)
    layers = []
    if config is not None:
        layers.append((load_yaml(config), str(config)))
    layers.append((env_overrides(environ), "environment"))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    problems = []
    for values, source in layers:
        try:
            _merge(tree, nest(values, source))
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    source = str(config) if config is not None else "settings"
    return validate_tree(tree, source)


def settings_to_yaml(settings: Settings) -> str:
    """The resolved settings as sectioned YAML (what ``--print-config`` shows and runs save)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
