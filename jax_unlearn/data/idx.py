"""IDX files (the MNIST format: MNIST, Fashion-MNIST, KMNIST): `fashion_mnist` and `idx`.

`fashion_mnist` reads the official Fashion-MNIST files from `config.dataset.data_dir`, by default
the folder of Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`),
and checks their content against the official data. `idx` reads any four files with the standard
names from `config.dataset.data_dir` (e.g. MNIST or KMNIST downloaded by hand); no package ships
those, so they have no name of their own (or read them from TFDS: `tfds:mnist`, `tfds:kmnist`).

The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = unsigned byte),
the number of dimensions, each dimension as a big-endian uint32, then the data, big-endian, in C
order. Files may be gzipped (`.gz`) or not. numpy parses them: no TFDS, no TensorFlow.

Checksums: the Debian files are the official gzip files with the gzip header rewritten (the stored
file name dropped, the time stamp changed), so their .gz checksums differ from the md5s in the
Fashion-MNIST README although the deflate streams are identical. We therefore check the sha256 of
the *decompressed* IDX bytes, which is the same for the official download, the Debian copy and
un-gzipped files. A mismatch is an error, not a warning: the name promises the official data, and
its normalisation constants, class names and class counts below are facts about that data (other
IDX files load with `--config.dataset.name=idx`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import Any

import ml_collections
import numpy as np

from jax_unlearn.data.dataset import DataInfo, Split, _get, channel_stats
from jax_unlearn.data.registry import Source, register
from jax_unlearn.errors import ConfigError, DataError

# The four files of an MNIST-style dataset, by role; each may also carry a '.gz' suffix.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> numpy dtype (big-endian where it matters).
_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_REINSTALL = "reinstall with apt-get install --reinstall dataset-fashion-mnist"

# sha256 of the decompressed official files. Derived from Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1; restoring each file's original gzip header (name field, the time
# stamps of 2017-08-31) reproduces byte for byte the md5s of the Fashion-MNIST README and the
# sha256s of tfds' fashion_mnist checksums.tsv, so these are the official data's (see docstring).
FASHION_MNIST_SHA256 = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# Per-channel mean/std of the 60 000 training images (pixel / 255), computed with
# `dataset.channel_stats` from the checksummed files; tests/test_data_sources.py recomputes them.
FASHION_MNIST_MEAN = (0.28604060411453247,)
FASHION_MNIST_STD = (0.3530242443084717,)

FASHION_MNIST_INFO = DataInfo(name="fashion_mnist", num_classes=10, image_shape=(28, 28, 1),
                              mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, augment=False,
                              class_names=FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------------- the format

def read_bytes(path: str) -> bytes:
  """The bytes of `path`, gunzipped if it is gzip (by its magic bytes, not its name).

  A truncated gzip stream yields what it holds rather than raising, so that `parse` can report
  the size the header promised against the size that arrived.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] != b"\x1f\x8b":
    return raw
  parts = []
  while raw[:2] == b"\x1f\x8b":  # a gzip file may hold several members
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
      parts.append(inflater.decompress(raw))
    except zlib.error:  # corrupt deflate data: keep what came before; `parse` reports the size
      break
    if not inflater.eof:
      break
    raw = inflater.unused_data
  return b"".join(parts)


def parse(raw: bytes, path: str, fix: str) -> np.ndarray:
  """An IDX file's contents as a native-endian array of the dimensions its header declares.

  Every failure is one DataError naming `path` and ending in `fix` (how to get a good copy).
  """
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or raw[3] == 0:
    raise DataError(f"{path} is not an IDX file (it starts with {raw[:4].hex() or 'nothing'}, an "
                    f"IDX file with 00 00, a type byte 08..0e and its number of dimensions); {fix}")
  dtype, ndim = _DTYPES[raw[2]], raw[3]
  offset = 4 + 4 * ndim
  if len(raw) < offset:
    raise DataError(f"file {path} is truncated (expected at least {offset} bytes of header, got "
                    f"{len(raw)}); {fix}")
  dims = struct.unpack(f">{ndim}I", raw[4:offset])
  count = int(np.prod(dims, dtype=np.int64))
  expected = offset + count * dtype.itemsize
  if len(raw) < expected:
    raise DataError(f"file {path} is truncated (expected {expected} bytes, got {len(raw)}); {fix}")
  if len(raw) > expected:
    raise DataError(f"file {path} has {len(raw) - expected} bytes more than its header declares "
                    f"(expected {expected} bytes, got {len(raw)}); {fix}")
  data = np.frombuffer(raw, dtype, count=count, offset=offset).reshape(dims)
  return data if dtype.isnative or dtype.itemsize == 1 else data.astype(dtype.newbyteorder("="))


def read(path: str, fix: str = "replace it with a complete copy") -> np.ndarray:
  """Parse one IDX file (gzipped or not); see `parse`."""
  return parse(read_bytes(path), path, fix)


def find_files(data_dir: str) -> tuple[dict[str, str], list[str]]:
  """({role: path} of the files present in `data_dir`, [names of the missing ones]).

  Prefers `<name>.gz` over `<name>`, as the official downloads are gzipped."""
  found, missing = {}, []
  for role, stem in FILES.items():
    for candidate in (stem + ".gz", stem):
      path = os.path.join(data_dir, candidate)
      if os.path.isfile(path):
        found[role] = path
        break
    else:
      missing.append(stem + "[.gz]")
  return found, missing


def _splits(arrays: dict[str, np.ndarray], paths: dict[str, str],
            fix: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images uint8 [N,H,W,C], labels int32), (test ...)) from parsed IDX arrays."""
  out = []
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise DataError(f"{ipath} holds {images.dtype} data of shape {images.shape}; image files must "
                      f"be unsigned bytes [N,H,W] or [N,H,W,C]; {fix}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{lpath} holds {labels.dtype} data of shape {labels.shape}; label files "
                      f"must be integers [N]; {fix}")
    if len(images) != len(labels):
      raise DataError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels; "
                      f"{fix}")
    if len(labels) == 0:
      raise DataError(f"{ipath} holds no images; {fix}")
    if labels.min() < 0:
      raise DataError(f"{lpath} has negative labels (min {labels.min()}); {fix}")
    out.append((images if images.ndim == 4 else images[..., None], labels.astype(np.int32)))
  (train_x, _), (test_x, _) = out
  if train_x.shape[1:] != test_x.shape[1:]:
    raise DataError(f"train images are {train_x.shape[1:]} but test images {test_x.shape[1:]} "
                    f"({paths['train_images']}, {paths['test_images']}); {fix}")
  return out[0], out[1]


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
  return Split(np.divide(images, np.float32(255.0), dtype=np.float32), labels)


# ------------------------------------------------------------------------------- fashion_mnist

def _fashion_dir(dataset_cfg) -> str:
  return _get(dataset_cfg, "data_dir", "") or FASHION_MNIST_DIR


def _fashion_files(dataset_cfg) -> dict[str, str]:
  data_dir = _fashion_dir(dataset_cfg)
  found, missing = find_files(data_dir)
  if missing:
    where = ("install them with apt-get install dataset-fashion-mnist"
             if data_dir == FASHION_MNIST_DIR else
             "point --config.dataset.data_dir at the folder holding the four Fashion-MNIST files "
             "(or leave it empty after apt-get install dataset-fashion-mnist)")
    raise DataError(f"fashion_mnist: {', '.join(missing)} not found in {data_dir}; {where}, or read "
                    f"it from TFDS with --config.dataset.name=tfds:fashion_mnist")
  return found


def _fashion_fix(dataset_cfg) -> str:
  if _fashion_dir(dataset_cfg) == FASHION_MNIST_DIR:
    return _REINSTALL
  return "download the official Fashion-MNIST file again (or apt-get install dataset-fashion-mnist)"


def load_fashion_mnist(dataset_cfg: ml_collections.ConfigDict | dict[str, Any] | None = None
                       ) -> tuple[DataInfo, Split, Split]:
  """(info, the 60 000 training images, the 10 000 test images) of Fashion-MNIST, checksummed."""
  dataset_cfg = {} if dataset_cfg is None else dataset_cfg
  paths = _fashion_files(dataset_cfg)
  fix = _fashion_fix(dataset_cfg)
  arrays = {}
  for role, path in paths.items():
    raw = read_bytes(path)
    arrays[role] = parse(raw, path, fix)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FASHION_MNIST_SHA256[role]:
      raise DataError(f"{path} is not the official Fashion-MNIST {FILES[role]} (sha256 of its IDX "
                      f"data {digest[:16]}..., expected {FASHION_MNIST_SHA256[role][:16]}...); "
                      f"{fix}, or read other IDX files with --config.dataset.name=idx")
  (train_x, train_y), (test_x, test_y) = _splits(arrays, paths, fix)
  return FASHION_MNIST_INFO, _to_split(train_x, train_y), _to_split(test_x, test_y)


def _fashion_validate(dataset_cfg) -> None:
  _fashion_files(dataset_cfg)  # missing files fail at config validation, before any work


register(Source(
    name="fashion_mnist", info=lambda dataset_cfg: FASHION_MNIST_INFO, load=load_fashion_mnist,
    validate_config=_fashion_validate,
    summary=f"Fashion-MNIST from IDX files (default {FASHION_MNIST_DIR}: apt-get install "
            f"dataset-fashion-mnist), checksummed",
    kind="idx", fixed_info=True))


# ------------------------------------------------------------------------------------------ idx

def _idx_files(dataset_cfg) -> dict[str, str]:
  data_dir = _get(dataset_cfg, "data_dir", "") or ""
  names = ", ".join(f"{stem}[.gz]" for stem in FILES.values())
  if not data_dir:
    raise ConfigError(f"--config.dataset.name=idx needs --config.dataset.data_dir=DIR, a folder "
                      f"with {names}")
  found, missing = find_files(data_dir)
  if missing:
    raise DataError(f"idx: {', '.join(missing)} not found in {data_dir}; set "
                    f"--config.dataset.data_dir to a folder with {names}")
  return found


def _idx_read(dataset_cfg, roles) -> tuple[dict[str, str], dict[str, np.ndarray]]:
  paths = _idx_files(dataset_cfg)
  return paths, {role: read(paths[role]) for role in roles}


def _idx_info(dataset_cfg, arrays=None, paths=None) -> DataInfo:
  if arrays is None:
    paths, arrays = _idx_read(dataset_cfg, FILES)
  (train_x, train_y), (_, test_y) = _splits(arrays, paths, "replace it with a complete copy")
  mean, std = channel_stats(train_x, scale=255.0)
  return DataInfo(name="idx", num_classes=int(max(train_y.max(), test_y.max())) + 1,
                  image_shape=tuple(int(d) for d in train_x.shape[1:]), mean=mean, std=std,
                  augment=False)


def load_idx(dataset_cfg: ml_collections.ConfigDict | dict[str, Any]) -> tuple[DataInfo, Split, Split]:
  """(info, train, test) from the four IDX files in `dataset_cfg.data_dir` (classes: max label+1)."""
  paths, arrays = _idx_read(dataset_cfg, FILES)
  (train_x, train_y), (test_x, test_y) = _splits(arrays, paths, "replace it with a complete copy")
  info = _idx_info(dataset_cfg, arrays, paths)
  return info, _to_split(train_x, train_y), _to_split(test_x, test_y)


register(Source(
    name="idx", info=_idx_info, load=load_idx, validate_config=_idx_files,
    summary="MNIST-format IDX files (MNIST, KMNIST, ...) in --config.dataset.data_dir",
    kind="idx"))
