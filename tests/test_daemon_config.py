"""The peer's YAML config: valid files load into frozen dataclasses; every mistake names file, field, allowed values."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pgan.daemon.config import load_config, network_config
from p2pgan.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def base_doc() -> dict[str, Any]:
    return {
        "peer": {"id": "alice", "federation": "demo", "listen": "127.0.0.1:7000"},
        "security": {"ca": "certs/ca.pem", "cert": "certs/alice.pem", "key": "certs/alice.key"},
        "discovery": {"roster": "roster.yaml"},
        "mixing": {"variant": "dp", "rounds": 2},
        "train": {"model": "digits", "steps": 100, "lr_generator": "2e-4", "lr_discriminator": 1e-3},
        "data": {"format": "digits"},
        "checkpoint": {"interval": 10},
    }


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "alice.pem", "alice.key"):
        (tmp_path / "certs" / name).write_text("pem")
    (tmp_path / "roster.yaml").write_text("federation: demo\npeers: []\n")
    return tmp_path


def write(folder: Path, doc: object, name: str = "alice.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_valid_config_resolves_paths_and_defaults(folder: Path) -> None:
    cfg = load_config(write(folder, base_doc()))
    assert cfg.peer.id == "alice" and (cfg.peer.listen_host, cfg.peer.listen_port) == ("127.0.0.1", 7000)
    assert cfg.security.tls is not None and cfg.security.tls.ca == folder / "certs" / "ca.pem"
    assert cfg.discovery.kind == "roster" and cfg.discovery.roster == folder / "roster.yaml"
    assert (cfg.mixing.topology, cfg.mixing.rounds, cfg.mixing.schedule) == ("ring", 2, "overlap")
    assert cfg.train.lr_generator == pytest.approx(2e-4) and cfg.train.lr_discriminator == pytest.approx(1e-3)
    assert cfg.checkpoint.dir == folder / "state" / "alice"
    assert cfg.metrics.path == folder / "state" / "alice" / "metrics.jsonl"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 5  # type: ignore[misc]
    net = network_config(cfg)
    assert (net.peer_id, net.federation, net.rounds, net.topology, net.listen_port) == ("alice", "demo", 2, "ring", 7000)
    assert net.robust.kind == "clip" and net.robust == cfg.mixing.robust  # robust mixing is on by default


@pytest.mark.parametrize(
    ("variant", "topology", "rounds", "schedule"),
    [("dp", "ring", 1, "overlap"), ("rand-dp", "random-ring", 1, "overlap"), ("cp", "complete", 1, "exact")],
)
def test_variants_map_to_topology_and_the_papers_default_schedule(
    folder: Path, variant: str, topology: str, rounds: int, schedule: str
) -> None:
    doc = base_doc()
    doc["mixing"] = {"variant": variant}
    cfg = load_config(write(folder, doc))
    assert (cfg.mixing.topology, cfg.mixing.rounds, cfg.mixing.schedule) == (topology, rounds, schedule)
    assert cfg.mixing.first_step == "gradient"


@pytest.mark.parametrize("variant", ["dp", "rand-dp", "cp"])
@pytest.mark.parametrize("schedule", ["exact", "overlap"])
def test_the_schedule_is_its_own_setting_for_every_variant(folder: Path, variant: str, schedule: str) -> None:
    doc = base_doc()
    doc["mixing"] = {"variant": variant, "schedule": schedule, "first_step": "zero"}
    cfg = load_config(write(folder, doc))
    assert (cfg.mixing.variant, cfg.mixing.schedule, cfg.mixing.first_step) == (variant, schedule, "zero")


def test_the_old_overlap_variant_is_refused_saying_what_to_write(folder: Path) -> None:
    doc = base_doc()
    doc["mixing"] = {"variant": "overlap", "topology": "torus"}
    path = write(folder, doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "mixing.variant" in msg and "variant: dp" in msg and "schedule: overlap" in msg
    doc["mixing"] = {"variant": "dp", "schedule": "overlapped"}
    with pytest.raises(ConfigError, match=r"mixing.schedule.*did you mean 'overlap'.*allowed: exact, overlap"):
        load_config(write(folder, doc))
    doc["mixing"] = {"variant": "dp", "first_step": "grad"}
    with pytest.raises(ConfigError, match=r"mixing.first_step.*allowed: gradient, zero"):
        load_config(write(folder, doc))


def test_zeroconf_allow_list(folder: Path) -> None:
    doc = base_doc()
    doc["discovery"] = {"zeroconf_peers": 2, "zeroconf_members": ["bob", "alice"]}
    cfg = load_config(write(folder, doc))
    assert cfg.discovery.zeroconf_members == ("alice", "bob")
    for members, words in ((["alice"], "lists 1 ids but zeroconf_peers is 2"), (["a", "a"], "distinct peer ids"),
                           ("alice,bob", "distinct peer ids")):
        doc["discovery"] = {"zeroconf_peers": 2, "zeroconf_members": members}
        with pytest.raises(ConfigError, match=f"discovery.zeroconf_members.*{words}"):
            load_config(write(folder, doc))


def test_insecure_warns_loudly(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = base_doc()
    doc["security"] = {"insecure": True}
    cfg = load_config(write(folder, doc))
    assert cfg.security.insecure and cfg.security.tls is None
    assert "INSECURE" in caplog.text


def _set(doc: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return doc


_DELETE = object()

BAD_CASES = [
    # (dotted field, value, fragments that must be in the message)
    ("mixing.variant", "rand_dp", ["mixing.variant", "did you mean 'rand-dp'", "dp, rand-dp, cp"]),
    ("train.optimizer", "adam", ["train.optimizer", "osg, oadam, oadagrad"]),
    ("train.lr_generator", "fast", ["train.lr_generator", "must be a number"]),
    ("train.lr_discriminator", -1, ["train.lr_discriminator", "> 0"]),
    ("train.batch_szie", 32, ["train.batch_szie", "unknown field", "did you mean 'batch_size'"]),
    ("train.betas", [0.5], ["train.betas", "two numbers"]),
    ("train.steps", _DELETE, ["train.steps", "is required"]),
    ("train.epochs", 3, ["train.epochs", "not both"]),
    ("mixing.topology", "rign", ["mixing.topology", "did you mean 'ring'", "random-ring"]),
    ("mixing.rounds", -1, ["mixing.rounds", ">= 0"]),
    ("mixing.robust", "median", ["mixing.robust", "clip, trim, off"]),
    ("mixing.robust_scale", 0.5, ["mixing.robust_scale", ">= 1.0"]),
    ("peer.listen", "localhost", ["peer.listen", "HOST:PORT"]),
    ("peer.id", "Bad id!", ["peer.id", "lowercase letters, digits"]),
    ("security.key", _DELETE, ["security.key", "is required", "insecure: true"]),
    ("security.ca", "certs/nope.pem", ["security.ca", "does not exist"]),
    ("discovery.zeroconf_peers", 3, ["discovery", "exactly one of"]),
    ("data.format", "mnist", ["data.format", "digits, gaussians, cifar10, imagefolder, shard"]),
    ("metrics.prometheus_port", 70000, ["metrics.prometheus_port", "<= 65535"]),
    ("checkpionts", {}, ["checkpionts", "did you mean 'checkpoint'"]),
]


@pytest.mark.parametrize(("field", "value", "fragments"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_field_names_file_field_and_allowed(folder: Path, field: str, value: object, fragments: list[str]) -> None:
    path = write(folder, _set(base_doc(), field, value))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_cp_rejects_other_topology(folder: Path) -> None:
    path = write(folder, _set(base_doc(), "mixing", {"variant": "cp", "topology": "ring"}))
    with pytest.raises(ConfigError, match=r"mixing\.topology.*'complete'"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("peer: [unclosed\n", "not valid YAML at line"), ("", "empty"), ("- a\n- b\n", "must be a mapping")],
)
def test_unparsable_files(folder: Path, text: str, fragment: str) -> None:
    path = folder / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_cli_reports_config_error_without_traceback(folder: Path) -> None:
    path = write(folder, _set(base_doc(), "mixing.variant", "gossip"))
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgan", "peer", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "mixing.variant" in proc.stderr and "rand-dp" in proc.stderr


#: the files of peers/ the repository ships (everything else there is a user's: certificates, state)
EXAMPLE_PEER_FILES = ("README.md", "alice.yaml", "bob.yaml", "graph.yaml", "roster.yaml", "p2pgan-peer@.service")


def test_example_configs_in_peers_load(tmp_path: Path) -> None:
    """The examples in peers/ are valid once their certificates exist (made as the README says)."""
    import shutil

    from p2pgan.discovery import load_roster
    from p2pgan.security.certs import init_ca, issue_peer

    peers = tmp_path / "peers"
    peers.mkdir()
    # only the examples the repository ships: a user who followed peers/README.md has peers/certs/ and
    # peers/state/ in the checkout, which must not leak into (or break) this test
    for name in EXAMPLE_PEER_FILES:
        shutil.copy2(Path(__file__).resolve().parents[1] / "peers" / name, peers / name)
    init_ca(peers / "certs" / "ca", "demo")
    roster = load_roster(peers / "roster.yaml")
    assert roster.members == ("alice", "bob")
    for entry in roster.peers:
        issue_peer(peers / "certs" / "ca", entry.id, peers / "certs" / entry.id)
        cfg = load_config(peers / f"{entry.id}.yaml")
        net = network_config(cfg, roster.peers)
        assert (net.peer_id, net.federation, net.listen_port) == (entry.id, roster.federation, entry.port)
        assert cfg.security.tls is not None and cfg.security.tls.key.is_file()
    assert "ExecStart=" in (peers / "p2pgan-peer@.service").read_text()


def test_torch_backend_refuses_a_wire_dtype_it_would_ignore(folder: Path) -> None:
    doc = base_doc()
    doc["security"] = {"insecure": True}
    doc["mixing"] = {"variant": "dp", "backend": "torch", "wire_dtype": "float32"}
    assert load_config(write(folder, doc)).mixing.wire_dtype == "float32"
    doc["mixing"]["wire_dtype"] = "bfloat16"
    with pytest.raises(ConfigError, match=r"mixing\.wire_dtype: 'bfloat16' is the gRPC backend's; backend 'torch' sends float32"):
        load_config(write(folder, doc))
    doc["mixing"]["backend"] = "grpc"
    assert network_config(load_config(write(folder, doc))).wire_dtype == "bfloat16"


def test_example_peer_files_list_what_the_repository_ships() -> None:
    """EXAMPLE_PEER_FILES stays the list of tracked files under peers/ (where this is a git checkout)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "peers"], cwd=root, capture_output=True, text=True, timeout=60)
    if tracked.returncode != 0:
        pytest.skip("git cannot read this checkout")
    assert sorted(Path(p).name for p in tracked.stdout.split()) == sorted(EXAMPLE_PEER_FILES)


def test_mixing_streaming_reaches_the_network_and_takes_booleans_only(folder: Path) -> None:
    assert load_config(write(folder, base_doc())).mixing.streaming is True
    cfg = load_config(write(folder, _set(base_doc(), "mixing.streaming", False)))
    assert cfg.mixing.streaming is False and network_config(cfg).streaming is False
    with pytest.raises(ConfigError, match=r"mixing\.streaming"):
        load_config(write(folder, _set(base_doc(), "mixing.streaming", "sometimes")))


@pytest.mark.parametrize(("compression", "given", "expected"),
                         [("none", None, 1.0), ("int8", None, 1.0), ("topk:0.01", None, 0.05), ("topk:0.02", None, 0.1),
                          ("topk:0.5", None, 0.1), ("topk:0.01", 0.3, 0.3),
                          ("int8", 0.5, 0.5)])
def test_consensus_step_defaults_to_what_the_compression_converges_with(
        folder: Path, compression: str, given: float | None, expected: float) -> None:
    doc = _set(base_doc(), "mixing.compression", compression)
    if given is not None:
        doc = _set(doc, "mixing.consensus_step", given)
    assert load_config(write(folder, doc)).mixing.consensus_step == expected
