"""Unlearning methods, one file each, registered by name (see `base`).

Modules are discovered, not listed (`base.discover`, on the first registry lookup), so adding a method
is adding a file; importing one method module (`from jax_unlearn.methods import lfssd`) imports only
what that method needs.
"""
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

__all__ = ["MethodSpec", "Problem", "UnlearnContext", "UnlearnResult", "default_table", "discover", "get",
           "names", "register", "spec", "specs"]
