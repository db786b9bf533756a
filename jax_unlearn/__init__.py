"""jax_unlearn: machine unlearning for image classifiers in JAX/Flax.

Submodules are imported on first use (PEP 562), so `import jax_unlearn` is cheap and importing one
method or metric does not import the others::

    from jax_unlearn import api, data, methods, metrics, models, optim
    from jax_unlearn.methods import lfssd, distill, distruction

Layers (each imports only the ones above it in this list): `data`, `models`, `optim` -> `train` ->
`methods`, `metrics` -> `report` -> `config`, `api`, `experiment`, `sweep` -> `launch/`.
"""
import importlib

__version__ = "0.2.0"

_SUBMODULES = ("api", "bench", "cli", "compile_cache", "config", "configdict", "data", "errors",
               "experiment", "io", "methods", "metrics", "models", "optim", "report", "sweep", "train",
               "xla_flags")
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(__all__)
