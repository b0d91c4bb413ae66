"""Operator-side faults (issue 16 item 5, issue 19 item 3): a disk that refuses checkpoints mid-run, exit
statuses by meaning, zeroconf without a member list, one-line state-transfer failures.

Real daemon processes (the disk is made to refuse checkpoint-sized files with RLIMIT_FSIZE set on the
running daemon from outside, so writes fail with EFBIG exactly as on a full file system), real files,
real gRPC servers with mutual TLS. The damaged checkpoint at ``--resume`` is in test_daemon_run.py.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from daemon_helpers import federation, running

from p2pgan import cli
from p2pgan.checkpoint import CheckpointManager, load_checkpoint, state_finite
from p2pgan.commands.status import daemon_status
from p2pgan.daemon import checkpoints as keeper_module
from p2pgan.daemon.checkpoints import CheckpointKeeper
from p2pgan.daemon.processes import MetricsTail, wait_for_record
from p2pgan.errors import (
    CheckpointError,
    ConfigError,
    DiscoveryError,
    PeerProcessError,
    PeerUnavailableError,
    StorageFullError,
)
from p2pgan.metrics import read_metrics
from p2pgan.security.certs import make_federation
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.health import CHECKPOINT_SERVICE, check
from p2pgan.wire.mixer import GrpcMixer
from p2pgan.wire.state import StateLayout
from p2pgan.wire import transport

#: generous bound for a few hundred tiny steps plus process start-up on a loaded 2-core machine
RUN_TIMEOUT_S = 150.0
#: steps of the full-disk run: long enough that the limit lands mid-run, short enough to stay light
FULL_DISK_STEPS = 600
#: checkpoint interval of that run (a write is due 29 times after the first one)
FULL_DISK_INTERVAL = 20


def _peer(config: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pgan", "peer", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


# -- a disk that refuses checkpoints mid-run ------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_disk_that_refuses_checkpoints_mid_run_does_not_end_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fed = federation(tmp_path, 1, steps=FULL_DISK_STEPS, checkpoint_interval=FULL_DISK_INTERVAL)
    spec = fed.specs()[0]
    state_dir = spec.metrics.parent
    tail = MetricsTail(spec.metrics)
    with running(fed) as group:
        daemon = group.by_name(spec.name)
        first = wait_for_record(tail, lambda r: r["type"] == "checkpoint" and r["ok"], RUN_TIMEOUT_S, group=group)
        # from now on no file of the daemon may grow past half a checkpoint: every checkpoint write fails
        # (EFBIG after a partial write, as ENOSPC would), its metrics and log lines still fit
        limit = Path(first["path"]).stat().st_size // 2
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (limit, limit))
        group.wait(RUN_TIMEOUT_S)  # raises unless it exits 0
    records = read_metrics(spec.metrics)
    assert spec.metrics.stat().st_size < limit, "test precondition: the metrics file must fit under the limit"
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, FULL_DISK_STEPS + 1)), \
        "training goes on through the failed writes, every step"
    attempts = [r for r in records if r["type"] == "checkpoint"]
    failed = [r for r in attempts if not r["ok"]]
    good = [r for r in attempts if r["ok"]]
    assert failed, "the limit must have landed mid-run"
    assert all(r["step"] < failed[0]["step"] for r in good), "once failing, no write succeeds under the limit"
    last_good = good[-1]
    scheduled = (FULL_DISK_STEPS - failed[0]["step"]) // FULL_DISK_INTERVAL
    assert len(failed) <= max(3, scheduled // 2), f"retries back off: {len(failed)} attempts for {scheduled} due"
    assert {r["error"].split(": ", 1)[1] for r in failed} == {os.strerror(errno.EFBIG)}
    assert failed[-1]["last_good"] == last_good["path"] and failed[-1]["failing_since"] == failed[0]["step"]
    end = next(r for r in reversed(records) if r["type"] == "end")
    assert end["reason"] == "done" and end["step"] == FULL_DISK_STEPS
    assert end["checkpoint_failing"] is True and end["checkpoint"] == last_good["path"]

    # the last good checkpoint is intact and finite; nothing half-written is left behind
    loaded = load_checkpoint(last_good["path"])
    assert loaded["step"] == last_good["step"] and state_finite(loaded)
    assert CheckpointManager(state_dir).load_latest(fallback=False).step == last_good["step"]
    assert not [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")]
    assert max(CheckpointManager(state_dir).steps()) == last_good["step"]

    log_text = spec.log.read_text()
    warnings = [line for line in log_text.splitlines() if "not written" in line]
    assert len(warnings) == 1, warnings  # one line, not one per retry
    assert f"checkpoint of step {failed[0]['step']} not written" in warnings[0] and "File too large" in warnings[0]
    assert "Traceback" not in log_text

    st = daemon_status(fed.configs[spec.name], timeout=1.0)  # stopped: its metrics still tell
    assert st["checkpoint_failing"] is True and st["checkpoint_step"] == last_good["step"]
    capsys.readouterr()
    assert cli.main(["status", "--config", str(fed.configs[spec.name]), "--timeout", "1"]) == 1  # not running
    line = capsys.readouterr().out
    assert f"checkpoint FAILING since step {failed[0]['step']} (" in line and "File too large" in line, line
    assert f"last good at step {last_good['step']}" in line, line


def test_prometheus_says_when_checkpoints_fail() -> None:
    import urllib.request

    from p2pgan.metrics import PrometheusExporter

    exporter = PrometheusExporter("p0", 0)
    try:
        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
            series = (line.split(" ") for line in text.splitlines() if line.startswith("p2pgan_checkpoint"))
            return {name.split("{")[0]: float(value) for name, value in series if "_created" not in name}

        exporter.observe({"type": "checkpoint", "step": 20, "ok": True, "last_good_step": 20})
        assert scrape() == {"p2pgan_checkpoint_failing": 0.0, "p2pgan_checkpoint_step": 20.0,
                            "p2pgan_checkpoint_failures_total": 0.0}
        for step in (40, 60):
            exporter.observe({"type": "checkpoint", "step": step, "ok": False, "last_good_step": 20})
        got = scrape()
        assert got["p2pgan_checkpoint_failing"] == 1.0 and got["p2pgan_checkpoint_failures_total"] == 2.0
        assert got["p2pgan_checkpoint_step"] == 20.0
    finally:
        exporter.close()


def test_checkpoint_keeper_backs_off_logs_once_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real failing write (the folder is a file), a patched clock: pauses double up to the maximum, one
    warning for the first failure and one for the recovery; the last good checkpoint is what save returns."""
    now = [0.0]
    records: list[dict] = []
    changes: list[bool] = []
    folder = tmp_path / "ckpt"
    keeper = CheckpointKeeper(CheckpointManager(folder, keep=2), emit=records.append, on_change=changes.append,
                              clock=lambda: now[0])
    state = {"x": __import__("torch").ones(3)}
    good = keeper.save(1, state)
    assert good is not None and keeper.due(False) is False and keeper.due(True) is True
    os.rename(folder, tmp_path / "moved")
    folder.write_text("not a folder")  # every write now fails with a real OSError
    pauses = []
    with caplog.at_level(logging.DEBUG, logger=keeper_module.__name__):
        for step in range(2, 12):
            assert keeper.save(step, state) == good  # the last good one, untouched
            start = now[0]
            while not keeper.due(True):
                now[0] += 1.0
            pauses.append(now[0] - start)
    first = keeper_module.RETRY_FIRST_S
    assert pauses[:4] == [first, 2 * first, 4 * first, 8 * first] and max(pauses) == keeper_module.RETRY_MAX_S
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "checkpoint of step 2 not written" in warnings[0].getMessage()
    assert changes == [True] and keeper.failing and keeper.failing_since == 2
    folder.unlink()
    os.rename(tmp_path / "moved", folder)
    with caplog.at_level(logging.WARNING, logger=keeper_module.__name__):
        path = keeper.save(12, state)
    assert path is not None and path.name == "ckpt-000000012.pt" and not keeper.failing and changes == [True, False]
    assert "written again" in caplog.records[-1].getMessage()
    assert [r["ok"] for r in records] == [True] + [False] * 10 + [True]


def test_metrics_lines_are_dropped_whole_when_the_disk_refuses_them(tmp_path: Path) -> None:
    """A real process whose files may not grow past 2000 bytes writes 40 metrics records: the file keeps
    only whole lines (readable), one warning line says records are dropped, and nothing raises."""
    path = tmp_path / "metrics.jsonl"
    script = textwrap.dedent(f"""
        import resource, logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        from p2pgan.metrics import MetricsWriter
        with MetricsWriter({str(path)!r}, "p0") as w:
            for i in range(40):
                w.write({{"type": "step", "step": i, "note": "x" * 60}})
            print("dropped", w.dropped)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(path)  # raises on a cut line in the middle
    assert path.read_bytes().endswith(b"\n") and 0 < len(records) < 40
    assert [r["step"] for r in records] == list(range(len(records)))
    assert f"dropped {40 - len(records)}" in proc.stdout
    assert proc.stderr.count("cannot append metrics") == 1 and "Traceback" not in proc.stderr


def test_health_reports_the_checkpoint_component_over_mutual_tls(tmp_path: Path) -> None:
    fed = f"ops-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path, fed, ["p0", "probe"])
    with GrpcMixer(NetworkConfig(federation=fed, peer_id="p0", tls=tls["p0"]), dim=8) as mixer:
        with transport.open_channel(PeerEntry("p0", "127.0.0.1", mixer.port), fed, tls["probe"]) as channel:
            assert check(channel, CHECKPOINT_SERVICE) == "SERVING"
            mixer.health.set_component(CHECKPOINT_SERVICE, False)
            assert check(channel, CHECKPOINT_SERVICE) == "NOT_SERVING"
            assert check(channel) == "NOT_SERVING"  # the overall state is the membership's, not the disk's


# -- exit statuses by meaning ---------------------------------------------------------------------------
def test_exit_status_of_each_kind_of_error() -> None:
    assert cli.exit_status(ConfigError("x")) == cli.exit_status(CheckpointError("x")) == cli.EXIT_USAGE == 2
    assert cli.exit_status(OSError(errno.EACCES, "Permission denied", "/x")) == cli.EXIT_USAGE
    for temporary in (PeerUnavailableError("x"), DiscoveryError("x"), StorageFullError("x"),
                      OSError(errno.ENOSPC, "No space left on device", "/x")):
        assert cli.exit_status(temporary) == cli.EXIT_TEMPFAIL == 75
    assert cli.exit_status(PeerProcessError("x")) == cli.EXIT_FAILURE == 1


@pytest.mark.timeout(240)
def test_exit_statuses_of_real_daemons(tmp_path: Path) -> None:
    fed = federation(tmp_path, 2, steps=5)
    config = fed.configs["peer0"]
    # a roster without this peer's id: a mistake, not a condition that passes
    doc = yaml.safe_load(config.read_text())
    roster = yaml.safe_load(Path(doc["discovery"]["roster"]).read_text())
    roster["peers"] = [p for p in roster["peers"] if p["id"] != "peer0"]
    other = tmp_path / "roster-without-peer0.yaml"
    other.write_text(yaml.safe_dump(roster))
    proc = _peer(config, "--set", f"discovery.roster={other}")
    assert proc.returncode == 2, proc.stderr
    assert "peer.id: 'peer0' is not in the roster" in proc.stderr and str(other) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # zeroconf without a member list, and zeroconf announcing a wildcard address
    proc = _peer(config, "--set", "discovery={zeroconf_peers: 2}")
    assert proc.returncode == 2 and "discovery.zeroconf_members: is required" in proc.stderr, proc.stderr
    proc = _peer(config, "--set", "discovery={zeroconf_peers: 2, zeroconf_members: [peer0, peer1]}",
                 "--set", "peer.listen=0.0.0.0:0")
    assert proc.returncode == 2 and "peer.advertise" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # the other member never comes up: that may pass, exit 75
    proc = _peer(config, "--set", "mixing.connect_timeout_s=1", "--set", f"checkpoint.dir={tmp_path / 'alone'}")
    assert proc.returncode == 75, proc.stderr
    assert "not reachable" in proc.stderr and "peer1" in proc.stderr and "Traceback" not in proc.stderr


def test_zeroconf_discovery_without_a_member_list_is_refused(tmp_path: Path) -> None:
    from p2pgan.discovery.mdns import ZeroconfDiscovery

    tls = make_federation(tmp_path, "zc-none", ["a"])
    net = NetworkConfig(federation="zc-none", peer_id="a", tls=tls["a"], discovery="zeroconf", expected_peers=1)
    with GrpcMixer(net, dim=4) as server, ZeroconfDiscovery(net, port=server.port) as zc:
        with pytest.raises(ConfigError, match=r"^discovery\.zeroconf_members: required"):
            zc.discover(1, timeout=5)


# -- a failed state transfer is one line with the gRPC status ----------------------------------------------
def test_failed_state_transfer_is_one_line_with_the_grpc_status(tmp_path: Path) -> None:
    fed = f"ops-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path, fed, ["p0", "p1"])
    mixers = [GrpcMixer(NetworkConfig(federation=fed, peer_id=p, tls=tls[p], topology="ring"), dim=8,
                        layout_digest="L") for p in ("p0", "p1")]
    try:
        roster = tuple(PeerEntry(p, "127.0.0.1", m.port) for p, m in zip(("p0", "p1"), mixers))
        for m in mixers:
            m.join(roster)
        for m in mixers:
            m.wait_ready(30)
        layout = StateLayout("DPOSG/exact/osg", {"x": 8, "z": 8, "d_prev": 8}, frozenset({"x", "z", "d_prev"}),
                             frozenset({"step"}))
        with pytest.raises(PeerUnavailableError) as info:  # p0 does not train: it refuses to hand out a state
            mixers[1].fetch_state("p0", layout, timeout=10)
        message = str(info.value)
        assert "\n" not in message and "undecodable" not in message, message
        assert message.startswith("state transfer from p0: UNAVAILABLE: ") and "not training" in message, message
    finally:
        for m in mixers:
            m.close()
