"""Finding and loading the harness's tasks offline, with one-line errors.

Task data come from the Hugging Face hub through ``datasets``. lmkit runs the harness offline
(``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE`` set for the run, unless the environment already
sets them): a task whose data are in the local HF cache runs, one whose data are not fails at
once with the dataset's name and the ways to provide it, never waiting on a network that is not
there. Set ``HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0`` to let a run download into the cache.

Indexing the harness's thousands of built-in task files takes seconds, so tasks are first
looked up in ``include_path`` alone, and the built-in index is built only for names not found
there.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError, DataError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
HOW_TO_PROVIDE = (
    "download it into the HF cache once with HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 (HF_HOME sets where the cache is), "
    "or write a local YAML task over files on disk (dataset_path: json, dataset_kwargs.data_files) and pass its "
    "directory with --include-path DIR"
)


@contextlib.contextmanager
def offline_hub() -> Iterator[bool]:
    """Hub and datasets offline for the block, unless the environment says otherwise.

    ``huggingface_hub`` and ``datasets`` read these variables when first imported, so the
    modules already imported are switched too, and everything is put back afterwards.

    Yields:
        Whether the block runs offline.
    """
    added = [v for v in _OFFLINE_VARS if v not in os.environ]
    for v in added:
        os.environ[v] = "1"
    offline = os.environ["HF_HUB_OFFLINE"].upper() in _TRUE
    patched: list[tuple[Any, str, Any]] = []
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)), ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        mod = sys.modules.get(module)
        for attr in attrs if mod is not None else ():
            if hasattr(mod, attr):
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, offline)
    try:
        yield offline
    finally:
        for mod, attr, old in patched:
            setattr(mod, attr, old)
        for v in added:
            os.environ.pop(v, None)


@contextlib.contextmanager
def quiet_harness(level: int = logging.ERROR) -> Iterator[None]:
    """The harness's loggers at ``level`` for the block (its per-task config warnings are noise here)."""
    log = logging.getLogger("lm_eval")
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


def task_manager(names: Sequence[str], include_path: Sequence[Path | str] = ()) -> Any:
    """A ``TaskManager`` that knows every name in ``names`` (or the full one, to report those it lacks).

    Args:
        names: task, group or tag names, or paths of YAML task files.
        include_path: directories of local YAML tasks.

    Returns:
        ``lm_eval.tasks.TaskManager``.

    Raises:
        ConfigError: an include path that is not a directory or YAML file.
    """
    from lm_eval.tasks import TaskManager

    paths = [Path(p) for p in include_path]
    for p in paths:
        if not (p.is_dir() or (p.is_file() and p.suffix in (".yaml", ".yml"))):
            raise ConfigError(f"--include-path {p}: not a directory of YAML tasks (nor a .yaml file)")
    if paths:
        local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        if all(_is_yaml_file(n) or n in local.all_tasks for n in names):
            return local
    return TaskManager(include_path=[str(p) for p in paths] or None)


def check_task_names(manager: Any, names: Sequence[str]) -> None:
    """Raise a ``ConfigError`` naming each unknown task and its closest known names.

    Raises:
        ConfigError: an empty list, or names the harness does not know (one problem each).
    """
    if not names:
        raise ConfigError("--tasks: give at least one task, e.g. --tasks hellaswag,arc_easy (lm_eval ls tasks lists them)")
    known = manager.all_tasks
    problems = []
    for name in names:
        if _is_yaml_file(name) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists the known ones"
        problems.append(f"--tasks: unknown task {name!r}{hint}")
    if problems:
        raise ConfigError(problems, "a local YAML task is found through --include-path DIR")


def load_tasks(manager: Any, names: Sequence[str]) -> dict[str, Any]:
    """Build the tasks (reading their data), as ``TaskManager.load`` does, one name at a time.

    Returns:
        The harness's task dict: ``{"tasks": ..., "groups": ..., "group_map": ...}``.

    Raises:
        DataError: a task's data are not available (not cached offline, or a missing local file).
    """
    merged: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    for name in names:
        try:
            loaded = manager.load([name])
        except (ConnectionError, FileNotFoundError, OSError) as e:
            raise _missing_data(manager, name, e) from None
        for key in merged:
            merged[key].update(loaded.get(key) or {})
    return merged


def _missing_data(manager: Any, name: str, error: Exception) -> DataError:
    """The one-line error for a task whose data could not be loaded."""
    text = " ".join(str(error).split())
    local = re.search(r"Unable to find '([^']+)'", text)
    if local:
        return DataError(f"task {name}: its data file {local.group(1)} does not exist; fix data_files in the task's YAML")
    hub = re.search(r"(?:reach|find|not cached|Dataset) '?([\w.-]+/[\w.-]+)'?", text)
    entry = manager.task_index.get(name) if hasattr(manager, "task_index") else None
    dataset = hub.group(1) if hub else ((getattr(entry, "cfg", None) or {}).get("dataset_path") or "its dataset")
    return DataError(f"task {name}: dataset {dataset} is not available offline ({text[:160]}); {HOW_TO_PROVIDE}")


def _is_yaml_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()
