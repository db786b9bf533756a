"""Unlearning methods, one file each, registered by name (see `base`).

Every module in this package registers itself on import; they are discovered, not listed, so adding
a method is adding a file.
"""
import importlib
import pkgutil

from jax_unlearn.methods.base import UnlearnContext, UnlearnResult, get, names, register  # noqa: F401

for _info in pkgutil.iter_modules(__path__):
  if _info.name not in ("base",) and not _info.name.startswith("_"):
    importlib.import_module(f"{__name__}.{_info.name}")
