"""Operator mistakes give one-line errors (issue 9 cases 5 and 6): TLS files, checkpoint folders, a second
daemon with the same config or the same id, ``certs show`` on a non-certificate."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from daemon_helpers import federation, running, wait_for_text

from p2pgan import cli
from p2pgan.checkpoint import CheckpointManager, FolderClaim
from p2pgan.errors import CheckpointError, ConfigError
from p2pgan.security.certs import check_own_tls, load_ca, make_federation

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tls(tmp_path: Path):
    return make_federation(tmp_path / "fed", "ops", ["alice", "bob"])


def test_good_files_pass(tls) -> None:
    check_own_tls(tls["alice"], "ops", "alice")


def test_private_key_readable_by_others_is_refused_with_the_chmod(tls) -> None:
    key = tls["alice"].key
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=rf"mode 0644.*chmod 600 {key}"):
        check_own_tls(tls["alice"], "ops", "alice")


def test_key_of_another_certificate_is_refused(tls) -> None:
    files = tls["alice"]
    files.key.write_bytes(tls["bob"].key.read_bytes())
    with pytest.raises(ConfigError, match=r"security.key: .* does not match the certificate"):
        check_own_tls(files, "ops", "alice")


@pytest.mark.parametrize("field", ["cert", "ca"])
def test_non_pem_certificate_or_ca_is_named(tls, field: str) -> None:
    path = getattr(tls["alice"], field)
    path.write_text("this is not a certificate\n")
    with pytest.raises(ConfigError, match=rf"security.{field}: {path} is not a PEM certificate"):
        check_own_tls(tls["alice"], "ops", "alice")


def test_certificate_of_another_peer_is_refused(tls) -> None:
    with pytest.raises(ConfigError, match=r"certificate of peer 'bob' .* peer.id 'alice'"):
        check_own_tls(tls["bob"], "ops", "alice")


def test_expired_own_certificate_is_refused(tls, tmp_path: Path) -> None:
    ca_cert, ca_key, _ = load_ca(tmp_path / "fed" / "ca")
    files = tls["alice"]
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    old = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(ca_cert.subject)
           .public_key(cert.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(past).not_valid_after(past + datetime.timedelta(days=1)))
    for ext in cert.extensions:
        old = old.add_extension(ext.value, ext.critical)
    files.cert.write_bytes(old.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"expired on 2020-01-02"):
        check_own_tls(files, "ops", "alice")


def test_certs_show_on_a_non_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# hello\n")
    assert cli.main(["certs", "show", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a certificate" in err and len(err.splitlines()) == 1


def test_certs_show_on_a_peer_certificate(tls, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["certs", "show", str(tls["alice"].cert)]) == 0
    out = capsys.readouterr().out
    assert "peer 'alice' of federation 'ops'" in out and "fingerprint sha256:" in out


# -- checkpoint folders --------------------------------------------------------------------------------
def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        FolderClaim(f).__enter__()


def test_folder_lock_stale_temp_files_and_garbage_latest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    d = tmp_path / "state"
    manager = CheckpointManager(d, keep=3)
    manager.save(5, {"x": torch.ones(2)})
    manager.save(7, {"x": torch.ones(2) * 7})
    stale = d / ".ckpt-000000009.pt.4242.tmp"  # what kill -9 during a write leaves
    stale.write_bytes(b"half")
    (d / "latest").write_bytes(b"\xff\xfe garbage \x00" * 10)
    with FolderClaim(d):
        assert not stale.exists()
        with pytest.raises(CheckpointError, match=r"in use by another p2pgan process \(pid \d+\)"):
            FolderClaim(d).__enter__()
        caplog.set_level(logging.WARNING)
        loaded = manager.load_latest(fallback=False)
        assert loaded is not None and loaded.step == 7
        assert "does not name a checkpoint file" in caplog.text
    with FolderClaim(d):  # released on exit
        pass


# -- a second daemon ----------------------------------------------------------------------------------
def _start_second(config: Path, log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pgan", "peer", "--config", str(config)], capture_output=True,
                          text=True, timeout=90, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


@pytest.mark.timeout(240)
def test_same_config_twice_and_same_id_elsewhere_are_refused(tmp_path: Path) -> None:
    """Case 5: the same config started twice, and the same id on another port with its own folder."""
    fed = federation(tmp_path, 1, steps=100000, checkpoint_interval=100000)
    config = fed.configs["peer0"]
    with running(fed) as group:
        peer = group.by_name("peer0")
        wait_for_text(peer.spec.log, "rank 0 of", 90)
        twice = _start_second(config, tmp_path / "twice.log")
        assert twice.returncode == 2
        assert "in use by another p2pgan process" in twice.stderr and "Traceback" not in twice.stderr
        other = yaml.safe_load(config.read_text())
        other["peer"]["listen"] = "127.0.0.1:0"
        other["checkpoint"] = {**other.get("checkpoint", {}), "dir": str(tmp_path / "state2")}
        other["metrics"] = {"path": str(tmp_path / "state2" / "metrics.jsonl")}
        other_cfg = config.with_name("peer0-again.yaml")
        other_cfg.write_text(yaml.safe_dump(other))
        again = _start_second(other_cfg, tmp_path / "again.log")
        assert again.returncode == 2
        assert "another daemon already runs as peer 'peer0'" in again.stderr and "Traceback" not in again.stderr
        peer.signal(signal.SIGTERM)
        group.wait(90)
