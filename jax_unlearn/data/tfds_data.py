"""SVHN and CIFAR from TensorFlow Datasets, read through `tfds.data_source` (SPEC §1.8).

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

import numpy as np

from jax_unlearn.data.dataset import DataInfo, Split
from jax_unlearn.errors import DataError, UserError

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
    # SPEC §1.8: SVHN train (73 257) / test (26 032), `extra` unused, no augmentation, 0.5/0.5.
    "svhn_cropped": _Source("svhn_cropped", "label", None, DataInfo(
        "svhn_cropped", 10, (32, 32, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment=False)),
    "cifar10": _Source("cifar10", "label", None, DataInfo(
        "cifar10", 10, (32, 32, 3), _CIFAR10_MEAN, _CIFAR10_STD, augment=True)),
    "cifar100": _Source("cifar100", "label", None, DataInfo(
        "cifar100", 100, (32, 32, 3), _CIFAR100_MEAN, _CIFAR100_STD, augment=True)),
    # CIFAR-20 = CIFAR-100 images labelled by super-class; the fine label is kept for sub-class
    # forgetting (SPEC §4.5). Normalised with the CIFAR-100 constants (same images).
    "cifar20": _Source("cifar100", "coarse_label", "label", DataInfo(
        "cifar20", 20, (32, 32, 3), _CIFAR100_MEAN, _CIFAR100_STD, augment=True,
        num_fine_classes=100)),
}


def tfds_name(name: str) -> str:
  """The tfds builder behind one of our dataset names ('cifar20' -> 'cifar100')."""
  return _SOURCES[name].tfds_name


def info(name: str) -> DataInfo:
  return _SOURCES[name].info


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that prepares `name` for `tfds.data_source` (see launch/prepare_data.py)."""
  dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  return f'pip install -e ".[prepare]" && python -m launch.prepare_data --dataset={name}{dir_flag}'


def _first_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def open_source(name: str, split: str, data_dir: str = "", download: bool = False):
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


def read_split(source, label_key: str, fine_key: str | None, name: str = "") -> Split:
  """Read every record of a data source into a `Split` (uint8 -> float32 / 255, as ToTensor)."""
  n = len(source)
  if n == 0:
    raise DataError(f"the {name} data source is empty; delete its tfds directory and prepare it "
                    f"again with python -m launch.prepare_data --dataset={name}")
  images = labels = fine = None
  for start in range(0, n, _CHUNK):
    records = _records(source, list(range(start, min(start + _CHUNK, n))))
    chunk = np.stack([np.asarray(r["image"]) for r in records])
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
