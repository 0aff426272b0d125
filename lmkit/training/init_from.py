"""Starting a new run from a trained checkpoint's weights (``lmkit train --init-from CKPT``).

Continued pretraining and fine-tuning start from a model's weights but are new runs: a fresh
optimizer, schedule and step count, a run directory of their own. The architecture is the
checkpoint's: model fields left unset are taken from it, and a field set to something else is
refused (the weights would not fit, or would compute something else). ``context_length`` is the
exception: RoPE weights do not depend on it, so a run may train at another length (noted).

If the run directory already holds this run's ``latest.pt`` (a stopped fine-tune),
``--resume auto`` resumes it instead; ``lmkit.training.resume.reconcile_settings`` decides that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmkit.errors import CheckpointError, ConfigError, TokenizerError
from lmkit.model import ModelConfig
from lmkit.settings import Settings, validate_tree
from lmkit.training.checkpoint import LATEST, checkpoint_file, file_digest, open_checkpoint

# May differ from the checkpoint's: no weight depends on it (RoPE is computed, not learned).
_FREE_FIELDS = ("context_length",)


@dataclass
class InitSource:
    """The checkpoint a run starts from, checked, with the settings it implies."""

    path: Path  # the checkpoint file (a run directory's latest.pt when a directory was given)
    settings: Settings  # the run's settings with the checkpoint's architecture filled in
    weights: dict[str, torch.Tensor]
    tokenizer_hash: str | None
    record: dict[str, Any]  # what the new run's checkpoints record: {path, sha256, iter}


def same_source(a: Path | str | None, b: Path | str | None) -> bool:
    """Whether two ``--init-from`` values name the same checkpoint (a run dir equals its latest.pt)."""
    if a is None or b is None:
        return a is b
    return checkpoint_file(Path(a)).resolve() == checkpoint_file(Path(b)).resolve()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def take_architecture(settings: Settings, recorded: Mapping[str, Any], source: str, notice: Callable[[str], None]) -> Settings:
    """``settings`` with every model field left unset taken from ``recorded``.

    Args:
        settings: the run's settings; ``settings.model.model_fields_set`` tells which model
            fields were given (flag, YAML or environment).
        recorded: the checkpoint's model config (field -> value).
        source: how to name the checkpoint in messages.
        notice: told when a free field (``context_length``) differs.

    Raises:
        ConfigError: one line per given field that differs from the checkpoint.
    """
    given = settings.model.model_fields_set
    model = settings.model.model_dump()
    problems = []
    for name in ModelConfig.model_fields:
        theirs = recorded[name]
        if name not in given:
            model[name] = theirs
        elif model[name] != theirs and name in _FREE_FIELDS:
            notice(f"{name} {model[name]} (the checkpoint was trained at {theirs}): its weights fit any {name}; training at {model[name]}")
        elif model[name] != theirs:
            problems.append(f"model.{name}: {_flag(name)} {model[name]} differs from {theirs} in {source}; leave {_flag(name)} out to take the checkpoint's value")
    if problems:
        raise ConfigError(problems)
    tree = settings.model_dump(mode="json")
    tree["model"] = model
    return validate_tree(tree, source)


def load_init_source(settings: Settings, notice: Callable[[str], None]) -> InitSource:
    """Load and check ``settings.checkpoint.init_from`` and take its architecture.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or invalid, or lies inside this
            run's own ``checkpoint_dir`` (the new run would overwrite what it starts from).
        ConfigError: a given model field differs from the checkpoint's.
    """
    given = Path(settings.checkpoint.init_from)
    path = checkpoint_file(given)
    run_dir = Path(settings.checkpoint.checkpoint_dir)
    if path.resolve().parent == run_dir.resolve():
        raise CheckpointError(
            f"{given}: --init-from names a checkpoint of this run's own --checkpoint-dir {run_dir}; a new run "
            "needs a directory of its own (pick another --checkpoint-dir), and to continue that run drop --init-from"
        )
    if not path.exists():
        raise CheckpointError(f"{given}: --init-from checkpoint not found; pass a checkpoint file or a run directory holding {LATEST}")
    opened = open_checkpoint(path)
    state, config = opened.state, opened.check()
    source = f"the --init-from checkpoint {path}"
    new = take_architecture(settings, config.model_dump(), source, notice)
    record = {"path": str(path), "sha256": file_digest(path), "iter": state.get("iter")}
    notice(f"starting from the weights of {path} (step {state.get('iter')}): new optimizer, schedule and step count")
    return InitSource(path, new, state["model"], (state.get("tokenizer") or {}).get("hash"), record)


def check_init_tokenizer(source: InitSource, datasets: list[Any]) -> None:
    """Refuse data encoded with another tokenizer than the checkpoint's (when both record one).

    Args:
        source: from ``load_init_source``.
        datasets: ``TokenDataset``s (``path`` and ``meta.tokenizer_hash``) the run reads.

    Raises:
        TokenizerError: naming the data file, both hashes and what to do.
    """
    for data in datasets:
        if data is None:
            continue
        theirs = getattr(data.meta, "tokenizer_hash", None)
        if source.tokenizer_hash and theirs and theirs != source.tokenizer_hash:
            raise TokenizerError(
                f"{data.path}: encoded with tokenizer {theirs}, but --init-from {source.path} was trained with "
                f"{source.tokenizer_hash}: its embeddings belong to other token ids. Encode the data with the "
                "checkpoint's tokenizer (lmkit tokenize encode --tokenizer DIR)"
            )
