"""The audit record a peer writes when ``privacy.audit_dir`` is set (off by default).

Per step, in ``audit_dir``:

- ``sent.f32``: the discriminator part of the vector this peer sent its neighbours (raw little-endian
  float32 rows of ``dim_v``; what any neighbour receives);
- ``mixed.f32``: the discriminator part of what it mixed from its neighbours' vectors and its own. A
  neighbour that knows the vectors this peer mixed (the M = 2 seat, or both ring neighbours colluding,
  with the public weights) computes it exactly; the record saves the audit from replaying the mixing;
- ``steps.jsonl``: one line per step: ``step``, ``batch`` (the indices of the real minibatch: the
  audit's ground truth, PRIVATE) and ``canary`` (whether the canary was inserted; the ground truth of
  the canary audit).

Raw float rows and JSON lines: no pickle; the audit reads them with numpy's ``fromfile``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

#: the files of an audit record
SENT, MIXED, STEPS = "sent.f32", "mixed.f32", "steps.jsonl"


class AuditRecorder:
    """Appends one row per step to an audit record (a context manager; files flushed each step)."""

    def __init__(self, folder: Path, dim_u: int, dim_v: int, *, resume: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim_u, self.dim_v = int(dim_u), int(dim_v)
        mode = "ab" if resume else "wb"
        self._sent = open(self.folder / SENT, mode)
        self._mixed = open(self.folder / MIXED, mode)
        self._steps = open(self.folder / STEPS, "a" if resume else "w", encoding="utf-8")
        meta = {"dim_u": self.dim_u, "dim_v": self.dim_v, "dtype": "float32", "byteorder": "little"}
        (self.folder / "meta.json").write_text(json.dumps(meta) + "\n")

    def _row(self, row: torch.Tensor) -> bytes:
        v = row.reshape(-1)[self.dim_u:].detach().to("cpu", torch.float32).contiguous()
        return v.numpy().astype("<f4", copy=False).tobytes()

    def write(self, step: int, sent: torch.Tensor, mixed: torch.Tensor, batch: torch.Tensor,
              canary: bool | None) -> None:
        self._sent.write(self._row(sent))
        self._mixed.write(self._row(mixed))
        line: dict[str, Any] = {"step": int(step), "batch": [int(i) for i in batch.reshape(-1).tolist()],
                                "canary": canary}
        self._steps.write(json.dumps(line) + "\n")
        for f in (self._sent, self._mixed, self._steps):
            f.flush()

    def close(self) -> None:
        for f in (self._sent, self._mixed, self._steps):
            f.close()

    def __enter__(self) -> AuditRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
