"""The YAML-walking mechanism: :class:`_Section` reads one mapping's fields with typed getters.

It knows nothing of p2pgan's sections (:mod:`.sections` does); it makes every error name the file, the
field as a dotted path and what is allowed, and reports a key that no getter asked for (with a
did-you-mean).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pgan.errors import ConfigError, config_error
from p2pgan.security.certs import check_name

_REQUIRED = object()


class _Section:
    """Reads the fields of one mapping, remembering which were used so unknown ones can be reported."""

    def __init__(self, source: str, prefix: str, mapping: object, base_dir: Path) -> None:
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise config_error(source, prefix or "(top level)", f"must be a mapping of fields, got {_kind(mapping)}")
        for key in mapping:
            if not isinstance(key, str):
                raise config_error(source, self._join(prefix, str(key)), "field names must be strings")
        self.source = source
        self.prefix = prefix
        self.base_dir = base_dir
        self._data: dict[str, Any] = dict(mapping)
        self._allowed: list[str] = []

    @staticmethod
    def _join(prefix: str, key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def field(self, key: str) -> str:
        return self._join(self.prefix, key)

    def error(self, key: str, problem: str) -> ConfigError:
        return config_error(self.source, self.field(key), problem)

    def has(self, key: str) -> bool:
        self._allowed.append(key)
        return self._data.get(key) is not None

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        self._allowed.append(key)
        value = self._data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        return value

    def missing(self, key: str, default: Any) -> bool:
        """True when ``key`` is absent and has a default (the typed readers then return the default as is)."""
        return not self.has(key) and default is not _REQUIRED

    def section(self, key: str) -> _Section:
        self._allowed.append(key)
        return _Section(self.source, self.field(key), self._data.get(key), self.base_dir)

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_kind(value)}")
        return value

    def name(self, key: str) -> str:
        """A peer id or federation name (they become certificate identities and DNS labels)."""
        value = self.string(key)
        try:
            return check_name(value, key.replace("id", "peer id"))
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if not isinstance(value, str) or value not in allowed:
            hint = _did_you_mean(str(value), allowed)
            raise self.error(key, f"{value!r} is not allowed{hint}; allowed: {', '.join(allowed)}")
        return value

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_kind(value)}")
        _check_range(self, key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, minimum: float | None = None, positive: bool = False) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                raise self.error(key, f"must be a number, got the string {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.error(key, f"must be a number, got {_kind(value)}")
        if positive and value <= 0:
            raise self.error(key, f"must be > 0, got {value}")
        _check_range(self, key, value, minimum, None)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def path(self, key: str, default: Any = _REQUIRED, *, must_exist: bool = False) -> Any:
        value = self.string(key, default)
        if value is None:
            return None
        p = self.resolve(value)
        if must_exist and not p.exists():
            raise self.error(key, f"{p} does not exist")
        return p

    def resolve(self, value: str) -> Path:
        """``value`` as a path: ``~`` expanded, relative to the directory of the YAML file."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def check_known(self, names: tuple[str, ...], what: str = "field") -> None:
        """Raise on a key outside ``names`` before any is read (an unknown section, named as such)."""
        for key in self._data:
            if key not in names:
                raise self.error(key, f"unknown {what}{_did_you_mean(key, list(names))}; allowed: {', '.join(names)}")

    def done(self) -> None:
        """Raise on the first key that no reader asked for (a typo or a field that does not exist)."""
        for key in self._data:
            if key not in self._allowed:
                hint = _did_you_mean(key, self._allowed)
                allowed = ", ".join(sorted(set(self._allowed)))
                raise self.error(key, f"unknown field{hint}; allowed here: {allowed}")


def _check_range(sec: _Section, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise sec.error(key, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise sec.error(key, f"must be <= {maximum}, got {value}")


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (Mapping, list)):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(options)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_address(sec: _Section, key: str, default: str) -> tuple[str, int]:
    value = sec.string(key, default)
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise sec.error(key, f"{value!r} is not HOST:PORT with a port in 0..65535 (0 = any free port)")
    return host, int(port_text)
