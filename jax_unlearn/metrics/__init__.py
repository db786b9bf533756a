"""Evaluation metrics, one file per metric (SPEC §1.10, §4.4; project decision 8).

* `accuracy.forget_retain_accuracy` -> acc_forget, acc_retain (percent, test split)
* `mia_i.mia_i` -> MIA-I (SalUn confidence SVC; percent of forget-train called non-member)
* `mia_entropy.mia_entropy` -> SSD entropy attack (percent of forget-train called member)
* `mia_ii.train_shadow_models` / `fit_attack` / `mia_ii_f1` -> MIA-II (shadow-model attack, F1 percent)
* `ain.relearn_steps` / `anamnesis_index` -> AIN (GKT relearn-steps ratio)
* `kl.kl_to_retrain` -> mean KL(p_unlearned || p_retrain) on forget-class test images

`MetricSuite` is built once per (dataset, forget set, original, retrain): it holds what does not depend
on the evaluated model (Retrain's relearn count, the AIN target, the shadow models and the fitted MIA-II
attack, Retrain's outputs for the KL) and evaluates any number of models with one forward pass per
data pool::

    suite = metrics.MetricSuite(model, data, original_vars=orig, retrain_vars=retrain, config=config)
    row = suite(unlearned_vars)   # {'acc_forget', 'acc_retain', 'mia_i', 'mia_ii', 'mia_entropy',
                                  #  'ain', 'kl_to_retrain', 'relearn_steps', ...}

`config` is the full experiment config (reads `config.metrics` and `config.seed`) or the metrics
sub-config alone. Metrics not listed in `config.metrics.names`, or that need a Retrain model when
none is given (ain, kl_to_retrain), are NaN.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from jax_unlearn.errors import ConfigError
from jax_unlearn.report.table import METRIC_KEYS
from jax_unlearn.metrics import accuracy, ain, kl, mia_entropy, mia_i, mia_ii
from jax_unlearn.metrics.accuracy import accuracy_from_logits, forget_eval_split, forget_retain_accuracy
from jax_unlearn.metrics.ain import (RelearnResult, ain_eval_split, ain_target, anamnesis_index, relearn,
                                     relearn_set_index, relearn_steps)
from jax_unlearn.metrics.kl import kl_divergence_from_logits, kl_to_retrain, mean_kl_from_logits
from jax_unlearn.metrics.mia_entropy import (mia_entropy_from_entropies, mia_entropy_from_logits,
                                             softmax_entropy)
from jax_unlearn.metrics.mia_i import (mia_i_from_confidences, mia_i_from_logits, mia_i_pools,
                                       retain_member_index, true_label_confidence)
from jax_unlearn.metrics.mia_ii import (Attack, ShadowModels, fit_attack, mia_ii_f1, mia_ii_f1_from_logits,
                                        mia_ii_pools, train_shadow_models)
from jax_unlearn.train.evaluate import predict_logits

METRIC_NAMES = ("acc", "mia_i", "mia_entropy", "mia_ii", "ain", "kl")
RESULT_KEYS = METRIC_KEYS  # the metric columns of the table (report/table.py), in its order
# config.metrics shadow field -> the original model's field it defaults to (config.train.*, or the
# top-level supervised batch size).
SHADOW_RECIPE = {"shadow_epochs": "epochs", "shadow_lr": "lr", "shadow_momentum": "momentum",
                 "shadow_weight_decay": "weight_decay", "shadow_milestones": "milestones",
                 "shadow_gamma": "gamma", "shadow_batch_size": "batch_size"}

__all__ = ["MetricSuite", "evaluate_all", "default_config", "resolve_config", "METRIC_NAMES",
           "RESULT_KEYS", "accuracy", "ain", "kl", "mia_entropy", "mia_i", "mia_ii",
           "forget_retain_accuracy", "accuracy_from_logits", "forget_eval_split",
           "relearn", "relearn_steps", "relearn_set_index", "ain_eval_split", "ain_target",
           "anamnesis_index", "RelearnResult", "kl_to_retrain", "kl_divergence_from_logits",
           "mean_kl_from_logits", "mia_i_from_confidences", "mia_i_from_logits", "mia_i_pools",
           "true_label_confidence", "retain_member_index", "mia_entropy_from_entropies",
           "mia_entropy_from_logits", "softmax_entropy", "train_shadow_models", "fit_attack",
           "mia_ii_f1", "mia_ii_f1_from_logits", "mia_ii_pools", "ShadowModels", "Attack"]


def default_config() -> ml_collections.ConfigDict:
  """`config.metrics` defaults. The MIA-II shadows' training fields are None: `resolve_config` gives
  them the original model's recipe (`config.train`, `config.batch_size`)."""
  c = ml_collections.ConfigDict()
  c.names = METRIC_NAMES           # which metrics to compute; the others are reported as NaN
  c.seed_offset = 1000             # metric seed = config.seed + seed_offset (pools, shuffles, shadows)
  c.batch_size = 512               # inference batch (padded, never 1)
  # MIA-I / mia_entropy: cap per side on the attack's training samples (the RBF-SVC fit is quadratic).
  c.mia_max_samples = 10000
  # MIA-II (Shokri shadows; SPEC §1.10 reconstruction, see metrics/mia_ii.py for the pools). Shadows
  # use "the same architecture and recipe" as the target: each shadow_* training field left None takes
  # the original's value (`SHADOW_RECIPE`: config.train.* and config.batch_size); set one to override.
  c.num_shadow = 4
  c.shadow_epochs = config_dict.placeholder(int)
  c.shadow_lr = config_dict.placeholder(float)
  c.shadow_momentum = config_dict.placeholder(float)
  c.shadow_weight_decay = config_dict.placeholder(float)
  c.shadow_batch_size = config_dict.placeholder(int)
  c.shadow_milestones = config_dict.placeholder(tuple)
  c.shadow_gamma = config_dict.placeholder(float)
  c.shadow_augment = True          # use the dataset's augmentation (DataInfo.augment) if it has one
  # Train the S shadows as one vmapped step (False: one after another; equal up to float rounding).
  # On XLA CPU the vmapped conv (a grouped conv) is slower: digits, AllCNN w=0.25, 4 shadows x 150
  # steps took 106 s vmapped vs 76 s looped on this 2-core machine. Accelerators favour the vmap.
  c.shadow_vmap = True
  c.mia_ii_attack = "hgb"          # 'hgb' (HistGradientBoosting) | 'logreg' | 'mlp'
  c.mia_ii_topk = 10               # sorted softmax entries fed to the attack; 0 = all K
  c.mia_ii_max_eval = 5000         # cap on evaluation members / non-members (each side)
  # AIN (GKT relearn-time ratio, SPEC §1.10).
  c.ain_alpha = 0.05               # target = (1 - alpha) x original forget-val accuracy
  c.ain_lr = 1e-3                  # Adam
  c.ain_batch_size = 256
  c.ain_max_epochs = 10            # cap: max_epochs x ceil(|relearn set| / batch) steps
  c.ain_retain_ratio = 1.0         # retain-train images per forget-train image in the relearn set
  return c


def resolve_config(config) -> tuple[ml_collections.ConfigDict, int]:
  """(metrics config merged over `default_config()`, metric seed). Accepts the full config or
  `config.metrics`; unknown fields and bad values raise ConfigError.

  Shadow training fields left None take the original model's recipe (`SHADOW_RECIPE`) from the full
  config, or from `jax_unlearn.config.base_config()` when only `config.metrics` is given."""
  from jax_unlearn.config import base_config  # noqa: PLC0415 (config imports this package)
  seed, full = 0, None
  if config is not None and "metrics" in config:
    seed, full, config = int(config.get("seed", 0)), config, config.metrics
  cfg = default_config()
  names = cfg.names
  if config is not None:
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(given) - set(cfg))
    if unknown:
      raise ConfigError(f"unknown config.metrics field(s) {unknown}; valid fields: {sorted(cfg)}")
    names = given.pop("names", names)  # may be a string ("acc,mia_i"); normalised below
    cfg.update({k: v for k, v in given.items() if v is not None})
  source = full if full is not None and "train" in full else base_config()
  recipe = {**source.train.to_dict(), "batch_size": source.get("batch_size", 64)}
  for field, key in SHADOW_RECIPE.items():
    if cfg[field] is None:
      cfg[field] = tuple(recipe[key]) if key == "milestones" else recipe[key]
  names = (names,) if isinstance(names, str) else tuple(names)
  names = tuple(n.strip() for part in names for n in part.split(",") if n.strip())
  bad = sorted(set(names) - set(METRIC_NAMES))
  if bad:
    raise ConfigError(f"unknown metric(s) {bad} in config.metrics.names; use a subset of {METRIC_NAMES}, "
                      "e.g. --config.metrics.names=\"('acc','mia_i')\"")
  cfg.names = names
  if not 0.0 <= cfg.ain_alpha < 1.0:
    raise ConfigError(f"config.metrics.ain_alpha must be in [0, 1), got {cfg.ain_alpha}; the GKT "
                      "value is 0.05")
  if cfg.mia_ii_attack not in mia_ii.ATTACKS:
    raise ConfigError(f"unknown config.metrics.mia_ii_attack {cfg.mia_ii_attack!r}; use one of "
                      f"{mia_ii.ATTACKS}")
  for field in ("batch_size", "mia_max_samples", "num_shadow", "shadow_epochs", "shadow_batch_size",
                "mia_ii_max_eval", "ain_batch_size", "ain_max_epochs"):
    if int(cfg[field]) < 1:
      raise ConfigError(f"config.metrics.{field} must be >= 1, got {cfg[field]}; see "
                        "jax_unlearn.metrics.default_config() for defaults")
  return cfg, seed + int(cfg.seed_offset)


class MetricSuite:
  """All metrics for one (dataset, forget set); see the module docstring. Cached lazily: the shadow
  models and attack on the first `mia_ii` use, Retrain's relearn count on the first `ain` use.

  `shadow` (a trained `ShadowModels`, e.g. restored from a cache) and `attack` (a fitted `Attack`)
  skip the corresponding work. `key` seeds the shadows (default: PRNGKey(metric seed)). `shadow_dir`:
  the shadows are trained with a per-epoch orbax checkpoint there (exact resume after a kill) and a
  finished one is reused; it must be specific to the data, model and metric config
  (`jax_unlearn.experiment` names it so).
  """

  def __init__(self, model, data, *, original_vars, retrain_vars=None, config=None,
               shadow: ShadowModels | None = None, attack: Attack | None = None, key=None,
               log: Callable[[str], None] = print, shadow_dir: str | None = None):
    self.model, self.data, self.original, self.retrain = model, data, original_vars, retrain_vars
    self.cfg, self.seed = resolve_config(config)
    self.key = jax.random.PRNGKey(self.seed) if key is None else key
    self.log = log
    self.shadow_dir = shadow_dir
    self._shadow, self._attack = shadow, attack
    self._target = self._relearn_retrain = self._retrain_kl_logits = None
    self._relearn_set = None
    self.forget_idx = np.flatnonzero(np.asarray(data.forget_train_mask, bool))
    self.member_idx = retain_member_index(data, self.cfg.mia_max_samples, self.seed)
    self.mia_i_member, self.mia_i_nonmember, _ = mia_i_pools(data, self.cfg.mia_max_samples, self.seed)

  def _logits(self, variables, images):
    return predict_logits(self.model, variables, images, self.data.info, self.cfg.batch_size)

  # ---------------------------------------------------------------- cached, model-independent parts
  @property
  def shadow(self) -> ShadowModels:
    if self._shadow is None:
      c, t0 = self.cfg, time.time()
      self._shadow = train_shadow_models(
          self.model, self.data, self.key, num_shadow=c.num_shadow, epochs=c.shadow_epochs,
          lr=c.shadow_lr, momentum=c.shadow_momentum, weight_decay=c.shadow_weight_decay,
          batch_size=c.shadow_batch_size, milestones=tuple(c.shadow_milestones), gamma=c.shadow_gamma,
          augment=None if c.shadow_augment else False, seed=self.seed,
          max_eval=c.mia_ii_max_eval, vmapped=bool(c.shadow_vmap), ckpt_dir=self.shadow_dir,
          log=self.log)
      self.log(f"[metrics] trained {c.num_shadow} shadow models on a pool of "
               f"{self._shadow.in_mask.shape[1]} images, last-epoch loss {self._shadow.final_loss:.4f} "
               f"({time.time() - t0:.1f}s)")
    return self._shadow

  @property
  def attack(self) -> Attack:
    if self._attack is None:
      self._attack = fit_attack(self.model, self.shadow, self.data, topk=self.cfg.mia_ii_topk,
                                kind=self.cfg.mia_ii_attack, seed=self.seed, batch_size=self.cfg.batch_size)
      self.log(f"[metrics] MIA-II attack ({self.cfg.mia_ii_attack}) accuracy on shadow in/out: "
               f"{self._attack.shadow_accuracy:.1f}%")
    return self._attack

  @property
  def relearn_set(self):
    if self._relearn_set is None:
      idx = relearn_set_index(self.data, self.cfg.ain_retain_ratio, self.seed)
      self._relearn_set = (np.asarray(self.data.train.images)[idx], np.asarray(self.data.train.labels)[idx])
    return self._relearn_set

  @property
  def target_acc(self) -> float:
    """(1 - alpha) x the original model's accuracy on the AIN evaluation split (percent)."""
    if self._target is None:
      ev = ain_eval_split(self.data)
      orig = accuracy.masked_accuracy(self._logits(self.original, ev.images), ev.labels)
      self._target = ain_target(orig, self.cfg.ain_alpha)
    return self._target

  def relearn(self, variables) -> RelearnResult:
    c = self.cfg
    return relearn(self.model, variables, self.relearn_set, ain_eval_split(self.data), self.target_acc,
                   info=self.data.info, lr=c.ain_lr, batch_size=c.ain_batch_size,
                   max_epochs=c.ain_max_epochs, seed=self.seed, eval_batch_size=c.batch_size)

  @property
  def relearn_retrain(self) -> RelearnResult:
    if self._relearn_retrain is None:
      self._relearn_retrain = self.relearn(self.retrain)
      r = self._relearn_retrain
      self.log(f"[metrics] Retrain relearns in {r.steps} steps (target {self.target_acc:.2f}%, "
               f"reached={r.reached}, cap {r.max_steps})")
    return self._relearn_retrain

  def info(self) -> dict:
    """JSON-able description of the cached parts (for metrics.json / BUILD_NOTES)."""
    out = {"seed": self.seed, "mia_i_members": len(self.mia_i_member),
           "mia_i_nonmembers": len(self.mia_i_nonmember), "mia_entropy_members": len(self.member_idx),
           "forget_train": len(self.forget_idx)}
    if self._target is not None:
      out["ain_target_acc"] = self._target
    if self._relearn_retrain is not None:
      out["relearn_steps_retrain"] = self._relearn_retrain.steps
      out["relearn_max_steps"] = self._relearn_retrain.max_steps
    if self._shadow is not None:
      out.update(shadow_pool=int(self._shadow.in_mask.shape[1]),
                 num_shadow=int(self._shadow.in_mask.shape[0]),
                 shadow_final_loss=self._shadow.final_loss,
                 mia_ii_members=len(self._shadow.member_idx),
                 mia_ii_nonmembers=len(self._shadow.nonmember_idx))
    if self._attack is not None:
      out["mia_ii_attack_shadow_acc"] = self._attack.shadow_accuracy
    return out

  # ------------------------------------------------------------------------------ per model
  def __call__(self, variables) -> dict:
    """All configured metrics of one model (`variables`); see RESULT_KEYS (+ relearn details)."""
    d, names = self.data, set(self.cfg.names)
    out = {k: float("nan") for k in RESULT_KEYS}
    train_x, train_y = np.asarray(d.train.images), np.asarray(d.train.labels)
    test_y = np.asarray(d.test.labels)
    test_logits = self._logits(variables, d.test.images)
    forget_logits = self._logits(variables, train_x[self.forget_idx])
    forget_y = train_y[self.forget_idx]
    if "acc" in names:
      out.update(accuracy_from_logits(test_logits, test_y, d.forget_test_mask, forget_logits, forget_y))
    if names & {"mia_i", "mia_entropy"}:
      member_logits = self._logits(variables, train_x[self.member_idx])
    if "mia_i" in names:
      n = len(self.mia_i_member)  # the MIA-I members are this prefix of `member_idx`
      out["mia_i"] = mia_i_from_logits(member_logits[:n], train_y[self.member_idx[:n]],
                                       test_logits[self.mia_i_nonmember], test_y[self.mia_i_nonmember],
                                       forget_logits, forget_y)
    if "mia_entropy" in names:
      out["mia_entropy"] = mia_entropy_from_logits(member_logits, test_logits, forget_logits)
    if "mia_ii" in names:
      a = self.attack
      pos = np.searchsorted(self.forget_idx, a.member_idx)  # members are forget-train images
      out["mia_ii"] = mia_ii_f1_from_logits(a, forget_logits[pos], test_logits[a.nonmember_idx])
    if "kl" in names and self.retrain is not None:
      has_ftest = bool(np.any(d.forget_test_mask))
      mine = test_logits[np.asarray(d.forget_test_mask, bool)] if has_ftest else forget_logits
      if self._retrain_kl_logits is None:
        self._retrain_kl_logits = self._logits(self.retrain, forget_eval_split(d).images)
      out["kl_to_retrain"] = mean_kl_from_logits(mine, self._retrain_kl_logits)
    if "ain" in names and self.retrain is not None:
      r, rr = self.relearn(variables), self.relearn_retrain
      out.update(ain=anamnesis_index(r.steps, rr.steps), relearn_steps=r.steps,
                 relearn_reached=r.reached, relearn_steps_retrain=rr.steps,
                 relearn_max_steps=r.max_steps)
    return out

  evaluate = __call__


def evaluate_all(model, variables, *, data, original_vars, retrain_vars=None, shadow=None, config=None,
                 suite: MetricSuite | None = None, log: Callable[[str], None] = print) -> dict:
  """Every metric of one model. Pass a `suite` (or build one with `MetricSuite`) to reuse the shadow
  models, attack and Retrain's relearn count across methods; `shadow` may be a trained `ShadowModels`
  or a fitted `Attack`."""
  if suite is None:
    attack = shadow if isinstance(shadow, Attack) else None
    shadow = shadow if isinstance(shadow, ShadowModels) else None
    suite = MetricSuite(model, data, original_vars=original_vars, retrain_vars=retrain_vars,
                        config=config, shadow=shadow, attack=attack, log=log)
  return suite(variables)
