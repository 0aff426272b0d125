"""Weights & Biases, never at the expense of training.

- ``wandb`` is imported inside ``start`` only, so ``import lmkit.observe`` (and the CLI's help)
  never pays for it.
- Without credentials (no ``WANDB_API_KEY``, no netrc entry for the W&B host) and no explicit
  ``WANDB_MODE``, the run is logged offline under ``run_dir/wandb`` with a one-line notice;
  ``wandb sync`` uploads it later. If an online start fails (server unreachable, bad key), it
  retries offline the same way. Before an online attempt it says "connecting to W&B" at once,
  and ``init_timeout`` (``logging.wandb_init_timeout``, a few seconds) caps how long an
  unreachable server can hold step 0.
- Any exception from wandb after that disables this sink with a one-line warning; training goes on.
- wandb is told to be silent and not to capture the console, so it cannot tear the dashboard.
- Metrics are logged against our own ``step`` key (``define_metric``), not wandb's internal step,
  so a run resumed from an earlier checkpoint can log steps it has logged before.
- ``run_id`` is set after ``start``; the trainer stores it in checkpoints and passes it back as
  ``RunInfo.wandb_run_id`` so a resumed run continues the same W&B run (``resume="allow"``).
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lmkit.observe.base import RunInfo
from lmkit.observe.streams import say

INIT_TIMEOUT_S = 5.0  # default of logging.wandb_init_timeout: then the start falls back to offline
_SECRET_WORDS = ("key", "token", "secret", "password")
_EXIT_CODES = {"finished": 0, "interrupted": 130, "aborted": 130, "failed": 1}


def public_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings minus anything that looks like a credential (by key name)."""
    return {k: v for k, v in settings.items() if not any(w in k.lower() for w in _SECRET_WORDS)}


def has_credentials(environ: dict[str, str] | None = None) -> bool:
    """Whether wandb can log in without asking: ``WANDB_API_KEY`` or a netrc entry for its host."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    url = environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or "api.wandb.ai"
    path = environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _say(message: str) -> None:
    say(f"lmkit: {message}")


class WandbSink:
    """Logs metrics and the run's settings to W&B (see the module docstring)."""

    name = "wandb"

    def __init__(
        self,
        project: str = "lmkit",
        name: str | None = None,
        entity: str | None = None,
        init_timeout: float = INIT_TIMEOUT_S,
    ):
        """Create the sink; nothing is imported or started until ``start``.

        Args:
            project: W&B project.
            name: run name (None: W&B picks one).
            entity: user or team (None: the account's default).
            init_timeout: seconds an online start may take before falling back to offline.
        """
        self.project, self.run_name, self.entity = project, name, entity
        self.init_timeout = init_timeout
        self.run_id: str | None = None
        self.mode: str | None = None  # "online" / "offline" once started
        self._run: Any = None

    def _init(self, wandb: Any, info: RunInfo, mode: str | None) -> Any:
        settings = wandb.Settings(
            init_timeout=self.init_timeout,
            silent=True,  # no banner, no "syncing run" lines over the dashboard
            console="off",  # do not wrap stdout/stderr; rich's live display owns them
            x_disable_stats=True,  # no system-metrics sampler thread; we log GPU memory ourselves
        )
        # wandb reads WANDB_SILENT before the settings object applies (its login notice), so set it
        # for the duration of init only, and only if the user has not chosen otherwise.
        silent_was_set = "WANDB_SILENT" in os.environ
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            return wandb.init(
                project=self.project,
                name=self.run_name,
                entity=self.entity,
                config=public_config(info.settings),
                dir=str(info.run_dir),
                id=info.wandb_run_id,
                resume="allow",
                mode=mode,
                settings=settings,
            )
        finally:
            if not silent_was_set:
                os.environ.pop("WANDB_SILENT", None)

    def start(self, info: RunInfo) -> None:
        """Start (or continue) the W&B run, offline when it cannot go online."""
        try:
            import wandb  # heavy; only paid by runs that use W&B
        except ImportError:
            _say("warning: wandb is not installed; W&B logging is off (pip install wandb)")
            return
        info.run_dir.mkdir(parents=True, exist_ok=True)
        mode = None  # None: let WANDB_MODE (or wandb's default, online) decide
        if not os.environ.get("WANDB_MODE") and not has_credentials():
            mode = "offline"
            _say(f"wandb: no credentials (WANDB_API_KEY or `wandb login`); logging offline to "
                 f"{info.run_dir / 'wandb'} (upload later with `wandb sync`)")
        elif os.environ.get("WANDB_MODE", "online") == "online":
            # Said before the wait, so a silent step 0 is never a mystery.
            _say(f"wandb: connecting to W&B (up to {self.init_timeout:g} s, then logging offline)...")
        try:
            run = self._init(wandb, info, mode)
        except Exception as e:  # noqa: BLE001 - any failure to go online falls back to offline
            if mode == "offline" or os.environ.get("WANDB_MODE") == "offline":
                return self._disable("start", e)
            _say(f"wandb: could not start online ({_first_line(e)}); logging offline to "
                 f"{info.run_dir / 'wandb'} (upload later with `wandb sync`)")
            try:
                run = self._init(wandb, info, "offline")
            except Exception as e2:  # noqa: BLE001
                return self._disable("start", e2)
        try:
            run.define_metric("step")
            run.define_metric("*", step_metric="step")
        except Exception as e:  # noqa: BLE001
            return self._disable("start", e, run)
        self._run = run
        self.run_id = run.id
        self.mode = "offline" if getattr(run, "offline", False) else "online"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log the metrics against ``step``."""
        if self._run is None:
            return
        try:
            self._run.log({"step": step, **metrics})
        except Exception as e:  # noqa: BLE001
            self._disable("log", e, self._run)

    def event(self, message: str, kind: str = "info") -> None:
        """Keep the last checkpoint in the run summary; other events are not sent to W&B."""
        if self._run is None or kind != "checkpoint":
            return
        try:
            self._run.summary["last_checkpoint"] = message.split(": ", 1)[-1]
        except Exception as e:  # noqa: BLE001
            self._disable("event", e, self._run)

    def close(self, status: str = "finished") -> None:
        """Finish the run, marking it failed unless training finished."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(exit_code=_EXIT_CODES.get(status, 1))
        except Exception as e:  # noqa: BLE001
            self._disable("close", e)

    def _disable(self, where: str, error: BaseException, run: Any = None) -> None:
        self._run = None
        _say(f"warning: W&B logging failed in {where} ({_first_line(error)}); "
             "continuing without it")
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001, S110 - already reported; nothing more to do
                pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
