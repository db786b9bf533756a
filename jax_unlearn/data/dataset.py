"""Data containers, dataset-name lookup and `load_dataset` (the ISPF reference's data set-up).

Images are kept on the host as float32 in [0, 1], *not* normalised: augmentation (pad 4 + crop, as
torchvision's RandomCrop(32, padding=4) on un-normalised tensors) and generator outputs live in that
space, and `normalize(x, info.mean, info.std)` is applied on device right before the classifier.

Which data a name means is decided by the source registered for it (`registry.py`; one module per
source kind: digits, tfds_data, idx, arrays). Names: the fixed ones (`digits`, `svhn_cropped`,
`cifar10`, `cifar100`, `cifar20`, `fashion_mnist`), `idx` (IDX files in `data_dir`), `arrays`
(an .npz at `path`, or arrays registered from Python) and `tfds:<builder>` for any TFDS
image-classification dataset. `names()` lists them.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict
from numpy.typing import ArrayLike

from jax_unlearn.data.registry import Source, lookup, sources
from jax_unlearn.errors import ConfigError, DataError


def common_config() -> dict[str, Any]:
  """`config.dataset` fields every source may read; each source adds its own (`default_config`).

  augment: None keeps the source's choice (CIFAR yes, the others no); True/False overrides it. A
  placeholder, so that it can be set from the command line, and a new one per call: a shared
  FieldReference would carry one config's value into every other.
  """
  return dict(name="digits", data_dir="", download=False, val_fraction=0.2,
              augment=config_dict.placeholder(bool))


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset: images float32 [N,H,W,C] in [0,1], labels int32 [N].

  `fine_labels` (int32 [N]) exists only for datasets whose labels are super-classes (cifar20); it
  holds the CIFAR-100 class of each image, which sub-class forgetting selects on.
  """
  images: np.ndarray
  labels: np.ndarray
  fine_labels: np.ndarray | None = None

  def __post_init__(self) -> None:
    if len(self.images) != len(self.labels) or (
        self.fine_labels is not None and len(self.fine_labels) != len(self.labels)):
      raise ValueError(f"Split arrays disagree in length: images {len(self.images)}, labels "
                       f"{len(self.labels)}, fine_labels "
                       f"{None if self.fine_labels is None else len(self.fine_labels)}")

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, selection: ArrayLike) -> Split:
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

  mean/std: per-channel normalisation constants (`ChildEden/ISPF registry.py` for the paper data).
  augment: whether supervised training uses random crop + flip (CIFAR yes; SVHN and digits no).
  num_fine_classes: number of fine labels (100 for cifar20, else 0), which sub-class forgetting needs.
  class_names: one per label where the source knows them (Fashion-MNIST, TFDS ClassLabel names), else empty.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  num_fine_classes: int = 0
  class_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """train/val: the seeded 80/20 split of the training data (ISPF's `UN_train_scratch.py`); test: held out."""
  info: DataInfo
  train: Split
  val: Split
  test: Split


def _get(cfg, name: str, default: Any) -> Any:
  """`cfg.get(name, default)` for a ConfigDict or a dict (optional dataset fields)."""
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def names(include_patterns: bool = False) -> tuple[str, ...]:
  """Every registered dataset name, in registration order.

  With `include_patterns`, prefix sources are listed as a pattern too ('tfds:<name>'), as in the
  error message of `check_name`.
  """
  out = tuple(s.name for s in sources() if not s.prefix)
  if include_patterns:
    out += tuple(f"{s.name}<name>" for s in sources() if s.prefix)
  return out


def check_name(name: str) -> str:
  """Raise a ConfigError naming the valid datasets (and the closest one) for an unknown name."""
  if lookup(name) is None:
    hint = ""
    for source in sources():
      suggestion = source.suggest(str(name)) if source.suggest else None
      if suggestion:
        hint = f" (did you mean {suggestion!r}?)"
        break
    close = difflib.get_close_matches(str(name), names(), n=1)
    if close and not hint:
      hint = f" (did you mean {close[0]!r}?)"
    raise ConfigError(f"unknown dataset {name!r}{hint}; set --config.dataset.name to one of: "
                      f"{', '.join(names(include_patterns=True))}")
  return name


def get_source(name: str) -> Source:
  """The registered source serving dataset `name` (a ConfigError naming the valid ones if none)."""
  return lookup(check_name(name))


def default_config() -> ml_collections.ConfigDict:
  """`config.dataset` with every field any registered source reads, at its default.

  config.py's `base_config()` uses this, so a source's new field can be set from the command line.
  """
  fields = common_config()
  for source in sources():
    for key, value in source.default_config().items():
      if key in fields and fields[key] != value:
        raise ValueError(f"dataset sources disagree on the default of config.dataset.{key}: "
                         f"{fields[key]!r} vs {value!r} ({source.name})")
      fields[key] = value
  return ml_collections.ConfigDict(fields)


def _as_config(dataset_cfg_or_name):
  """A plain name becomes `default_config()` with that name; configs pass through."""
  if isinstance(dataset_cfg_or_name, str):
    cfg = default_config()
    cfg.name = dataset_cfg_or_name
    return cfg
  return dataset_cfg_or_name


def _with_augment(info: DataInfo, dataset_cfg) -> DataInfo:
  augment = _get(dataset_cfg, "augment", None)
  if augment is None or bool(augment) == info.augment:
    return info
  return dataclasses.replace(info, augment=bool(augment))


def dataset_info(dataset_cfg_or_name: ml_collections.ConfigDict | dict[str, Any] | str) -> DataInfo:
  """The `DataInfo` of a dataset, for validating a config before any work starts.

  Takes `config.dataset` or a plain name (the name with every other field at its default: enough
  for the fixed datasets). Fixed sources return constants; `idx`, `arrays` and `tfds:<name>` read
  their labels and training images (the normalisation constants come from them), and so also
  check that the data is there.
  """
  cfg = _as_config(dataset_cfg_or_name)
  source = get_source(_get(cfg, "name", "digits"))
  source.validate_config(cfg)
  return _with_augment(source.info(cfg), cfg)


def channel_stats(images: np.ndarray, scale: float = 1.0) -> tuple[tuple[float, ...],
                                                                    tuple[float, ...]]:
  """Per-channel mean and (population) std of images [N,H,W,C] divided by `scale`, as float32.

  Accumulates in float64 over chunks of images, so uint8 data is never copied whole to float64
  (60 000 Fashion-MNIST images would take 376 MB). Two passes: the mean, then squared deviations,
  which is exact enough for pixel data without the cancellation of E[x^2] - E[x]^2.
  """
  n, c = images.shape[0], images.shape[-1]
  if n == 0:
    raise DataError("cannot compute normalisation constants of an empty training split")
  chunk = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))
  count = n * int(np.prod(images.shape[1:-1]))
  total = np.zeros(c, np.float64)
  for start in range(0, n, chunk):
    total += images[start:start + chunk].reshape(-1, c).sum(axis=0, dtype=np.float64)
  mean = total / count
  sq = np.zeros(c, np.float64)
  for start in range(0, n, chunk):
    dev = images[start:start + chunk].reshape(-1, c).astype(np.float64) - mean
    sq += np.einsum("ij,ij->j", dev, dev)
  std = np.sqrt(sq / count)
  mean, std = mean / scale, std / scale
  if np.any(std <= 1e-6):
    raise DataError(f"training images have a constant channel (per-channel std {std.tolist()}), so "
                    "normalising would divide by zero; check the images (all blank?)")
  as_f32 = lambda v: tuple(float(np.float32(x)) for x in v)  # noqa: E731
  return as_f32(mean), as_f32(std)


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
  """Seeded train/val split of `split` (`ChildEden/ISPF UN_train_scratch.py`: `random_split`
  80/20, best checkpoint on val).

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


def _check_loaded(source: Source, info: DataInfo, train: Split, test: Split) -> None:
  """What every source must return (a source added by a user is checked the same way)."""
  for split_name, split in (("train", train), ("test", test)):
    images, labels = split.images, split.labels
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(info.image_shape):
      raise DataError(f"{info.name} {split_name} images have shape {images.shape[1:]}, but its "
                      f"info says {tuple(info.image_shape)}; the {source.name} source is broken")
    if images.dtype != np.float32 or labels.dtype != np.int32:
      raise DataError(f"{info.name} {split_name}: images must be float32 and labels int32, got "
                      f"{images.dtype}/{labels.dtype}; the {source.name} source is broken")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
      raise DataError(f"{info.name} {split_name} labels span {labels.min()}..{labels.max()}, outside "
                      f"0..{info.num_classes - 1}; the {source.name} source is broken")


def load_dataset(dataset_cfg: ml_collections.ConfigDict | dict[str, Any] | str, seed: int) -> Dataset:
  """Load `dataset_cfg.name` and split its training data 80/20 into train/val with `seed`.

  `dataset_cfg` (= config.dataset, or a plain name) fields: name, data_dir ('' = the source's
  default folder), download (bool, tfds), val_fraction (0.2), augment (None = the source's choice),
  and per source: split_seed and test_fraction (digits' fixed train/test split), path (arrays),
  image_key and label_key (tfds:<name>). `default_config()` has them all. The test split never
  depends on `seed`.
  """
  dataset_cfg = _as_config(dataset_cfg)
  source = get_source(_get(dataset_cfg, "name", "digits"))
  seed = _check_seed(seed, "seed")
  val_fraction = _check_fraction(_get(dataset_cfg, "val_fraction", 0.2), "val_fraction", 0.2)
  source.validate_config(dataset_cfg)
  info, train_full, test = source.load(dataset_cfg)
  _check_loaded(source, info, train_full, test)
  info = _with_augment(info, dataset_cfg)
  train, val = train_val_split(train_full, val_fraction, seed, stratify=source.stratify_val)
  return Dataset(info=info, train=train, val=val, test=test)
