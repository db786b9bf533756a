"""Checkpoints with orbax-checkpoint.

* `Checkpointer`: a thin wrapper over `ocp.CheckpointManager` for resumable training state (any pytree,
  restored against an abstract target so optax NamedTuple states come back as NamedTuples).
* `save_variables` / `load_variables`: a finished model's variables plus a JSON `meta` (dataset, model,
  num_classes, image shape) that is checked on load, so a checkpoint from another model or dataset is
  reported as such instead of failing deep inside JAX.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from jax_unlearn.errors import CheckpointError
from jax_unlearn.io import atomic_write_json


def _ocp():
  """orbax.checkpoint, imported on first use: importing a method or a metric (which import this module
  through `train`) does not import orbax until something is saved or restored."""
  import orbax.checkpoint as ocp
  return ocp


@contextlib.contextmanager
def _quiet_failed_restore(drain_seconds: float = 0.5):
  """Holds back stderr (fd 2) during a restore or save; prints it afterwards unless it failed.

  When orbax fails to read a corrupted checkpoint it closes its event loop while tensorstore threads
  still finish the other reads; each then prints 'RuntimeError: Event loop is closed' with a
  traceback from C++, at a random moment. A save that runs out of disk space logs a traceback from
  each of its background commit threads. On failure those lines are dropped (after letting the
  threads drain), so the one error line stands alone; on success anything written is passed on."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield
    return
  buf = tempfile.TemporaryFile()
  os.dup2(buf.fileno(), 2)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    time.sleep(drain_seconds)
    gc.collect()  # abandoned asyncio tasks log 'exception was never retrieved' when collected
    raise
  finally:
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(saved, 2)
    os.close(saved)
    if not failed:
      buf.seek(0)
      data = buf.read()
      if data:
        os.write(2, data)
    buf.close()


def describe_error(e: BaseException) -> str:
  """`Type: first line` of an exception, without object reprs such as `<bound method ...>` that some
  orbax/tensorstore errors carry, cut to 200 characters."""
  lines = str(e).strip().splitlines()
  text = re.sub(r"<[^<>]*>", "", lines[0] if lines else "")
  text = " ".join(text.split())[:200]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def key_data(key: jax.Array) -> jax.Array:
  """Raw uint32 data of a typed (`jax.random.key`) or legacy (`PRNGKey`) key: what a checkpoint stores
  (orbax saves arrays, not typed keys)."""
  return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def wrap_key(data: jax.Array, like: jax.Array) -> jax.Array:
  """Inverse of `key_data`: a key of the same kind (typed or legacy) as `like`."""
  return jax.random.wrap_key_data(data) if jnp.issubdtype(like.dtype, jax.dtypes.prng_key) else data


class Checkpointer:
  """Keeps the latest `max_to_keep` steps of a training-state pytree in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 1) -> None:
    self.directory = os.path.abspath(directory)  # orbax requires absolute paths
    self._mgr = _ocp().CheckpointManager(
        self.directory, options=_ocp().CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state: Any) -> None:
    with _quiet_failed_restore():
      self._mgr.save(step, args=_ocp().args.StandardSave(state))
      self._mgr.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(_ocp().utils.to_shape_dtype_struct, target)
    try:
      with _quiet_failed_restore():
        return self._mgr.restore(step, args=_ocp().args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for truncated/corrupted files
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} could not be restored ({describe_error(e)}); it is "
          f"corrupted or from another config: delete that directory to start this phase again") from e

  def close(self) -> None:
    self._mgr.close()


def save_variables(directory: str, variables: Any, meta: dict) -> None:
  """Writes `variables` to `directory/variables` and `meta` to `directory/meta.json` (atomically)."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "variables")
  ckptr = _ocp().StandardCheckpointer()
  with _quiet_failed_restore():
    ckptr.save(path, variables, force=True)
    ckptr.wait_until_finished()
  atomic_write_json(os.path.join(directory, "meta.json"), meta)


def has_variables(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, "meta.json"))


def read_meta(directory: str) -> dict:
  """The `meta.json` of a `save_variables` directory; CheckpointError (one line) if it is missing or
  unreadable."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "meta.json")
  if not os.path.exists(meta_path):
    raise CheckpointError(f"no checkpoint in {directory}; run the phase that writes it first "
                          "(e.g. python -m launch.train --config=... --workdir=...)")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    if not isinstance(meta, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{meta_path} is unreadable ({describe_error(e)}); delete {directory} to "
                          "recompute it") from None
  return meta


def load_variables(directory: str, target: Any, expect_meta: dict | None = None,
                   with_meta: bool = False) -> Any:
  """Restores variables saved by `save_variables`, checking `meta` against `expect_meta`.
  With `with_meta`, returns (variables, meta)."""
  directory = os.path.abspath(directory)
  meta = read_meta(directory)
  for k, v in (expect_meta or {}).items():
    if k in meta and json.dumps(meta[k]) != json.dumps(v):
      raise CheckpointError(
          f"checkpoint {directory} was made for {k}={meta[k]!r} but the config asks for {v!r}; use "
          "another --workdir or delete that directory")
  abstract = jax.tree.map(_ocp().utils.to_shape_dtype_struct, target)
  try:
    with _quiet_failed_restore():
      variables = _ocp().StandardCheckpointer().restore(os.path.join(directory, "variables"), abstract)
  except Exception as e:
    raise CheckpointError(
        f"checkpoint {directory} could not be restored ({describe_error(e)}); it is corrupted or from "
        "another model: delete it to recompute") from e
  return (variables, meta) if with_meta else variables
