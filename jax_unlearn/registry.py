"""The registry behind every pluggable kind (methods, metrics): specs by name, filled by the modules
of one package on first lookup, listed in a declared order, looked up with a one-line error that names
the closest registered name and the config flag to fix."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
from typing import Generic, TypeVar

from jax_unlearn.errors import ConfigError

__all__ = ["Registry"]

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
  """`kind` ('method', 'metric') and `flag` name things in errors; `package` is the package whose
  modules register themselves on import (its `_private` modules and `base` are skipped). Specs need
  `name` and `order` attributes."""

  def __init__(self, kind: str, package: str, flag: str):
    self.kind, self.package, self.flag = kind, package, flag
    self._specs: dict[str, Spec] = {}
    self._discovered = False

  def add(self, spec: Spec) -> None:
    """Registers `spec` under `spec.name` (a second spec of the same name replaces the first)."""
    self._specs[spec.name] = spec

  def pop(self, name: str) -> Spec | None:
    """Removes and returns the spec registered under `name` (None if there is none)."""
    return self._specs.pop(name, None)

  def peek(self, name: str) -> Spec | None:
    """The spec registered under `name` so far (no discovery)."""
    return self._specs.get(name)

  def discover(self) -> None:
    """Imports every module of the package once (each registers its specs on import)."""
    if self._discovered:
      return
    path = os.path.dirname(importlib.util.find_spec(self.package).origin)
    for info in pkgutil.iter_modules([path]):
      if not info.name.startswith("_") and info.name != "base":
        importlib.import_module(f"{self.package}.{info.name}")
    self._discovered = True

  def all(self) -> list[Spec]:
    """Every registered spec, in order."""
    self.discover()
    return sorted(self._specs.values(), key=lambda s: (s.order, s.name))

  def names(self) -> list[str]:
    """Every registered name, in order."""
    return [s.name for s in self.all()]

  def get(self, name: str) -> Spec:
    """The spec registered under `name`; ConfigError naming the closest name and the flag if unknown."""
    self.discover()
    if name not in self._specs:
      close = difflib.get_close_matches(str(name), list(self._specs), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"unknown {self.kind} {name!r}{hint}; set {self.flag} to one of: "
                        f"{', '.join(self.names())}")
    return self._specs[name]
