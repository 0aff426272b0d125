from __future__ import annotations

import json
import math

import pytest

from lmkit.errors import DataError
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


def test_every_line_carries_run_and_segment(make_info):
    info = make_info(run_id="r1", segment=2, start_iter=10, resumed=True)
    sink = JsonlSink(info.run_dir)
    sink.start(info)
    sink.log(11, {"loss": 1.0})
    sink.event("checkpoint saved: x", "checkpoint")
    sink.close()
    lines = [json.loads(x) for x in (info.run_dir / FILENAME).read_text().splitlines()]
    assert len(lines) == 4 and all((x["run"], x["segment"]) == ("r1", 2) for x in lines)


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_readers_keep_the_newest_run_and_drop_superseded_segment_lines(tmp_path):
    a = [{"event": "run started at step 0", "kind": "info", "step": 0, "run": "A", "segment": 0},
         {"step": 10, "loss": 9.0, "run": "A", "segment": 0}]
    b0 = [{"event": "run started at step 0", "kind": "info", "step": 0, "run": "B", "segment": 0}] + [
        {"step": s, "loss": 5.0 - s / 10, "run": "B", "segment": 0} for s in (10, 20, 30)] + [
        {"event": "checkpoint saved: ckpt_0000030.pt", "kind": "checkpoint", "step": 30, "run": "B", "segment": 0}]
    # Resumed from the checkpoint of step 20: segment 0's step 30 (and its checkpoint event) is
    # superseded although segment 1 has not reached 30; steps up to 20 keep segment 0's values.
    b1 = [{"event": "run resumed at step 20", "kind": "resume", "step": 20, "run": "B", "segment": 1},
          {"step": 25, "loss": 1.5, "run": "B", "segment": 1}]
    path = _write(tmp_path / FILENAME, a + b0 + b1)
    rows = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in rows] == [(10, 4.0), (20, 3.0), (25, 1.5)]
    events = read_events(path)
    assert [e["event"] for e in events] == ["run started at step 0", "run resumed at step 20"]
    assert all(e["run"] == "B" for e in events)


def test_lines_from_before_run_ids_are_the_start_of_the_run_that_resumed_them(tmp_path):
    old = [{"step": s, "loss": float(s)} for s in (10, 20, 30)]
    new = [{"event": "run resumed at step 20", "kind": "resume", "step": 20, "run": "R", "segment": 1},
           {"step": 30, "loss": 0.5, "run": "R", "segment": 1}]
    rows = read_metrics(_write(tmp_path / FILENAME, old + new))
    assert [(r["step"], r["loss"]) for r in rows] == [(10, 10.0), (20, 20.0), (30, 0.5)]


BAD_LINES = [
    (b'{"step": "ten", "loss": 1.0}', "step \"ten\" is not a whole number"),
    (b'{"step": 1.5, "loss": 1.0}', "step 1.5 is not a whole number"),
    (b'{"step": -3, "loss": 1.0}', "step -3 is not a whole number"),
    (b'{"step": true, "loss": 1.0}', "step true is not a whole number"),
    (b'{"step": NaN, "loss": 1.0}', "step NaN is not a whole number"),
    (b'{"step": null}', "step null is not a whole number"),
    (b'{"loss": 1.0}', "a metric line without a step"),
    (b'{"step": 4, "loss": 1.0, "segment": "x"}', "segment \"x\" is not a whole number"),
    (b'{"step": 4, "run": 7}', "run 7 is not text"),
    (b'{"event": 3, "step": 4}', "event 3 is not text"),
    (b'[1, 2, 3]', "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b'{"step": 4, \xff\xfe "loss": 1}', "not UTF-8 text"),
    (b'\x00\x01\x02garbage', "not valid JSON"),
    (b'[' * 100_000 + b']' * 100_000, "not valid JSON"),
    (b'{"step": 1' + b'0' * 5000 + b'}', "not valid JSON"),
]


@pytest.mark.parametrize("bad, why", BAD_LINES)
def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path, bad, why):
    path = tmp_path / FILENAME
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n' + bad + b'\n{"step": 2, "loss": 1.0}\n')
    warnings = []
    assert [r["step"] for r in read_metrics(path, warnings.append)] == [1, 2]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:2: ") and why in warnings[0], warnings
    read_events(path)  # never a traceback either


def test_non_numeric_values_read_as_none_and_integral_float_steps_are_steps(tmp_path):
    path = tmp_path / FILENAME
    path.write_text('{"step": 5.0, "loss": "high", "lr": Infinity, "grad_norm": true, "val_loss": 2.5}\n')
    assert read_metrics(path) == [{"step": 5, "loss": None, "lr": None, "grad_norm": None, "val_loss": 2.5}]


def test_over_long_line_is_skipped_without_reading_it_whole(tmp_path, monkeypatch):
    from lmkit.observe import jsonl

    monkeypatch.setattr(jsonl, "MAX_LINE", 64)
    path = tmp_path / FILENAME
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n' + b'x' * 1000 + b'\n{"step": 2, "loss": 1.0}\n')
    warnings = []
    assert [r["step"] for r in read_metrics(path, warnings.append)] == [1, 2]
    assert warnings == [f"{path}:2: longer than 64 bytes; line skipped"]


def test_many_bad_lines_are_counted_not_listed(tmp_path):
    path = tmp_path / FILENAME
    path.write_text('{"step": 1, "loss": 2.0}\n' + "oops\n" * 40)
    warnings = []
    read_metrics(path, warnings.append)
    assert len(warnings) == 6 and warnings[-1] == f"{path}: 35 more bad lines skipped"


def test_nothing_usable_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / FILENAME
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary\nmore\xff\n")
    with pytest.raises(DataError, match=rf"{path}: no usable lines \(4 bad lines, first {path}:1: not UTF-8 text\)"):
        read_metrics(path)
    with pytest.raises(DataError, match="no usable lines"):
        read_events(path)
    with pytest.raises(DataError, match="cannot read the metrics file"):
        read_metrics(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="cannot read the metrics file"):
        read_metrics(tmp_path)  # a directory


def test_tokens_by_source_is_read_back_as_a_mapping(tmp_path):
    from lmkit.observe.jsonl import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 3.0, "tokens_by_source": {"web": 80, "code": 48, "bad": "x"}}\n')
    assert read_metrics(path)[0]["tokens_by_source"] == {"web": 80, "code": 48}
