"""AIN, the Anamnesis Index (GKT, Chundawat et al. 2023; ISPF paper §4.1).

AIN = r(unlearned) / r(retrain), where r(model) counts the optimiser steps that relearning needs to bring
the model's forget-class accuracy back to (1 - alpha) x the *original* model's forget-class accuracy
(alpha = 0.05). 1 is ideal; << 1 means forget information survived (it comes back quickly); > 1 means
the model is harder to re-teach than Retrain.

Protocol (`ayushkumartarun/zero-shot-unlearning: metrics.py: ain / relearn_time`, bugs fixed):
* optimiser Adam (lr 1e-3, no weight decay), batch 256, at most 10 epochs, BatchNorm in training mode
  (batch statistics, running averages updated) during the steps; accuracy evaluated after *every* step
  on the forget-class **validation** view (`data.forget_val`) with eval-mode BatchNorm. The reference
  evaluates a global `valid_dl` instead of its `valid_loader` argument and trains on the global
  `train_ds`; both are fixed here.
* relearning data ("training data that contains the forget class"): all forget-class training images
  plus an equal number (`retain_ratio` x as many) of retain training images drawn at random with a fixed
  seed. Why this subset: forget images alone would make every model "relearn" by predicting the forget
  class for everything, so the count would not reflect latent forget information; the full training set
  (the reference's accidental choice) dilutes the forget class to 1/K of each batch and costs a full
  pass. A 1:1 mix keeps relearning a genuine K-way classification task at half the batch on the forget
  class, identical for every evaluated model.
* every evaluated model sees the *same* batch sequence (seeded per-epoch shuffles), so the ratio
  compares models, not shuffles. Batches are not dropped: a short last batch is padded to a fixed shape
  and masked out of the loss and of BatchNorm statistics (PyTorch's `drop_last=False`).
* deviations from the reference: the accuracy is checked *before* the first step, so a model already
  at the target needs 0 steps (the reference always takes at least one); the count is capped at
  `max_epochs x ceil(N / batch)` steps, and a capped count is reported as the cap (a lower bound on r).
* random-sample forgetting has no forget validation images; the forgotten training samples are then
  the evaluation set (SSD's `forget_valid_dl = forget_train_dl`).
Each epoch of the relearning schedule (step + batched evaluation after every step) is one jitted
`lax.while_loop`, run through the resumable loop (`train.loop.run_chunks`: NaN guard, early stop once
the target is reached; no checkpoint, a rerun recomputes it exactly).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from numpy.typing import ArrayLike

from jax_unlearn.data import DataInfo, Split, UnlearnData
from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.accuracy import masked_accuracy
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.models.conv import loop_safe_convs
from jax_unlearn.train.evaluate import predict_logits
from jax_unlearn.train.loop import run_chunks
from jax_unlearn.train.steps import loss_and_grads

__all__ = ["ain", "RelearnResult", "ain_eval_split", "relearn_set_index", "relearn_schedule",
           "pad_to_batches", "relearn_loop", "relearn", "relearn_steps", "ain_target", "anamnesis_index",
           "AIN", "default_config", "validate_config"]

STREAM_RELEARN_SET = 21
STREAM_RELEARN_ORDER = 22


class RelearnResult(NamedTuple):
  """What `relearn` measured on one model."""
  steps: int          # optimiser steps until forget accuracy >= target (or the cap)
  reached: bool       # False: capped, `steps` is a lower bound
  initial_acc: float  # forget accuracy (percent) before relearning
  final_acc: float    # forget accuracy (percent) when relearning stopped
  max_steps: int


def _arrays(split):
  if isinstance(split, tuple):
    return np.asarray(split[0], np.float32), np.asarray(split[1], np.int32)
  return np.asarray(split.images, np.float32), np.asarray(split.labels, np.int32)


def ain_eval_split(data: UnlearnData) -> Split:
  """Forget validation view; the forgotten training samples when it is empty (random forgetting)."""
  return data.forget_val if np.any(data.forget_val_mask) else data.forget_train


def relearn_set_index(data: UnlearnData, retain_ratio: float = 1.0, seed: int = 0) -> np.ndarray:
  """Indices into `data.train`: every forget training image + round(retain_ratio x |forget|) random
  retain training images (seeded), sorted."""
  mask = np.asarray(data.forget_train_mask, bool)
  forget, retain = np.flatnonzero(mask), np.flatnonzero(~mask)
  if len(forget) == 0:
    raise DataError("AIN needs forget-class training images to relearn from, but the forget set is "
                    "empty; check config.forget")
  k = min(len(retain), int(round(retain_ratio * len(forget))))
  pick = np.random.default_rng([seed, STREAM_RELEARN_SET]).permutation(len(retain))[:k]
  return np.sort(np.concatenate([forget, retain[pick]]))


def relearn_schedule(n: int, batch_size: int, max_epochs: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Batch indices `[T, B]` (int32) and validity mask `[T, B]` for `max_epochs` seeded shuffles of
  range(n), B = min(batch_size, n), T = max_epochs * ceil(n / B); the last batch of an epoch is padded."""
  b = min(int(batch_size), n)
  spe = math.ceil(n / b)
  idx = np.zeros((max_epochs, spe * b), np.int32)
  mask = np.zeros((max_epochs, spe * b), bool)
  for e in range(max_epochs):
    idx[e, :n] = np.random.default_rng([seed, STREAM_RELEARN_ORDER, e]).permutation(n)
    mask[e, :n] = True
  return idx.reshape(-1, b), mask.reshape(-1, b)


def pad_to_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[N, ...] -> ([nb, b, ...], [nb, b], mask [nb, b]), zero padding: nb = ceil(N / batch_size) batches
  of equal size b = ceil(N / nb) <= batch_size, so fewer than nb rows are padding (1,200 images at
  batch 512: 3 x 400, not 3 x 512 with 336 padded rows evaluated after every relearning step)."""
  n = len(images)
  nb = max(1, math.ceil(n / max(1, int(batch_size))))
  b = max(1, math.ceil(n / nb))
  pad = nb * b - n
  x = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  y = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  m = np.arange(nb * b) < n
  return x.reshape((nb, b) + images.shape[1:]), y.reshape(nb, b), m.reshape(nb, b)


def _vars(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _eval_acc(apply_fn, params, bstats, eval_x, eval_y, eval_m, mean, std):
  def one(correct, xs):
    x, y, m = xs
    logits = apply_fn(_vars(params, bstats), normalize(x, mean, std), train=False)
    return correct + jnp.sum((jnp.argmax(logits, -1) == y) & m), None
  correct, _ = lax.scan(one, jnp.zeros((), jnp.int32), (eval_x, eval_y, eval_m))
  return 100.0 * correct / jnp.maximum(jnp.sum(eval_m), 1)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def relearn_loop(apply_fn: Callable[..., Any], carry: tuple, lr: ArrayLike, images: jax.Array,
                 labels: jax.Array, idx: jax.Array, bmask: jax.Array, eval_x: jax.Array, eval_y: jax.Array,
                 eval_m: jax.Array, mean: jax.Array, std: jax.Array, target: ArrayLike) -> tuple:
  """Relearns with Adam from `carry` = (t, params, batch_stats, opt_state, acc) until eval accuracy
  (percent) >= `target` or the batch schedule `idx`/`bmask` [T, B] runs out; returns the new carry.

  `images`/`labels` are the relearning set (raw [0,1] images, on device), `eval_x`/`eval_y`/`eval_m`
  the padded evaluation batches [nb, b, ...]. Row t of `idx` is the carry's step t (global)."""
  tx = optax.adam(lr)
  t_start = carry[0]

  def cond(carry):
    t, _, _, _, acc = carry
    return (t - t_start < idx.shape[0]) & (acc < target)

  def body(carry):
    t, params, bstats, opt_state, _ = carry
    i, m = idx[t - t_start], bmask[t - t_start]
    x = normalize(images[i], mean, std)
    # The library's one supervised step (`train.steps`): masked rows leave the loss and BN statistics.
    (_, (_, bstats)), grads = loss_and_grads(apply_fn, params, bstats, x, labels[i],
                                             weight=m.astype(jnp.float32))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return t + 1, params, bstats, opt_state, _eval_acc(apply_fn, params, bstats, eval_x, eval_y,
                                                       eval_m, mean, std)

  return lax.while_loop(cond, body, carry)


def relearn(model: Any, variables: Any, relearn_split: Any, eval_split: Any, target_acc: float, *,
            info: DataInfo, lr: float = 1e-3,
            batch_size: int = 256, max_epochs: int = 10, seed: int = 0,
            eval_batch_size: int = 512) -> RelearnResult:
  """Runs the relearning protocol (module docstring) on one model; see `relearn_steps`.

  `relearn_split` / `eval_split` are `Split`s (or `(images, labels)` tuples) of raw [0,1] images;
  `target_acc` is in percent; `info` gives the normalisation (`DataInfo.mean/std`).
  """
  images, labels = _arrays(relearn_split)
  ex, ey = _arrays(eval_split)
  if len(images) == 0 or len(ex) == 0:
    raise DataError("relearning needs a non-empty relearning set and evaluation set; check "
                    "config.forget (the forget class must have training and validation images)")
  idx, bmask = relearn_schedule(len(images), batch_size, max_epochs, seed)
  spe = idx.shape[0] // max_epochs
  eval_x, eval_y, eval_m = (jnp.asarray(a) for a in pad_to_batches(ex, ey, eval_batch_size))
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  params, bstats = variables["params"], variables.get("batch_stats", {})
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  lr, target = jnp.float32(lr), jnp.float32(target_acc)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  with loop_safe_convs():  # conv gradients inside while_loop: jax-ml/jax#12868
    acc0 = _eval_acc(model.apply, params, bstats, eval_x, eval_y, eval_m, mean, std)
    carry = (jnp.zeros((), jnp.int32), params, bstats, optax.adam(lr).init(params), acc0)

    def epoch_fn(carry, e):
      carry = relearn_loop(model.apply, carry, lr, images, labels, jnp.asarray(idx[e * spe:(e + 1) * spe]),
                           jnp.asarray(bmask[e * spe:(e + 1) * spe]), eval_x, eval_y, eval_m, mean,
                           std, target)
      return carry, {"steps": int(carry[0]), "acc": float(carry[4])}

    carry, _ = run_chunks(epoch_fn, carry, max_epochs if float(acc0) < float(target) else 0,
                          phase="ain relearning", until=lambda c, r: r["acc"] >= float(target),
                          log=lambda m: None)
  acc = float(carry[4])
  return RelearnResult(steps=int(carry[0]), reached=bool(acc >= np.float32(target_acc)),
                       initial_acc=float(acc0), final_acc=acc, max_steps=int(idx.shape[0]))


def relearn_steps(model: Any, variables: Any, relearn_split: Any, eval_split: Any, target_acc: float, *,
                  info: DataInfo,
                  lr: float = 1e-3, batch_size: int = 256, max_epochs: int = 10, seed: int = 0,
                  eval_batch_size: int = 512) -> int:
  """r(model): Adam steps until forget-class accuracy on `eval_split` >= `target_acc` (percent).

  0 if the target is already met; capped at `max_epochs * ceil(len(relearn_split) / batch_size)`.
  """
  return relearn(model, variables, relearn_split, eval_split, target_acc, info=info, lr=lr,
                 batch_size=batch_size, max_epochs=max_epochs, seed=seed,
                 eval_batch_size=eval_batch_size).steps


def ain_target(original_forget_acc: float, alpha: float = 0.05) -> float:
  """The relearning target: (1 - alpha) x the original model's forget accuracy (percent)."""
  return (1.0 - alpha) * float(original_forget_acc)


def anamnesis_index(r_unlearned: float, r_retrain: float) -> float:
  """AIN = r_unlearned / r_retrain. Both 0 (both already at the target) gives 1; r_retrain = 0 with
  r_unlearned > 0 has no finite ratio and gives NaN (Retrain already remembers: the target is too low)."""
  r_unlearned, r_retrain = float(r_unlearned), float(r_retrain)
  if r_retrain == 0:
    return 1.0 if r_unlearned == 0 else float("nan")
  return r_unlearned / r_retrain


def ain(model: Any, variables: Any, data: UnlearnData, *, original_vars: Any, retrain_vars: Any,
        alpha: float = 0.05, lr: float = 1e-3, batch_size: int = 256, max_epochs: int = 10,
        retain_ratio: float = 1.0, seed: int = 0, eval_batch_size: int = 512) -> float:
  """The `ain` metric of one model: AIN = r(model) / r(Retrain) (module docstring).

  The target is (1 - alpha) x the accuracy of `original_vars` on `ain_eval_split(data)`; the model and
  Retrain (`retrain_vars`, same `model`) relearn on the same `relearn_set_index(data, retain_ratio,
  seed)` in the same batch order. The defaults are GKT's (the `ain_*` fields of `config.metrics`); the
  `MetricSuite` gives the same number with `seed=suite.seed` (`config.seed` + `config.metrics.seed_offset`).
  `metrics.ain(...)` (the module) calls this function.
  """
  ev = ain_eval_split(data)
  original_acc = masked_accuracy(predict_logits(model, original_vars, ev.images, data.info, eval_batch_size),
                                 ev.labels)
  target = ain_target(original_acc, alpha)
  idx = relearn_set_index(data, retain_ratio, seed)
  relearn_split = (np.asarray(data.train.images)[idx], np.asarray(data.train.labels)[idx])
  r_model, r_retrain = (relearn_steps(model, v, relearn_split, ev, target, info=data.info, lr=lr,
                                      batch_size=batch_size, max_epochs=max_epochs, seed=seed,
                                      eval_batch_size=eval_batch_size) for v in (variables, retrain_vars))
  return anamnesis_index(r_model, r_retrain)


def default_config() -> dict:
  """`config.metrics` fields of AIN (the GKT relearn-time ratio)."""
  return dict(
      ain_alpha=0.05,            # target = (1 - alpha) x original forget-val accuracy
      ain_lr=1e-3,               # Adam
      ain_batch_size=256,
      ain_max_epochs=10,         # cap: max_epochs x ceil(|relearn set| / batch) steps
      ain_retain_ratio=1.0)      # retain-train images per forget-train image in the relearn set


def validate_config(cfg: Any, problem: Any = None) -> None:
  """Raises ConfigError for an AIN field of `config.metrics` out of range."""
  del problem
  if not 0.0 <= cfg.ain_alpha < 1.0:
    raise ConfigError(f"config.metrics.ain_alpha must be in [0, 1), got {cfg.ain_alpha}; the GKT "
                      "value is 0.05")
  for field in ("ain_batch_size", "ain_max_epochs"):
    if int(cfg[field]) < 1:
      raise ConfigError(f"config.metrics.{field} must be >= 1, got {cfg[field]}; see "
                        "jax_unlearn.metrics.default_config() for defaults")


@register("ain", columns=(("ain", "AIN", "{:.3f}"),),
          extra_keys=("relearn_steps", "relearn_reached", "relearn_steps_retrain", "relearn_max_steps"),
          default_config=default_config, validate_config=validate_config, order=60, needs_retrain=True)
class AIN(Evaluator):
  """AIN = r(model) / r(Retrain); the relearn set, the target and Retrain's count are computed once."""

  def __init__(self, suite):
    super().__init__(suite)
    self._target = self._relearn_retrain = self._relearn_set = None

  @property
  def relearn_set(self):
    if self._relearn_set is None:
      d = self.suite.data
      idx = relearn_set_index(d, self.cfg.ain_retain_ratio, self.suite.seed)
      self._relearn_set = (np.asarray(d.train.images)[idx], np.asarray(d.train.labels)[idx])
    return self._relearn_set

  @property
  def target_acc(self) -> float:
    """(1 - alpha) x the original model's accuracy on the AIN evaluation split (percent)."""
    if self._target is None:
      ev = ain_eval_split(self.suite.data)
      orig = masked_accuracy(self.suite.logits_of(self.suite.original, ev.images), ev.labels)
      self._target = ain_target(orig, self.cfg.ain_alpha)
    return self._target

  def relearn(self, variables) -> RelearnResult:
    c, s = self.cfg, self.suite
    return relearn(s.model, variables, self.relearn_set, ain_eval_split(s.data), self.target_acc,
                   info=s.data.info, lr=c.ain_lr, batch_size=c.ain_batch_size,
                   max_epochs=c.ain_max_epochs, seed=s.seed, eval_batch_size=c.batch_size)

  @property
  def relearn_retrain(self) -> RelearnResult:
    if self._relearn_retrain is None:
      self._relearn_retrain = r = self.relearn(self.suite.retrain)
      self.suite.log(f"[metrics] Retrain relearns in {r.steps} steps (target {self.target_acc:.2f}%, "
                     f"reached={r.reached}, cap {r.max_steps})")
    return self._relearn_retrain

  def __call__(self, out) -> dict:
    r, rr = self.relearn(out.variables), self.relearn_retrain
    return {"ain": anamnesis_index(r.steps, rr.steps), "relearn_steps": r.steps,
            "relearn_reached": r.reached, "relearn_steps_retrain": rr.steps,
            "relearn_max_steps": r.max_steps}

  def info(self) -> dict:
    out = {}
    if self._target is not None:
      out["ain_target_acc"] = self._target
    if self._relearn_retrain is not None:
      out["relearn_steps_retrain"] = self._relearn_retrain.steps
      out["relearn_max_steps"] = self._relearn_retrain.max_steps
    return out


make_callable(__name__)
