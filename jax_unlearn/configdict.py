"""The one helper that merges user values over defaults (every method, metric and dataset config).

    cfg = merge(lfssd.default_config(), config.get("lfssd"), prefix="lfssd")
    cfg = merge(lfssd.default_config(), {"alpha": 6.0}, prefix="lfssd")    # a dict works as well
    cfg = merge(lfssd.default_config(), None, prefix="lfssd", alpha=6.0)   # or keyword arguments

Unknown fields and values of the wrong type are a `ConfigError` naming the field
(`--config.<prefix>.<field>`) and what is valid; the result is a new `ConfigDict` (the defaults are
not modified). A field whose default is a `placeholder` (None) takes any value of its declared type.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping

import ml_collections

from jax_unlearn.errors import ConfigError

__all__ = ["merge", "as_dict"]


def as_dict(obj: Any) -> dict:
  """A plain dict of the fields of a ConfigDict, a mapping or a dataclass instance (None: {})."""
  if obj is None:
    return {}
  if isinstance(obj, ml_collections.ConfigDict):
    return {k: obj[k] for k in obj.keys()}
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
  if isinstance(obj, Mapping):
    return dict(obj)
  raise ConfigError(f"expected a ConfigDict, dict or dataclass of settings, got {type(obj).__name__}")


def merge(defaults: ml_collections.ConfigDict, user: Any = None, *, prefix: str,
          **overrides) -> ml_collections.ConfigDict:
  """`defaults` (copied) updated with the fields of `user` and then `overrides`; see the module
  docstring. Nested ConfigDict fields merge recursively."""
  # deepcopy keeps typed placeholders (a None default that takes only its declared type).
  out = copy.deepcopy(defaults) if isinstance(defaults, ml_collections.ConfigDict) \
      else ml_collections.ConfigDict(defaults)
  for name, value in list(as_dict(user).items()) + list(overrides.items()):
    if name not in out:
      valid = ", ".join(sorted(out.keys()))
      raise ConfigError(f"unknown field --config.{prefix}.{name}; valid fields of config.{prefix}: "
                        f"{valid}")
    if isinstance(out[name], ml_collections.ConfigDict) and value is not None:
      out[name] = merge(out[name], value, prefix=f"{prefix}.{name}")
      continue
    try:
      out[name] = value
    except (TypeError, ValueError) as e:
      default = out[name]
      raise ConfigError(f"--config.{prefix}.{name}={value!r} has the wrong type ({e}); give a "
                        f"{type(default).__name__} (default {default!r})") from None
  return out
