"""Certificate tooling (CLI and API) and the YAML roster."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from p2pgan import cli
from p2pgan.discovery.roster import load_roster
from p2pgan.errors import ConfigError
from p2pgan.security.certs import fingerprint, identity_dns, peer_identity


@pytest.fixture
def certs_cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "COMMANDS", {"certs": cli.COMMANDS["certs"]})
    return lambda *argv: cli.main(["certs", *argv])


@pytest.mark.timeout(60)
def test_certs_cli_init_and_issue(tmp_path: Path, certs_cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_cli("init", "--out", str(tmp_path / "ca"), "--federation", "demo") == 0
    assert certs_cli("issue", "--ca", str(tmp_path / "ca"), "--peer", "alice", "--out", str(tmp_path / "alice"),
                     "--host", "alice.example", "--ip", "10.0.0.7") == 0
    out = capsys.readouterr().out
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "alice" / "peer.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pem = (tmp_path / "alice" / "peer.pem").read_bytes()
    assert peer_identity(pem) == ("demo", "alice")
    assert fingerprint(pem) in out
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {identity_dns("demo", "alice"), "alice.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    # the peer certificate chains to the CA
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    # refusing to overwrite, bad names and a missing CA are one-line errors (exit 2), not tracebacks
    assert certs_cli("init", "--out", str(tmp_path / "ca"), "--federation", "demo") == 2
    assert certs_cli("issue", "--ca", str(tmp_path / "ca"), "--peer", "Bad Name", "--out", str(tmp_path / "x")) == 2
    assert certs_cli("issue", "--ca", str(tmp_path / "nope"), "--peer", "bob", "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "not allowed" in err and "not a federation CA directory" in err


def test_roster_loads_and_names_bad_fields(tmp_path: Path) -> None:
    good = tmp_path / "roster.yaml"
    good.write_text(
        "federation: demo\npeers:\n"
        "  - {id: bob, address: '10.0.0.2:7001'}\n"
        f"  - {{id: alice, host: 10.0.0.1, port: 7000, fingerprint: '{'AB:' * 31}AB'}}\n"
    )
    r = load_roster(good)
    assert r.federation == "demo" and r.members == ("alice", "bob")
    assert r.peers[0].port == 7001 and r.peers[1].fingerprint == "ab" * 32
    cases = {
        "federation: demo\npeers: []\n": "peers",
        "federation: demo\npeers:\n  - {id: a, host: h, port: 99999}\n": "peers[0].port",
        "federation: demo\npeers:\n  - {id: a, port: 1}\n": "peers[0].host",
        "federation: demo\npeers:\n  - {id: a, host: h, port: 1}\n  - {id: a, host: h, port: 2}\n": "peers[1].id",
        "federation: demo\npeers:\n  - {id: a, host: h, port: 1, fingerprint: xyz}\n": "peers[0].fingerprint",
        "federation: demo\npeers:\n  - {id: a, host: h, port: 1, colour: red}\n": "peers[0].colour",
        "federation: Demo!\npeers:\n  - {id: a, host: h, port: 1}\n": "federation",
        "peers: [\n": "not valid YAML",
    }
    for text, field in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_roster(bad)
        assert str(bad) in str(info.value) and field in str(info.value)
