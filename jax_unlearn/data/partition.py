"""Forget/retain partitions of a dataset (ISPF paper §4.1; the SSD repository's three scenarios).

Three forgetting modes, chosen by `config.forget.mode`:
* 'class':    forget every sample whose label is in `config.forget.classes` (one or several), on
              every split; the test metrics are then accuracy on forget / retain test classes.
* 'subclass': CIFAR-20 only: forget every sample whose *fine* (CIFAR-100) label is in `classes`,
              on every split; the classifier's labels stay the 20 super-classes
              (the SSD repository's sub-class setting).
* 'random':   forget `config.forget.num_samples` training samples drawn with the experiment seed;
              nothing is forgotten in val/test (their forget views are empty).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np

from jax_unlearn.data.dataset import DataInfo, Dataset, Split, _get
from jax_unlearn.errors import ConfigError, DataError

MODES = ("class", "subclass", "random")

# Stream id mixed into the seed of the random-forget draw, so that it never coincides with the
# train/val permutation drawn from the same experiment seed.
_RANDOM_FORGET_STREAM = 0x0F06E7


@dataclasses.dataclass(frozen=True, eq=False)
class UnlearnData:
  """A dataset with boolean forget masks per split; the forget/retain views are cached on use.

  `mode` and `classes` record the validated forget config (classes are fine CIFAR-100 ids in
  'subclass' mode and empty in 'random' mode).
  """
  info: DataInfo
  train: Split
  val: Split
  test: Split
  forget_train_mask: np.ndarray
  forget_val_mask: np.ndarray
  forget_test_mask: np.ndarray
  mode: str = "class"
  classes: tuple[int, ...] = ()

  @functools.cached_property
  def forget_train(self) -> Split:
    return self.train.subset(self.forget_train_mask)

  @functools.cached_property
  def retain_train(self) -> Split:
    return self.train.subset(~self.forget_train_mask)

  @functools.cached_property
  def forget_val(self) -> Split:
    return self.val.subset(self.forget_val_mask)

  @functools.cached_property
  def retain_val(self) -> Split:
    return self.val.subset(~self.forget_val_mask)

  @functools.cached_property
  def forget_test(self) -> Split:
    return self.test.subset(self.forget_test_mask)

  @functools.cached_property
  def retain_test(self) -> Split:
    return self.test.subset(~self.forget_test_mask)


def _example_flag(info: DataInfo, mode: str) -> str:
  if mode == "subclass":
    return f"--config.forget.classes=69 (a fine class 0..{max(info.num_fine_classes, 1) - 1})"
  return f"--config.forget.classes=3 (0..{info.num_classes - 1} for {info.name})"


def _classes(forget_cfg, info: DataInfo, mode: str) -> tuple[int, ...]:
  raw = _get(forget_cfg, "classes", ())
  if raw is None:
    raw = ()
  if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
    raw = (raw,)
  try:
    items = tuple(raw)
  except TypeError:
    items = (raw,)
  out = []
  for c in items:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
      raise ConfigError(f"forget class {c!r} is not an integer; use e.g. "
                        f"{_example_flag(info, mode)}")
    out.append(int(c))
  return tuple(out)


def validate_forget(forget_cfg: ml_collections.ConfigDict | dict[str, Any], info: DataInfo,
                    num_train: int | None = None) -> tuple[int, ...]:
  """Check `config.forget` against the dataset; return the forget classes as a tuple of ints.

  Raises ConfigError (message naming the fix) for an unknown mode, empty/out-of-range/duplicate
  classes, sub-class mode on a dataset without fine labels, forgetting every class, or a random
  `num_samples` that is not in 1..num_train-1 (checked when `num_train` is given).
  """
  mode = _get(forget_cfg, "mode", "class")
  if mode not in MODES:
    raise ConfigError(f"unknown forget mode {mode!r}; use --config.forget.mode=class, subclass "
                      f"or random")
  if mode == "random":
    n = _get(forget_cfg, "num_samples", None)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
      raise ConfigError(f"random forgetting needs a positive integer config.forget.num_samples, "
                        f"got {n!r}; set e.g. --config.forget.num_samples=100")
    if num_train is not None and n >= num_train:
      raise ConfigError(
          f"config.forget.num_samples={n} would forget all {num_train} training samples of "
          f"{info.name}, leaving nothing to retain; set --config.forget.num_samples below "
          f"{num_train}")
    return ()

  if mode == "subclass" and info.num_fine_classes <= 0:
    raise ConfigError(f"forget mode 'subclass' needs a dataset with fine labels (cifar20), not "
                      f"{info.name}; use --config.dataset.name=cifar20 or "
                      f"--config.forget.mode=class")
  classes = _classes(forget_cfg, info, mode)
  if not classes:
    raise ConfigError(f"forget mode {mode!r} needs at least one class; set "
                      f"{_example_flag(info, mode)}")
  limit = info.num_fine_classes if mode == "subclass" else info.num_classes
  kind = "fine class" if mode == "subclass" else "class"
  for c in classes:
    if not 0 <= c < limit:
      raise ConfigError(f"forget {kind} {c} is out of range for {info.name} ({limit} "
                        f"{kind}es); use e.g. {_example_flag(info, mode)}")
  if len(set(classes)) != len(classes):
    raise ConfigError(f"forget classes {classes} contain duplicates; list each class once, e.g. "
                      f"--config.forget.classes={','.join(map(str, sorted(set(classes))))}")
  if len(classes) == limit:
    raise ConfigError(f"forgetting all {limit} {kind}es of {info.name} leaves nothing to retain; "
                      f"forget fewer, e.g. {_example_flag(info, mode)}")
  return classes


def make_unlearn_data(dataset: Dataset, forget_cfg: ml_collections.ConfigDict | dict[str, Any],
                      seed: int) -> UnlearnData:
  """Forget masks on train/val/test for `config.forget` (validated first); see the module doc."""
  classes = validate_forget(forget_cfg, dataset.info, num_train=len(dataset.train))
  mode = _get(forget_cfg, "mode", "class")
  if mode == "random":
    n = len(dataset.train)
    rng = np.random.default_rng((int(seed), _RANDOM_FORGET_STREAM))
    train_mask = np.zeros(n, bool)
    train_mask[rng.choice(n, size=int(_get(forget_cfg, "num_samples", 0)), replace=False)] = True
    masks = (train_mask, np.zeros(len(dataset.val), bool), np.zeros(len(dataset.test), bool))
  else:
    def mask(split: Split) -> np.ndarray:
      if mode == "subclass":
        if split.fine_labels is None:
          raise DataError(f"{dataset.info.name} has no fine labels for sub-class forgetting; "
                          f"load it with jax_unlearn.data.load_dataset (name cifar20)")
        return np.isin(split.fine_labels, classes)
      return np.isin(split.labels, classes)
    masks = tuple(mask(s) for s in (dataset.train, dataset.val, dataset.test))
  return UnlearnData(dataset.info, dataset.train, dataset.val, dataset.test, *masks, mode=mode,
                     classes=classes)
