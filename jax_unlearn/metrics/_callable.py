"""Metric modules that are also their namesake functions: `metrics.kl(...)` is `metrics.kl.kl(...)`.

`jax_unlearn.metrics.kl` has to stay a module: `import jax_unlearn.metrics.kl` must work, and that import
binds the package attribute `metrics.kl` to the module whatever `metrics/__init__.py` says. So instead
of an attribute that would be the function or the module depending on what was imported first, the
module object itself is made callable: its class becomes `CallableModule`, whose `__call__` forwards
to the module's function of the same name. `metrics.kl.kl_to_retrain` and every other attribute are
untouched. Only the standard library is imported here, so the array-level metric modules (LiRA,
U-LiRA, the forgetting score) stay as light as they were.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

__all__ = ["CallableModule", "make_callable"]


class CallableModule(types.ModuleType):
  """A module that calls its namesake function: `module(*args, **kw)` is `module.<name>(*args, **kw)`."""

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.__wrapped__(*args, **kwargs)


def make_callable(module_name: str) -> None:
  """Makes the module `module_name` call its namesake function; call it last: `make_callable(__name__)`.

  The function is the module attribute named like the module's last component (`kl` in
  `jax_unlearn.metrics.kl`). Sets `__wrapped__` (the function) and `__signature__` (its signature), so
  `inspect.signature(module)` is the function's, and appends one line to the module docstring saying
  that calling the module calls the function (`help(module)` documents the function itself under
  FUNCTIONS). Raises TypeError if the module has no such function.
  """
  module = sys.modules[module_name]
  short = module_name.rpartition(".")[2]
  fn = getattr(module, short, None)
  if not inspect.isfunction(fn):
    raise TypeError(f"{module_name} has no function {short!r} to forward calls to; define "
                    f"`def {short}(...)` before calling make_callable({module_name!r})")
  module.__class__ = CallableModule
  module.__wrapped__ = fn
  module.__signature__ = inspect.signature(fn)
  module.__doc__ = ((module.__doc__ or "").rstrip() + f"\n\nThe module is callable: "
                    f"`{module_name}(...)` calls its function `{short}(...)`.\n")
