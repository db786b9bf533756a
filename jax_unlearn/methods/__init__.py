"""Unlearning methods, one file each, registered by name (see `base`).

Modules are discovered, not listed (`base.discover`, on the first registry lookup), so adding a method
is adding a file; importing one method module (`from jax_unlearn.methods import lfssd`) imports only
what that method needs.
"""
import importlib
import pkgutil
from typing import Any

from jax_unlearn.methods.base import (  # noqa: F401
                                      MethodSpec,
                                      Problem,
                                      UnlearnContext,
                                      UnlearnResult,
                                      default_table,
                                      discover,
                                      get,
                                      names,
                                      register,
                                      spec,
                                      specs,
)

# The method modules (and the shared `base`), imported on first access: `methods.lfssd` works without
# `import jax_unlearn.methods.lfssd`, and importing the package still imports no method.
MODULES = tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
__all__ = ["MethodSpec", "Problem", "UnlearnContext", "UnlearnResult", "default_table", "discover", "get",
           "names", "register", "spec", "specs", "MODULES", *MODULES]


def __getattr__(name: str) -> Any:
  if name in MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
