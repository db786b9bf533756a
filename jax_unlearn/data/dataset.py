"""Data containers, the dataset registry and `load_dataset` (SPEC §1.8).

Images are kept on the host as float32 in [0, 1], *not* normalised: augmentation (pad 4 + crop, as
torchvision's RandomCrop(32, padding=4) on un-normalised tensors) and generator outputs live in that
space, and `normalize(x, info.mean, info.std)` is applied on device right before the classifier.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import numpy as np

from jax_unlearn.errors import ConfigError

# Our dataset names. 'cifar20' is tfds 'cifar100' classified by its 20 super-classes (coarse labels),
# keeping the 100 fine labels for sub-class forgetting (SSD repository, SPEC §4.5).
DATASETS = ("digits", "svhn_cropped", "cifar10", "cifar100", "cifar20")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset: images float32 [N,H,W,C] in [0,1], labels int32 [N].

  `fine_labels` (int32 [N]) exists only for datasets whose labels are super-classes (cifar20); it
  holds the CIFAR-100 class of each image, which sub-class forgetting selects on.
  """
  images: np.ndarray
  labels: np.ndarray
  fine_labels: np.ndarray | None = None

  def __post_init__(self):
    if len(self.images) != len(self.labels) or (
        self.fine_labels is not None and len(self.fine_labels) != len(self.labels)):
      raise ValueError(f"Split arrays disagree in length: images {len(self.images)}, labels "
                       f"{len(self.labels)}, fine_labels "
                       f"{None if self.fine_labels is None else len(self.fine_labels)}")

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, selection) -> "Split":
    """The rows picked by a boolean mask [N] or an integer index array (copies, as numpy does)."""
    selection = np.asarray(selection)
    if selection.dtype == bool and selection.shape != (len(self),):
      raise ValueError(f"boolean mask of shape {selection.shape} for a split of {len(self)} rows")
    if selection.dtype != bool:
      selection = selection.astype(np.int64)
    return Split(self.images[selection], self.labels[selection],
                 None if self.fine_labels is None else self.fine_labels[selection])


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Static facts about a dataset.

  mean/std: per-channel normalisation constants (SPEC §1.8). augment: whether supervised training
  uses random crop + flip (CIFAR yes; SVHN and digits no). num_fine_classes: number of fine labels
  (100 for cifar20, else 0), which sub-class forgetting needs.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  num_fine_classes: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """train/val: the seeded 80/20 split of the training data (SPEC §1.8); test: the held-out split."""
  info: DataInfo
  train: Split
  val: Split
  test: Split


def _get(cfg, name: str, default: Any) -> Any:
  """`cfg.get(name, default)` for a ConfigDict or a dict (optional dataset fields)."""
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def check_name(name: str) -> str:
  """Raise a ConfigError naming the valid datasets (and the closest one) for an unknown name."""
  if name not in DATASETS:
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown dataset {name!r}{hint}; set --config.dataset.name to one of: "
                      f"{', '.join(DATASETS)}")
  return name


def dataset_info(name: str) -> DataInfo:
  """The `DataInfo` of a dataset without loading it (for validating a config early)."""
  check_name(name)
  if name == "digits":
    from jax_unlearn.data import digits
    return digits.INFO
  from jax_unlearn.data import tfds_data
  return tfds_data.info(name)


def _check_fraction(value, field: str, default: float) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    value = float("nan")
  if not 0.0 < value < 1.0:
    raise ConfigError(f"config.dataset.{field} must lie strictly between 0 and 1, got {value}; "
                      f"set e.g. --config.dataset.{field}={default}")
  return value


def _check_seed(seed, what: str) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"{what} must be a non-negative integer, got {seed!r}; set e.g. "
                      f"--config.{'seed' if what == 'seed' else 'dataset.split_seed'}=0")
  return int(seed)


def train_val_split(split: Split, val_fraction: float, seed: int, *,
                    stratify: bool) -> tuple[Split, Split]:
  """Seeded train/val split of `split` (SPEC §1.8: `random_split` 80/20, best checkpoint on val).

  `stratify=True` keeps the class proportions (scikit-learn `train_test_split`), used for digits
  where the validation set is small; otherwise a uniform random permutation, as torch's random_split.
  Indices are sorted so that each part keeps the source order.
  """
  n = len(split)
  n_val = int(round(n * val_fraction))
  if n < 2 or not 0 < n_val < n:
    raise ConfigError(f"cannot split {n} training samples into train/val with val_fraction "
                      f"{val_fraction}; set --config.dataset.val_fraction=0.2")
  idx = np.arange(n)
  if stratify:
    from sklearn.model_selection import train_test_split
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed % 2**32,
                                          stratify=split.labels)
  else:
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
  return split.subset(np.sort(train_idx)), split.subset(np.sort(val_idx))


def load_dataset(dataset_cfg, seed: int) -> Dataset:
  """Load `dataset_cfg.name` and split its training data 80/20 into train/val with `seed`.

  `dataset_cfg` (= config.dataset) fields: name, data_dir ('' = the tfds default), download (bool),
  and optionally split_seed (0; digits' fixed train/test split), test_fraction (0.25; digits only)
  and val_fraction (0.2). The test split never depends on `seed`.
  """
  name = check_name(_get(dataset_cfg, "name", "digits"))
  seed = _check_seed(seed, "seed")
  val_fraction = _check_fraction(_get(dataset_cfg, "val_fraction", 0.2), "val_fraction", 0.2)
  if name == "digits":
    from jax_unlearn.data import digits
    split_seed = _check_seed(_get(dataset_cfg, "split_seed", 0), "config.dataset.split_seed")
    test_fraction = _check_fraction(_get(dataset_cfg, "test_fraction", 0.25), "test_fraction", 0.25)
    info, train_full, test = digits.load(split_seed=split_seed, test_fraction=test_fraction)
  else:
    from jax_unlearn.data import tfds_data
    info, train_full, test = tfds_data.load(
        name, data_dir=_get(dataset_cfg, "data_dir", "") or "",
        download=bool(_get(dataset_cfg, "download", False)))
  train, val = train_val_split(train_full, val_fraction, seed, stratify=(name == "digits"))
  return Dataset(info=info, train=train, val=val, test=test)
