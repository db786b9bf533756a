"""Evaluation metrics, one file per metric, registered by name (`metrics.base`):

* `acc` (accuracy.py): acc_forget, acc_retain (percent; test split, or forget-train for random forgetting)
* `mia_i` (mia_i.py): SalUn confidence SVC; percent of forget-train called non-member; the attack's
  held-out balanced accuracy (mia_i_attack_acc)
* `mia_ii` (mia_ii.py): Shokri shadow-model attack, F1 percent; the attack's leave-one-shadow-out
  balanced accuracy (mia_ii_attack_acc)
* `mia_entropy` (mia_entropy.py): SSD entropy attack; percent of forget-train called member
* `ain` (ain.py): GKT relearn-steps ratio
* `kl` (kl.py): mean KL(p_unlearned || p_retrain) on forget test images

and the population audits, functions of score arrays: `lira` (LiRA), `ulira` (U-LiRA) and
`forget_quality` (the NeurIPS'23 unlearning challenge's forgetting score).

Every metric module is also its metric, as a function of one model (the audits: of score arrays).
Calling the module calls its namesake function, and the module's other functions stay attributes::

    metrics.accuracy(model, variables, data)                  # {'acc_forget', 'acc_retain'}
    metrics.mia_i(model, variables, data)                     # = metrics.mia_i.mia_i(...)
    metrics.mia_entropy(model, variables, data)
    metrics.kl(model, variables, data, retrain_vars=retrain)
    metrics.ain(model, variables, data, original_vars=original, retrain_vars=retrain)
    metrics.mia_ii(model, variables, data, attack=attack)     # attack = metrics.mia_ii.fit_attack(...)
    metrics.lira(scores, keep)                                # AUC, TPR at low FPR, ...
    metrics.mia_i.mia_i_from_logits(...)                      # the array-level functions

(`data` is an `UnlearnData`, `jax_unlearn.data.make_unlearn_data`.) `from jax_unlearn.metrics import
kl` gives the same callable module, and `import jax_unlearn.metrics.kl` works as for any module.

`MetricSuite` is built once per (dataset, forget set, original, retrain) and evaluates any number of
models with one forward pass per data pool, sharing the shadow models and Retrain's relearn count::

    suite = metrics.MetricSuite(model, data, original_vars=orig, retrain_vars=retrain, config=config)
    row = suite(unlearned_vars)   # {'acc_forget', 'acc_retain', 'mia_i', 'mia_ii', 'mia_entropy',
                                  #  'ain', 'kl_to_retrain', 'relearn_steps', ...}

Importing this package (or one metric module) is cheap: scikit-learn is imported only when an attack
is fitted, and the registry is filled on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from jax_unlearn.data import UnlearnData
from jax_unlearn.metrics.base import (  # noqa: F401
  Evaluator,
  MetricSpec,
  MetricSuite,
  Outputs,
  columns,
  default_config,
  default_names,
  names,
  population_names,
  register,
  register_population,
  resolve_config,
  result_keys,
  spec,
  specs,
)

__all__ = ["Evaluator", "MetricSpec", "MetricSuite", "Outputs", "columns", "default_config",
           "default_names", "names", "population_names", "register", "register_population",
           "resolve_config", "result_keys", "spec", "specs",
           "evaluate_all", "RESULT_KEYS", "METRIC_NAMES"]


def evaluate_all(model: Any, variables: Any, *, data: UnlearnData, original_vars: Any,
                 retrain_vars: Any = None, config: Any = None, suite: MetricSuite | None = None,
                 log: Callable[[str], None] = print, **evaluator_kwargs: Any) -> dict:
  """Every configured metric of one model. Pass a `suite` (or build one with `MetricSuite`) to reuse
  the shadow models, attack and Retrain's relearn count across models."""
  if suite is None:
    suite = MetricSuite(model, data, original_vars=original_vars, retrain_vars=retrain_vars,
                        config=config, log=log, **evaluator_kwargs)
  return suite(variables)


# Array-level functions of the metric modules, importable from here (imported on first access).
_FUNCTIONS = {
    "accuracy": ("forget_retain_accuracy", "accuracy_from_logits", "forget_eval_split", "masked_accuracy"),
    "kl": ("kl_to_retrain", "mean_kl_from_logits", "kl_divergence_from_logits"),
    "ain": ("relearn", "relearn_steps", "relearn_set_index", "ain_eval_split", "ain_target",
            "anamnesis_index", "RelearnResult"),
    "mia_i": ("mia_i_from_confidences", "mia_i_from_logits", "mia_i_attack_accuracy", "mia_i_pools",
              "true_label_confidence", "retain_member_index"),
    "mia_entropy": ("mia_entropy_from_entropies", "mia_entropy_from_logits", "softmax_entropy"),
    "mia_ii": ("train_shadow_models", "fit_attack", "heldout_attack_accuracy", "mia_ii_f1",
               "mia_ii_f1_from_logits", "mia_ii_pools", "ShadowModels", "Attack"),
}
_WHERE = {f: m for m, fs in _FUNCTIONS.items() for f in fs}
# The metric modules, each callable as its namesake function (`_callable.make_callable`).
MODULES = ("accuracy", "mia_i", "mia_ii", "mia_entropy", "ain", "kl", "lira", "ulira", "forget_quality")
__all__ += ["MODULES", *MODULES, *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
  # Registry-derived constants, computed on first access (discovery imports every metric module).
  if name == "RESULT_KEYS":
    return result_keys()
  if name == "METRIC_NAMES":
    return names()
  if name in _WHERE:
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
  if name in MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
