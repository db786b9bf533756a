"""The registry of dataset sources: one `Source` spec per dataset name (or name prefix).

Each source module (`digits`, `tfds_data`, `idx`, `arrays`) registers its names when the data
package is imported; `load_dataset`, `dataset_info`, `names()` and `config.validate` look them up
here, so a list of dataset names is never written out twice (STYLE: one registry per kind).

A spec holds functions of `config.dataset` (a ConfigDict or a plain dict): `validate_config` raises
a one-line ConfigError/DataError naming the fix, `info` returns the `DataInfo` (cheaply where the
source can: fixed sources return constants), `load` returns `(info, train_full, test)`.
Registering must stay cheap: a source imports tensorflow_datasets, scikit-learn or its files only
inside these functions, never at import time.

This module imports nothing from the data package at run time, so any sibling can import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

# `DataInfo` and `Split` (jax_unlearn.data.dataset) in the annotations below are names only: dataset.py
# imports this module, so this one imports nothing from the data package (no import cycle).


def _no_check(dataset_cfg: Any) -> None:
  del dataset_cfg


@dataclasses.dataclass(frozen=True)
class Source:
  """How to validate, describe and load one dataset name.

  name: our name ('cifar20', 'fashion_mnist', 'arrays'), or with `prefix=True` a prefix such as
    'tfds:' that takes any suffix ('tfds:mnist'); the functions then read the full name from
    `dataset_cfg.name`.
  info / load / validate_config: functions of `config.dataset` (see the module docstring).
  default_config: the `config.dataset` fields this source reads beyond the common ones (name,
    data_dir, download, val_fraction, augment), with their defaults.
  summary: one line for error messages and docs.
  kind: which reader serves it: 'sklearn', 'tfds' (launch/prepare_data prepares these), 'idx',
    'arrays' or 'memory' (arrays registered from Python).
  stratify_val: draw the train/val split stratified by class (digits: its val split is small).
  fixed_info: `info` needs no config beyond the name, so `dataset_info(name)` is meaningful.
  builtin: registered by the library (in-memory sources from `register_arrays` are not), which
    protects these names from being replaced.
  suggest: for an unknown name, the name of this source the user probably meant, or None (the
    tfds source suggests 'tfds:mnist' for 'mnist'); used only on the error path.
  """
  name: str
  info: Callable[[Any], Any]                     # -> DataInfo
  load: Callable[[Any], tuple[Any, Any, Any]]     # -> (DataInfo, train Split, test Split)
  summary: str
  default_config: Callable[[], dict] = dict
  validate_config: Callable[[Any], None] = _no_check
  kind: str = ""
  prefix: bool = False
  stratify_val: bool = False
  fixed_info: bool = False
  builtin: bool = True
  suggest: Callable[[str], str | None] | None = None


# Registration order is the order of `names()` and of the names listed in error messages.
_SOURCES: dict[str, Source] = {}


def register(source: Source, replace: bool = False) -> Source:
  """Add `source` under `source.name`; an existing name needs `replace=True` and is never builtin."""
  old = _SOURCES.get(source.name)
  if old is not None and not replace:
    raise ValueError(f"dataset source {source.name!r} is already registered; pass replace=True")
  if old is not None and old.builtin:
    raise ValueError(f"{source.name!r} is a built-in dataset name; register under another name")
  if source.prefix and not source.name.endswith(":"):
    raise ValueError(f"a prefix source's name must end with ':', got {source.name!r}")
  _SOURCES[source.name] = source
  return source


def unregister(name: str) -> None:
  """Remove a source registered by the user (e.g. an in-memory `register_arrays` source)."""
  source = _SOURCES.get(name)
  if source is not None and source.builtin:
    raise ValueError(f"{name!r} is a built-in dataset name and cannot be unregistered")
  _SOURCES.pop(name, None)


def lookup(name: str) -> Source | None:
  """The source serving `name` (an exact name, else a prefix with a non-empty suffix), or None."""
  if not isinstance(name, str):
    return None
  source = _SOURCES.get(name)
  if source is not None and not source.prefix:
    return source
  for source in _SOURCES.values():
    if source.prefix and name.startswith(source.name) and len(name) > len(source.name):
      return source
  return None


def sources() -> tuple[Source, ...]:
  """Every registered source, in registration order."""
  return tuple(_SOURCES.values())
