"""The user's own arrays: an .npz file (`arrays`), or numpy arrays passed from Python.

    python -m launch.unlearn --config=configs/digits.py --config.dataset.name=arrays \
        --config.dataset.path=my_data.npz ...

    info, train, test = data.from_arrays(x_train, y_train, x_test, y_test, name="mine")
    data.register_arrays("mine", x_train, y_train, x_test, y_test)   # then dataset.name = "mine"

Keys (and arguments): `x_train`, `y_train`, `x_test`, `y_test`, optionally `num_classes`. Images
are uint8 (or any integer type) in [0, 255], or floats in [0, 1]; [N,H,W] (a channel axis is added)
or [N,H,W,C]. Labels are integers 0..K-1 with K = `num_classes`, or the largest label + 1. The
normalisation constants are computed from the training images; the data is not augmented unless
`dataset.augment=True`. Everything is checked up front, each problem as a one-line DataError.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data.dataset import DataInfo, Split, _get, channel_stats
from jax_unlearn.data.registry import Source, lookup, register, unregister
from jax_unlearn.errors import ConfigError, DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
_KEYS_TEXT = ", ".join(KEYS)


def _images(x, key: str, where: str) -> np.ndarray:
  """float32 [N,H,W,C] in [0,1] from uint8/integer [0,255] or float [0,1] images."""
  x = np.asarray(x)
  if x.ndim not in (3, 4):
    raise DataError(f"{where}{key} has shape {x.shape} (rank {x.ndim}); images must be [N,H,W] or "
                    f"[N,H,W,C]")
  if len(x) == 0:
    raise DataError(f"{where}{key} is empty; both splits need at least one image")
  if x.ndim == 3:
    x = x[..., None]
  if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or
                                 np.issubdtype(x.dtype, np.floating)):
    raise DataError(f"{where}{key} has dtype {x.dtype}; images must be uint8 in [0, 255] or floats "
                    f"in [0, 1]")
  lo, hi = x.min(), x.max()
  if np.issubdtype(x.dtype, np.integer):
    if lo < 0 or hi > 255:
      raise DataError(f"{where}{key} has integer pixels in [{lo}, {hi}]; integer images must lie in "
                      f"[0, 255] (uint8)")
    return np.divide(x, np.float32(255.0), dtype=np.float32)
  if not np.isfinite(lo) or not np.isfinite(hi):
    bad = int(np.count_nonzero(~np.isfinite(x)))
    raise DataError(f"{where}{key} has {bad} NaN or inf pixels; images must be finite")
  if lo < 0 or hi > 1:
    hint = " (divide by 255)" if hi > 1 and hi <= 255 and lo >= 0 else ""
    raise DataError(f"{where}{key} has float pixels in [{lo:g}, {hi:g}]; float images must lie in "
                    f"[0, 1]{hint}, or pass uint8 in [0, 255]")
  return x.astype(np.float32, copy=False)


def _labels(y, key: str, where: str, n: int, images_key: str) -> np.ndarray:
  """int32 [N] from integer labels (or floats holding whole numbers)."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise DataError(f"{where}{key} has shape {y.shape}; labels must be one integer per image, [N]")
  if len(y) != n:
    raise DataError(f"{where}{images_key} has {n} images but {key} has {len(y)} labels; they must "
                    f"have the same length")
  if np.issubdtype(y.dtype, np.floating):
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      raise DataError(f"{where}{key} holds non-integer labels (dtype {y.dtype}); labels must be "
                      f"integers 0..K-1")
  elif y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"{where}{key} has dtype {y.dtype}; labels must be integers 0..K-1")
  if y.min() < 0:
    raise DataError(f"{where}{key} has negative labels (min {y.min():g}); labels must be integers "
                    f"0..K-1")
  return y.astype(np.int32)


def from_arrays(x_train: ArrayLike, y_train: ArrayLike, x_test: ArrayLike, y_test: ArrayLike,
                name: str = "arrays", num_classes: int | None = None,
                class_names: tuple[str, ...] = ()) -> tuple[DataInfo, Split, Split]:
  """(info, train, test) from numpy (or jax) arrays, checked; see the module docstring.

  `train` is the full training split: `load_dataset` (through `register_arrays`) draws the
  validation split from it. Raises a one-line DataError for anything malformed.
  """
  return _build(dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test),
                name, num_classes, class_names, where="")


def _build(arrays: dict, name: str, num_classes, class_names=(),
           where: str = "") -> tuple[DataInfo, Split, Split]:
  train_x = _images(arrays["x_train"], "x_train", where)
  test_x = _images(arrays["x_test"], "x_test", where)
  if train_x.shape[1:] != test_x.shape[1:]:
    raise DataError(f"{where}x_train images are {train_x.shape[1:]} but x_test images are "
                    f"{test_x.shape[1:]}; both splits need the same image shape")
  train_y = _labels(arrays["y_train"], "y_train", where, len(train_x), "x_train")
  test_y = _labels(arrays["y_test"], "y_test", where, len(test_x), "x_test")
  top = int(max(train_y.max(), test_y.max()))
  if num_classes is None:
    num_classes = top + 1
  else:
    k = np.asarray(num_classes)
    if k.shape != () or not np.issubdtype(k.dtype, np.integer) or int(k) < 1:
      raise DataError(f"{where}num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(k)
    if top >= num_classes:
      key = "y_train" if train_y.max() == top else "y_test"
      raise DataError(f"{where}{key} has label {top} but num_classes is {num_classes}; labels must "
                      f"lie in 0..{num_classes - 1} (or raise num_classes)")
  if num_classes < 2:
    raise DataError(f"{where}labels name a single class (0); a classifier needs at least 2")
  if class_names and len(class_names) != num_classes:
    raise DataError(f"{where}{len(class_names)} class names for {num_classes} classes")
  mean, std = channel_stats(train_x)
  info = DataInfo(name=name, num_classes=num_classes,
                  image_shape=tuple(int(d) for d in train_x.shape[1:]), mean=mean, std=std,
                  augment=False, class_names=tuple(str(c) for c in class_names))
  return info, Split(train_x, train_y), Split(test_x, test_y)


def load_npz(path: str, name: str = "arrays") -> tuple[DataInfo, Split, Split]:
  """(info, train, test) from an .npz with keys x_train, y_train, x_test, y_test[, num_classes]."""
  if not os.path.isfile(path):
    raise DataError(f"arrays file {path} does not exist; set --config.dataset.path to an .npz with "
                    f"keys {_KEYS_TEXT} (np.savez(path, x_train=..., ...))")
  where = f"{path}: "
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in KEYS if k not in npz.files]
      if missing:
        raise DataError(f"{where}no key {missing[0]!r} (it has: {', '.join(npz.files) or 'none'}); "
                        f"an arrays file needs {_KEYS_TEXT} (and optionally num_classes)")
      arrays = {k: npz[k] for k in KEYS}
      num_classes = npz["num_classes"] if "num_classes" in npz.files else None
  except DataError:
    raise
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:  # not an npz, pickled objects
    first = (str(err).strip().splitlines() or [""])[0][:200]
    raise DataError(f"cannot read {path} as .npz ({type(err).__name__}: {first}); save the arrays "
                    f"with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from err
  return _build(arrays, name, num_classes, where=where)


def _path(dataset_cfg) -> str:
  path = _get(dataset_cfg, "path", "") or ""
  if not path:
    raise ConfigError(f"--config.dataset.name=arrays needs --config.dataset.path=FILE.npz with keys "
                      f"{_KEYS_TEXT}")
  return os.path.expanduser(path)


def _validate(dataset_cfg) -> None:
  path = _path(dataset_cfg)
  if not os.path.isfile(path):
    raise DataError(f"arrays file {path} does not exist; set --config.dataset.path to an .npz with "
                    f"keys {_KEYS_TEXT}")


def _load(dataset_cfg) -> tuple[DataInfo, Split, Split]:
  return load_npz(_path(dataset_cfg))


register(Source(
    name="arrays", info=lambda dataset_cfg: _load(dataset_cfg)[0], load=_load,
    validate_config=_validate, default_config=lambda: dict(path=""), kind="arrays",
    summary=f"your own arrays: an .npz at --config.dataset.path with keys {_KEYS_TEXT}"))


def register_arrays(name: str, x_train: ArrayLike, y_train: ArrayLike, x_test: ArrayLike,
                    y_test: ArrayLike, num_classes: int | None = None,
                    class_names: tuple[str, ...] = ()) -> DataInfo:
  """Register in-memory arrays as dataset `name`, so `config.dataset.name = name` loads them.

  The arrays are checked (and converted) now; `load_dataset` then splits train/val as for any
  dataset. Registering the same name again replaces the arrays; built-in names are refused.
  Returns the DataInfo.
  """
  if not isinstance(name, str) or not name or ":" in name:
    raise ConfigError(f"register_arrays needs a plain dataset name without ':', got {name!r}")
  if lookup(name) is not None and lookup(name).builtin:
    raise ConfigError(f"{name!r} is a built-in dataset name; register your arrays under another")
  info, train, test = from_arrays(x_train, y_train, x_test, y_test, name=name,
                                  num_classes=num_classes, class_names=class_names)
  register(Source(
      name=name, info=lambda dataset_cfg: info, load=lambda dataset_cfg: (info, train, test),
      summary=f"in-memory arrays ({len(train)} train / {len(test)} test images)",
      kind="memory", fixed_info=True, builtin=False), replace=True)
  return info


def unregister_arrays(name: str) -> None:
  """Forget arrays registered with `register_arrays` (frees their memory)."""
  unregister(name)
