"""Atomic result files: written to a temporary file in the same directory, then renamed."""

from __future__ import annotations

import json
import math
import os
import tempfile


def _clean(obj):
  if isinstance(obj, float) and not math.isfinite(obj):
    return None if math.isnan(obj) else obj
  if isinstance(obj, dict):
    return {str(k): _clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_clean(v) for v in obj]
  if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
    return _clean(obj.item())
  return obj


def atomic_write_text(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj) -> None:
  """JSON with NaN written as null, atomically (a kill never leaves a truncated file)."""
  atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def read_json_list(path: str) -> list:
  """A JSON list written by `atomic_write_json` (e.g. a phase's per-epoch history next to its
  checkpoints), or [] if there is none yet: written atomically, it is absent, never truncated."""
  try:
    with open(path) as f:
      return list(json.load(f))
  except (OSError, ValueError):
    return []


def append_jsonl(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(_clean(obj)) + "\n")
