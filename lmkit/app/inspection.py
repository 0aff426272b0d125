"""Looking inside checkpoints without training or generating: summaries and validation.

Both load the file with ``weights_only=True`` (see ``lmkit.training.checkpoint``), so a file
carrying pickled code is refused, never run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmkit.errors import CheckpointError, LmkitError
from lmkit.app.inference import find_tokenizer, settings_of
from lmkit.model import TransformerLM
from lmkit.training.checkpoint import checkpoint_file, open_checkpoint

# Text the tokenizer check encodes and decodes: ASCII, accents, an emoji, CJK, whitespace runs.
ROUND_TRIP_TEXT = "Hello, world! Caf\u00e9 na\u00efve \U0001f44b \u4f60\u597d\n\n\t  spaces  42"
_EMBEDDINGS = ("tok_embeddings.weight", "lm_head.weight")


@dataclass
class TensorInfo:
    """One tensor of the model's state_dict."""

    name: str
    shape: list[int]
    dtype: str
    norm: float  # Frobenius norm, computed in fp32


@dataclass
class CheckpointSummary:
    """What ``lmkit ckpt inspect`` shows."""

    path: str
    size_bytes: int
    format_version: int
    lmkit_version: str | None
    iter: int | None
    tokens_seen: int | None
    elapsed_s: float | None
    best_val_loss: float | None
    val_loss: float | None
    train_loss: float | None
    model_config: dict[str, Any]
    params_total: int
    params_non_embedding: int  # without the token embedding and the (untied) LM head
    dtypes: list[str]
    has_optimizer: bool
    wandb_run_id: str | None
    world_size: int | None
    tokenizer: dict[str, Any] | None  # {dir, hash, vocab_size} as recorded
    init_from: dict[str, Any] | None  # {path, sha256, iter} of the checkpoint the run started from
    tensors: list[TensorInfo] | None = None  # with tensors=True
    # Every settings section the checkpoint records ({section: {field: value}}), whatever the
    # sections are: a section added later (e.g. kernels) shows without a change here.
    settings: dict[str, dict[str, Any]] | None = None
    # The run's `kernels` settings (fast paths) as recorded; None: written before that section
    # existed, so the run used the defaults.
    kernels: dict[str, Any] | None = None
    optimizer: str | None = None  # "adamw" or "muon", with its LRs and schedule (from the saved settings)
    cooldown: dict[str, Any] | None = None  # {path, sha256, iter, cooldown_iters} of a cooldown's source

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (what ``--json`` prints)."""
        return asdict(self)


def inspect_checkpoint(path: Path | str, tensors: bool = False) -> CheckpointSummary:
    """Summarise a checkpoint: progress, model shape, parameter counts, what it holds.

    Args:
        path: checkpoint file.
        tensors: also list every model tensor with its shape, dtype and norm.

    Raises:
        CheckpointError: missing, truncated, foreign or newer-format file.
    """
    opened = open_checkpoint(path)
    path, state, config = opened.path, opened.state, opened.check()
    weights = state["model"]
    total = sum(t.numel() for t in weights.values())
    embed = sum(weights[k].numel() for k in _EMBEDDINGS if k in weights)
    infos = None
    if tensors:
        infos = [TensorInfo(k, list(t.shape), str(t.dtype).removeprefix("torch."), float(t.float().norm())) for k, t in weights.items()]
    return CheckpointSummary(
        path=str(path), size_bytes=path.stat().st_size, format_version=int(state["version"]),
        lmkit_version=state.get("lmkit_version"), iter=state.get("iter"), tokens_seen=state.get("tokens_seen"),
        elapsed_s=state.get("elapsed_s"), best_val_loss=state.get("best_val_loss"), val_loss=state.get("val_loss"),
        train_loss=state.get("train_loss"), model_config=config.model_dump(), params_total=total,
        params_non_embedding=total - embed, dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in weights.values()}),
        has_optimizer=bool(state.get("optimizer")), wandb_run_id=state.get("wandb_run_id"),
        world_size=state.get("world_size"), tokenizer=state.get("tokenizer"), init_from=state.get("init_from"), tensors=infos,
        settings=_settings_sections(state), optimizer=describe_optimizer(state), cooldown=state.get("cooldown"),
        kernels=(state.get("settings") or {}).get("kernels"),
    )


def describe_optimizer(state: dict[str, Any]) -> str | None:
    """The optimizer and schedule a checkpoint's run used, in one line (None without saved settings).

    Checkpoints from before ``optim.optimizer``/``optim.schedule`` were AdamW with cosine decay.
    """
    optim = (state.get("settings") or {}).get("optim")
    if not isinstance(optim, dict):
        return None
    kind, schedule = optim.get("optimizer", "adamw"), optim.get("schedule", "cosine")
    lr = optim.get("learning_rate")
    text = f"adamw (lr {lr:g})" if isinstance(lr, (int, float)) else "adamw"
    if kind == "muon":
        text = (f"muon on the hidden matrices (lr {optim.get('muon_lr'):g}, momentum {optim.get('muon_momentum'):g}, "
                f"{optim.get('muon_ns_steps')} Newton-Schulz steps) + {text} on the rest")
    if schedule == "wsd":
        schedule += f" (decay over the last {optim.get('decay_fraction'):g})"
    return f"{text}; {schedule} schedule to step {optim.get('lr_decay_iters')}"


def _settings_sections(state: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    # As recorded (not re-validated): a section this lmkit no longer knows still shows.
    recorded = state.get("settings")
    if not isinstance(recorded, dict):
        return None
    return {str(k): dict(v) for k, v in recorded.items() if isinstance(v, dict)}


@dataclass
class Check:
    """One validation check: ``status`` is ``ok``, ``fail`` or ``skip``."""

    name: str
    status: str
    detail: str = ""


@dataclass
class ValidationReport:
    """The result of ``validate_checkpoint``."""

    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed."""
        return all(c.status != "fail" for c in self.checks)

    @property
    def problems(self) -> list[str]:
        """``name: detail`` of each failed check."""
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def validate_checkpoint(path: Path | str, tokenizer_dir: Path | str | None = None) -> ValidationReport:
    """Check that a checkpoint is usable: it loads, its weights fit its config and are finite,
    a forward pass works, and its tokenizer (when found) matches and round-trips text.

    Args:
        path: checkpoint file.
        tokenizer_dir: check this tokenizer instead of the recorded one.

    Returns:
        A report; ``report.ok`` is False when any check failed. A damaged or foreign file is a
        failed ``loads`` check rather than an exception.

    Raises:
        CheckpointError: the path does not exist or is a directory.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        open_checkpoint(path, check=False)  # raises what the path is instead ("not found", "a directory without latest.pt" ...)
    report = ValidationReport(str(path))
    add = report.checks.append
    try:
        opened = open_checkpoint(path, check=False)  # reading and checking reported apart
    except CheckpointError as e:
        add(Check("loads", "fail", str(e).removeprefix(f"{path}: ")))
        return report
    state = opened.state
    add(Check("loads", "ok", f"format {state['version']}, lmkit {state.get('lmkit_version')}, step {state.get('iter')}"))
    try:
        # Before anything is built: the recorded fields in range and fitting the tensors held.
        config = opened.check()
    except CheckpointError as e:
        add(Check("shapes", "fail", str(e).removeprefix(f"{path}: ")))
        return report
    add(Check("shapes", "ok", f"model_config valid, {len(state['model'])} tensors match it"))
    bad = [k for k, t in state["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    add(Check("finite", "fail" if bad else "ok", f"NaN/inf in {', '.join(bad[:3])}" if bad else "no NaN or inf"))
    add(_forward_check(state, config))
    settings = settings_of(state)
    add(Check("settings", "ok" if settings else "fail", "the recorded settings validate" if settings else "missing, or no longer valid for this lmkit"))
    add(_tokenizer_check(state, path, tokenizer_dir))
    add(Check("optimizer", "ok" if state.get("optimizer") else "skip", "present (training can resume)" if state.get("optimizer") else "absent (weights only)"))
    return report


def _forward_check(state: dict[str, Any], config: Any) -> Check:
    # A few tokens through the model on CPU: catches weights that load but compute garbage.
    model = TransformerLM(config)
    model.load_state_dict(state["model"])
    with torch.no_grad():
        logits = model(torch.arange(min(8, config.context_length))[None] % config.vocab_size)  # (1, T, V)
    if not bool(torch.isfinite(logits).all()):
        return Check("forward", "fail", "a forward pass gives NaN/inf logits")
    return Check("forward", "ok", f"logits {list(logits.shape)} finite")


def _tokenizer_check(state: dict[str, Any], path: Path, tokenizer_dir: Path | str | None) -> Check:
    try:
        tok = find_tokenizer(state, path, Path(tokenizer_dir) if tokenizer_dir else None)
    except LmkitError as e:
        return Check("tokenizer", "fail", str(e))
    if tok is None:
        recorded = (state.get("tokenizer") or {}).get("dir")
        return Check("tokenizer", "skip", f"recorded {recorded} not found" if recorded else "none recorded")
    ids = tok.encode(ROUND_TRIP_TEXT)
    if tok.decode(ids) != ROUND_TRIP_TEXT:
        return Check("tokenizer", "fail", "encode/decode does not round-trip text")
    return Check("tokenizer", "ok", f"hash {tok.hash} matches, {tok.vocab_size} ids, text round-trips")
