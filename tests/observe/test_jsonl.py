from __future__ import annotations

import json
import math

from lmkit.observe.jsonl import FILENAME, JsonlSink, read_events, read_metrics


def test_round_trip(make_info, train_metrics, eval_metrics):
    info = make_info()
    sink = JsonlSink(info.run_dir)
    sink.start(info)
    sink.log(10, train_metrics)
    sink.log(20, {**train_metrics, "loss": 3.0})
    sink.log(20, eval_metrics)
    sink.event("checkpoint saved: ckpt_0000020.pt", "checkpoint")
    sink.close()

    path = info.run_dir / FILENAME
    raw = [json.loads(line) for line in path.read_text().splitlines()]  # every line is JSON
    assert raw[1]["step"] == 10 and isinstance(raw[1]["time"], float)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["loss"] == train_metrics["loss"]
    assert rows[1]["loss"] == 3.0 and rows[1]["val_loss"] == eval_metrics["val_loss"]
    events = read_events(path)
    assert [e["kind"] for e in events] == ["info", "checkpoint", "info"]
    assert events[1] == {"event": "checkpoint saved: ckpt_0000020.pt", "kind": "checkpoint",
                         "step": 20, "time": events[1]["time"]}
    assert events[2]["status"] == "finished"


def test_resume_appends_and_last_value_wins(make_info):
    info = make_info()
    first = JsonlSink(info.run_dir)
    first.start(info)
    for step in (10, 20, 30):
        first.log(step, {"loss": 5.0 - step / 100})
    first.close("interrupted")

    # Resumed from a checkpoint at step 20: step 30 is logged again.
    resumed = JsonlSink(info.run_dir)
    resumed.start(make_info(start_iter=20, resumed=True))
    resumed.log(30, {"loss": 1.0})
    resumed.log(40, {"loss": 0.5})
    resumed.close()

    rows = read_metrics(info.run_dir / FILENAME)
    assert [(r["step"], r["loss"]) for r in rows] == [(10, 4.9), (20, 4.8), (30, 1.0), (40, 0.5)]
    kinds = [e["kind"] for e in read_events(info.run_dir / FILENAME)]
    assert kinds == ["info", "info", "resume", "info"]


def test_non_finite_is_null_and_torn_lines_are_skipped(make_info):
    info = make_info()
    sink = JsonlSink(info.run_dir)
    sink.start(info)
    sink.log(1, {"loss": math.nan, "grad_norm": math.inf})
    sink.close()
    path = info.run_dir / FILENAME
    with path.open("a") as f:
        f.write('{"step": 2, "loss": 1.')  # a crash mid-write
    line = path.read_text().splitlines()[1]
    assert json.loads(line)["loss"] is None and "NaN" not in line
    assert [r["step"] for r in read_metrics(path)] == [1]
