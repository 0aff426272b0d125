"""Time to a validation loss: lmkit's recipes against each other and an HF Llama baseline (issue #23).

One command builds a real corpus from text already on the machine, encodes it with
`lmkit tokenize encode` (GPT-2's files), and trains each contender on the same data, batch
(16 x 1024), step budget (2,000) and GPT-2-small shape:
  lmkit-adamw-cosine      `lmkit train` with today's recipe (AdamW, cosine): the reference
  lmkit-adamw-wsd         AdamW, warmup-stable-decay
  lmkit-muon-cosine       Muon on the hidden matrices, cosine
  lmkit-muon-wsd          Muon, warmup-stable-decay
  lmkit-muon-wsd-aligned  Muon, wsd, windows starting at document starts
  lmkit-muon-*-hot[-aligned]  Muon with the AdamW part at 2e-3 (cosine, wsd; document-aligned)
  hf-llama                HF LlamaForCausalLM of the same shape: torch's fused AdamW, cosine,
                          clipping, bf16 autocast, torch.compile (what a user would write)
Every contender evaluates the same validation windows (lmkit's eval_batches) every
--eval-interval steps. Reported per contender (mean and spread over seeds): wall time of the
whole command (start-up and compile included), steady tokens/s, validation loss at each
evaluation with its wall time, final validation loss, and the wall time at which it first
reaches the baseline's and today's final validation loss.

The corpus: .py/.md/.rst/.txt/.h/.c/.cpp/.cu files under sys.prefix, sys.path, /usr/share/doc
and the system's include folders (documents = files, up to 1 MB each, in sorted order), as JSON Lines; 1 % of the documents (by a
hash of the path) are the validation split. Built once into --work and reused.

Before the timed runs, one short run of each cache family not yet warm on this machine (HF's;
lmkit's per compile scope; --warmup-steps, all at once) fills
torch.compile's caches, so every timed command compiles from warm caches, as a user's second run
on a machine does, whatever order the contenders run in; the warm-ups' wall times (cold caches)
are kept in the results as the first-run-on-a-fresh-machine cost.

Results accumulate in --results (JSON, one entry per contender and seed; finished ones are
skipped, so the run can be split over several calls) and the table is rewritten each time.

Usage (device machine; the GPT-2 files carried as .data/, pydantic/typer on PYTHONPATH):
    PYTHONPATH=. python3 benchmarks/time_to_loss.py --contenders hf-llama,lmkit-adamw-cosine --seeds 0
    PYTHONPATH=. python3 benchmarks/time_to_loss.py --contenders lmkit-muon-wsd --seeds 0,1,2
    uv run python benchmarks/time_to_loss.py --tiny --vocab ../shared/data/gpt2_vocab.json \\
        --merges ../shared/data/gpt2_merges.txt --work /tmp/ttl --results /tmp/ttl/r.json   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = time.time()
SMALL = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048)
TINY = dict(vocab_size=50304, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=192)
# nanoGPT's GPT-2-small recipe, scaled to the step budget: the reference every recipe is judged against.
TODAY = {"optimizer": "adamw", "schedule": "cosine", "learning_rate": 6e-4, "min_lr": 6e-5, "weight_decay": 0.1, "grad_clip": 1.0}
_LMKIT = {
    "lmkit-adamw-cosine": TODAY,
    "lmkit-adamw-wsd": {**TODAY, "schedule": "wsd", "decay_fraction": 0.2},
    "lmkit-muon-cosine": {**TODAY, "optimizer": "muon", "muon_lr": 0.02},
    "lmkit-muon-wsd": {**TODAY, "optimizer": "muon", "muon_lr": 0.02, "schedule": "wsd", "decay_fraction": 0.2},
    "lmkit-muon-wsd-aligned": {**TODAY, "optimizer": "muon", "muon_lr": 0.02, "schedule": "wsd", "decay_fraction": 0.2,
                               "align_documents": True},
    # Muon with the AdamW part (embeddings, LM head, gains) at 3.3x today's LR: Muon's recipes
    # run those tensors far hotter than an all-AdamW model's.
    "lmkit-muon-cosine-hot": {**TODAY, "optimizer": "muon", "muon_lr": 0.02, "learning_rate": 2e-3, "min_lr": 2e-4},
    "lmkit-muon-wsd-hot": {**TODAY, "optimizer": "muon", "muon_lr": 0.02, "learning_rate": 2e-3, "min_lr": 2e-4,
                           "schedule": "wsd", "decay_fraction": 0.2},
    "lmkit-muon-cosine-hot-aligned": {**TODAY, "optimizer": "muon", "muon_lr": 0.02, "learning_rate": 2e-3, "min_lr": 2e-4,
                                      "align_documents": True},
}
HOT = _LMKIT["lmkit-muon-cosine-hot"]
CONTENDERS = {
    # The results before runtime.compile_scope were all whole-model compiles: their names keep
    # that meaning; "-blocks" compiles block by block (compile_scope auto's choice at 2,000 steps).
    **{name: {**recipe, "compile_scope": "model"} for name, recipe in _LMKIT.items()},
    "lmkit-adamw-cosine-blocks": {**TODAY, "compile_scope": "blocks"},
    "lmkit-muon-cosine-hot-blocks": {**HOT, "compile_scope": "blocks"},
    "hf-llama": TODAY,
}
BASELINE, REFERENCE = "hf-llama", "lmkit-adamw-cosine"
SUFFIXES = {".py", ".md", ".rst", ".txt", ".h", ".hpp", ".c", ".cc", ".cpp", ".cu", ".cuh", ".pyi"}


# ------------------------------------------------------------------------------------- corpus
def build_corpus(work: Path, want_bytes: int, vocab: Path, merges: Path) -> tuple[Path, Path]:
    """JSON Lines of the machine's text files, encoded into train/val datasets (once; reused)."""
    done = work / "data" / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["train"]), Path(info["val"])
    roots = sorted({Path(sys.prefix), *map(Path, sys.path[1:]), *map(Path, ("/usr/share/doc", "/usr/lib/python3", "/usr/include",
                                                                              "/usr/local/include", "/usr/local/cuda/include"))})
    src = work / "corpus.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    total, docs, seen = 0, 0, set()
    with open(src.with_suffix(".tmp"), "w", encoding="utf-8") as out:
        for root in roots:
            if not root.is_dir() or total >= want_bytes:
                continue
            for dirpath, dirs, names in os.walk(root):
                dirs.sort()  # the same corpus on every call, whatever order the file system lists
                for name in sorted(names):
                    p = Path(dirpath) / name
                    if p.suffix not in SUFFIXES:
                        continue
                    try:
                        real = p.resolve()
                        if real in seen or not 0 < real.stat().st_size <= 2**20:
                            continue
                        text = real.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        continue
                    seen.add(real)
                    out.write(json.dumps({"text": text}) + "\n")
                    total, docs = total + len(text.encode()), docs + 1
                if total >= want_bytes:
                    break
    os.replace(src.with_suffix(".tmp"), src)
    print(f"corpus: {docs:,} files, {total / 1e6:.0f} MB of text", file=sys.stderr)
    data = work / "data"
    subprocess.run([sys.executable, "-m", "lmkit", "tokenize", "encode", "--vocab", str(vocab), "--merges", str(merges),
                    "--input", str(src), "--output", str(data), "--name", "ttl", "--val-fraction", "0.01"],
                   check=True, cwd=ROOT, env=_env())
    train, val = data / "ttl-train.json", data / "ttl-val.json"
    done.write_text(json.dumps({"train": str(train), "val": str(val), "files": docs, "bytes": total}))
    return train, val


def _env() -> dict[str, str]:
    """The environment for lmkit subprocesses: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def num_tokens(path: Path) -> int:
    from lmkit.data.dataset import open_dataset

    return open_dataset(path).num_tokens


# ------------------------------------------------------------------------------------- runs
def lmkit_command(recipe: dict, shape: dict, a, seed: int, train: Path, val: Path, run_dir: Path) -> list[str]:
    """`lmkit train` as a user runs it, with the recipe's flags."""
    flags = {**shape, **recipe, "batch_size": a.batch_size, "max_iters": a.steps, "lr_decay_iters": a.steps,
             "warmup_iters": max(1, a.steps // 20), "eval_interval": a.eval_interval, "eval_iters": a.eval_iters,
             "log_interval": a.log_interval, "checkpoint_interval": a.steps, "seed": seed, "train_data_path": train,
             "val_data_path": val, "checkpoint_dir": run_dir, "resume": "never", "dashboard": "plain", "device": a.device}
    cmd = [sys.executable, "-m", "lmkit", "train", "--no-wandb"]
    for k, v in flags.items():
        if isinstance(v, bool):
            cmd.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        else:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def read_curve(metrics: Path, t0: float) -> tuple[list[dict], list[float]]:
    """Evaluations ``{step, val_loss, t}`` (t: seconds since the command started) and the
    logged tokens/s windows, from a metrics.jsonl."""
    evals, rates = [], []
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "val_loss" in row:
            evals.append({"step": row["step"], "val_loss": row["val_loss"], "t": row["time"] - t0})
        if "tokens_per_s" in row:
            rates.append(row["tokens_per_s"])
    return evals, rates


def read_startup(metrics: Path) -> dict:
    """Where lmkit's start-up went, from its own metrics.jsonl: building the run and the first
    (compiling) step, from the one-line event ``lmkit train`` writes, and each evaluation's time."""
    out: dict = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        said = re.match(r"first step ([\d.]+) s .*building the run took ([\d.]+) s", str(row.get("event", "")))
        if said:
            out["first_step_s"], out["build_s"] = float(said[1]), float(said[2])
        if "eval_s" in row:
            out.setdefault("eval_s", []).append(row["eval_s"])
    return out


def run_contender(name: str, seed: int, a, shape: dict, train: Path, val: Path) -> dict:
    run_dir = a.work / "runs" / f"{name}-s{seed}"
    if name == BASELINE:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-worker", json.dumps(
            {"shape": shape, "recipe": CONTENDERS[name], "seed": seed, "train": str(train), "val": str(val), "run_dir": str(run_dir),
             "steps": a.steps, "batch_size": a.batch_size, "eval_interval": a.eval_interval, "eval_iters": a.eval_iters,
             "log_interval": a.log_interval, "device": a.device})]
    else:
        cmd = lmkit_command(CONTENDERS[name], shape, a, seed, train, val, run_dir)
    t0, wall = timed_command(cmd, run_dir / "command.log", f"{name} (seed {seed})")
    evals, rates = read_curve(run_dir / "metrics.jsonl", t0)
    steady = statistics.median(rates[2:] or rates) if rates else None  # after compile and warm-up windows
    # Start-up: the command's time before its first step, from the first logged window.
    first = next((json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "tokens_per_s" in line), None)
    startup = first["time"] - t0 - first["step"] * a.batch_size * shape["context_length"] / steady if first and steady else None
    return {"contender": name, "seed": seed, "wall_s": wall, "startup_s": startup, "tokens_per_s": steady, "evals": evals,
            "final_val_loss": evals[-1]["val_loss"] if evals else None, "command": cmd if name != BASELINE else "hf-worker",
            **read_startup(run_dir / "metrics.jsonl")}


def timed_command(cmd: list[str], log: Path, what: str) -> tuple[float, float]:
    """Run ``cmd``; its output goes to ``log``, each line stamped with seconds since launch (where
    start-up goes). Returns (launch time, wall seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    with open(log, "w") as out:
        for line in proc.stdout:
            out.write(f"[{time.time() - t0:7.2f}] {line}")
            tail = (tail + [line])[-40:]
    code = proc.wait()
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"{what} failed with exit {code}:\n{''.join(tail)}")
    return t0, wall


def cache_family(name: str) -> str:
    """What a contender's compile cache is shared with: HF's model, or lmkit's per compile scope."""
    return name if name == BASELINE else f"lmkit compile_scope {CONTENDERS[name]['compile_scope']}"


def warm_up(a, shape: dict, train: Path, val: Path, names: list[str]) -> dict:
    """One short run per cache family among ``names`` (see cache_family), all at once, so the
    timed runs find torch.compile's caches warm, as a user's second run does. Returns their wall
    times by family: the cold-cache start-up a first run on a fresh machine pays."""
    short = argparse.Namespace(**{**vars(a), "steps": a.warmup_steps, "eval_interval": a.warmup_steps, "eval_iters": 2,
                                  "log_interval": a.warmup_steps})
    out: dict[str, float] = {}

    def one(name: str) -> None:
        run_dir = a.work / "warmup" / name
        if name == BASELINE:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-worker", json.dumps(
                {"shape": shape, "recipe": CONTENDERS[name], "seed": 0, "train": str(train), "val": str(val), "run_dir": str(run_dir),
                 "steps": short.steps, "batch_size": a.batch_size, "eval_interval": short.eval_interval, "eval_iters": 2,
                 "log_interval": short.log_interval, "device": a.device})]
        else:
            cmd = lmkit_command(CONTENDERS[name], shape, short, 0, train, val, run_dir)
        out[cache_family(name)] = timed_command(cmd, run_dir / "command.log", f"warm-up {name}")[1]

    import threading

    first = {cache_family(n): n for n in reversed(names)}  # one contender per family
    threads = [threading.Thread(target=one, args=(n,)) for n in first.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"warm-up (all at once, cold caches): {out}", file=sys.stderr, flush=True)
    return out


def hf_worker(spec: dict) -> None:
    """The baseline a user would write: HF Llama, fused AdamW, cosine, clip, bf16 autocast, compile.
    Reads lmkit's batches (same windows per step) and evaluates lmkit's validation windows."""
    import torch
    import torch.nn.functional as F
    import transformers

    from lmkit.data.loader import BatchLoader, TokenDataset, eval_batches
    from lmkit.training.schedule import get_lr

    shape, r, dev = spec["shape"], spec["recipe"], torch.device(spec["device"])
    cuda = dev.type == "cuda"
    torch.manual_seed(spec["seed"])
    cfg = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_heads"],
        max_position_embeddings=shape["context_length"], rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, attn_implementation="sdpa", use_cache=False)
    model = transformers.LlamaForCausalLM(cfg).float().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=r["learning_rate"], betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    T, B, V = shape["context_length"], spec["batch_size"], shape["vocab_size"]

    def loss_of(x, y):
        logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
        return F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))

    step_loss = torch.compile(loss_of) if cuda else loss_of
    train, val = TokenDataset(spec["train"], T, V), TokenDataset(spec["val"], T, V)
    loader = BatchLoader(train, B, 1, dev, spec["seed"])
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    out = open(run_dir / "metrics.jsonl", "w")
    steps, warm = spec["steps"], max(1, spec["steps"] // 20)
    t_window, n_window = time.time(), 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = get_lr(step, r["learning_rate"], r["min_lr"], warm, steps)
        (x, y), = loader.step_batches(step)
        with ctx():
            loss = step_loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_window += 1
        done = step + 1
        if done % spec["log_interval"] == 0 or done == steps:
            float(loss)  # the GPU catches up: the window's time is its steps'
            rate = n_window * B * T / (time.time() - t_window)
            out.write(json.dumps({"step": done, "loss": float(loss), "tokens_per_s": rate, "time": time.time()}) + "\n")
            t_window, n_window = time.time(), 0
        if done % spec["eval_interval"] == 0 or done == steps:
            model.eval()
            with torch.no_grad():
                total = sum(float(_eval(step_loss, ctx, vx, vy)) for vx, vy in eval_batches(val, B, spec["eval_iters"], dev, spec["seed"]))
            model.train()
            out.write(json.dumps({"step": done, "val_loss": total / spec["eval_iters"], "time": time.time()}) + "\n")
            out.flush()
            t_window = time.time()  # evaluation out of tokens/s, as lmkit does
    out.close()
    loader.close()


def _eval(fn, ctx, x, y):
    with ctx():
        return fn(x, y)


# ------------------------------------------------------------------------------------- report
def first_time_at(evals: list[dict], target: float | None) -> float | None:
    """Wall time of the first evaluation at or below ``target`` (None if never)."""
    if target is None:
        return None
    return next((e["t"] for e in evals if e["val_loss"] <= target), None)


def _mean_spread(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "never" if xs == [] else "-"
    mean = statistics.fmean(xs)
    spread = (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0
    return f"{mean:.4g} ± {spread:.2g}" if len(xs) > 1 else f"{mean:.4g}"


def report(results: dict, table: Path) -> str:
    runs = list(results["runs"].values())
    by = {n: [r for r in runs if r["contender"] == n] for n in CONTENDERS}

    def final(name):
        vals = [r["final_val_loss"] for r in by.get(name, []) if r["final_val_loss"] is not None]
        return statistics.fmean(vals) if vals else None

    base, ref = final(BASELINE), final(REFERENCE)
    lines = [
        "# Time to loss (benchmarks/time_to_loss.py)", "",
        f"{results['config']}", "",
        "Mean ± half the range over seeds. Times are seconds since the command started (start-up and compile included).", "",
        f"| contender | seeds | wall s | start-up s | steady tok/s | final val loss | t to {BASELINE} final ({base and round(base, 4)}) "
        f"| t to {REFERENCE} final ({ref and round(ref, 4)}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in by.items():
        if not rs:
            continue
        lines.append(f"| {name} | {len(rs)} | {_mean_spread([r['wall_s'] for r in rs])} | {_mean_spread([r.get('startup_s') for r in rs])} "
                     f"| {_mean_spread([r['tokens_per_s'] for r in rs])} "
                     f"| {_mean_spread([r['final_val_loss'] for r in rs])} | {_mean_spread([first_time_at(r['evals'], base) for r in rs])} "
                     f"| {_mean_spread([first_time_at(r['evals'], ref) for r in rs])} |")
    parts = [(n, [r for r in rs if "first_step_s" in r]) for n, rs in by.items()]
    for name, rs in [(n, rs) for n, rs in parts if rs]:
        lines.append(f"\n{name} start-up: building the run {_mean_spread([r['build_s'] for r in rs])} s, first (compiling) step "
                     f"{_mean_spread([r['first_step_s'] for r in rs])} s, first evaluation {_mean_spread([r['eval_s'][0] for r in rs])} s "
                     f"(later ones {_mean_spread([statistics.median(r['eval_s'][1:]) for r in rs if len(r['eval_s']) > 1])} s).")
    for w in results.get("warmups", []):
        lines.append(f"\nCold-cache warm-up runs ({', '.join(f'{k} {v:.0f} s' for k, v in w.items())}), all at once.")
    lines += ["", "Validation loss at each evaluation (seed 0 or the first seed run): step: loss @ seconds", ""]
    for name, rs in by.items():
        if rs:
            r = min(rs, key=lambda r: r["seed"])
            lines.append(f"- {name}: " + ", ".join(f"{e['step']}: {e['val_loss']:.3f} @ {e['t']:.0f}s" for e in r["evals"]))
    text = "\n".join(lines) + "\n"
    _atomic_write(table, text)
    return text


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--hf-worker":
        return hf_worker(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of: {', '.join(CONTENDERS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--corpus-mb", type=int, default=450, help="text to collect (GPT-2 gives ~3-4 bytes a token on code and docs)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 30 steps, 3 MB corpus")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (default with --tiny)")
    p.add_argument("--vocab", type=Path, default=ROOT / ".data" / "gpt2_vocab.json")
    p.add_argument("--merges", type=Path, default=ROOT / ".data" / "gpt2_merges.txt")
    p.add_argument("--work", type=Path, default=Path("/tmp/lmkit-time-to-loss"), help="corpus, datasets and run directories")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "time_to_loss.json")
    p.add_argument("--table", type=Path, default=None, help="markdown table (default: beside --results, .md)")
    p.add_argument("--force", action="store_true", help="run contender/seed pairs already in --results again")
    p.add_argument("--warmup-steps", type=int, default=20,
                   help="steps of the untimed warm-up runs that fill the compile caches first (0: none, every run starts cold)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="start a contender only if it should finish within this many seconds of the command's start (0: no limit)")
    a = p.parse_args()
    if a.tiny:
        a.steps = 30 if a.steps == 2000 else a.steps
        a.eval_interval, a.eval_iters, a.log_interval, a.batch_size = min(a.eval_interval, 10), min(a.eval_iters, 2), 5, min(a.batch_size, 4)
        a.corpus_mb = min(a.corpus_mb, 3)
    a.device = a.device or ("cpu" if a.tiny else "cuda")
    names = [n for n in a.contenders.split(",") if n]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    for f in (a.vocab, a.merges):
        if not f.is_file():
            p.error(f"{f}: GPT-2 file not found (pass --vocab/--merges)")
    shape = TINY if a.tiny else SMALL
    train, val = build_corpus(a.work, a.corpus_mb * 10**6, a.vocab, a.merges)
    if not a.tiny and num_tokens(train) < 100_000_000:
        print(f"warning: the corpus has {num_tokens(train):,} training tokens, under the 100M asked for: this machine holds "
              "less text than --corpus-mb; the results say how many", file=sys.stderr)
    config = (f"shape {shape}, batch {a.batch_size} x {shape['context_length']}, {a.steps} steps, eval every "
              f"{a.eval_interval} steps on {a.eval_iters} batches; corpus {num_tokens(train):,} train / {num_tokens(val):,} val tokens; "
              f"device {a.device}")
    results = json.loads(a.results.read_text()) if a.results.is_file() else {"runs": {}}
    results["config"] = config
    todo = [(int(sd), n) for sd in a.seeds.split(",") for n in names if a.force or f"{n}/s{int(sd)}" not in results["runs"]]
    warm_mark = a.work / "caches_warm.json"  # --work lives on this machine: so do the compile caches it vouches for
    warm = json.loads(warm_mark.read_text()) if warm_mark.is_file() else {}
    cold = [n for n in dict.fromkeys(n for _, n in todo) if cache_family(n) not in warm]
    if cold and a.warmup_steps:
        results.setdefault("warmups", []).append(warm_up(a, shape, train, val, cold))
        _atomic_write(warm_mark, json.dumps({**warm, **results["warmups"][-1]}) + "\n")
    elif todo and a.warmup_steps:
        print(f"compile caches already warm on this machine ({warm_mark}): no warm-up", file=sys.stderr, flush=True)
    for seed in [int(s) for s in a.seeds.split(",")]:
        for name in names:
            key = f"{name}/s{seed}"
            if key in results["runs"] and not a.force:
                continue
            # A run cut by the device's time limit is lost: start one only if it can finish.
            walls = [r["wall_s"] for r in results["runs"].values() if r["contender"] == name]
            need = 1.15 * max(walls) if walls else 160.0
            if a.budget_s and time.time() - T0 + need > a.budget_s:
                print(f"skipping {key}: ~{need:.0f} s needed, {a.budget_s - (time.time() - T0):.0f} s of --budget-s left", file=sys.stderr)
                continue
            print(f"running {key} ...", file=sys.stderr, flush=True)
            results["runs"][key] = run_contender(name, seed, a, shape, train, val)
            _atomic_write(a.results, json.dumps(results, indent=1) + "\n")  # after each: a later call resumes here
            print(f"  {key}: wall {results['runs'][key]['wall_s']:.0f}s, final val {results['runs'][key]['final_val_loss']}", file=sys.stderr)
    print(report(results, a.table or a.results.with_suffix(".md")))


if __name__ == "__main__":
    main()
