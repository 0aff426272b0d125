from __future__ import annotations

import os

import subprocess
import sys

import pytest

from lmkit.observe import ConsoleSink, Dashboard, JsonlSink, MultiSink, Sink, WandbSink, make_sinks
from lmkit.settings import LoggingSettings


class Recorder:
    """A sink that remembers every call."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def start(self, info):
        self.calls.append(("start", info.max_iters))

    def log(self, step, metrics):
        self.calls.append(("log", step, dict(metrics)))

    def event(self, message, kind="info"):
        self.calls.append(("event", message, kind))

    def close(self, status="finished"):
        self.calls.append(("close", status))


class Broken(Recorder):
    """A sink whose log() always raises."""

    name = "broken"

    def log(self, step, metrics):
        raise RuntimeError("display went away\nsecond line")


def test_sinks_satisfy_the_protocol(tmp_path):
    for sink in (ConsoleSink(), Dashboard(), JsonlSink(tmp_path), WandbSink(), Recorder()):
        assert isinstance(sink, Sink)


def test_fans_out_in_order(make_info):
    a, b = Recorder(), Recorder()
    sinks = MultiSink([a, b])
    sinks.start(make_info())
    sinks.log(10, {"loss": 3.0})
    sinks.event("checkpoint saved: x.pt", "checkpoint")
    sinks.close("failed")
    expected = [("start", 5000), ("log", 10, {"loss": 3.0}),
                ("event", "checkpoint saved: x.pt", "checkpoint"), ("close", "failed")]
    assert a.calls == expected and b.calls == expected


def test_failing_sink_is_reported_once_and_dropped(make_info, capsys):
    broken, healthy = Broken(), Recorder()
    sinks = MultiSink([broken, healthy])
    sinks.start(make_info())
    for step in (10, 20, 30):
        sinks.log(step, {"loss": 1.0})  # must not raise
    sinks.close()

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "broken sink failed in log() (RuntimeError: display went away)" in err[0]
    assert [c[0] for c in healthy.calls] == ["start", "log", "log", "log", "close"]
    assert broken.calls == [("start", 5000), ("close", "failed")]  # closed so it can clean up
    assert len(sinks) == 1


@pytest.mark.parametrize(
    ("raised", "status"), [(None, "finished"), (KeyboardInterrupt, "interrupted"), (ValueError, "failed")]
)
def test_context_manager_closes_with_status(raised, status):
    rec = Recorder()
    try:
        with MultiSink([rec]):
            if raised:
                raise raised()
    except (KeyboardInterrupt, ValueError):
        pass
    assert rec.calls == [("close", status)]


def test_run_id_comes_from_the_sink_that_has_one():
    assert MultiSink([Recorder()]).run_id is None
    rec = Recorder()
    rec.run_id = "abc123"
    assert MultiSink([Recorder(), rec]).run_id == "abc123"


@pytest.mark.parametrize(
    ("dashboard", "is_tty", "display"),
    [("auto", True, Dashboard), ("auto", False, ConsoleSink), ("plain", True, ConsoleSink),
     ("rich", False, Dashboard)],
)
def test_make_sinks_picks_the_display(tmp_path, dashboard, is_tty, display):
    sinks = make_sinks(LoggingSettings(wandb=False, dashboard=dashboard), tmp_path, is_tty=is_tty)
    assert [type(s) for s in sinks.sinks] == [display, JsonlSink]


def test_make_sinks_with_wandb_and_off_rank_zero(tmp_path):
    settings = LoggingSettings(wandb=True, wandb_project="p", wandb_name="n", wandb_entity="e")
    sinks = make_sinks(settings, tmp_path, is_tty=False)
    wandb_sink = sinks.sinks[-1]
    assert isinstance(wandb_sink, WandbSink)
    assert (wandb_sink.project, wandb_sink.run_name, wandb_sink.entity) == ("p", "n", "e")
    assert len(make_sinks(settings, tmp_path, rank0=False)) == 0


def test_importing_observe_does_not_import_wandb():
    code = "import sys, lmkit.observe; print('wandb' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_warning_about_a_failed_sink_survives_a_closed_stderr(make_info, monkeypatch):
    r, w = os.pipe()
    os.close(r)
    gone = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stderr", gone)
    sinks = MultiSink([Broken(), Recorder()])
    sinks.start(make_info())
    sinks.log(10, {"loss": 1.0})  # Broken fails; printing that must not raise BrokenPipeError
    assert sinks.output_lost == f"{gone.name} closed: broken pipe"
    monkeypatch.undo()
    gone.close()


def test_output_lost_comes_from_the_sink_that_lost_it():
    rec, quiet = Recorder(), Recorder()
    quiet.output_lost = "stderr closed: broken pipe"
    assert MultiSink([rec]).output_lost is None
    assert MultiSink([rec, quiet]).output_lost == "stderr closed: broken pipe"


def test_ctrl_c_during_start_closes_the_sinks_already_started(make_info):
    class SlowStart(Recorder):
        def start(self, info):
            raise KeyboardInterrupt  # Ctrl-C while W&B connects

    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        MultiSink([first, SlowStart()]).start(make_info())
    assert first.calls[-1] == ("close", "interrupted")


def test_make_sinks_passes_the_wandb_timeout(tmp_path):
    sinks = make_sinks(LoggingSettings(wandb=True, wandb_init_timeout=2.5), tmp_path, is_tty=False)
    assert sinks.sinks[-1].init_timeout == 2.5
    assert LoggingSettings().wandb_init_timeout <= 10  # "a few seconds" by default
