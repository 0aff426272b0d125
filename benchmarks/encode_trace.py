"""Where `lmkit tokenize encode`'s wall time goes: a timeline of the CLI and its worker processes.

Runs the CLI (as encode_speed.py does) with a ``sitecustomize`` on the path that timestamps, in
every process it starts, lmkit functions as they run -- the tokenizer's loading, the engine's
build, each worker's tasks, the main process appending their parts -- without changing lmkit.
Prints the phases on one time axis (seconds since launch):

    uv run python benchmarks/encode_trace.py --mb 200 --threads 16 [--cli-args '...']
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402  (benchmarks/corpus.py)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Functions timed in whichever process runs them: module -> names ("Class.method" for methods).
HOOKS = {
    "lmkit.tokenizer.tokenizer": ["Tokenizer.from_dir", "Tokenizer.from_files", "Tokenizer.hash"],
    "lmkit.tokenizer.fast": ["FastEncoder.build", "_live_ranks", "_cached_live_ranks", "explicit_pattern"],
    "lmkit.data.encode": ["encode_corpus"],
    "lmkit.data.parallel": ["run_processes", "_init_worker", "_receive_state", "_encode_task", "_count_task"],
    "lmkit.data.shards": ["DatasetWriter.write_docs", "DatasetWriter.finish", "DatasetWriter.close"],
}

SITE = r'''
import atexit, functools, importlib.abc, importlib.machinery, json, os, sys, time
_DIR, _HOOKS = os.environ["LMKIT_TRACE_DIR"], json.loads(os.environ["LMKIT_TRACE_HOOKS"])
_f = open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a", buffering=1)  # a line at a time: workers end by os._exit
def _rec(name, t0, t1):
    _f.write(json.dumps([name, t0, t1]) + "\n")
_rec("process", time.time(), time.time())
atexit.register(lambda: _rec("exit", time.time(), time.time()))
def _wrap(fn, name):
    @functools.wraps(fn)
    def timed(*a, **k):
        t0 = time.time()
        try:
            return fn(*a, **k)
        finally:
            _rec(name, t0, time.time())
    return timed
def _patch(module, names):
    for name in names:
        owner, _, attr = name.rpartition(".")
        obj = getattr(module, owner) if owner else module
        fn = obj.__dict__.get(attr) if owner else getattr(module, attr, None)
        if fn is None:
            continue
        if isinstance(fn, classmethod):
            setattr(obj, attr, classmethod(_wrap(fn.__func__, name)))
        elif isinstance(fn, property):
            setattr(obj, attr, property(_wrap(fn.fget, name)))
        elif hasattr(fn, "cache_info"):  # functools.cache: time the cached call
            setattr(obj, attr, _wrap(fn, name))
        else:
            setattr(obj, attr, _wrap(fn, name))
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        def exec_module(module, _run=run, _names=_HOOKS[name]):
            _run(module)
            _patch(module, _names)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Finder())
'''


def run(cmd: list[str], trace: Path) -> tuple[float, float, float]:
    """Run ``cmd`` with the tracing sitecustomize; (launch time, s to first output, wall s)."""
    site = trace / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITE)
    import os

    env = {**os.environ, "LMKIT_TRACE_DIR": str(trace), "LMKIT_TRACE_HOOKS": json.dumps(HOOKS),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    print("  $", " ".join(shlex.quote(c) for c in cmd))
    launch = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    first, tail = None, b""
    while chunk := proc.stdout.read(1):
        first = first if first is not None else time.time() - launch
        tail = (tail + chunk + proc.stdout.read(4096))[-4000:]
    code = proc.wait()
    wall = time.time() - launch
    if code != 0:
        raise SystemExit(f"command failed ({code}):\n{tail.decode(errors='replace')}")
    return launch, first if first is not None else wall, wall


def summarize(trace: Path, launch: float, first: float, wall: float, main_pid: int | None = None) -> str:
    procs: dict[int, list[tuple[str, float, float]]] = {}
    for f in trace.glob("*.jsonl"):
        procs[int(f.stem)] = [tuple(json.loads(line)) for line in f.read_text().splitlines() if line.strip()]
    main = main_pid or min(procs, key=lambda p: procs[p][0][1])  # the first process to start
    rel = lambda t: t - launch  # noqa: E731
    lines = [f"wall {wall:.2f} s, first output at {first:.2f} s"]
    by = defaultdict(list)
    for name, t0, t1 in procs[main]:
        by[name].append((t0, t1))
    lines.append(f"main process up (sitecustomize) at {rel(by['process'][0][0]):.2f} s")
    for name in ("Tokenizer.from_dir", "Tokenizer.from_files", "Tokenizer.hash", "encode_corpus", "FastEncoder.build", "_cached_live_ranks", "_live_ranks",
                 "explicit_pattern", "run_processes", "DatasetWriter.finish", "DatasetWriter.close"):
        for t0, t1 in by.get(name, []):
            lines.append(f"  main {name:26s} {rel(t0):6.2f} -> {rel(t1):6.2f}  ({t1 - t0:.3f} s)")
    appends = by.get("DatasetWriter.write_docs", [])
    if appends:
        lines.append(f"  main write_docs: {len(appends)} calls, {sum(t1 - t0 for t0, t1 in appends):.2f} s in all, "
                     f"first {rel(appends[0][0]):.2f} s, last ends {rel(appends[-1][1]):.2f} s")
    # Spawned processes that received the encoder (multiprocessing's resource tracker is another).
    workers = [p for p in procs if p != main and any(n == "_init_worker" for n, _, _ in procs[p])]
    if workers:
        starts = [rel(procs[p][0][1]) for p in workers]
        # The state is taken at the first encode task (older lmkit: in _init_worker).
        ready = [rel(min((t1 for n, _, t1 in procs[p] if n == "_receive_state"), default=t1_init))
                 for p in workers for n, _, t1_init in procs[p] if n == "_init_worker"]
        tasks = [(rel(t0), rel(t1)) for p in workers for n, t0, t1 in procs[p] if n == "_encode_task"]
        counts = [(rel(t0), rel(t1)) for p in workers for n, t0, t1 in procs[p] if n == "_count_task"]
        busy = [sum(t1 - t0 for n, t0, t1 in procs[p] if n == "_encode_task") for p in workers]
        lines.append(f"workers: {len(workers)} processes up {min(starts):.2f}-{max(starts):.2f} s, state received "
                     f"{min(ready, default=0):.2f}-{max(ready, default=0):.2f} s")
        if counts:
            lines.append(f"  newline counts: {len(counts)} tasks, {min(c[0] for c in counts):.2f} -> {max(c[1] for c in counts):.2f} s")
        if tasks:
            span0, span1 = min(t[0] for t in tasks), max(t[1] for t in tasks)
            lines.append(f"  encode tasks: {len(tasks)}, first starts {span0:.2f} s, last ends {span1:.2f} s; per worker busy "
                         f"{min(busy):.2f}/{statistics.median(busy):.2f}/{max(busy):.2f} s (min/median/max) of the "
                         f"{span1 - span0:.2f} s span ({sum(busy) / (len(workers) * (span1 - span0)):.0%} busy)")
            durs = sorted(t1 - t0 for t0, t1 in tasks)
            lines.append(f"  task seconds: median {statistics.median(durs):.3f}, max {durs[-1]:.3f}")
            lines.append(f"  after the last task: {wall - span1:.2f} s to exit")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmkit-bench-corpus")
    ap.add_argument("--vocab", type=Path, default=DATA / "gpt2_vocab.json")
    ap.add_argument("--merges", type=Path, default=DATA / "gpt2_merges.txt")
    ap.add_argument("--cli-args", default="", help="extra arguments for `lmkit tokenize encode`")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    files = corpus.build(args.corpus_dir / f"{args.mb:g}mb", args.mb, "jsonl")
    work = Path(tempfile.mkdtemp(prefix="lmkit-encode-trace-"))
    from lmkit.tokenizer import Tokenizer

    Tokenizer.from_files(args.vocab, args.merges).save(work / "tok")
    extra = shlex.split(args.cli_args) + (["--threads", str(args.threads)] if args.threads else [])
    for r in range(args.runs):
        out = work / f"out{r}"
        cmd = [sys.executable, "-m", "lmkit", "tokenize", "encode", "--input", str(files[0].parent / "*.jsonl"),
               "--tokenizer", str(work / "tok"), "--output", str(out), *extra]
        trace = work / f"trace{r}"
        launch, first, wall = run(cmd, trace)
        print(f"run {r + 1}:")
        print(summarize(trace, launch, first, wall))


if __name__ == "__main__":
    main()
