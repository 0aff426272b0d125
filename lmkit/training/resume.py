"""Deciding what to resume from, and what a resumed run may change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmkit.errors import CheckpointError, ConfigError
from lmkit.settings import Settings, validate_tree
from lmkit.training.checkpoint import LATEST, list_checkpoints, newest_intact, open_checkpoint
from lmkit.training.rundir import read_record
from lmkit.training.checkpoint_state import validate_resume_state
from lmkit.training.init_from import same_source, take_architecture

# Sections whose change makes the checkpoint's weights meaningless for the new run.
_ARCHITECTURE = ("model",)
# Fields that are allowed to differ, and are applied, when resuming (schedule, intervals, sinks).
_SAFE_SECTIONS = ("optim", "checkpoint", "logging", "generate", "kernels")  # kernels: same numbers, other speed
_SAFE_FIELDS = {
    "max_iters", "eval_interval", "eval_iters", "log_interval", "on_nan", "parallel", "grad_accum_steps",
    "activation_checkpointing", "device", "dtype", "compile", "compile_scope", "cuda_graphs", "fp32_residual", "val_data_path",
    "train_data_path", "tokenizer_dir",
}
# Fields of the safe sections that still cannot change: the optimizer's state is of its kind.
_FIXED_FIELDS = {"optimizer"}
# Settings whose default changed after checkpoints were first written without them: what such a
# checkpoint's run actually used, so that resuming it lists the change instead of hiding it.
_OLD_DEFAULTS = {("runtime", "fp32_residual"): True}


def load_resume_state(resume: str, checkpoint_dir: Path, notice: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from, loaded.

    ``auto``: ``checkpoint_dir/latest.pt`` if present; if it is damaged, the newest intact
    ``ckpt_*.pt`` (newest written, as run.json lists them) with a warning. ``never``: none (an
    earlier run's files there are moved aside when the run starts; see ``rundir.open_run``).
    Anything else: a path that must exist and load.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if resume == "never":
        return None
    if resume == "auto":
        if not (checkpoint_dir / LATEST).exists() and not list_checkpoints(checkpoint_dir):
            return None
        record = read_record(checkpoint_dir)
        order = record.checkpoints if record else ()
        found = newest_intact(checkpoint_dir, lambda m: notice(f"warning: {m}"), order)
        if found is None:
            raise CheckpointError(f"{checkpoint_dir}: every checkpoint there is damaged; use --resume never or a new --checkpoint-dir to start over")
        return found
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"{path}: --resume checkpoint not found (use auto, never or an existing file)")
    opened = open_checkpoint(path)
    return opened.path, opened.state


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    out = []
    for section, values in new.items():
        for key, value in values.items():
            before = old.get(section, {}).get(key, value)
            if before != value:
                out.append((section, key, before, value))
    return out


def _init_from(settings: Settings, old: dict[str, Any], state: dict[str, Any], path: Path, notice: Callable[[str], None]) -> Settings:
    """Resume wins over ``--init-from`` when the run being resumed started from that checkpoint.

    A run that started from a checkpoint took its architecture from it, so model fields left
    unset come from the saved settings (the command that started it did not give them either).
    """
    given, before = settings.checkpoint.init_from, old["checkpoint"].get("init_from")
    run_dir = path.parent
    if given is not None and not same_source(given, before):
        began = f"started from {before}" if before else "was trained from scratch"
        raise ConfigError(
            f"checkpoint.init_from: {run_dir} already holds a run (step {state.get('iter')}) that {began}, so resuming it "
            f"would not start from --init-from {given}; pick a new --checkpoint-dir for the new run (or --resume never to "
            "start over in this one, overwriting its checkpoints)"
        )
    if before is None:
        return settings
    if given is not None:
        notice(f"{run_dir} already holds this run's checkpoints: resuming it (resume wins over --init-from; "
               f"{given} gave it its starting weights and is not loaded again)")
    settings = take_architecture(settings, old["model"], f"{path} (this run's checkpoint)", notice)
    tree = settings.model_dump(mode="json")
    tree["checkpoint"]["init_from"] = before  # the resumed run keeps its record of where it began
    return validate_tree(tree, "settings")


def reconcile_settings(settings: Settings, state: dict[str, Any], path: Path, notice: Callable[[str], None]) -> Settings:
    """Check the new settings against the checkpoint's and say what changes.

    Architecture changes are refused (listing every differing field); changes to the schedule,
    intervals, logging and runtime are applied and listed. Changing ``batch_size``, ``seed`` or
    the data would silently make a different run, so those are refused too. A run that began
    with ``--init-from`` resumes as itself (see ``_init_from``); naming another ``--init-from``
    for it is refused.

    Raises:
        CheckpointError: the checkpoint lacks what resuming needs (optimizer state, step).
        ConfigError: one line per field that cannot change on resume.
    """
    validate_resume_state(state, path)
    saved = state.get("settings")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: checkpoint has no settings; cannot resume from it")
    saved = {section: dict(values) if isinstance(values, dict) else values for section, values in saved.items()}
    for (section, key), value in _OLD_DEFAULTS.items():
        if isinstance(saved.get(section), dict):
            saved[section].setdefault(key, value)
    old = validate_tree(saved, f"{path} (saved settings)").model_dump(mode="json")
    settings = _init_from(settings, old, state, path, notice)
    new = settings.model_dump(mode="json")
    refused, applied = [], []
    for section, key, before, after in _diff(old, new):
        line = f"{key}: {before} -> {after}"
        if key in _FIXED_FIELDS:
            refused.append(f"{section}.{key} differs from the checkpoint ({before} there, {after} now): its optimizer state is {before}'s")
        elif section in _SAFE_SECTIONS or key in _SAFE_FIELDS:
            applied.append(line)
        elif section in _ARCHITECTURE:
            refused.append(f"model.{key} differs from the checkpoint ({before} there, {after} now): the weights do not fit")
        else:
            refused.append(f"{section}.{key} differs from the checkpoint ({before} there, {after} now): resuming would not continue the same run")
    if refused:
        raise ConfigError(refused, hint=f"resuming from {path}; use --resume never or a new --checkpoint-dir to start a different run")
    step = state.get("iter", 0)
    notice(f"resuming from {path} at step {step}" + (f"; changed: {', '.join(applied)}" if applied else ""))
    return settings
