"""Metrics: JSON lines flushed per record, crash-tolerant reading, Prometheus endpoint, status line."""

from __future__ import annotations

import logging
import math
import urllib.request
from pathlib import Path

import pytest
import torch

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


def test_prometheus_endpoint(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    with metrics.MetricsWriter(tmp_path / "a.jsonl", "alice", prometheus_port=0) as w:
        assert w.exporter is not None and w.exporter.port > 0
        w.step(step=7, epoch=0.5, loss_g=1.25, loss_d=-0.5, grad_norm=3.0, bytes_sent=4096)
        w.evaluation(step=7, epoch=0.5, scores={"is": 8.5})
        with urllib.request.urlopen(f"http://127.0.0.1:{w.exporter.port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
    assert 'p2pgan_loss_g{peer="alice"} 1.25' in body
    assert 'p2pgan_step{peer="alice"} 7.0' in body
    assert 'p2pgan_bytes_sent{peer="alice"} 4096.0' in body
    assert 'p2pgan_score{peer="alice",score="is"} 8.5' in body


def test_prometheus_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'p2pgan\[metrics\]'"):
        metrics.MetricsWriter(tmp_path / "a.jsonl", "alice", prometheus_port=0)
    with pytest.raises(ConfigError, match="cannot open metrics file"):
        metrics.MetricsWriter(tmp_path, "alice")  # a directory


def test_status_line_rate_limits(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    status = metrics.StatusLine(logging.getLogger("p2pgan.test"), "step", total=50, interval_s=10.0)
    with caplog.at_level(logging.INFO, logger="p2pgan.test"):
        assert status.update(1, loss=0.5)
        clock[0] += 5
        assert not status.update(2)
        clock[0] += 6
        assert status.update(3, loss=0.25)
        assert status.update(4, force=True)
    assert [r.getMessage() for r in caplog.records][:2] == ["step 1/50 loss=0.5", "step 3/50 loss=0.25"]


def test_progress_bar_counts(tmp_path: Path) -> None:
    out = (tmp_path / "bar.txt").open("w")
    with metrics.progress(5, "training", disable=False, file=out) as bar:
        for _ in range(5):
            bar.update(1)
        assert bar.n == 5
    out.close()
    assert "training" in (tmp_path / "bar.txt").read_text()
