"""The systemd unit in peers/: hardened (systemd-analyze security, when installed) and consistent with the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from p2pgan import cli
from p2pgan.errors import CheckpointError, ConfigError, DiscoveryError, PeerUnavailableError
from p2pgan.security.certs import check_key_file, make_federation

UNIT = Path(__file__).resolve().parents[1] / "peers" / "p2pgan-peer@.service"
README = UNIT.with_name("README.md")
#: the exposure the issue asks for at most (systemd-analyze's 0-10 scale; "OK" starts below 4.0)
MAX_EXPOSURE = 3.0


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_restarts_only_what_a_restart_can_fix() -> None:
    s = _settings()
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == [str(cli.EXIT_USAGE)]
    assert cli.exit_status(ConfigError("x")) == cli.exit_status(CheckpointError("x")) == cli.EXIT_USAGE
    assert cli.exit_status(PeerUnavailableError("x")) == cli.exit_status(DiscoveryError("x")) == cli.EXIT_TEMPFAIL
    assert cli.EXIT_TEMPFAIL != cli.EXIT_USAGE
    assert s["StartLimitBurst"] and s["StartLimitIntervalSec"]  # never a restart loop forever
    # the exit statuses the unit's notes and the README's table name are the CLI's
    notes = UNIT.read_text()
    assert f"exits with status {cli.EXIT_USAGE} and\n# is NOT restarted" in notes
    assert f"exits {cli.EXIT_TEMPFAIL}" in notes
    table = README.read_text().split("## Exit statuses", 1)[1]
    for code in (0, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_TEMPFAIL, cli.EXIT_INTERRUPTED):
        assert f"\n| {code} | " in table, code


def _key_instructions(text: str, prefix: str) -> tuple[str, int]:
    """The owner (``chown USER[:GROUP] ...key``) and the mode (``chmod MODE ...key``) the notes give the key."""
    lines = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
    owner = re.findall(r"chown (\w+)(?::\w+)? \S+\.key", "\n".join(lines))
    mode = re.findall(r"chmod (0?[0-7]{3}) \S+\.key", "\n".join(lines))
    assert len(owner) == 1 and len(mode) == 1, (owner, mode)
    return owner[0], int(mode[0], 8)


@pytest.mark.parametrize(("doc", "prefix"), [(UNIT, "#"), (README, "       ")], ids=["unit", "README"])
def test_key_setup_notes_agree_with_the_daemons_key_check(tmp_path: Path, doc: Path, prefix: str) -> None:
    """The notes' chown / chmod of the key, applied to a real key, pass the daemon's own check; the
    group-readable 0640 of old notes and a key of another owner are refused with the command to run."""
    owner, mode = _key_instructions(doc.read_text(), prefix)
    assert owner == _settings()["User"][0], "the key belongs to the user the unit runs the daemon as"
    key = make_federation(tmp_path, "unit", ["alice"])["alice"].key  # owned by us: we play the service user
    os.chmod(key, mode)
    check_key_file(key)
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match=r"mode 0640.*chmod 600"):
        check_key_file(key)
    if os.geteuid() == 0:  # only root can give a file away
        os.chmod(key, mode)
        os.chown(key, 65534, -1)
        with pytest.raises(ConfigError, match=r"is owned by .*uid 65534.*this daemon runs as .*chown "):
            check_key_file(key)


def test_unit_gives_the_daemon_writable_state_and_cache_folders() -> None:
    s = _settings()
    assert s["StateDirectory"] == ["p2pgan/%i"] and s["CacheDirectory"] == ["p2pgan"]
    env = " ".join(s["Environment"])
    assert "P2PGAN_CACHE=/var/cache/p2pgan" in env  # the classifier cache, not the read-only home folder
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["true"] and s["NoNewPrivileges"] == ["true"]
    assert s["User"] == ["p2pgan"] and "useradd --system" in UNIT.read_text()  # a documented user
    exec_start = s["ExecStart"][0].split()
    assert exec_start[1:5] == ["peer", "--config", "/etc/p2pgan/%i.yaml", "--resume"]
    args = cli.build_parser("peer").parse_args(exec_start[1:])  # the unit's command line parses
    assert args.log_format == "json" and args.resume


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt install systemd)")
@pytest.mark.timeout(120)
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    instance = tmp_path / "p2pgan-peer@alice.service"  # a template is analysed as one of its instances
    shutil.copyfile(UNIT, instance)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(instance)],
                          capture_output=True, text=True, timeout=100)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_unit_waits_for_the_daemons_readiness() -> None:
    """Type=notify: started means SERVING (the daemon sends READY=1, tests/test_sdnotify.py), with a start
    timeout above the daemon's own wait for its members (after which it exits 75 and is retried)."""
    from p2pgan.wire.config import NetworkConfig

    s = _settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert float(s["TimeoutStartSec"][0]) > NetworkConfig(federation="f", peer_id="p").connect_timeout_s
