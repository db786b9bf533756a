"""SSD/LFSSD's data and cache (the driver behind `ssd.run_dampening`, re-exported by `methods.ssd`).

D = retain_train ++ forget_train, unshuffled, in batches that straddle the boundary exactly as the
SSD code's `DataLoader(ConcatDataset(...), shuffle=False)` does (`concat_batches`); the importance on D
is optionally cached beside the original model (orbax, `train.checkpoint`), keyed by a content hash of
the original variables and of D in its iteration order; `compute_importances` times both importances.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import CheckpointError, DataError
from jax_unlearn.train.checkpoint import has_variables, load_variables, save_variables

__all__ = ["Normalize", "concat_batches", "full_importance_cache_path", "compute_importances"]


@dataclasses.dataclass(frozen=True)
class Normalize:
  """Hashable on-device preprocessing (x - mean) / std, so the jitted step is reused across calls."""
  mean: tuple
  std: tuple

  def __call__(self, x):
    return normalize(x, self.mean, self.std)


def concat_batches(arrays: list[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  """Unshuffled batches over the concatenation of `arrays`, last partial batch kept.

  Equivalent to torch `DataLoader(ConcatDataset(...), shuffle=False)`: batches straddle the boundary
  between arrays, and nothing is copied beyond one batch.
  """
  bounds = np.cumsum([0] + [len(a) for a in arrays])
  total = int(bounds[-1])
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    pieces = []
    for a, lo, hi in zip(arrays, bounds[:-1], bounds[1:]):
      s, e = max(start, lo), min(stop, hi)
      if s < e:
        pieces.append(np.asarray(a[s - lo:e - lo]))
    yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _batches(splits, batch_size: int, uses_labels: bool):
  """Dict batches over `splits` concatenated; labels only when the importance needs them."""
  images = concat_batches([s.images for s in splits], batch_size)
  if not uses_labels:
    for x in images:
      yield {"image": x}
    return
  labels = concat_batches([s.labels for s in splits], batch_size)
  for x, y in zip(images, labels):
    yield {"image": x, "label": y}


def _fingerprint(variables, splits, extra: str, uses_labels: bool) -> str:
  """Content hash of the model and of D in its iteration order, so a stale cache is never reused."""
  h = hashlib.sha1(extra.encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  for s in splits:
    h.update(np.ascontiguousarray(np.asarray(s.images)).tobytes())
    if uses_labels:  # label-free methods never look at labels, not even to hash them
      h.update(np.ascontiguousarray(np.asarray(s.labels)).tobytes())
  return h.hexdigest()[:16]


def full_importance_cache_path(ctx: Any, name: str, cfg: Any, splits: Sequence[Any],
                               uses_labels: bool) -> str:
  """`<cache_dir>/<name>_full_importance_<mode>_b<batch>_<hash>`: beside the original model
  (`ctx.cache_dir`) unless `cfg.cache_dir` is set; the hash covers the original variables, D in its
  iteration order, the mode and the batch size."""
  directory = cfg.cache_dir or ctx.cache_dir or os.path.dirname(os.path.abspath(ctx.workdir))
  fp = _fingerprint(ctx.original, splits, f"{name}/{cfg.mode}/{cfg.batch_size}", uses_labels)
  return os.path.join(directory, f"{name}_full_importance_{cfg.mode}_b{cfg.batch_size}_{fp}")


def _load_cache(path, params):
  """A cached importance tree (orbax, `train.checkpoint`), or None if absent or unreadable."""
  if not has_variables(path):
    return None
  target = jax.eval_shape(lambda: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params))
  try:
    return load_variables(path, target)
  except CheckpointError:  # a corrupt or foreign cache is recomputed, never trusted
    return None


def _save_cache(path, imp):
  save_variables(path, jax.device_get(imp), {"kind": "importance"})


def compute_importances(ctx: Any, name: str, importance_fn: Callable, uses_labels: bool, cfg: Any = None
                        ) -> tuple[Any, Any, dict]:
  """(I_D, I_Df, info) for `ctx`, following the SSD reference's data and batch sizes
  (`if-loops/selective-synaptic-dampening`: batch 64 by default).

  D = retain_train ++ forget_train, unshuffled, batch `cfg.batch_size`; D_f = forget_train, batch
  `cfg.forget_batch_size` (`cfg.random_forget_batch_size` in random forgetting). With
  `cfg.cache_full_importance`, I_D is read from / written to a msgpack file keyed by a hash of the
  original variables, D, the mode and the batch size.
  """
  cfg = ctx.cfg if cfg is None else cfg
  data = ctx.data
  if data is None:
    raise DataError(f"{name} needs the training data (retain and forget sets); build the context with data")
  preprocess = Normalize(tuple(float(m) for m in data.info.mean), tuple(float(s) for s in data.info.std))
  apply_fn = ctx.model.apply
  full_splits = (data.retain_train, data.forget_train)
  if len(data.forget_train) == 0:
    raise DataError("the forget set is empty; set config.forget.classes / num_samples to select data")
  fb = cfg.random_forget_batch_size if ctx.forget_mode == "random" else cfg.forget_batch_size
  kw = dict(mode=cfg.mode, preprocess=preprocess, per_sample_chunk=int(cfg.per_sample_chunk))
  info = {"mode": cfg.mode, "batch_size": int(cfg.batch_size), "forget_batch_size": int(fb)}

  t0 = time.perf_counter()
  imp_full, cache_path = None, None
  if cfg.cache_full_importance:
    cache_path = full_importance_cache_path(ctx, name, cfg, full_splits, uses_labels)
    if os.path.exists(cache_path):
      imp_full = _load_cache(cache_path, ctx.original["params"])
  cached = imp_full is not None
  if imp_full is None:
    imp_full = importance_fn(apply_fn, ctx.original, _batches(full_splits, int(cfg.batch_size), uses_labels),
                             **kw)
    if cache_path is not None:
      _save_cache(cache_path, imp_full)
  jax.block_until_ready(imp_full)
  t1 = time.perf_counter()
  imp_forget = importance_fn(apply_fn, ctx.original, _batches((data.forget_train,), int(fb), uses_labels),
                             **kw)
  jax.block_until_ready(imp_forget)
  t2 = time.perf_counter()
  info.update(importance_full_s=t1 - t0, importance_forget_s=t2 - t1, importance_s=t2 - t0,
              full_importance_cached=cached, full_importance_cache=cache_path or "")
  ctx.log(f"{name}: importances ({cfg.mode}) D {t1 - t0:.2f}s{' (cached)' if cached else ''}, "
          f"D_f {t2 - t1:.2f}s")
  return imp_full, imp_forget, info


