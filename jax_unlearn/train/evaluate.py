"""Batched, jitted inference and accuracy (never batch size 1), for any classifier.

`model` is one of the library's classifiers, a `models.Model`, or anything `models.as_model` accepts
(a plain `apply_fn(params, x)` with its params, a linen or NNX module): `models.as_classifier` does
the conversion, and passes the library's own classifiers through untouched.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data.dataset import Split
from jax_unlearn.data.normalize import normalize
from jax_unlearn.models.adapters import as_classifier

__all__ = ["predict_logits", "accuracy", "padded_batches"]


def padded_batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Yields `(chunk, valid)`: consecutive `batch_size` rows of `images`, the last one zero-padded to
  `batch_size` (so one compiled program serves every batch), and how many of its rows are real."""
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    yield chunk, batch_size - pad


@functools.partial(jax.jit, static_argnames=("apply_fn", "features"))
def _logits(apply_fn, variables, images, mean, std, features=False):
  return apply_fn(variables, normalize(images, mean, std), train=False, features=features)


def predict_logits(model: Any, variables: Any, images: ArrayLike, info: Any = None,
                   batch_size: int = 512, features: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Logits (numpy, float32 [N, K]) of `model` in eval mode on `images`.

  `images` are raw [0,1] images normalised here with `info.mean`/`info.std` (a `data.DataInfo`, or
  any object with those fields); with `info=None` they are passed to the model as they are (already
  normalised). The last partial batch is zero-padded to `batch_size` so one compiled program serves
  every call. With `features=True` returns `(logits, features)`.
  """
  k = getattr(model, "num_classes", None)
  model, variables = as_classifier(model, variables)
  images = np.asarray(images, np.float32)
  if info is None:
    mean, std = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
  else:
    mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  outs, feats = [], []
  for chunk, valid in padded_batches(images, batch_size):
    out = _logits(model.apply, variables, chunk, mean, std, features)
    if features:
      outs.append(np.asarray(out[0])[:valid])
      feats.append(np.asarray(out[1])[:valid])
    else:
      outs.append(np.asarray(out)[:valid])
  logits = np.concatenate(outs) if outs else np.zeros((0, k or 0), np.float32)
  if features:
    return logits, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))
  return logits


def accuracy(model: Any, variables: Any, split: Split | tuple[ArrayLike, ArrayLike], info: Any = None,
             batch_size: int = 512) -> float:
  """Top-1 accuracy in percent on a `Split` (or an `(images, labels)` pair); NaN for an empty split.
  `info` as in `predict_logits`."""
  images, labels = (split.images, split.labels) if hasattr(split, "images") else split
  if len(labels) == 0:
    return float("nan")
  logits = predict_logits(model, variables, images, info, batch_size)
  return float(100.0 * np.mean(logits.argmax(-1) == np.asarray(labels)))
