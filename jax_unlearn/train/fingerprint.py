"""Content fingerprints of everything a cached artefact depends on.

Every artefact the library caches in a workdir (a trained original or retrain model, a resumable
checkpoint of any long phase, MIA-II shadows, a DiStruction posterior, an importance cache, a metrics
row) is stored under a name derived from `digest` of *what it was computed from*: the arrays it saw
(by content, not by where they were read), the training recipe, the method's merged hyper-parameters,
the PRNG key and a format version of the stored state. A changed input therefore never reuses a stale
artefact: it gets a new directory and is recomputed, and the old one is left untouched.

    fp = fingerprint.describe(kind="original", version=1, data=split_digest(train, val),
                              recipe=config.train.to_dict(), model=config.model.to_dict(), key=key)
    directory = fingerprint.tagged(parent, "seed0", fp)      # parent/seed0-<12 hex digits>
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["array_digest", "tree_digest", "split_digest", "describe", "digest", "tagged"]


def _canonical(obj: Any) -> Any:
  """JSON-able form with stable types: tuples as lists, numpy scalars as Python numbers, keys sorted
  by `json.dumps(sort_keys=True)`; ConfigDicts and dataclasses through their dict form."""
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if isinstance(obj, dict):
    return {str(k): _canonical(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_canonical(v) for v in obj]
  if isinstance(obj, (np.generic,)):
    return obj.item()
  if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
    return "nan"
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  if isinstance(obj, (np.ndarray, jax.Array)):
    return array_digest(obj)
  return repr(obj)


def array_digest(*arrays: ArrayLike) -> str:
  """sha1 over the dtype, shape and bytes of each array (a typed PRNG key by its raw data)."""
  h = hashlib.sha1()
  for a in arrays:
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a = jax.random.key_data(a)
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def tree_digest(tree: Any) -> str:
  """sha1 over every leaf of a pytree with its path (e.g. a model's variables)."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(array_digest(leaf).encode())
  return h.hexdigest()


def split_digest(*splits: Any) -> str:
  """sha1 of the images and labels (and fine labels) of data `Split`s: the data a model saw."""
  parts = []
  for s in splits:
    fine = getattr(s, "fine_labels", None)  # duck-typed splits (any object with images, labels)
    arrays = [s.images, s.labels] + ([fine] if fine is not None else [])
    parts.append(array_digest(*arrays))
  return hashlib.sha1("".join(parts).encode()).hexdigest()


def describe(**fields: Any) -> dict[str, Any]:
  """The canonical JSON-able description of an artefact's inputs (what `digest` hashes)."""
  return _canonical(fields)


def digest(description: dict, length: int = 12) -> str:
  """Hex digest of a `describe` result (sorted-key JSON)."""
  text = json.dumps(_canonical(description), sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:length]


def tagged(parent: str, name: str, description: dict) -> str:
  """`parent/<name>-<digest>`: the directory of the artefact described by `description`."""
  return os.path.join(os.path.abspath(parent), f"{name}-{digest(description)}")
