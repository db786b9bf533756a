"""Evaluation metrics, one file per metric, registered by name (`metrics.base`):

* `acc` (accuracy.py): acc_forget, acc_retain (percent; test split, or forget-train for random forgetting)
* `mia_i` (mia_i.py): SalUn confidence SVC; percent of forget-train called non-member
* `mia_ii` (mia_ii.py): Shokri shadow-model attack, F1 percent
* `mia_entropy` (mia_entropy.py): SSD entropy attack; percent of forget-train called member
* `ain` (ain.py): GKT relearn-steps ratio
* `kl` (kl.py): mean KL(p_unlearned || p_retrain) on forget test images

`MetricSuite` is built once per (dataset, forget set, original, retrain) and evaluates any number of
models with one forward pass per data pool::

    suite = metrics.MetricSuite(model, data, original_vars=orig, retrain_vars=retrain, config=config)
    row = suite(unlearned_vars)   # {'acc_forget', 'acc_retain', 'mia_i', 'mia_ii', 'mia_entropy',
                                  #  'ain', 'kl_to_retrain', 'relearn_steps', ...}

Importing this package (or one metric module) is cheap: scikit-learn is imported only when an attack
is fitted, and the registry is filled on first use.
"""
import importlib

from jax_unlearn.metrics.base import (Evaluator, MetricSpec, MetricSuite, Outputs, columns,  # noqa: F401
                                      default_config, default_names, names, register, resolve_config,
                                      result_keys, spec, specs)

__all__ = ["Evaluator", "MetricSpec", "MetricSuite", "Outputs", "columns", "default_config",
           "default_names", "names", "register", "resolve_config", "result_keys", "spec", "specs",
           "evaluate_all", "RESULT_KEYS", "METRIC_NAMES"]


def evaluate_all(model, variables, *, data, original_vars, retrain_vars=None, config=None,
                 suite: MetricSuite | None = None, log=print, **evaluator_kwargs) -> dict:
  """Every configured metric of one model. Pass a `suite` (or build one with `MetricSuite`) to reuse
  the shadow models, attack and Retrain's relearn count across models."""
  if suite is None:
    suite = MetricSuite(model, data, original_vars=original_vars, retrain_vars=retrain_vars,
                        config=config, log=log, **evaluator_kwargs)
  return suite(variables)


def __getattr__(name):
  # Registry-derived constants, computed on first access (discovery imports every metric module).
  if name == "RESULT_KEYS":
    return result_keys()
  if name == "METRIC_NAMES":
    return names()
  if name in ("accuracy", "ain", "kl", "mia_entropy", "mia_i", "mia_ii"):
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
