from __future__ import annotations

import os
import sys
import time
import types

import pytest

from lmkit.observe import MultiSink
from lmkit.observe.wandb_sink import WandbSink, has_credentials, public_config


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """An environment with no W&B key, netrc or mode, and wandb's own files kept in tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_SILENT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    return home


class FakeRun:
    def __init__(self, id="run123", offline=False, fail_log=False):
        self.id, self.offline, self.fail_log = id, offline, fail_log
        self.logged, self.summary, self.finished, self.metrics = [], {}, [], []

    def define_metric(self, name, **kwargs):
        self.metrics.append((name, kwargs))

    def log(self, data):
        if self.fail_log:
            raise ConnectionError("lost the service process")
        self.logged.append(data)

    def finish(self, exit_code=None):
        self.finished.append(exit_code)


def fake_wandb(monkeypatch, init):
    """Put a stand-in ``wandb`` module in front of the real one; returns the recorded init calls."""
    calls = []

    def recording_init(**kwargs):
        calls.append({**kwargs, "WANDB_SILENT": os.environ.get("WANDB_SILENT")})
        return init(**kwargs)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Settings=dict, init=recording_init))
    return calls


def test_public_config_strips_credentials():
    flat = {"d_model": 768, "wandb_api_key": "x", "hf_token": "y", "Secret_thing": 1, "wandb": True}
    assert public_config(flat) == {"d_model": 768, "wandb": True}


def test_has_credentials(no_credentials):
    assert not has_credentials()
    assert has_credentials({"WANDB_API_KEY": "k"})
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert has_credentials()
    assert not has_credentials({"NETRC": str(no_credentials / ".netrc"),
                                "WANDB_BASE_URL": "https://wandb.example.com"})


def test_offline_without_credentials_for_real(no_credentials, make_info, capsys):
    info = make_info()
    sink = WandbSink(project="lmkit-test")
    began = time.monotonic()
    sink.start(info)
    assert sink.run_id and sink.mode == "offline"
    for step in (10, 20):
        sink.log(step, {"loss": 3.0, "lr": 1e-3})
    sink.event("checkpoint saved: ckpt.pt", "checkpoint")
    sink.close()
    assert time.monotonic() - began < 60
    assert list((info.run_dir / "wandb").glob(f"offline-run-*-{sink.run_id}"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no credentials" in err[0] and "offline" in err[0]
    assert "WANDB_SILENT" not in os.environ  # set only while wandb starts


def test_init_arguments_and_resume(no_credentials, make_info, monkeypatch, capsys):
    run = FakeRun(id="abc")
    calls = fake_wandb(monkeypatch, lambda **kw: run)
    sink = WandbSink(project="p", name="n", entity="e")
    sink.start(make_info(wandb_run_id="abc", start_iter=100, resumed=True))
    sink.log(110, {"loss": 2.5})
    sink.event("checkpoint saved: runs/x/ckpt_0000200.pt", "checkpoint")
    sink.close("interrupted")
    (call,) = calls
    assert call["id"] == "abc" and call["resume"] == "allow" and call["mode"] == "offline"
    assert (call["project"], call["name"], call["entity"]) == ("p", "n", "e")
    assert "wandb_api_key" not in call["config"] and call["config"]["d_model"] == 768
    assert call["settings"]["silent"] is True and call["settings"]["console"] == "off"
    assert call["WANDB_SILENT"] == "true"
    assert sink.run_id == "abc"
    assert run.logged == [{"step": 110, "loss": 2.5}]
    assert ("*", {"step_metric": "step"}) in run.metrics
    assert run.summary == {"last_checkpoint": "runs/x/ckpt_0000200.pt"}
    assert run.finished == [130]


def test_unreachable_server_falls_back_to_offline(no_credentials, make_info, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)

    def init(mode, **kwargs):
        if mode != "offline":
            raise TimeoutError("context deadline exceeded")
        return FakeRun(id="off1", offline=True)

    calls = fake_wandb(monkeypatch, init)
    sink = WandbSink()
    sink.start(make_info())
    assert [c["mode"] for c in calls] == [None, "offline"]
    assert sink.run_id == "off1" and sink.mode == "offline"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("lmkit: wandb: connecting to W&B (up to 5 s")
    assert "could not start online (TimeoutError: context deadline exceeded)" in err[1]


def test_connecting_is_said_before_the_wait_and_the_wait_is_capped(no_credentials, make_info, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    said_before = []

    def init(mode, settings, **kwargs):
        said_before.append(capsys.readouterr().err)  # what the user saw while init waits
        return FakeRun()

    calls = fake_wandb(monkeypatch, init)
    WandbSink(init_timeout=3.0).start(make_info())
    assert "connecting to W&B (up to 3 s, then logging offline)..." in said_before[0]
    assert calls[0]["settings"]["init_timeout"] == 3.0


def test_failing_init_disables_with_one_warning(no_credentials, make_info, monkeypatch, capsys):
    def init(**kwargs):
        raise RuntimeError("wandb-core crashed")

    fake_wandb(monkeypatch, init)
    sink = WandbSink()
    sinks = MultiSink([sink])
    sinks.start(make_info())
    sinks.log(10, {"loss": 1.0})
    sinks.event("checkpoint saved: x.pt", "checkpoint")
    sinks.close()
    assert sink.run_id is None
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("lmkit: wandb: no credentials")
    assert len(err) == 2 and "W&B logging failed in start (RuntimeError: wandb-core crashed)" in err[1]


def test_failing_log_disables_with_one_warning(no_credentials, make_info, monkeypatch, capsys):
    run = FakeRun(fail_log=True)
    fake_wandb(monkeypatch, lambda **kw: run)
    sink = WandbSink()
    sink.start(make_info())
    capsys.readouterr()
    for step in (10, 20, 30):
        sink.log(step, {"loss": 1.0})
    sink.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "failed in log (ConnectionError: lost the service process)" in err[0]
    assert run.finished == [1]  # finished once, as failed, when disabled


def test_missing_wandb_is_a_warning(no_credentials, make_info, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    sink = WandbSink()
    sink.start(make_info())
    sink.log(1, {"loss": 1.0})
    sink.close()
    assert "wandb is not installed" in capsys.readouterr().err
