"""Atomic result files (written to a temporary file in the same directory, then renamed) and the
workdir lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sys
import tempfile

from jax_unlearn.errors import WorkdirBusyError

__all__ = ["atomic_write_text", "atomic_write_json", "read_json_list", "read_json", "append_jsonl",
           "workdir_lock"]


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
  """Writes `text` to `path` atomically (a temporary file in the same directory, then a rename)."""
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
  """Appends `obj` as one JSON line to `path` (NaN as null, numpy scalars as numbers)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(_clean(obj)) + "\n")


def read_json(path: str, default=None):
  """The JSON in `path`, or `default` when it is missing or unreadable (truncated, not JSON)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


_HELD: dict[str, list] = {}  # workdir -> [open lock file, depth]: the lock is re-entrant per process


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds `workdir/.lock` (an exclusive `flock`, with the owner's pid and command line in the file)
  for the duration: a second process on the same workdir stops with one line instead of training into
  the same checkpoints. The kernel drops the lock when its process dies, so a killed run's lock is
  taken over by the next one."""
  workdir = os.path.abspath(workdir)
  held = _HELD.get(workdir)
  if held is not None:
    held[1] += 1
    try:
      yield
    finally:
      held[1] -= 1
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, ".lock")
  f = open(path, "a+")  # noqa: SIM115 (held open for the lifetime of the lock)
  try:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    owner = f.read().strip().splitlines()
    f.close()
    who = f"process {owner[0]}" + (f" ({owner[1][:120]})" if len(owner) > 1 else "") if owner else \
        "another process"
    raise WorkdirBusyError(f"workdir {workdir} is in use by {who}; wait for it to finish or pass "
                           "another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"{os.getpid()}\n{' '.join(sys.argv)}\n")
  f.flush()
  _HELD[workdir] = [f, 1]
  try:
    yield
  finally:
    _HELD.pop(workdir, None)
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()
