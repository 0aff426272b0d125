"""Multi-GPU scaling of `lmkit train` (issue #8): tokens/s per GPU on N GPUs vs 1, same machine.

For each shape (GPT-2 small and medium, 16 sequences of 1024 tokens per GPU) it runs the real
command, `python -m lmkit train`, on one GPU, then under `torchrun --nproc-per-node N` with
``--parallel ddp`` and ``--parallel fsdp`` (global batch N x 16), and reports per run:
  tok/s       steady state: the median tokens/s of the logged windows after the first two
              (compile, warm-up), as the dashboard shows it; per GPU = that / N;
  efficiency  per-GPU tok/s over the 1-GPU run's;
  mem GiB     the trainer's peak ``max_memory_allocated`` on rank 0 (blind to a CUDA graph's
              pool, so the 1-GPU row reads low) and, from nvidia-smi polled every 0.25 s, the
              highest memory any one of the run's GPUs used (CUDA context and NCCL buffers
              included; the 1-GPU runs use GPU 0).
``--loss fused`` / ``plain`` force the N-process runs' loss (``auto`` is what lmkit picks): this
script then launches itself as the trainer with the compile plan's ``fused_loss`` replaced.

Last, the checkpoint of the last N-GPU run is resumed on one GPU for a few more steps (the
check that a checkpoint saved on N GPUs trains on 1, same global batch): the resumed run must
start at the saved step and its first logged loss must be within 0.25 nats (a fresh model would be ~6 nats off) of the N-GPU run's last.

Usage (device machine with 2 GPUs; pydantic wheels on PYTHONPATH, as for train_e2e.py):
    PYTHONPATH=. python3 benchmarks/train_scaling.py --data .abdata/train.bin --out $OUT/scaling
    uv run python benchmarks/train_scaling.py --device cpu --tiny --nproc 2 --steps 8   # smoke
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SMALL = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048)
MEDIUM = dict(vocab_size=50304, context_length=1024, d_model=1024, num_layers=24, num_heads=16, d_ff=2816)
TINY = dict(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=192)
SHAPES = {"small": SMALL, "medium": MEDIUM, "tiny": TINY}


class GpuMemory:
    """Highest memory.used (MiB) per GPU while the block runs, from a background nvidia-smi."""

    def __init__(self):
        self.peak: dict[int, int] = {}
        self._proc = None

    def __enter__(self):
        try:
            cmd = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits", "-lms", "250"]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            idx, used = (int(v) for v in line.split(","))
            self.peak[idx] = max(self.peak.get(idx, 0), used)

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._reader.join(timeout=5)


def run_train(launch: list[str], args: list[str], run_dir: Path, env: dict, gpus: int, after_step: int = 0) -> dict:
    """Run one `lmkit train` and summarise its metrics.jsonl rows past ``after_step`` (a resumed
    run appends to the file of the run it continues)."""
    t = time.perf_counter()
    with GpuMemory() as mem:
        # Its own process group, killed with this script: a run orphaned by a timeout kept
        # training on the GPUs and slowed (and inflated the memory of) the runs after it.
        proc = subprocess.Popen([*launch, *args, "--checkpoint-dir", str(run_dir)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            _, stderr = proc.communicate()
        finally:
            if proc.poll() is None:  # SIGTERM first: torchrun then stops its workers (own sessions)
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    wall = time.perf_counter() - t
    if proc.returncode:
        return {"error": (stderr.strip().splitlines() or ["?"])[-1][:300], "wall_s": wall, "stderr": stderr[-3000:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "tokens_per_s" in r and r["step"] > after_step]
    steady = logged[2:] or logged
    return {
        "tok_s": statistics.median(r["tokens_per_s"] for r in steady),
        "step_ms": statistics.median(r["step_ms"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if "mfu" in steady[0] else None,
        "alloc_gib": max((r.get("gpu_mem_gb", 0.0) for r in logged), default=None),
        # The GPUs this run used (0..gpus-1): another job may be using the others.
        "smi_gib": max((v for i, v in mem.peak.items() if i < gpus), default=0) / 1024 or None,
        "first_step": min(r["step"] for r in logged), "last_step": max(r["step"] for r in logged),
        "first_loss": logged[0]["loss"], "last_loss": logged[-1]["loss"], "wall_s": wall,
    }


def trainer_args(a: argparse.Namespace, shape: dict, batch: int, steps: int) -> list[str]:
    args = ["train", "--train-data-path", str(a.data), "--val-data-path", "", "--batch-size", str(batch),
            "--max-iters", str(steps), "--lr-decay-iters", str(a.steps), "--warmup-iters", "10", "--learning-rate", "6e-4",
            "--min-lr", "6e-5", "--no-wandb", "--device", a.device, "--dashboard", "plain", "--log-interval", "10",
            "--checkpoint-interval", str(a.steps), "--resume", "never"]
    for k, v in shape.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def as_trainer(spec: str, argv: list[str]) -> None:
    """Run the lmkit CLI with tweaks for an experiment, ``spec`` a comma list of:
    fused / plain (the N-process loss), mp (FSDP gathers bf16 parameters and reduces in fp32),
    bucket=MB (DDP buckets of MB, gradients as views into them), nosplit (dynamo does not split
    the DDP graph at buckets), profile (rank 0 profiles steps 40-44 into the run directory)."""
    import dataclasses

    import torch

    from lmkit.cli.app import main
    from lmkit.training import trainer
    from lmkit.training.trainer import Trainer

    tweaks = dict(t.partition("=")[::2] for t in spec.split(",") if t)
    if "fused" in tweaks or "plain" in tweaks:
        plan = trainer.plan_compile
        trainer.plan_compile = lambda *a: dataclasses.replace(plan(*a), fused_loss="fused" in tweaks)
    if "mp" in tweaks:
        import torch.distributed.fsdp as fsdp

        shard = fsdp.fully_shard
        policy = fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        fsdp.fully_shard = lambda module, **kw: shard(module, mp_policy=policy, **kw)
    if "bucket" in tweaks:
        import torch.nn.parallel as parallel

        mb = float(tweaks["bucket"])

        class BucketDDP(parallel.DistributedDataParallel):  # a class: torch checks isinstance against it
            def __init__(self, module, **kw):
                super().__init__(module, **{**kw, "bucket_cap_mb": mb, "gradient_as_bucket_view": True})

        parallel.DistributedDataParallel = BucketDDP
    if "nosplit" in tweaks:
        torch._dynamo.config.optimize_ddp = False
    if "profile" in tweaks:
        build = Trainer._build

        def build_and_hook(self):
            build(self)
            if self.rt.is_main:
                self.optimizer.register_step_post_hook(_StepProfiler(self.run_dir))

        Trainer._build = build_and_hook
    sys.argv = ["lmkit", *argv]
    main()


class _StepProfiler:
    """Optimizer post-step hook: profile steps [start, start + n) and write a summary."""

    def __init__(self, run_dir: Path, start: int = 40, n: int = 5):
        self.run_dir, self.start, self.n, self.step, self.prof = run_dir, start, n, 0, None

    def __call__(self, *_):
        import torch
        from torch.profiler import ProfilerActivity, profile

        self.step += 1
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        if self.step == self.start:
            sync()
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif self.step == self.start + self.n and self.prof is not None:
            sync()
            wall = (time.perf_counter() - self.t0) * 1000 / self.n
            self.prof.__exit__(None, None, None)
            (self.run_dir / "profile.txt").write_text(_summary(self.prof, wall, self.n))
            self.prof = None


def _summary(prof, wall_ms: float, steps: int) -> str:
    import torch
    from kernels import idle_gaps, kind_of

    tot, cnt, spans = collections.defaultdict(float), collections.Counter(), []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            tot[e.name] += e.device_time_total
            cnt[e.name] += 1
            spans.append((e.time_range.start, e.time_range.end, e.name))
    idle, gaps = idle_gaps(spans)
    kinds = collections.defaultdict(float)
    for name, us in tot.items():
        kinds["nccl" if "nccl" in name.lower() else kind_of(name)] += us / 1000 / steps
    lines = [f"wall {wall_ms:.2f} ms/step, kernel sum {sum(tot.values()) / 1000 / steps:.2f} ms/step, "
             f"{sum(cnt.values()) / steps:.0f} kernels/step, idle gaps >= 5 us {idle / steps:.2f} ms/step",
             "by kind (ms/step): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))]
    lines += [f"  {tot[n] / 1000 / steps:8.3f} ms {cnt[n] / steps:6.1f}x {n[:110]}" for n in sorted(tot, key=tot.get, reverse=True)[:25]]
    lines.append("largest idle gaps (us, before / after):")
    lines += [f"  {us:9.1f} {a} / {b}" for us, a, b in gaps[:12]]
    lines.append("host ops by self CPU time (ms/step):")
    lines += [f"  {e.self_cpu_time_total / 1000 / steps:8.3f} {e.count / steps:6.1f}x {e.key[:90]}"
              for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-trainer":
        return as_trainer(sys.argv[2], sys.argv[3:])
    # `timeout` sends SIGTERM: leave through the finally blocks that kill the running trainer.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,medium", help="comma list of " + ",".join(SHAPES))
    p.add_argument("--parallel", default="ddp,fsdp", help="strategies for the N-GPU runs ('' for none)")
    p.add_argument("--no-1gpu", action="store_true", help="skip the 1-GPU runs (e.g. measured by an earlier call into --out)")
    p.add_argument("--loss", default="auto", help="';'-separated tweak sets for the N-GPU runs: auto (what lmkit does) or a "
                   "comma list of fused, plain, mp, bucket=MB, nosplit, profile (see as_trainer)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--per-gpu-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--resume-steps", type=int, default=20, help="steps the 1-GPU resume of the last N-GPU run adds (0: skip)")
    p.add_argument("--data", type=Path, required=True, help="a token .bin (real text keeps the resume check meaningful)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shape only (CPU smoke test)")
    p.add_argument("--out", type=Path, default=Path("/tmp/lmkit-scaling"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    python = [sys.executable]
    one = [*python, "-m", "lmkit"]
    # Rows of earlier calls into the same --out stay in the table (e.g. the 1-GPU baselines).
    saved = a.out / "scaling.json"
    results: list[dict] = json.loads(saved.read_text()) if saved.exists() else []

    def record(row: dict) -> None:
        results.append(row)
        saved.write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k not in ("stderr", "profile")}), flush=True)

    last_dir = None
    for name in ["tiny"] if a.tiny else a.shapes.split(","):
        shape = SHAPES[name]
        one_env = dict(env, CUDA_VISIBLE_DEVICES="0") if a.device == "cuda" else env
        if not a.no_1gpu:
            r = run_train(one, trainer_args(a, shape, a.per_gpu_batch, a.steps), a.out / f"{name}-1gpu", one_env, 1)
            record({"shape": name, "run": "1gpu", "gpus": 1, **r})
        for strategy in filter(None, a.parallel.split(",")):
            for loss in a.loss.split(";"):
                launch = [*python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}"]
                launch += ["-m", "lmkit"] if loss == "auto" else [__file__, "--as-trainer", loss]
                run_dir = a.out / f"{name}-{strategy}-{loss}"
                args = trainer_args(a, shape, a.per_gpu_batch * a.nproc, a.steps) + ["--parallel", strategy]
                r = run_train(launch, args, run_dir, env, a.nproc)
                prof = run_dir / "profile.txt"
                if prof.exists():
                    r["profile"] = prof.read_text()
                    print(r["profile"], flush=True)
                record({"shape": name, "run": f"{strategy}-{loss}", "gpus": a.nproc, **r})
                if "error" not in r:
                    last_dir, last_row, last_shape = run_dir, r, shape
    if last_dir is not None and a.resume_steps:
        # Same global batch (a different one would be a different run), now on one GPU.
        args = trainer_args(a, last_shape, a.per_gpu_batch * a.nproc, a.steps + a.resume_steps) + ["--resume", "auto"]
        r = run_train(one, args, last_dir, dict(env, CUDA_VISIBLE_DEVICES="0") if a.device == "cuda" else env, 1, a.steps)
        ok = "error" not in r and r["first_step"] == a.steps + 10 and abs(r["first_loss"] - last_row["last_loss"]) < 0.25
        record({"shape": "resume", "run": f"{last_dir.name} on 1", "gpus": 1, "resume_ok": ok, **r})
    print_table(results)


def print_table(results: list[dict]) -> None:
    base = {r["shape"]: r for r in results if r["run"] == "1gpu" and "tok_s" in r}
    print(f"\n{'shape':<8}{'run':<26}{'gpus':>5}{'tok/s':>11}{'tok/s/GPU':>11}{'eff':>7}{'ms/step':>9}{'MFU':>7}"
          f"{'allocGiB':>9}{'smiGiB':>8}{'wall_s':>7}  loss first->last")
    for r in results:
        if "error" in r:
            print(f"{r['shape']:<8}{r['run']:<26}{r['gpus']:>5}  FAILED: {r['error']}")
            continue
        per_gpu = r["tok_s"] / r["gpus"]
        ref = base.get(r["shape"])
        eff = f"{100 * per_gpu / ref['tok_s']:.1f}%" if ref else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        smi = f"{r['smi_gib']:.2f}" if r.get("smi_gib") else "-"
        alloc = f"{r['alloc_gib']:.2f}" if r.get("alloc_gib") else "-"
        extra = f"  resume ok: {r['resume_ok']}" if "resume_ok" in r else ""
        print(f"{r['shape']:<8}{r['run']:<26}{r['gpus']:>5}{r['tok_s']:>11,.0f}{per_gpu:>11,.0f}{eff:>7}{r['step_ms']:>9.2f}"
              f"{mfu:>7}{alloc:>9}{smi:>8}{r['wall_s']:>7.0f}  {r['first_loss']:.3f}->{r['last_loss']:.3f}{extra}")


if __name__ == "__main__":
    main()
