"""TFDS datasets, read through `tfds.data_source`: SVHN and CIFAR (ISPF paper §4) and `tfds:<name>`.

Names: `svhn_cropped`, `cifar10`, `cifar100`, `cifar20` keep the reference code's constants
(`ChildEden/ISPF registry.py: NORMALIZE_DICT`, table below).
Any other TFDS image-classification dataset is addressed by its builder name behind the prefix
'tfds:' (`--config.dataset.name=tfds:mnist`, `tfds:emnist/digits`, `tfds:fashion_mnist`), so a
builder can never clash with one of our names (tfds' `cifar100` is our `cifar100`; `tfds:cifar100`
is the generic reading of it). Its image and label feature, image shape, class count and class names
come from the builder's `info.features` (the single `Image` and `ClassLabel` feature, or the ones
named by `dataset.image_key` / `dataset.label_key`); its normalisation constants are computed from
the training images; it is not augmented unless `dataset.augment=True`.

`tfds.data_source` gives random access to prepared array_record files and needs no TensorFlow;
preparing them (`download_and_prepare`) does, hence the optional `prepare` extra and
`launch/prepare_data.py`. The whole split is read once into host memory (float32 in [0,1]).

tfds traps handled here (checked on tfds 4.9.10):
* `tfds.data_source` forces the array_record format only when no `data_dir` is given; with a
  `data_dir` and `download=True` it would prepare TFRecords it then cannot read. We always pass
  `builder_kwargs={'file_format': 'array_record'}`.
* An unprepared dataset with `download=False` raises an unhelpful NotImplementedError, KeyError or
  AssertionError depending on the data_dir; all become one `DataError` naming the prepare command.
* Inside `tfds.testing.mock_data` the source's batched `__getitems__` is a mock that cannot be called
  (it lacks `self`); we then fall back to reading records one by one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jax_unlearn.data.dataset import DataInfo, Split, _get, channel_stats
from jax_unlearn.data.registry import Source, register
from jax_unlearn.errors import ConfigError, DataError, UserError

# Our names for the generic TFDS datasets: PREFIX + the tfds builder name (with /config, :version).
PREFIX = "tfds:"

# Records decoded per `__getitems__` call: large enough to amortise the per-call overhead, small
# enough that one chunk of decoded records stays a few MB.
_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class _Source:
  tfds_name: str
  label_key: str
  fine_key: str | None
  info: DataInfo


_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

_SOURCES = {
    # ISPF reference: SVHN train (73 257) / test (26 032), `extra` unused, no augmentation, 0.5/0.5.
    "svhn_cropped": _Source("svhn_cropped", "label", None, DataInfo(
        "svhn_cropped", 10, (32, 32, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment=False)),
    "cifar10": _Source("cifar10", "label", None, DataInfo(
        "cifar10", 10, (32, 32, 3), _CIFAR10_MEAN, _CIFAR10_STD, augment=True)),
    "cifar100": _Source("cifar100", "label", None, DataInfo(
        "cifar100", 100, (32, 32, 3), _CIFAR100_MEAN, _CIFAR100_STD, augment=True)),
    # CIFAR-20 = CIFAR-100 images labelled by super-class; the fine label is kept for sub-class
    # forgetting (the SSD repository's CIFAR-20). Normalised with the CIFAR-100 constants (same images).
    "cifar20": _Source("cifar100", "coarse_label", "label", DataInfo(
        "cifar20", 20, (32, 32, 3), _CIFAR100_MEAN, _CIFAR100_STD, augment=True,
        num_fine_classes=100)),
}


def tfds_name(name: str) -> str:
  """The tfds builder behind one of our dataset names ('cifar20' -> 'cifar100', 'tfds:x' -> 'x')."""
  if name.startswith(PREFIX):
    return name[len(PREFIX):]
  return _SOURCES[name].tfds_name


def info(name: str) -> DataInfo:
  """The DataInfo of one of the fixed tfds-backed names (the reference code's constants)."""
  return _SOURCES[name].info


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that prepares `name` for `tfds.data_source` (see launch/prepare_data.py)."""
  dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  return f'pip install -e ".[prepare]" && python -m launch.prepare_data --dataset={name}{dir_flag}'


def _first_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def open_source(name: str, split: str, data_dir: str = "", download: bool = False) -> Any:
  """`tfds.data_source` for one split, with tfds' failures turned into a `DataError`."""
  import tensorflow_datasets as tfds
  where = data_dir or "the default tfds data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  try:
    return tfds.data_source(tfds_name(name), split=split, data_dir=data_dir or None,
                            download=download, builder_kwargs={"file_format": "array_record"})
  except UserError:
    raise
  except Exception as err:  # tfds raises many types here (see the module docstring)
    if download:
      raise DataError(
          f"could not download and prepare {name} into {where} ({_first_line(err)}); preparing "
          f"needs TensorFlow and network access: {prepare_command(name, data_dir)}") from err
    raise DataError(
        f"{name} ({split}) is not prepared in {where} ({_first_line(err)}); prepare it once with "
        f"`{prepare_command(name, data_dir)}`, or let tfds download it with "
        f"--config.dataset.download=True") from err


def _records(source, keys):
  """Decoded records for `keys`, batched through `__getitems__` when the source supports it."""
  try:
    return source.__getitems__(keys)
  except TypeError:
    # tfds.testing.mock_data installs an unbound `__getitems__` mock (TypeError on any call).
    return [source[k] for k in keys]


def read_split(source: Any, label_key: str, fine_key: str | None, name: str = "",
               image_key: str = "image") -> Split:
  """Read every record of a data source into a `Split` (uint8 -> float32 / 255, as ToTensor)."""
  n = len(source)
  if n == 0:
    raise DataError(f"the {name} data source is empty; delete its tfds directory and prepare it "
                    f"again with python -m launch.prepare_data --dataset={name}")
  images = labels = fine = None
  for start in range(0, n, _CHUNK):
    records = _records(source, list(range(start, min(start + _CHUNK, n))))
    chunk = np.stack([np.asarray(r[image_key]) for r in records])
    if images is None:
      images = np.empty((n,) + chunk.shape[1:], np.uint8)
      labels = np.empty((n,), np.int32)
      fine = np.empty((n,), np.int32) if fine_key else None
    images[start:start + len(chunk)] = chunk
    labels[start:start + len(chunk)] = [r[label_key] for r in records]
    if fine_key:
      fine[start:start + len(chunk)] = [r[fine_key] for r in records]
  return Split(np.divide(images, np.float32(255.0), dtype=np.float32), labels, fine)


def load(name: str, data_dir: str = "", download: bool = False) -> tuple[DataInfo, Split, Split]:
  """(info, official train split, official test split) of one of our tfds-backed datasets."""
  src = _SOURCES[name]
  splits = []
  for split in ("train", "test"):
    data = read_split(open_source(name, split, data_dir, download), src.label_key, src.fine_key,
                      name)
    if data.images.shape[1:] != src.info.image_shape:
      raise DataError(f"{name} {split} images have shape {data.images.shape[1:]}, expected "
                      f"{src.info.image_shape}; prepare the dataset again with "
                      f"python -m launch.prepare_data --dataset={name}")
    splits.append(data)
  return src.info, splits[0], splits[1]


# ------------------------------------------------------------------------ tfds:<name> (generic)

@dataclasses.dataclass(frozen=True)
class _Features:
  image_key: str
  label_key: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  splits: tuple[str, ...]          # known split names ('' when tfds does not know them yet)


def _builder_name_ok(name: str) -> bool:
  import tensorflow_datasets as tfds
  try:
    tfds.builder_cls(name.split("/")[0].split(":")[0])
    return True
  except Exception:  # DatasetNotFoundError, or a malformed name
    return False


def suggest(name: str) -> str | None:
  """'tfds:mnist' for an unknown plain name that is a TFDS builder (error path only)."""
  if ":" in name or not name:
    return None
  try:
    return PREFIX + name if _builder_name_ok(name) else None
  except Exception:  # tfds missing or broken: no suggestion, the plain error stays
    return None


def _pick(features, kind, key: str, field: str, name: str) -> str:
  """The feature of type `kind` named `key`, or the only one; a ConfigError naming `field`."""
  found = [k for k, f in features.items() if isinstance(f, kind)]
  what = kind.__name__
  if key:
    if key not in found:
      raise ConfigError(f"{name} has no {what} feature {key!r} (its {what} features: "
                        f"{', '.join(found) or 'none'}); set --config.dataset.{field} to one of them")
    return key
  if not found:
    raise ConfigError(f"{name} has no {what} feature (features: {', '.join(features.keys())}); only "
                      f"image-classification datasets are supported; use "
                      f"--config.dataset.name=arrays with your own arrays instead")
  if len(found) > 1:
    raise ConfigError(f"{name} has several {what} features ({', '.join(found)}); choose one with "
                      f"--config.dataset.{field}={found[0]}")
  return found[0]


def _features(dataset_cfg) -> _Features:
  """Image/label features of a `tfds:<name>` dataset from its builder's info (no data read)."""
  import tensorflow_datasets as tfds
  name = _get(dataset_cfg, "name", "")
  builder_name = tfds_name(name)
  data_dir = _get(dataset_cfg, "data_dir", "") or ""
  if not _builder_name_ok(builder_name):
    raise ConfigError(f"{builder_name!r} is not a TFDS dataset; set --config.dataset.name="
                      f"{PREFIX}<name> with a name from tfds.list_builders(), e.g. {PREFIX}mnist")
  try:
    builder = tfds.builder(builder_name, data_dir=data_dir or None, file_format="array_record")
  except UserError:
    raise
  except Exception as err:  # unknown config or version ('emnist/nope', 'mnist:9.9.9'), ...
    raise ConfigError(f"cannot open TFDS builder {builder_name!r} ({_first_line(err)}); fix "
                      f"--config.dataset.name={PREFIX}<name>[/<config>][:<version>]") from err
  features = builder.info.features
  image_key = _pick(features, tfds.features.Image, _get(dataset_cfg, "image_key", "") or "",
                    "image_key", name)
  label_key = _pick(features, tfds.features.ClassLabel, _get(dataset_cfg, "label_key", "") or "",
                    "label_key", name)
  image, label = features[image_key], features[label_key]
  shape = tuple(image.shape)
  if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
    raise ConfigError(f"{name} images have no fixed shape ({shape}); this library keeps whole "
                      f"splits as one array: resize them and use --config.dataset.name=arrays")
  if np.dtype(image.np_dtype) != np.uint8:
    raise ConfigError(f"{name} images are {np.dtype(image.np_dtype)}, not uint8; convert them to "
                      f"[0,1] floats and use --config.dataset.name=arrays")
  if not label.num_classes:
    raise ConfigError(f"{name}'s {label_key!r} feature declares no classes; choose another with "
                      f"--config.dataset.label_key")
  return _Features(image_key, label_key, shape, int(label.num_classes),
                   tuple(str(n) for n in (label.names or ())), tuple(builder.info.splits.keys()))


def _generic_validate(dataset_cfg) -> None:
  _features(dataset_cfg)


def _read_generic(dataset_cfg, feats: _Features, split: str) -> Split:
  name = _get(dataset_cfg, "name", "")
  if feats.splits and split not in feats.splits:
    raise DataError(f"{name} has no {split!r} split (it has: {', '.join(feats.splits)}); this "
                    f"library needs a train and a test split: use --config.dataset.name=arrays")
  source = open_source(name, split, _get(dataset_cfg, "data_dir", "") or "",
                       bool(_get(dataset_cfg, "download", False)))
  data = read_split(source, feats.label_key, None, name, image_key=feats.image_key)
  if data.images.shape[1:] != feats.image_shape:
    raise DataError(f"{name} {split} images have shape {data.images.shape[1:]}, but its builder "
                    f"declares {feats.image_shape}; prepare it again with "
                    f"python -m launch.prepare_data --dataset={name}")
  if len(data) and (data.labels.min() < 0 or data.labels.max() >= feats.num_classes):
    raise DataError(f"{name} {split} labels span {data.labels.min()}..{data.labels.max()}, outside "
                    f"the {feats.num_classes} classes its builder declares; prepare it again with "
                    f"python -m launch.prepare_data --dataset={name}")
  return data


def _generic_info(dataset_cfg, feats: _Features | None = None,
                  train: Split | None = None) -> DataInfo:
  feats = feats or _features(dataset_cfg)
  # The constants come from the data (no table to look them up in), so info reads the training
  # images: once here when a config is validated, once more in load.
  train = train if train is not None else _read_generic(dataset_cfg, feats, "train")
  mean, std = channel_stats(train.images)
  return DataInfo(name=_get(dataset_cfg, "name", ""), num_classes=feats.num_classes,
                  image_shape=feats.image_shape, mean=mean, std=std, augment=False,
                  class_names=feats.class_names)


def _generic_load(dataset_cfg) -> tuple[DataInfo, Split, Split]:
  feats = _features(dataset_cfg)
  train = _read_generic(dataset_cfg, feats, "train")
  test = _read_generic(dataset_cfg, feats, "test")
  return _generic_info(dataset_cfg, feats, train), train, test


def _fixed_load(name: str):
  def load_fixed(dataset_cfg) -> tuple[DataInfo, Split, Split]:
    return load(name, data_dir=_get(dataset_cfg, "data_dir", "") or "",
                download=bool(_get(dataset_cfg, "download", False)))
  return load_fixed


_SUMMARIES = {
    "svhn_cropped": "SVHN (cropped digits), tfds svhn_cropped; ISPF's constants",
    "cifar10": "CIFAR-10, tfds cifar10; ISPF's constants, augmented",
    "cifar100": "CIFAR-100, tfds cifar100; ISPF's constants, augmented",
    "cifar20": "CIFAR-100 images by their 20 super-classes (fine labels kept), tfds cifar100",
}
for _name, _src in _SOURCES.items():
  register(Source(name=_name, info=lambda dataset_cfg, _info=_src.info: _info,
                  load=_fixed_load(_name), summary=_SUMMARIES[_name], kind="tfds", fixed_info=True))
register(Source(
    name=PREFIX, info=_generic_info, load=_generic_load, validate_config=_generic_validate,
    summary="any TFDS image-classification dataset by builder name, e.g. tfds:mnist (prepare it "
            "with launch.prepare_data)",
    default_config=lambda: dict(image_key="", label_key=""), kind="tfds", prefix=True,
    suggest=suggest))
