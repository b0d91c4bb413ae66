"""`p2pgan harness` end to end: M real daemons over mutual TLS, the report, and clean stops (crash, Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import p2pgan
from deadlines import scaled
from p2pgan.daemon.processes import MetricsTail, pid_alive, wait_for_record
from p2pgan.trainer.data import load_digits, load_shard

HARNESS_TIMEOUT_S = scaled(240.0)  # bounds a hang (x the machine's load, tests/deadlines.py)


@pytest.fixture()
def launch() -> Iterator[list[subprocess.Popen[str]]]:
    """Harness processes started by a test; killed (with their peers, by parent-death signal) on failure."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _default_sigint() -> None:
    """In the harness child, before exec: SIGINT back to its default action.

    pytest run under `nohup` or with `&` ignores SIGINT, and an ignored signal stays ignored across
    exec, so the harness would never see the Ctrl-C this test sends. The test restores it (a user's
    `nohup p2pgan harness &` keeps ignoring Ctrl-C, as the user asked).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _harness(launch: list[subprocess.Popen[str]], out: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "p2pgan", "harness", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
                            preexec_fn=_default_sigint)
    launch.append(proc)
    return proc


def _peer_pids(out: Path) -> dict[str, int]:
    pids = {}
    for path in sorted((out / "state").glob("*/metrics.jsonl")):
        tail = MetricsTail(path)
        tail.poll()
        for r in tail.records:
            if r["type"] == "start":
                pids[r["peer"]] = r["pid"]
    return pids


@pytest.mark.timeout(300)
def test_harness_digits_end_to_end(tmp_path: Path, launch: list[subprocess.Popen[str]]) -> None:
    out = tmp_path / "run"
    proc = _harness(launch, out, "--peers", "3", "--steps", "30", "--dataset", "digits", "--eval-interval", "10",
                    "--topology", "ring", "--variant", "dp")
    stdout, stderr = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    assert proc.returncode == 0, stderr[-3000:]
    last = stdout.strip().splitlines()[-1]  # says what was reached, against real digits, and where to read more
    assert last.startswith("p2pgan harness: mean IS ") and "(held-out real digits: 9." in last, last
    assert "mean FID " in last and last.endswith(f"report: {out / 'report.md'}"), last
    # status lines, not bar frames, in a pipe; counted in steps of the run (30), not peers x steps (90)
    assert "\r" not in stderr and "3 peers: mean step 30/30 (100%)" in stderr

    report = json.loads((out / "report.json").read_text())
    assert sorted(report["peers"]) == ["peer0", "peer1", "peer2"]
    assert set(report["exit_codes"].values()) == {0}
    assert sum(p["shard_size"] for p in report["peers"].values()) == 1797
    dim = report["peers"]["peer0"]["parameters"]
    for name, peer in report["peers"].items():
        assert peer["steps"] == 30 and peer["end"] == "done" and peer["runs"] == 1
        assert {"is", "fid"} <= set(peer["scores"]) and peer["scores"]["step"] == 30
        assert peer["first_scores"]["step"] == 10
        # ring of 3: every step one full vector to each of two neighbours, and two received
        assert peer["bytes_sent"] >= 2 * 30 * dim * 4 and peer["bytes_received"] >= 2 * 30 * dim * 4
        assert peer["compute_s"] > 0 and peer["comm_s"] > 0 and peer["dropped_rounds"] == 0
        assert all(isinstance(peer["final"][k], float) for k in ("loss_g", "loss_d", "grad_norm", "consensus"))
    assert {"is", "fid"} <= set(report["summary"])
    assert report["p2pgan_version"] == f"p2pgan {p2pgan.__version__}"
    assert isinstance(report["summary"]["bytes_sent"], int) and report["privacy"]["statement"].startswith("No formal")
    md = (out / "report.md").read_text()
    assert f"| written by | p2pgan {p2pgan.__version__} |" in md and "## Privacy" in md
    ref = report["reference"]
    assert ref["label"] == "held-out real digits" and ref["scores"]["is"] > 9 and ref["scores"]["fid"] < 10
    assert report["units"]["step_s"] == "seconds per step" and report["peers"]["peer0"]["step_s"] > 0
    page = (out / "report.md").read_text()
    for text in ("## Setup", "| peer | shard (samples) | steps | epochs | s/step | MB sent/step |",
                 "**held-out real digits**", f"**{ref['scores']['is']:.3g}**", "![score](score.png)",
                 "![held-out real digits](samples-real.png)", "| peer0, step 30 |"):
        assert text in page, text

    for png in ["score.png", "losses.png", "consensus.png", "samples-real.png"] + [f"samples-peer{i}.png" for i in range(3)]:
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 50 and img.height > 50
    assert sorted(report["pictures"]) == ["consensus.png", "losses.png", "score.png"]

    assert not [pid for pid in report["pids"].values() if pid_alive(pid)], "a peer process was left behind"

    # the shards are disjoint and together exactly the dataset (each sample once, with its label)
    full = load_digits()
    rows = Counter(zip((x.tobytes() for x in full.x), full.y.tolist()))
    shard_rows: Counter[tuple[bytes, int]] = Counter()
    for i in range(3):
        shard = load_shard(out / "data" / f"peer{i}")
        shard_rows.update(zip((x.tobytes() for x in shard.x), shard.y.tolist()))
    assert shard_rows == rows


@pytest.mark.timeout(240)
def test_harness_reports_a_dead_peer_and_leaves_nothing(tmp_path: Path, launch: list[subprocess.Popen[str]]) -> None:
    out = tmp_path / "crash"
    proc = _harness(launch, out, "--peers", "3", "--steps", "100000", "--dataset", "gaussians",
                    "--round-timeout", "1", "--eval-interval", "0", "--variant", "rand-dp")
    tail = MetricsTail(out / "state" / "peer1" / "metrics.jsonl")
    wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= 3, HARNESS_TIMEOUT_S)
    pids = _peer_pids(out)
    assert sorted(pids) == ["peer0", "peer1", "peer2"]
    os.kill(pids["peer1"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    assert proc.returncode == 1  # a run that failed, not a mistake in the command line (2)
    assert "Traceback" not in stderr
    assert "peer peer1" in stderr and "killed by signal SIGKILL" in stderr and "daemon.log" in stderr
    assert "step" in stderr.split("daemon.log", 1)[1], "the error shows the dead peer's log tail"
    assert not [pid for pid in pids.values() if pid_alive(pid)], "a peer process was left behind"


@pytest.mark.timeout(240)
def test_harness_ctrl_c_stops_peers_with_checkpoints(tmp_path: Path, launch: list[subprocess.Popen[str]]) -> None:
    out = tmp_path / "interrupt"
    proc = _harness(launch, out, "--peers", "2", "--steps", "100000", "--dataset", "gaussians", "--eval-interval", "0",
                    "--variant", "dp", "--schedule", "overlap", "--discovery", "zeroconf")
    for name in ("peer0", "peer1"):
        tail = MetricsTail(out / "state" / name / "metrics.jsonl")
        wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= 3, HARNESS_TIMEOUT_S)
    pids = _peer_pids(out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    assert proc.returncode == 130, stderr[-2000:]
    assert not [pid for pid in pids.values() if pid_alive(pid)], "a peer process was left behind"
    for name in ("peer0", "peer1"):
        tail = MetricsTail(out / "state" / name / "metrics.jsonl")
        tail.poll()
        end = tail.last("end")
        assert end is not None and end["reason"] == "signal SIGTERM" and Path(end["checkpoint"]).is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--topology", "rign"], "--topology: 'rign' is not allowed"), (["--variant", "gossip"], "--variant"),
     (["--peers", "0"], "--peers: must be >= 1"), (["--optimizer", "adam"], "osg, oadam, oadagrad"),
     (["--variant", "overlap"], "--variant dp --schedule overlap"), (["--schedule", "fast"], "exact, overlap"),
     (["--wire-dtype", "fp8"], "--wire-dtype: invalid choice: 'fp8'"),
     (["--wire-dtype", "bfloat16", "--backend", "torch", "--insecure"], "--wire-dtype: only the gRPC backend"),
     (["--set", "train.steps"], "--set train.steps: must be SECTION.FIELD=VALUE"),
     (["--steps", "2", "--set", "mixing.rounds=-1"], "--set mixing.rounds=-1: mixing.rounds"),
     (["--link", "100mb:20ms"], "--link '100mb:20ms': rate unit 'mb'"),
     (["--link", "fast"], "--link 'fast': expected RATE:DELAY"),
     (["--link", "1gbit:5ms", "--discovery", "zeroconf"], "--link: emulated links need")],
)
@pytest.mark.timeout(60)
def test_harness_flag_errors_are_clear(tmp_path: Path, args: list[str], fragment: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "p2pgan", "harness", "--out", str(tmp_path / "x"), *args],
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists(), "nothing is written for a bad command line"


@pytest.mark.timeout(60)
def test_harness_wire_dtype_reaches_every_peer_config(tmp_path: Path) -> None:
    from p2pgan.daemon.config import load_config, network_config
    from p2pgan.harness import HarnessOptions, prepare
    from p2pgan.report import write_markdown

    opts = HarnessOptions(peers=2, out=tmp_path / "run", steps=4, wire_dtype="bfloat16")
    fed = prepare(opts)
    nets = [network_config(load_config(path)) for path in fed.configs.values()]
    assert [n.wire_dtype for n in nets] == ["bfloat16", "bfloat16"]
    default = prepare(HarnessOptions(peers=2, out=tmp_path / "default", steps=4))
    assert {network_config(load_config(p)).wire_dtype for p in default.configs.values()} == {"float32"}
    report = {"options": {"wire_dtype": "bfloat16", "backend": "grpc"}, "peers": {}, "summary": {}}
    assert "parameters sent as bfloat16" in write_markdown(tmp_path, report).read_text()


@pytest.mark.timeout(60)
def test_harness_set_reaches_every_peer_config(tmp_path: Path) -> None:
    from p2pgan.daemon.config import load_config
    from p2pgan.harness import HarnessOptions, prepare

    opts = HarnessOptions(peers=3, out=tmp_path / "run", steps=4,
                          overrides=("mixing.round_timeout_s=3.5", "train.init_seed=11"))
    fed = prepare(opts)
    cfgs = [load_config(path) for path in fed.configs.values()]
    assert [(c.mixing.round_timeout_s, c.train.init_seed) for c in cfgs] == [(3.5, 11)] * 3
    plain = prepare(HarnessOptions(peers=2, out=tmp_path / "plain", steps=4))
    assert {load_config(p).mixing.round_timeout_s for p in plain.configs.values()} == {10.0}


@pytest.mark.timeout(60)
def test_harness_link_routes_each_pair_through_its_own_relay(tmp_path: Path) -> None:
    """With --link, peer a's roster names, for every other peer b, the port of the relay of the pair (a, b);
    its own entry is its real port. The relays carry a's bytes to b's real port."""
    import socket

    from p2pgan.daemon.config import load_config
    from p2pgan.discovery.roster import load_roster
    from p2pgan.harness import HarnessOptions, prepare
    from p2pgan.netem import EmulatedLinks, parse_link

    fed = prepare(HarnessOptions(peers=3, out=tmp_path / "run", steps=4, link="100mbit:1ms"))
    ports = {}
    for a in fed.ids:
        roster = {e.id: e.port for e in load_roster(load_config(fed.configs[a]).discovery.roster).peers}
        assert roster[a] == fed.peer_ports[a]
        for b in fed.ids:
            if a != b:
                assert roster[b] == fed.link_ports[a, b] != fed.peer_ports[b]
                ports[a, b] = roster[b]
    assert len(set(ports.values())) == 6
    servers = {pid: socket.create_server(("127.0.0.1", port)) for pid, port in fed.peer_ports.items()}
    try:
        with EmulatedLinks(fed.peer_ports, parse_link("100mbit:1ms"), listen_ports=fed.link_ports) as links:
            with socket.create_connection(("127.0.0.1", ports[fed.ids[0], fed.ids[2]]), timeout=10) as c:
                conn, _ = servers[fed.ids[2]].accept()  # the pair's relay dialled peer 2's real port
                c.sendall(b"hi")
                assert conn.recv(2) == b"hi"
                conn.close()
            assert links.carried()[f"{fed.ids[0]}->{fed.ids[2]}"] == 2
    finally:
        for s in servers.values():
            s.close()


@pytest.mark.timeout(300)
def test_harness_over_emulated_links_with_int8_gossip(tmp_path: Path, launch: list[subprocess.Popen[str]]) -> None:
    """Two daemons on a 50 Mbit/s link with int8 gossip: the run finishes, the report names the link and the
    compression, and the link carried about a quarter of the raw vectors' bytes (one key, then deltas)."""
    out = tmp_path / "run"
    steps = 8
    proc = _harness(launch, out, "--peers", "2", "--steps", str(steps), "--eval-interval", str(steps),
                    "--link", "50mbit:2ms", "--set", "mixing.compression=int8")
    stdout, stderr = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["link"]["spec"] == "50mbit:2ms"
    raw = 333_570 * 4 * steps  # the digits vector in float32, once per step
    carried = report["link"]["bytes_carried"]
    assert set(carried) == {"peer0->peer1", "peer1->peer0"}
    assert all(0.2 * raw < v < 0.5 * raw for v in carried.values()), carried
    assert "emulated 50mbit:2ms link, mixing.compression=int8" in (out / "report.md").read_text()


def _image_folder(root: Path, side: int = 40) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (side, side), (60 * i, 120, 200)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.timeout(60)
def test_harness_sagan128_gets_its_learning_rates_and_128_pixel_images(tmp_path: Path) -> None:
    """No sagan128 is trained: the configs and shards prepare() writes are what the peers would train with."""
    import argparse

    import yaml

    from p2pgan.commands.harness import add_arguments
    from p2pgan.daemon.config import load_config
    from p2pgan.harness import HarnessOptions, prepare, report_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--model", "sagan128"])
    assert args.lr_g is None and args.lr_d is None  # the command line leaves them to the model

    folder = _image_folder(tmp_path / "images")
    opts = HarnessOptions(peers=2, out=tmp_path / "run", steps=4, dataset=str(folder), model="sagan128", insecure=True)
    fed = prepare(opts)
    for pid, path in fed.configs.items():
        written = yaml.safe_load(path.read_text())["train"]
        assert (written["lr_generator"], written["lr_discriminator"]) == (1e-3, 4e-5)
        cfg = load_config(path)
        assert (cfg.train.model, cfg.train.lr_generator, cfg.train.lr_discriminator) == ("sagan128", 1e-3, 4e-5)
        assert load_shard(cfg.data.path).x.shape[1:] == (3, 128, 128), pid  # not 32x32
    assert (fed.lr_generator, fed.lr_discriminator, fed.image_size) == (1e-3, 4e-5, 128)
    options = report_options(opts, fed)  # report.json / report.md show the rates used, not None
    assert (options["lr_generator"], options["lr_discriminator"]) == (1e-3, 4e-5)

    # explicit flags win over the model's defaults
    chosen = HarnessOptions(peers=2, out=tmp_path / "chosen", steps=4, dataset=str(folder), model="sagan128",
                            insecure=True, lr_generator=5e-4, lr_discriminator=1e-4)
    fed = prepare(chosen)
    assert {(load_config(p).train.lr_generator, load_config(p).train.lr_discriminator)
            for p in fed.configs.values()} == {(5e-4, 1e-4)}
    assert report_options(chosen, fed)["lr_generator"] == 5e-4

    # and the other models keep theirs: 2e-4, 32x32 images for dcgan32 (the image folder default)
    fed = prepare(HarnessOptions(peers=2, out=tmp_path / "dcgan", steps=4, dataset=str(folder), insecure=True))
    assert (fed.model, fed.lr_generator, fed.lr_discriminator) == ("dcgan32", 2e-4, 2e-4)
    assert load_shard(fed.out / "data" / "peer0").x.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize(("model", "dataset", "fragment"), [
    ("sagan128", "digits", "sagan128 makes 128x128 images but --dataset digits holds 8x8 images"),
    ("dcgan32", "gaussians", "dcgan32 makes 32x32 images but --dataset gaussians holds 2-D points"),
    ("mlp2d", "digits", "mlp2d makes 2-D points but --dataset digits holds 8x8 images"),
])
@pytest.mark.timeout(60)
def test_harness_refuses_a_model_that_does_not_fit_the_data(tmp_path: Path, model: str, dataset: str,
                                                            fragment: str) -> None:
    from p2pgan.errors import ConfigError
    from p2pgan.harness import HarnessOptions, prepare

    with pytest.raises(ConfigError, match=fragment):
        prepare(HarnessOptions(peers=2, out=tmp_path / "run", steps=4, dataset=dataset, model=model, insecure=True))
    assert not (tmp_path / "run" / "data").exists(), "refused before any shard is written"
