"""Checking a loaded checkpoint dict before anything is built from it.

A checkpoint's fields size allocations: ``context_length`` sizes the RoPE tables and the KV
cache, ``num_layers`` the number of blocks built. A damaged or crafted file must not get that
far, so every loader (generate, eval, ``ckpt *``, resume, ``--init-from``) goes through
``validate_checkpoint_state``, which checks types and ranges, then the recorded config against
the shapes of the tensors the file actually holds, without allocating anything sized by a field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lmkit.errors import CheckpointError
from lmkit.model import ModelConfig, TransformerLM

# Positions beyond 2**20 are past any model lmkit trains; RoPE's float32 positions also lose
# integer precision long before 2**24.
MAX_CONTEXT_LENGTH = 2**20
# The RoPE tables (angles, cos, sin: 3 x context_length x head_dim/2 float32) may be at most
# this large, or as large as the weights themselves if those are larger: a real model's tables
# are a small fraction of its weights, a crafted file's are not.
ROPE_TABLE_FLOOR_BYTES = 64 * 2**20
_INT_FIELDS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_DAMAGED = "the file is damaged or was not written by `lmkit train`"


def _fail(path: Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: invalid checkpoint: {field} {problem}; {_DAMAGED}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _got(v: Any) -> str:
    text = repr(v)
    return f"{text[:40]}... ({type(v).__name__})" if len(text) > 40 else f"{text} ({type(v).__name__})"


def _check_counters(state: Mapping[str, Any], path: Path) -> None:
    for key in ("iter", "tokens_seen", "skipped_steps"):
        if key in state and not (_is_int(state[key]) and state[key] >= 0):
            raise _fail(path, key, f"must be an integer >= 0, got {_got(state[key])}")
    for key in ("best_val_loss", "val_loss", "train_loss"):
        v = state.get(key)
        if v is not None and not _is_number(v):
            raise _fail(path, key, f"must be a number or none, got {_got(v)}")
    v = state.get("elapsed_s")
    if v is not None and not (_is_number(v) and math.isfinite(v) and v >= 0):
        raise _fail(path, "elapsed_s", f"must be a number of seconds >= 0, got {_got(v)}")
    v = state.get("world_size")
    if v is not None and not (_is_int(v) and v >= 1):
        raise _fail(path, "world_size", f"must be an integer >= 1, got {_got(v)}")
    for key in ("lmkit_version", "wandb_run_id"):
        v = state.get(key)
        if v is not None and not isinstance(v, str):
            raise _fail(path, key, f"must be text, got {_got(v)}")


def _check_records(state: Mapping[str, Any], path: Path) -> None:
    settings = state.get("settings")
    if settings is not None:
        if not isinstance(settings, Mapping):
            raise _fail(path, "settings", f"must be a mapping of sections, got {_got(settings)}")
        bad = [k for k, v in settings.items() if not isinstance(v, Mapping)]
        if bad:
            raise _fail(path, f"settings.{bad[0]}", f"must be a mapping, got {_got(settings[bad[0]])}")
    tok = state.get("tokenizer")
    if tok is not None:
        if not isinstance(tok, Mapping):
            raise _fail(path, "tokenizer", f"must be a mapping {{dir, hash, vocab_size}}, got {_got(tok)}")
        for key in ("dir", "hash"):
            if tok.get(key) is not None and not isinstance(tok[key], str):
                raise _fail(path, f"tokenizer.{key}", f"must be text, got {_got(tok[key])}")
        if tok.get("vocab_size") is not None and not (_is_int(tok["vocab_size"]) and tok["vocab_size"] > 0):
            raise _fail(path, "tokenizer.vocab_size", f"must be a positive integer, got {_got(tok['vocab_size'])}")
    for key in ("optimizer", "rng", "sampler", "init_from"):
        if state.get(key) is not None and not isinstance(state[key], Mapping):
            raise _fail(path, key, f"must be a mapping, got {_got(state[key])}")


def _model_config(state: Mapping[str, Any], path: Path) -> tuple[ModelConfig, tuple[str, str] | None]:
    # The config, and the (field, problem) of a value above lmkit's range, which is raised only
    # after the tensors are compared: what they hold says more about a crafted field.
    raw = state.get("model_config")
    if raw is None:
        raise CheckpointError(f"{path}: checkpoint has no model_config; it was not written by `lmkit train`")
    if not isinstance(raw, Mapping):
        raise _fail(path, "model_config", f"must be a mapping, got {_got(raw)}")
    known = set(ModelConfig.model_fields)
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise _fail(path, f"model_config.{unknown[0]}", "is not a model setting lmkit knows")
    for name in known:
        if name not in raw:
            raise _fail(path, f"model_config.{name}", "is missing")
    for name in _INT_FIELDS:
        v = raw[name]
        if not (_is_int(v) and v > 0):
            raise _fail(path, f"model_config.{name}", f"must be a positive integer, got {_got(v)}")
    theta = raw["rope_theta"]
    if not (_is_number(theta) and math.isfinite(theta) and theta > 0):
        raise _fail(path, "model_config.rope_theta", f"must be a positive finite number, got {_got(theta)}")
    if raw["context_length"] > MAX_CONTEXT_LENGTH:
        raise _fail(path, "model_config.context_length", f"{raw['context_length']:,} is out of range (lmkit reads at most {MAX_CONTEXT_LENGTH:,})")
    values = {name: raw[name] for name in known}
    try:
        return ModelConfig(**values), None
    except ValidationError as e:  # out of range, num_heads not dividing d_model, an odd head size
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = f"model_config.{where}" if where else "model_config"
        problem = f"describes an impossible model ({first['msg'].removeprefix('Value error, ')})"
        if first["type"] != "less_than_equal":
            raise _fail(path, field, problem) from None
        return ModelConfig.model_construct(**values), (field, problem)


def _weights(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    weights = state.get("model")
    if not isinstance(weights, Mapping) or not weights:
        raise _fail(path, "model", f"must be a non-empty state_dict of tensors, got {_got(weights)}")
    for k, t in weights.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            raise _fail(path, f"model[{k!r}]", f"must be a named tensor, got {_got(t)}")
        if not t.is_floating_point():
            raise _fail(path, f"model[{k!r}]", f"must hold floating-point weights, got {str(t.dtype).removeprefix('torch.')}")
    return dict(weights)


def shape_problems(weights: Mapping[str, Any], config: ModelConfig) -> list[str]:
    """Compare a state_dict with the one ``config`` implies; one line per problem (none: OK).

    The layer count is compared with the tensors first, so the model built for the comparison
    (on the meta device, which allocates nothing) has at most as many blocks as the file holds.
    """
    if not isinstance(weights, Mapping):
        return ["the 'model' entry is not a state_dict"]
    layers = {int(m.group(1)) for k in weights if isinstance(k, str) and (m := _BLOCK.match(k))}
    contiguous = layers == set(range(len(layers)))  # sized by the tensors held, not by the field
    if len(layers) != config.num_layers or not contiguous:
        held = f"blocks 0..{len(layers) - 1}" if contiguous and layers else f"{len(layers)} block indices"
        return [f"num_layers is {config.num_layers} but the weights hold {held}"]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in TransformerLM(config).state_dict().items()}
    problems = [f"missing tensor {k} {list(s)}" for k, s in expected.items() if k not in weights]
    problems += [f"unexpected tensor {k}" for k in weights if k not in expected]
    for k, shape in expected.items():
        t = weights.get(k)
        if isinstance(t, torch.Tensor) and tuple(t.shape) != shape:
            problems.append(f"{k}: shape {list(t.shape)} but model_config implies {list(shape)}")
        elif k in weights and not isinstance(t, torch.Tensor):
            problems.append(f"{k}: not a tensor")
    return problems


def _check_settings_model(state: Mapping[str, Any], config: ModelConfig, path: Path) -> None:
    # A resumed run builds its model from the saved settings; they must describe these weights.
    section = (state.get("settings") or {}).get("model")
    if not isinstance(section, Mapping):
        return
    for name in ModelConfig.model_fields:
        if name in section and section[name] != getattr(config, name):
            raise _fail(path, f"settings.model.{name}", f"is {_got(section[name])} but model_config says {getattr(config, name)!r}")


def validate_checkpoint_state(state: Mapping[str, Any], path: Path) -> ModelConfig:
    """Check a loaded checkpoint dict and return the model it describes.

    Checks, in order, allocating nothing sized by the file's fields: counters (``iter``,
    ``tokens_seen`` ...) are integers >= 0; ``settings``, ``tokenizer``, ``optimizer``, ``rng``
    are mappings of the right kinds; every ``model_config`` field is present, of its type and in
    range; ``model`` is a state_dict of floating tensors whose names and shapes are exactly the
    ones the config implies (embedding = vocab_size x d_model, num_layers blocks, ...); the RoPE
    tables the config asks for are not out of proportion to the weights; ``settings.model``
    agrees with ``model_config``.

    Args:
        state: what ``torch.load`` returned (already known to be an lmkit checkpoint dict).
        path: the file, named in error messages.

    Returns:
        The ``ModelConfig`` to build the model from.

    Raises:
        CheckpointError: naming the file and the first field at fault.
    """
    path = Path(path)
    _check_counters(state, path)
    _check_records(state, path)
    config, too_large = _model_config(state, path)
    weights = _weights(state, path)
    problems = shape_problems(weights, config)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{path}: weights do not match model_config: {'; '.join(problems[:3])}{more}; {_DAMAGED}")
    table_bytes = 3 * config.context_length * (config.head_dim // 2) * 4
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    if table_bytes > max(ROPE_TABLE_FLOOR_BYTES, weight_bytes):
        raise _fail(path, "model_config.context_length", f"{config.context_length:,} would need {table_bytes / 2**20:,.0f} MiB of RoPE "
                    f"tables for {weight_bytes / 2**20:,.1f} MiB of weights")
    if too_large is not None:
        raise _fail(path, *too_large)
    _check_settings_model(state, config, path)
    return config


def validate_resume_state(state: Mapping[str, Any], path: Path) -> None:
    """What resuming needs beyond ``validate_checkpoint_state``: step, optimizer and RNG state.

    Raises:
        CheckpointError: naming the file and the missing or malformed entry.
    """
    path = Path(path)
    if not _is_int(state.get("iter")):
        raise _fail(path, "iter", "is missing, so the step to resume at is unknown")
    opt = state.get("optimizer")
    if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping) or not isinstance(opt.get("param_groups"), list):
        raise CheckpointError(f"{path}: holds no optimizer state (weights only), so training cannot resume from it; "
                              "start a new run from its weights with --init-from and a new --checkpoint-dir")
    weights = state["model"]
    for name, entry in opt["state"].items():
        if not isinstance(entry, Mapping):
            raise _fail(path, f"optimizer.state[{name!r}]", f"must be a mapping, got {_got(entry)}")
        for key in ("exp_avg", "exp_avg_sq"):
            t = entry.get(key)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise _fail(path, f"optimizer.state[{name!r}].{key}", f"must be a tensor, got {_got(t)}")
            if name in weights and tuple(t.shape) != tuple(weights[name].shape):
                raise _fail(path, f"optimizer.state[{name!r}].{key}", f"has shape {list(t.shape)} but the weight has {list(weights[name].shape)}")
    rng = state.get("rng") or {}
    t = rng.get("torch")
    if t is not None and not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
        raise _fail(path, "rng.torch", f"must be a torch RNG state (a uint8 tensor), got {_got(t)}")
