"""The one resumable loop: every long phase of the library runs through `run_chunks`.

A phase (supervised training, distillation, BGD preparation, DiStruction forgetting, MIA-II shadow and
population models, relearning for AIN, repair baselines) is a sequence of *chunks* — an epoch, or a
`lax.scan` over a block of steps — each computed by a `chunk_fn(state, i) -> (state, record)` that
holds the jitted work. The loop owns every side effect around it:

* **Checkpoints** (orbax, `train.checkpoint.Checkpointer`): after every `every` chunks and after the
  last one, `{state, chunk, done}` is saved, the per-chunk records first (`history.json`), so a killed
  run started again resumes at the last saved chunk and ends with exactly the state and history of an
  uninterrupted one (chunk functions must be deterministic in (state, i): keys from `fold_in`).
* **Fingerprint**: the checkpoint directory records what the run was computed from
  (`train.fingerprint`); a directory written by other inputs is never resumed (CheckpointError).
* **NaN/inf guard**: after each chunk `guard(state, record)` (default: every float leaf of the state and
  the record's `finite_keys` are finite) may name a problem; the loop then stops with a
  `NumericalError` naming the phase, the chunk, the last good checkpoint (kept) and the fix.
* **Progress**: one line per chunk (`progress(i, record)`), with elapsed time and time left.
* **Early stop**: `until(state, record)` ends the phase after a chunk (saved as done).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jax_unlearn.errors import CheckpointError, NumericalError
from jax_unlearn.io import atomic_write_json, read_json_list
from jax_unlearn.train.checkpoint import Checkpointer

__all__ = ["run_chunks", "all_finite", "finite_guard"]

ChunkFn = Callable[[Any, int], tuple[Any, dict]]


def all_finite(tree: Any) -> bool:
  """True if every floating-point leaf of `tree` is finite (integer and key leaves are skipped)."""
  for x in jax.tree.leaves(tree):
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and not bool(jnp.all(jnp.isfinite(x))):
      return False
  return True


def finite_guard(finite_keys: tuple[str, ...] = (), check: Callable[[Any], Any] | None = None
                 ) -> Callable[[Any, dict], str | None]:
  """The default guard: the record's `finite_keys` (None allowed) and `check(state)` (default the whole
  state) must be finite. Returns a function `(state, record) -> problem or None`."""
  def guard(state, record):
    for k in finite_keys:
      v = record.get(k)
      if v is not None and not math.isfinite(float(v)):
        return f"{k} became {v}"
    if not all_finite(state if check is None else check(state)):
      return "a parameter became NaN/inf"
    return None
  return guard


# Fault injection for the kill-and-resume tests: "phase:chunk" SIGKILLs this process right after chunk
# `chunk` (1-based) of `phase` has been computed and saved; "phase:chunk:unsaved" before it is saved.
_FAULT_ENV = "JAX_UNLEARN_KILL_AT"


def _maybe_kill(phase: str, done: int, saved: bool) -> None:
  parts = os.environ.get(_FAULT_ENV, "").split(":")
  if len(parts) < 2 or parts[0] != phase or parts[1] != str(done):
    return
  if (len(parts) > 2 and parts[2] == "unsaved") != saved:
    os.kill(os.getpid(), signal.SIGKILL)


def _check_fingerprint(directory: str, fingerprint: dict | None) -> None:
  if fingerprint is None:
    return
  path = os.path.join(directory, "fingerprint.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        stored = json.load(f)
    except (OSError, ValueError):
      stored = None
    if stored != json.loads(json.dumps(fingerprint)):
      raise CheckpointError(f"checkpoint {directory} was written for other inputs (its fingerprint.json "
                            "differs from this run's); delete that directory or use another --workdir")
  else:
    atomic_write_json(path, fingerprint)


def run_chunks(chunk_fn: ChunkFn, state: Any, num_chunks: int, *, phase: str, ckpt_dir: str | None = None,
               every: int = 1, fingerprint: dict | None = None,
               guard: Callable[[Any, dict], str | None] | None = None, fix: str = "",
               progress: Callable[[int, dict], str] | None = None,
               until: Callable[[Any, dict], bool] | None = None, unit: str = "epoch",
               save_when: Callable[[int], bool] | None = None,
               log: Callable[[str], None] = print) -> tuple[Any, list[dict]]:
  """Runs chunks `0 .. num_chunks-1` of a phase from `state` (or from its checkpoint); see the module
  docstring. Returns (final state, one record per chunk run, resumed ones included).

  Args:
    chunk_fn: `(state, i) -> (state, record)`; the record is a JSON-able dict (host values).
    state: the initial state pytree; also the restore target (shapes and dtypes) of a checkpoint.
    phase: the name in progress lines and errors, e.g. 'original' or 'ispf'.
    ckpt_dir: where to checkpoint (None: not resumable); `every` > 0 chunks between saves.
    fingerprint: what the run is computed from; stored beside the checkpoint and checked on resume.
    guard: `(state, record) -> problem | None` (default `finite_guard()`); `fix` ends the error line.
    progress: `(i, record) -> str` progress line (None: no line); elapsed and remaining time appended.
    until: early stop after a chunk.
    save_when: `(chunks done) -> bool` replaces the `every` rule (the last chunk is always saved).
  """
  guard = guard or finite_guard()
  ckptr = Checkpointer(ckpt_dir) if ckpt_dir and every > 0 and num_chunks > 0 else None
  history: list[dict] = []
  start, done = 0, False
  hist_path = None
  if ckptr is not None:
    hist_path = os.path.join(ckptr.directory, "history.json")
    _check_fingerprint(ckptr.directory, fingerprint)
    if ckptr.latest_step() is not None:
      ck = ckptr.restore({"state": state, "chunk": jnp.zeros((), jnp.int32),
                          "done": jnp.zeros((), bool)})
      state, start, done = ck["state"], int(ck["chunk"]), bool(ck["done"])
      history = read_json_list(hist_path)[:start]
      log(f"[{phase}] {'reused the finished run' if done or start >= num_chunks else 'resumed'} at "
          f"{unit} {start}/{num_chunks} from {ckptr.directory}")
  saved = start
  t0 = time.time()
  try:
    for i in range(start, num_chunks):
      if done:
        break
      state, record = chunk_fn(state, i)
      problem = guard(state, record)
      if problem:
        kept = ""
        if ckptr is not None:
          kept = (f"; the last good checkpoint ({unit} {saved}) is kept in {ckptr.directory}" if saved
                  else "; no checkpoint was written yet")
        raise NumericalError(f"[{phase}] {problem} in {unit} {i + 1} of {num_chunks}{kept}"
                             + (f": {fix}" if fix else ""))
      history.append(record)
      done = bool(until(state, record)) if until is not None else False
      _maybe_kill(phase, i + 1, saved=False)
      due = save_when(i + 1) if save_when is not None else (i + 1) % every == 0
      if ckptr is not None and (due or i + 1 == num_chunks or done):
        # Records first, then the state: a kill between the two leaves extra records that the
        # resume drops (it keeps the first `chunk` of them), never a missing one.
        atomic_write_json(hist_path, history)
        ckptr.save(i + 1, {"state": state, "chunk": jnp.asarray(i + 1, jnp.int32),
                           "done": jnp.asarray(done)})
        saved = i + 1
      _maybe_kill(phase, i + 1, saved=True)
      if progress is not None:
        elapsed = time.time() - t0
        left = elapsed / (i + 1 - start) * (num_chunks - i - 1) if not done else 0.0
        log(f"{progress(i, record)} ({elapsed:.1f}s, ~{left:.0f}s left)")
  finally:
    if ckptr is not None:
      ckptr.close()
  return state, history
