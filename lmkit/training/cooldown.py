"""Finishing a warmup-stable-decay run from any checkpoint of its stable phase
(``lmkit train --cooldown-from CKPT --cooldown-iters N``).

A wsd run holds its peak learning rate until its decay; a checkpoint saved at step S of that
stable phase can be decayed to a finished model in N more steps, as its own run directory,
without redoing the S steps. Unlike ``--init-from`` it continues the source run exactly: weights,
optimizer state, step counter, data position and random state, so the result equals a single
run whose decay began at step S (a wsd run with ``lr_decay_iters = max_iters = S + N`` and
``decay_fraction = N / (S + N - warmup_iters)``). Settings left unset come from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit.errors import CheckpointError, ConfigError
from lmkit.settings import SECTIONS, Settings, validate_tree
from lmkit.training.checkpoint import checkpoint_file, file_digest, open_checkpoint
from lmkit.training.checkpoint_state import validate_resume_state
from lmkit.training.init_from import same_source
from lmkit.training.schedule import decay_start

# What the cooldown sets; a value given for one of these is refused rather than ignored.
_DERIVED = ("max_iters", "lr_decay_iters", "schedule", "decay_fraction")


@dataclass
class CooldownSource:
    """The checkpoint a cooldown continues, with the settings of the cooldown run."""

    path: Path
    settings: Settings
    state: dict[str, Any]  # the checkpoint: weights, optimizer state, counters, random state
    record: dict[str, Any]  # what the cooldown's checkpoints record: {path, sha256, iter, cooldown_iters}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cooldown_settings(settings: Settings, template: dict[str, Any], start: int, source: str) -> Settings:
    """The cooldown run's settings: ``template`` (the source run's), the fields ``settings`` sets,
    this run's checkpoint section, and the decay from ``start`` over ``cooldown_iters`` steps.

    Args:
        settings: the command's settings (``model_fields_set`` tells what was given).
        template: the source checkpoint's saved settings (for a resumed cooldown, its own).
        start: the step the decay begins at (the source checkpoint's).
        source: how to name the checkpoint in messages.

    Raises:
        ConfigError: the source is not a wsd run, ``start`` is outside its stable phase, a model
            field differs from the source's, or a value the cooldown sets was given.
    """
    old = validate_tree(template, f"{source} (saved settings)")
    o = old.optim
    if o.schedule != "wsd":
        raise ConfigError(f"checkpoint.cooldown_from: {source} is from a {o.schedule} run; a cooldown continues a wsd run "
                          "(--schedule wsd), whose learning rate is still at its peak; use --init-from to start a new run from it")
    end_of_stable = decay_start(o.warmup_iters, o.lr_decay_iters, o.decay_fraction)
    if not o.warmup_iters <= start <= end_of_stable:
        where = "warmup" if start < o.warmup_iters else "decay"
        raise ConfigError(f"checkpoint.cooldown_from: {source} is at step {start}, in its run's {where} (the stable phase is steps "
                          f"{o.warmup_iters}-{end_of_stable}); pick a checkpoint of the stable phase")
    tree = old.model_dump(mode="json")
    problems = []
    for name in SECTIONS:
        given = getattr(settings, name)
        for key in given.model_fields_set:
            value = given.model_dump(mode="json")[key]
            if name == "model" and value != tree["model"][key]:
                problems.append(f"model.{key}: {_flag(key)} {value} differs from {tree['model'][key]} in {source}; "
                                "a cooldown continues that model (leave the flag out)")
            elif key in _DERIVED:
                problems.append(f"{name}.{key}: set by the cooldown (it ends at step {start} + --cooldown-iters); leave {_flag(key)} out")
            else:
                tree[name][key] = value
    if problems:
        raise ConfigError(problems)
    iters = settings.checkpoint.cooldown_iters
    tree["checkpoint"] = settings.checkpoint.model_dump(mode="json")  # this run's directory, not the source's
    end = start + iters
    tree["train"]["max_iters"] = end
    tree["optim"].update(schedule="wsd", lr_decay_iters=end, decay_fraction=iters / (end - o.warmup_iters))
    new = validate_tree(tree, "settings")
    # The fraction is a float: check it lands the decay on the source's step.
    assert decay_start(o.warmup_iters, end, new.optim.decay_fraction) == start
    return new


def load_cooldown_source(settings: Settings, notice: Callable[[str], None]) -> CooldownSource:
    """Load and check ``settings.checkpoint.cooldown_from`` and derive the cooldown run's settings.

    Raises:
        CheckpointError: the checkpoint is missing, damaged, lacks optimizer state, or lies in
            this run's own ``checkpoint_dir``.
        ConfigError: see ``cooldown_settings``.
    """
    given = Path(settings.checkpoint.cooldown_from)
    path = checkpoint_file(given)
    run_dir = Path(settings.checkpoint.checkpoint_dir)
    if path.resolve().parent == run_dir.resolve():
        raise CheckpointError(f"{given}: --cooldown-from names a checkpoint of this run's own --checkpoint-dir {run_dir}; "
                              "a cooldown is a new run: pick another --checkpoint-dir")
    if not path.exists():
        raise CheckpointError(f"{given}: --cooldown-from checkpoint not found; pass a checkpoint file or a run directory holding latest.pt")
    state = open_checkpoint(path).state  # the one loader: verified, fields checked
    validate_resume_state(state, path)
    start = int(state["iter"])
    new = cooldown_settings(settings, state.get("settings") or {}, start, f"the --cooldown-from checkpoint {path}")
    record = {"path": str(path), "sha256": file_digest(path), "iter": start, "cooldown_iters": settings.checkpoint.cooldown_iters}
    notice(f"cooling down from {path} (step {start}): weights and optimizer state, decaying to min_lr by step {new.train.max_iters}")
    return CooldownSource(path, new, state, record)


def resume_cooldown(settings: Settings, state: dict[str, Any], path: Path) -> Settings:
    """For a cooldown run being resumed: its settings derived as when it started (from its own
    checkpoint), so that ``reconcile_settings`` compares like with like. Without
    ``--cooldown-from`` on the command line, the recorded one.

    Raises:
        ConfigError: the run directory holds a run that is not a cooldown of this checkpoint.
    """
    record = state.get("cooldown") or {}
    given = settings.checkpoint.cooldown_from
    if given is None and record:  # resumed without the flags: the cooldown the run recorded
        given = record.get("path")
        checkpoint = settings.checkpoint.model_copy(update={"cooldown_from": given, "cooldown_iters": record.get("cooldown_iters")})
        settings = settings.model_copy(update={"checkpoint": checkpoint})
    if not record or not same_source(given, record.get("path")):
        began = f"a cooldown from {record.get('path')}" if record else "not a cooldown"
        raise ConfigError(f"checkpoint.cooldown_from: {path.parent} already holds a run ({began}); pick a new "
                          f"--checkpoint-dir for the cooldown from {given}")
    return cooldown_settings(settings, state.get("settings") or {}, int(record["iter"]), f"{path} (this run's checkpoint)")
