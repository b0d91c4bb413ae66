"""Atomic, verified checkpoints and the RNG state they carry.

File format (no pickle beyond ``torch.load(weights_only=True)``)::

    b"P2PGAN-CKPT 1\\n"                                  magic and format version
    {"sha256": "<hex>", "length": <bytes>}\\n           JSON header line
    <payload>                                          torch.save() bytes of the state dict

A file is only accepted when the payload length and SHA-256 match its header, so a truncated or
corrupted file is refused with :class:`~p2pgan.errors.CheckpointError` naming the file. Writes go to a
temporary file in the same directory, are fsync'ed, renamed over the target and the directory is
fsync'ed: a crash leaves either the old file or the new one, never half of one.

:class:`CheckpointManager` keeps the last ``keep`` files ``ckpt-<step>.pt`` in one directory plus a
``latest`` pointer (also written atomically); loading falls back to the newest valid file when the
newest one is damaged, and never deletes a damaged file.

A state may hold tensors, ints, floats, bools, strings, None and nested dicts / lists / tuples of them.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pgan.errors import CheckpointError, StorageFullError
from p2pgan.logsafe import printable

MAGIC = b"P2PGAN-CKPT 1\n"
#: the name of the pointer file a :class:`CheckpointManager` keeps next to its checkpoints
LATEST_NAME = "latest"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_MAX_HEADER_BYTES = 4096
#: temp files of :func:`atomic_write_bytes` (``.<name>.<pid>.tmp``); a kill -9 mid-write leaves one behind
_TEMP_RE = re.compile(r"^\..+\.\d+\.tmp$")
#: the lock file that keeps a second daemon out of a checkpoint folder
LOCK_NAME = ".lock"
#: errors of a folder that is full rather than forbidden (no space, quota): a condition that may pass
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


log = logging.getLogger(__name__)


class NonFiniteStateError(CheckpointError):
    """A state to be checkpointed holds NaN or inf values; nothing was written."""


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the file system turned read-only meanwhile: the next FolderClaim removes it
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _check_state(obj: Any, where: str = "state") -> None:
    """Refuse values ``torch.load(weights_only=True)`` could not read back, naming where they are."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} must be a str or int")
            _check_state(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_state(v, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where}: cannot checkpoint a {type(obj).__name__}; allowed: tensors, numbers, strings, None, dict, list"
    )


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every value is finite (a finite sum proves it cheaply; otherwise check exactly)."""
    for t in tensors:
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            return False
    return True


def state_finite(state: Any) -> bool:
    """True when every floating-point tensor anywhere in a (nested) state is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or all_finite(state)
    if isinstance(state, Mapping):
        return all(state_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(state_finite(v) for v in state)
    return True


def encode_checkpoint(state: Mapping[str, Any]) -> bytes:
    """The bytes of a checkpoint file holding ``state`` (header with length and SHA-256, then payload).

    A state holding a non-finite tensor is refused: a NaN model must never replace a healthy checkpoint.
    """
    _check_state(state)
    if not state_finite(state):
        raise NonFiniteStateError("refusing to write a checkpoint of a non-finite state (NaN or inf values)")
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getvalue()
    header = json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}).encode()
    return MAGIC + header + b"\n" + payload


def decode_checkpoint(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Verify and decode checkpoint bytes; :class:`CheckpointError` naming ``source`` if anything is off."""
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{source}: not a p2pgan checkpoint (bad magic; empty or foreign file?)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER_BYTES)
    if end < 0:
        raise CheckpointError(f"{source}: truncated or corrupt checkpoint header")
    try:
        header = json.loads(data[len(MAGIC):end])
        digest, length = str(header["sha256"]), int(header["length"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: corrupt checkpoint header ({exc})") from None
    payload = data[end + 1:]
    if len(payload) != length:
        raise CheckpointError(f"{source}: truncated checkpoint: payload is {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{source}: corrupt checkpoint: SHA-256 of the payload does not match its header")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad payload; the checksum made this unlikely
        raise CheckpointError(f"{source}: checkpoint payload cannot be read ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: checkpoint payload is a {type(state).__name__}, expected a dict")
    return state


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (see the module docstring for the format)."""
    return atomic_write_bytes(path, encode_checkpoint(state))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify the checkpoint at ``path``; :class:`CheckpointError` naming it if missing or damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    return decode_checkpoint(data, str(path))


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """What :meth:`CheckpointManager.load_latest` found: the file, its step, its state, and refused files."""

    path: Path
    step: int
    state: dict[str, Any]
    refused: tuple[tuple[Path, str], ...] = ()


class CheckpointManager:
    """Checkpoints of one run in one directory: ``ckpt-<step>.pt`` files, the newest ``keep`` of them kept.

    ``save(step, state)`` writes the file atomically, then the ``latest`` pointer, then prunes old files.
    ``load_latest()`` returns the newest valid checkpoint (the pointer's target first, then the others by
    step, newest first), reporting any damaged one it skipped, or ``None`` when the directory holds none.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:09d}.pt"

    def steps(self) -> list[int]:
        """Steps of the checkpoint files present (valid or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = (_CKPT_RE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write the checkpoint of ``step`` and point ``latest`` at it; keep the newest ``keep`` files."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        path = save_checkpoint(self.path_for(step), state)
        atomic_write_bytes(self.directory / LATEST_NAME, (path.name + "\n").encode())
        for old in self.steps()[: -self.keep]:
            if old != step:
                try:
                    self.path_for(old).unlink(missing_ok=True)
                except OSError as exc:  # the new checkpoint is written: an old one left over is harmless
                    log.debug("%s: not removed (%s)", self.path_for(old), exc.strerror or exc)
        return path

    def _latest_pointer(self) -> Path | None:
        """The file the ``latest`` pointer names, or None (absent, or garbage: then say so and fall back)."""
        where = self.directory / LATEST_NAME
        try:
            raw = where.read_bytes()
        except OSError:
            return None
        name = raw[:256].decode("utf-8", errors="replace").strip()
        if _CKPT_RE.match(name) and (self.directory / name).is_file():
            return self.directory / name
        log.warning("%s: does not name a checkpoint file here (%s); falling back to the newest valid checkpoint",
                    where, printable(name))
        return None

    def load_latest(self, *, fallback: bool = True) -> LoadedCheckpoint | None:
        """The newest valid checkpoint, or ``None`` if there is none at all.

        With ``fallback=False`` a damaged newest checkpoint raises :class:`CheckpointError` instead of
        falling back to an older one. Damaged files are left in place for inspection and listed in
        :attr:`LoadedCheckpoint.refused` (for the caller's one warning line); a directory whose files are
        all damaged raises :class:`CheckpointError` naming each.
        """
        candidates = [self.path_for(s) for s in reversed(self.steps())]
        pointer = self._latest_pointer()
        if pointer is not None and pointer in candidates:
            candidates.remove(pointer)
            candidates.insert(0, pointer)
        refused: list[tuple[Path, str]] = []
        for path in candidates:
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                if not fallback:
                    raise
                log.debug("refusing checkpoint: %s", exc)
                refused.append((path, str(exc)))
                continue
            step = int(_CKPT_RE.match(path.name).group(1))  # type: ignore[union-attr]
            return LoadedCheckpoint(path, step, state, tuple(refused))
        if refused:
            names = "; ".join(reason for _, reason in refused)
            raise CheckpointError(f"{self.directory}: no valid checkpoint ({names})")
        return None


class FolderClaim:
    """``with FolderClaim(dir):`` one process's exclusive use of a checkpoint folder, checked up front.

    On entry: refuse a path that is a file, create the folder, take an exclusive lock on
    ``<dir>/.lock`` (a second daemon with the same folder gets a one-line :class:`CheckpointError`
    naming the holder's pid), remove temp files left by an interrupted write, and prove the folder is
    writable. So every folder problem shows before training starts, not at the first checkpoint.
    The lock is released on exit (or when the process dies: it is an flock).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    def __enter__(self) -> FolderClaim:
        d = self.directory
        if d.exists() and not d.is_dir():
            raise CheckpointError(f"checkpoint.dir {d} is a file, not a folder; name a folder (it is created if missing)")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            kind = StorageFullError if exc.errno in _FULL_ERRNOS else CheckpointError
            raise kind(f"checkpoint.dir {d}: cannot create the folder ({exc.strerror or exc})") from None
        self._lock()
        try:
            for p in d.iterdir():
                if _TEMP_RE.match(p.name):
                    p.unlink(missing_ok=True)
                    log.warning("%s: removed a stale temporary file of an interrupted checkpoint write", p)
            probe = d / ".write-probe"
            try:
                atomic_write_bytes(probe, b"")
                probe.unlink()
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:  # may pass (exit 75): the operator frees space, the daemon retries
                    raise StorageFullError(f"checkpoint.dir {d}: {exc.strerror or exc}; free some space there "
                                           "(or choose another folder)") from None
                raise CheckpointError(f"checkpoint.dir {d} is not writable ({exc.strerror or exc}); fix its "
                                      "permissions or choose another folder") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _lock(self) -> None:
        import fcntl

        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            kind = StorageFullError if exc.errno in _FULL_ERRNOS else CheckpointError
            raise kind(f"checkpoint.dir {self.directory} is not writable ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                f"checkpoint.dir {self.directory} is in use by another p2pgan process (pid {holder}); stop that "
                "daemon, or give this one its own peer id and checkpoint.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python's random, as checkpointable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA states only where CUDA is in use)."""
    try:
        torch.set_rng_state(state["torch"])
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"RNG state in checkpoint is malformed ({exc})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
