"""Every `p2pgan ...` command in README.md and peers/README.md runs as written.

All of them must parse with the real command line (a missing required flag fails here); the cheap ones
(every --help, `certs`, `topology`) are run, in the order a reader meets them, each README in its own
empty folder (relative paths such as fed/ca land there). Templates (FILE, KIND, `...`, [--json],
alternatives with |) are not commands and are left out.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgan import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "peers/README.md")

pytestmark = pytest.mark.timeout(240)

_INLINE = re.compile(r"`(p2pgan [^`]+)`")
_TEMPLATE = re.compile(r"\.\.\.|\[|\]|\||<|>|\b(FILE|KIND|DIR|M|LEVEL)\b")


def commands(doc: str) -> list[str]:
    """The `p2pgan` commands of a Markdown file: indented code lines (joined over trailing backslashes,
    comments dropped) and inline code, in the order they appear; templates left out."""
    text = (ROOT / doc).read_text()
    found: list[tuple[int, str]] = []
    lines = text.splitlines(keepends=True)
    offset, i = 0, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if line.startswith("    ") and stripped.startswith("p2pgan "):
            start = offset
            command = stripped
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                offset += len(lines[i - 1])
                command = command[:-1] + " " + lines[i].strip()
            found.append((start, command.split(" #", 1)[0].strip()))
        offset += len(line)
        i += 1
    for m in _INLINE.finditer(text):
        found.append((m.start(), " ".join(m.group(1).split())))
    # a bare `p2pgan peer` in a sentence names the command; it is not one to run
    return [c for _, c in sorted(found) if not _TEMPLATE.search(c) and len(c.split()) > 2 or c == "p2pgan --help"]


def _cheap(argv: list[str]) -> bool:
    return "--help" in argv or argv[1] in ("certs", "topology")


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_docs_parses(doc: str) -> None:
    found = commands(doc)
    assert len(found) >= 8, found  # the extraction itself works
    for command in found:
        argv = shlex.split(command)
        assert argv[1] in cli.COMMANDS or argv[1:] == ["--help"], f"{doc}: `{command}`: no such command"
        try:
            cli.build_parser(argv[1]).parse_args(argv[1:])
        except SystemExit as exc:
            if "--help" not in argv:
                raise AssertionError(f"{doc}: `{command}` does not parse as written (exit {exc.code})") from None


@pytest.mark.parametrize("doc", DOCS)
def test_the_cheap_commands_in_the_docs_run_as_written(doc: str, tmp_path: Path) -> None:
    ran = []
    for command in commands(doc):
        argv = shlex.split(command)
        if not _cheap(argv):
            continue
        proc = subprocess.run([sys.executable, "-m", "p2pgan", *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{doc}: `{command}` failed:\n{proc.stderr[-2000:]}"
        ran.append(command)
    assert any(" certs init " in c for c in ran) and any(" certs issue " in c for c in ran), ran


def test_the_docs_install_from_the_checkout() -> None:
    """p2pgan is not on a package index: an install command names the checkout ('.'), never 'p2pgan[...]'."""
    for doc in (*DOCS, *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "peers").glob("*.yaml")))):
        text = (ROOT / doc).read_text()
        assert not re.search(r"pip install ['\"]?p2pgan", text), doc
