"""Deterministic host-side minibatches of a `Split`.

The order of epoch `e` is `np.random.default_rng((seed, e)).permutation(n)`: it depends only on
(seed, epoch), so a run resumed at epoch e sees exactly the batches an uninterrupted run would.
Batches are plain numpy dicts; the caller moves them to device (and shards them) inside its step.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jax_unlearn.data.dataset import Split
from jax_unlearn.errors import ConfigError


def _check(n: int, batch_size: int, drop_remainder: bool) -> None:
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}; set e.g. "
                      f"--config.batch_size=64")
  if drop_remainder and n < batch_size:
    raise ConfigError(f"batch size {batch_size} exceeds the {n} samples of this split, so "
                      f"dropping the remainder would leave no batch; lower --config.batch_size "
                      f"(or the method's own batch_size) to at most {max(n, 1)}")


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches `batches` yields for a split of `n` samples (raises as `batches` does)."""
  _check(n, batch_size, drop_remainder)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(split: Split, batch_size: int, *, seed: int, epoch: int = 0, shuffle: bool = True,
            drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of `{'image': float32 [B,H,W,C], 'label': int32 [B]}` batches.

  With `drop_remainder` every batch has exactly `batch_size` rows (one compiled step) and the
  remainder is left out (a different remainder each epoch when shuffling); a split smaller than
  one batch is then a ConfigError rather than an empty epoch. Without it the last batch is
  partial. Arguments are checked when `batches` is called, not on the first `next`.
  """
  n = len(split)
  count = num_batches(n, batch_size, drop_remainder)
  order = np.random.default_rng((int(seed), int(epoch))).permutation(n) if shuffle else np.arange(n)

  def gen():
    for b in range(count):
      idx = order[b * batch_size:(b + 1) * batch_size]
      yield {"image": split.images[idx], "label": split.labels[idx]}

  return gen()
