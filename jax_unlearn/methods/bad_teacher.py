"""Bad teaching / "blindspot" unlearning (Chundawat et al., AAAI'23) as run in the SSD repository
(`if-loops/selective-synaptic-dampening src/forget_*_strategies.py: blindspot`,
`src/unlearn.py: blindspot_unlearner, UnlearnerLoss`).

The student starts as a copy of the original. Its training set is D_f plus a random 30 % of D_r
(`random.sample(retain, int(0.3 * len(retain)))`), shuffled together in batches of 256. Each sample is
distilled toward one of two teachers, both in eval mode:

  p_i = softmax(t_i / T),  t_i = incompetent(x_i) if x_i in D_f else original(x_i)
  loss = mean_i KL(p_i || softmax(s_i / T)) / K          (`F.kl_div` 'mean' reduction, T = 1)

where `incompetent` is a freshly, randomly initialised network of the same architecture (the
reference's `unlearning_teacher`). Adam lr 1e-4, 1 epoch, student BN in train mode.

Because both teachers run in eval mode, a sample's teacher output does not depend on its batch-mates:
the targets are computed once (batched, jitted) and the student loop is the shared `_repair.fit`.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import _repair, base
from jax_unlearn.models import init_variables
from jax_unlearn.train.evaluate import predict_logits


def default_config() -> ml_collections.ConfigDict:
  """`config.bad_teacher` defaults (the SSD repository's: Adam 1e-4, 1 epoch, batch 256 (128 for ViT), 30 % of
  D_r, KL at T = 1).

  Fields:
    optimizer: 'adam' (reference) or 'sgd'.
    lr: learning rate.
    weight_decay: L2 weight decay added to the gradient (0 in the reference).
    epochs: passes over D_f + the retain subset.
    batch_size: minibatch size (the reference lowers it to 128 for its ViT); last partial batch kept.
    retain_fraction: share of D_r drawn (without replacement) to be distilled from the original.
    temperature: KL temperature T (applied to both teachers and the student).
    kl_reduction: 'mean' (F.kl_div default, /K as the reference) or 'batchmean' (true per-sample KL).
  """
  return ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-4, weight_decay=0.0, epochs=1,
                                        batch_size=256, retain_fraction=0.3, temperature=1.0,
                                        kl_reduction="mean"))


def validate_config(cfg, problem: base.Problem | None = None) -> None:
  del problem
  _repair.check_positive(cfg, "bad_teacher", ints=("epochs", "batch_size"),
                         floats=("lr", "weight_decay", "retain_fraction"))
  if not 0.0 <= float(cfg.retain_fraction) <= 1.0:
    raise ConfigError(f"config.bad_teacher.retain_fraction must be in [0, 1], got "
                      f"{cfg.retain_fraction}; set e.g. --config.bad_teacher.retain_fraction=0.3")
  if not float(cfg.temperature) > 0:
    raise ConfigError(f"config.bad_teacher.temperature must be > 0, got {cfg.temperature}; set "
                      f"--config.bad_teacher.temperature=1.0")
  if cfg.kl_reduction not in _repair.KL_REDUCTIONS:
    raise ConfigError(f"unknown config.bad_teacher.kl_reduction {cfg.kl_reduction!r}; use one of: "
                      f"{', '.join(_repair.KL_REDUCTIONS)}")


def incompetent_teacher(model, key, image_shape) -> dict:
  """The "unlearning teacher": a fresh random initialisation of the classifier architecture."""
  return init_variables(model, key, (1,) + tuple(image_shape))


def retain_subset(key, n_retain: int, fraction: float) -> np.ndarray:
  """Sorted indices of `int(fraction * n_retain)` retain samples drawn without replacement."""
  k = int(fraction * n_retain)
  return np.sort(np.asarray(jax.random.choice(key, n_retain, (k,), replace=False)))


def teacher_targets(model, variables, images, info, temperature: float) -> np.ndarray:
  """softmax(teacher(x) / T), teacher in eval mode (float32 [N, K])."""
  logits = predict_logits(model, variables, images, info)
  return np.asarray(jax.nn.softmax(logits / temperature, -1), np.float32)


@base.register("bad_teacher", default_config=default_config, validate_config=validate_config,
               order=40, data="D_f, a random 30 % of D_r")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """Distils a copy of `ctx.original` on D_f (toward a random teacher) + 30 % of D_r (toward the
  original). Uses D_f and D_r."""
  cfg = ctx.cfg
  info = ctx.data.info
  k_teacher, k_subset, k_shuffle = jax.random.split(ctx.key, 3)
  forget, retain = ctx.data.forget_train, ctx.data.retain_train
  idx = retain_subset(k_subset, len(retain), float(cfg.retain_fraction))
  retain_x = retain.images[idx]
  teacher = incompetent_teacher(ctx.model, k_teacher, info.image_shape)
  T = float(cfg.temperature)
  images = np.concatenate([forget.images, retain_x])
  targets = np.concatenate([teacher_targets(ctx.model, teacher, forget.images, info, T),
                            teacher_targets(ctx.model, ctx.original, retain_x, info, T)])
  ctx.log(f"[bad_teacher] {len(forget)} forget samples -> random teacher, {len(idx)} retain samples "
          f"-> original")
  variables, history = _repair.fit(
      ctx.model, ctx.original, _repair.tx_from_config(cfg, "bad_teacher"), images, targets,
      _repair.SoftTargetKL(T, str(cfg.kl_reduction)), batch_size=int(cfg.batch_size),
      epochs=int(cfg.epochs), key=k_shuffle, info=info, log=ctx.log, name="bad_teacher")
  return base.UnlearnResult(variables=variables, info={
      "n_forget": len(forget), "n_retain_subset": int(len(idx)),
      "steps": sum(h["steps"] for h in history), "history": history})
