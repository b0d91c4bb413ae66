"""The command line as a user meets it: help without torch, logging options anywhere, one-line errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p2pgan import cli, logs
from p2pgan.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

_HELP_PROBE = """
import sys, contextlib, io
from p2pgan import cli
out = {}
for argv in ([], *[[name] for name in cli.COMMANDS]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
    out[" ".join(argv)] = buf.getvalue()
import json
print(json.dumps({"torch": "torch" in sys.modules, "help": out}))
"""


def test_help_never_imports_torch_and_is_plain_text_with_examples() -> None:
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(proc.stdout)
    assert result["torch"] is False  # `p2pgan --help` and every `COMMAND --help` stay fast
    for argv, text in result["help"].items():
        assert text.startswith("usage: p2pgan"), argv
        assert "``" not in text and ":class:" not in text and ":func:" not in text, argv
        assert "example" in text.lower(), f"`p2pgan {argv} --help` shows no example"
        assert "--log-level" in text, argv


def test_topology_help_example_file_exists() -> None:
    assert (Path(__file__).resolve().parents[1] / "peers" / "graph.yaml").is_file()
    doc = cli.plain(__import__("p2pgan.commands.topology", fromlist=["x"]).__doc__)
    assert "peers/graph.yaml" in doc


def _pem(tmp_path: Path) -> Path:
    from p2pgan.security.certs import make_federation

    return make_federation(tmp_path / "fed", "demo", ["alice"])["alice"].cert


def test_logging_options_work_after_the_subcommand_and_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = str(_pem(tmp_path))
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    assert cli.main(["certs", "show", pem, "-vv"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert cli.main(["--log-level", "info", "certs", "show", pem, "--log-level", "error"]) == 0
    assert logging.getLogger().level == logging.ERROR  # the later one wins
    monkeypatch.setenv(logs.LEVEL_ENV, "info")
    assert cli.main(["certs", "show", pem]) == 0
    assert logging.getLogger().level == logging.INFO
    assert cli.main(["certs", "show", pem, "--log-level", "critical"]) == 0  # a flag beats the environment
    assert logging.getLogger().level == logging.CRITICAL
    monkeypatch.setenv(logs.LEVEL_ENV, "loud")
    capsys.readouterr()
    assert cli.main(["certs", "show", pem]) == 2
    assert capsys.readouterr().err.strip() == (
        "p2pgan: error: P2PGAN_LOG_LEVEL: 'loud' is not a log level; allowed: debug, info, warning, error, critical")


def test_json_log_lines(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    level, fmt = logs.resolve(None, "json", 1, env={})
    logs.configure(level, fmt, stream)
    logging.getLogger("p2pgan.test").info("step %d of %d", 3, 10)
    logging.getLogger("p2pgan.test").debug("hidden at -v")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("p2pgan.test").exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("info", "p2pgan.test", "step 3 of 10"), ("error", "p2pgan.test", "failed")]
    assert "ValueError: boom" in lines[1]["exception"] and lines[0]["time"].endswith("+00:00")
    with pytest.raises(ConfigError, match="--log-format: 'xml' is not a log format"):
        logs.resolve(None, "xml", 0, env={})


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> None:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    _one_line_error(capsys, ["certs", "init", "--out", str(a_file / "ca"), "--federation", "demo"], "--out", "Not a directory")
    ca = tmp_path / "ca"
    assert cli.main(["certs", "init", "--out", str(ca), "--federation", "demo"]) == 0
    _one_line_error(capsys, ["certs", "init", "--out", str(ca), "--federation", "demo"], "already exist", "--force")
    assert "force=True" not in capsys.readouterr().err
    _one_line_error(capsys, ["certs", "issue", "--ca", str(ca), "--peer", "bob", "--out", str(a_file / "bob")], "--out")
    _one_line_error(capsys, ["harness", "--peers", "2", "--steps", "2", "--out", str(a_file / "run")],
                    "--out", "Not a directory")
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"peers": {"id": "alice", "federation": "demo"}}))
    _one_line_error(capsys, ["peer", "--config", str(config)], "peers: unknown section (did you mean 'peer'?)")


def test_zeroconf_on_a_wildcard_address_names_the_real_field() -> None:
    from p2pgan.discovery.mdns import ZeroconfDiscovery
    from p2pgan.errors import ConfigError
    from p2pgan.wire.config import NetworkConfig

    net = NetworkConfig(federation="demo", peer_id="alice", listen_host="0.0.0.0", insecure=True, discovery="zeroconf")
    with pytest.raises(ConfigError, match=r"^peer\.advertise: "):  # a mistake to fix: exit 2, not 75
        ZeroconfDiscovery(net, port=7000)


@pytest.mark.timeout(120)
def test_set_overrides_are_validated_like_the_file_and_named_in_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon_helpers import federation

    from p2pgan.daemon.config import load_config

    config = federation(tmp_path, 1).configs["peer0"]
    cfg = load_config(config, ["train.steps=500", "mixing.rounds=2", "train.betas=[0.0, 0.99]"])
    assert (cfg.train.steps, cfg.mixing.rounds, cfg.train.betas) == (500, 2, (0.0, 0.99))
    assert load_config(config).train.steps == 40  # the file itself is untouched
    _one_line_error(capsys, ["peer", "--config", str(config), "--set", "train.steps=-5"],
                    "--set train.steps=-5: train.steps: must be")
    _one_line_error(capsys, ["peer", "--config", str(config), "--set", "train.stepz=5"],
                    "--set train.stepz=5: train.stepz: unknown field (did you mean 'steps'?)")
    _one_line_error(capsys, ["peer", "--config", str(config), "--set", "peers.id=x"],
                    "--set peers.id=x: peers: unknown section (did you mean 'peer'?)")
    _one_line_error(capsys, ["peer", "--config", str(config), "--set", "mixing"], "--set mixing: must be SECTION.FIELD=VALUE")


_LIGHT_PROBE = """
import json, sys
from p2pgan import cli
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(cli.main(argv))
    except SystemExit as exc:
        codes.append(exc.code)
    if "torch" in sys.modules:
        print(json.dumps({"torch_after": argv, "codes": codes}))
        break
else:
    print(json.dumps({"torch_after": None, "codes": codes}))
"""


def test_light_commands_never_import_torch(tmp_path: Path) -> None:
    """`certs`, `status` and `topology` touch no tensor: each runs in a fresh process without torch."""
    from daemon_helpers import federation

    fed = federation(tmp_path / "run", 2)  # a real config and certificates; no daemon runs
    fed_dir = tmp_path / "fed"
    runs = [
        ["certs", "init", "--out", str(fed_dir / "ca"), "--federation", "demo"],
        ["certs", "issue", "--ca", str(fed_dir / "ca"), "--peer", "alice", "--out", str(fed_dir / "alice")],
        ["certs", "show", str(fed_dir / "alice" / "peer.pem")],
        ["topology", "ring", "--peers", "8"],
        ["topology", "one-peer-exponential", "--peers", "16", "--sigma", "1", "--batch-size", "8", "--json"],
        ["topology", str(Path(__file__).resolve().parents[1] / "peers" / "graph.yaml"), "--peers", "6"],
        ["status", "--config", str(fed.configs["peer0"]), "--timeout", "1"],
    ]
    proc = subprocess.run([sys.executable, "-c", _LIGHT_PROBE, json.dumps(runs)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch_after"] is None, f"`p2pgan {' '.join(result['torch_after'])}` imported torch"
    assert result["codes"][:6] == [0] * 6, proc.stderr
    assert result["codes"][6] != 0 and "Traceback" not in proc.stderr  # nobody is running: a clear answer
