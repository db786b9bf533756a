"""scikit-learn's digits: the embedded default dataset (our choice; BUILD_NOTES.md "Decisions").

1797 greyscale 8x8 images with values 0..16, 10 classes, bundled with scikit-learn (no download).
There is no official test split, so a stratified one is drawn with a fixed `split_seed` (not the
experiment seed): every seed of an experiment is then evaluated on the same test images.
"""

from __future__ import annotations

import numpy as np

from jax_unlearn.data.dataset import DataInfo, Split, _check_fraction, _check_seed, _get
from jax_unlearn.data.registry import Source, register

# Per-channel mean/std of the digits training images (values / 16; split_seed 0, test_fraction 0.25,
# i.e. the 1347 images that train and val are drawn from). Computed once with numpy and rounded to 4
# decimals (exact: 0.30522, 0.37601); tests/test_data.py checks them against the data.
DIGITS_MEAN = (0.3052,)
DIGITS_STD = (0.3760,)

INFO = DataInfo(name="digits", num_classes=10, image_shape=(8, 8, 1), mean=DIGITS_MEAN,
                std=DIGITS_STD, augment=False)


def load_all() -> Split:
  """All 1797 digits as a Split: images float32 [N,8,8,1] in [0,1] (pixel / 16)."""
  from sklearn.datasets import load_digits
  bunch = load_digits()
  images = (np.asarray(bunch.images, np.float32) / np.float32(16.0))[..., None]
  return Split(images, np.asarray(bunch.target, np.int32))


def load(split_seed: int = 0, test_fraction: float = 0.25) -> tuple[DataInfo, Split, Split]:
  """(info, training split, test split): a stratified train/test split seeded by `split_seed`."""
  from sklearn.model_selection import train_test_split
  full = load_all()
  train_idx, test_idx = train_test_split(np.arange(len(full)), test_size=test_fraction,
                                         random_state=split_seed, stratify=full.labels)
  return INFO, full.subset(np.sort(train_idx)), full.subset(np.sort(test_idx))


def _split_params(dataset_cfg) -> tuple[int, float]:
  split_seed = _check_seed(_get(dataset_cfg, "split_seed", 0), "config.dataset.split_seed")
  test_fraction = _check_fraction(_get(dataset_cfg, "test_fraction", 0.25), "test_fraction", 0.25)
  return split_seed, test_fraction


def _load(dataset_cfg) -> tuple[DataInfo, Split, Split]:
  split_seed, test_fraction = _split_params(dataset_cfg)
  return load(split_seed=split_seed, test_fraction=test_fraction)


register(Source(
    name="digits", info=lambda dataset_cfg: INFO, load=_load,
    summary="scikit-learn's 8x8 digits (bundled with scikit-learn, nothing to download)",
    default_config=lambda: dict(split_seed=0, test_fraction=0.25),
    validate_config=_split_params, kind="sklearn", stratify_val=True, fixed_info=True))
