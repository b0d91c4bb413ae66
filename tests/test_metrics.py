"""Metrics: JSON lines flushed per record, crash-tolerant reading, Prometheus endpoint, status line."""

from __future__ import annotations

import logging
import math
import urllib.request
from pathlib import Path

import pytest
import torch

import p2pgan
from p2pgan import metrics
from p2pgan.errors import ConfigError, P2PGANError

pytestmark = pytest.mark.timeout(60)


def test_lines_are_flushed_and_json_clean(tmp_path: Path) -> None:
    path = tmp_path / "m" / "alice.jsonl"
    with metrics.MetricsWriter(path, "alice") as w:
        w.step(step=1, epoch=0.1, loss_g=torch.tensor(0.5), loss_d=math.nan, grad_norm=2.0, consensus=0.01,
               bytes_sent=100, bytes_received=200, compute_s=0.3, comm_s=0.1, lr=1e-4)
        # readable before close: every record is flushed as it is written
        (first,) = metrics.read_metrics(path)
        assert first["type"] == "step" and first["peer"] == "alice" and first["loss_g"] == 0.5
        assert first["loss_d"] is None and first["lr"] == 1e-4 and first["time"] > 0
        w.evaluation(step=1, epoch=0.1, scores={"is": 7.5, "fid": float("inf")})
    records = metrics.read_metrics(path)
    assert records[1] == {**records[1], "type": "eval", "scores": {"is": 7.5, "fid": None}}
    assert set(metrics.STEP_FIELDS) <= set(records[0])


def test_truncated_last_line_is_skipped_but_corruption_is_not(tmp_path: Path) -> None:
    path = tmp_path / "bob.jsonl"
    with metrics.MetricsWriter(path, "bob") as w:
        for s in range(3):
            w.step(step=s, epoch=s / 10, loss_g=1.0, loss_d=1.0, grad_norm=1.0)
    text = path.read_text()
    path.write_text(text + '{"peer":"bob","step":3,"ep')  # killed mid-write
    assert [r["step"] for r in metrics.read_metrics(path)] == [0, 1, 2]
    lines = text.splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(P2PGANError, match="bob.jsonl: line 2 is not valid JSON"):
        metrics.read_metrics(path)
    with metrics.MetricsWriter(tmp_path / "carol.jsonl", "carol") as w:
        w.step(step=0, epoch=0.0, loss_g=0.0, loss_d=0.0, grad_norm=0.0)
    path.write_text(text)
    grouped = metrics.records_by_peer([path, tmp_path / "carol.jsonl"])
    assert sorted(grouped) == ["bob", "carol"] and len(grouped["bob"]) == 3


def _scrape(port: int) -> dict[str, object]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("p2pgan")}


def _value(family: object, sample: str, **labels: str) -> float:
    for s in family.samples:  # type: ignore[attr-defined]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample} {labels}")


def test_prometheus_follows_the_conventions_and_survives_a_restart(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    path = tmp_path / "a.jsonl"
    with metrics.MetricsWriter(path, "alice", prometheus_port=0) as w:
        assert w.exporter is not None and w.exporter._server.server_address[0] == "127.0.0.1"  # loopback by default
        w.write({"type": "start", "step": 0})
        for step, sent in ((1, 1000), (2, 3000)):  # the record's byte fields are totals of this run
            w.step(step=step, epoch=0.5, loss_g=1.25, loss_d=-0.5, grad_norm=3.0, bytes_sent=sent,
                   bytes_received=2 * sent, compute_s=0.25, comm_s=0.125, step_s=0.5, dropped=0)
        w.evaluation(step=2, epoch=0.5, scores={"is": 8.5})
        fams = _scrape(w.exporter.port)
    for fam in fams.values():  # counters are exposed as NAME_total, never as gauges of running totals
        if fam.type == "counter":  # type: ignore[attr-defined]
            assert {s.name for s in fam.samples} <= {fam.name + "_total", fam.name + "_created"}  # type: ignore[attr-defined]
    counters = {n for n, f in fams.items() if f.type == "counter"}  # type: ignore[attr-defined]
    assert {"p2pgan_steps", "p2pgan_sent_bytes", "p2pgan_received_bytes", "p2pgan_compute_seconds",
            "p2pgan_communication_seconds", "p2pgan_dropped_rounds", "p2pgan_evaluations"} <= counters
    assert _value(fams["p2pgan_sent_bytes"], "p2pgan_sent_bytes_total", peer="alice") == 3000
    assert _value(fams["p2pgan_steps"], "p2pgan_steps_total") == 2
    assert _value(fams["p2pgan_compute_seconds"], "p2pgan_compute_seconds_total") == 0.5
    hist = fams["p2pgan_step_duration_seconds"]
    assert hist.type == "histogram"  # type: ignore[attr-defined]
    assert _value(hist, "p2pgan_step_duration_seconds_count") == 2
    assert _value(hist, "p2pgan_step_duration_seconds_bucket", le="0.5") == 2
    assert _value(hist, "p2pgan_step_duration_seconds_bucket", le="0.25") == 0
    build = fams["p2pgan_build_info"]
    assert _value(build, "p2pgan_build_info", peer="alice", version=p2pgan.__version__) == 1
    assert _value(fams["p2pgan_step"], "p2pgan_step") == 2
    assert _value(fams["p2pgan_score"], "p2pgan_score", score="is") == 8.5
    assert not [n for n in fams if n in ("p2pgan_bytes_sent", "p2pgan_compute_s", "p2pgan_loss_g")]

    # a resumed daemon appends to the same file; its mixer counts bytes from 0 again, the counters do not
    with metrics.MetricsWriter(path, "alice", prometheus_port=0) as w:
        w.write({"type": "start", "step": 2})
        w.step(step=3, epoch=0.75, loss_g=1.0, loss_d=-0.5, grad_norm=3.0, bytes_sent=500, bytes_received=0,
               compute_s=0.25, comm_s=0.0, step_s=0.5, dropped=1)
        fams = _scrape(w.exporter.port)
    assert _value(fams["p2pgan_sent_bytes"], "p2pgan_sent_bytes_total") == 3500
    assert _value(fams["p2pgan_steps"], "p2pgan_steps_total") == 3
    assert _value(fams["p2pgan_compute_seconds"], "p2pgan_compute_seconds_total") == 0.75
    assert _value(fams["p2pgan_dropped_rounds"], "p2pgan_dropped_rounds_total") == 1
    assert metrics.run_totals(metrics.read_metrics(path))["bytes_received"] == 6000


def test_prometheus_bind_address_is_configurable(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    with metrics.MetricsWriter(tmp_path / "a.jsonl", "alice", prometheus_port=0, prometheus_addr="0.0.0.0") as w:
        assert w.exporter is not None and w.exporter._server.server_address[0] == "0.0.0.0"
        assert _scrape(w.exporter.port)  # reachable
    with pytest.raises(ConfigError, match="prometheus_addr"):
        metrics.MetricsWriter(tmp_path / "b.jsonl", "alice", prometheus_port=0, prometheus_addr="192.0.2.1")


def test_prometheus_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'p2pgan\[metrics\]'"):
        metrics.MetricsWriter(tmp_path / "a.jsonl", "alice", prometheus_port=0)
    with pytest.raises(ConfigError, match="cannot open metrics file"):
        metrics.MetricsWriter(tmp_path, "alice")  # a directory


def test_status_line_rate_limits_and_shows_rate_and_eta(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    status = metrics.StatusLine(logging.getLogger("p2pgan.test"), "step", total=50, interval_s=10.0)
    with caplog.at_level(logging.INFO, logger="p2pgan.test"):
        assert status.update(1, loss=0.5)
        clock[0] += 5
        assert not status.update(2)
        clock[0] += 5
        status.notes = {"is": 6.5}
        assert status.update(11, loss=0.25)
        assert status.update(12, force=True)
    assert [r.getMessage() for r in caplog.records][:2] == [
        "step 1/50 (2%), loss=0.5", "step 11/50 (22%), 1 steps/s, ETA 39s, loss=0.25 is=6.5"]


def test_progress_is_a_bar_on_a_terminal_and_status_lines_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    import io

    bar_file = (tmp_path / "bar.txt").open("w")
    with metrics.Progress(5, "training", stream=bar_file, tty=True) as bar:
        for k in range(1, 6):
            bar.update(k)
        assert bar.bar is not None and bar.bar.n == 5
    bar_file.close()
    drawn = (tmp_path / "bar.txt").read_bytes()
    assert b"training" in drawn and b"\r" in drawn  # a redrawn bar

    clock = [0.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    log = io.StringIO()  # not a terminal: isatty() is False
    with metrics.Progress(100, "4 peers: steps", stream=log, interval_s=15.0) as p:
        for k in range(1, 101):
            clock[0] += 1.0
            p.update(k, **({"is": 7.25} if k > 50 else {}))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 8  # at 1, 16, 31, ... 91 s, and the final count
    assert lines[1] == "4 peers: steps 16/100 (16%), 1 steps/s, ETA 1m24s"
    assert lines[-1].startswith("4 peers: steps 100/100 (100%), 1 steps/s") and lines[-1].endswith("is=7.25")
