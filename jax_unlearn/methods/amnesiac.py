"""Amnesiac unlearning (Graves et al., AAAI'21) as run in the SSD repository
(`if-loops/selective-synaptic-dampening src/forget_*_strategies.py: amnesiac`,
`src/unlearn.py: fit_one_unlearning_cycle`).

Every forget sample gets a random label other than its own (drawn once, uniformly over the K - 1 other
classes, as the reference's `random.choice` rejection loop does); the relabelled D_f is concatenated
with the whole of D_r and the original model is trained on it with cross-entropy: Adam lr 1e-4,
3 epochs, batch 128, BN in train mode, no augmentation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_unlearn.methods import _repair, base


def default_config() -> ml_collections.ConfigDict:
  """`config.amnesiac` defaults (the SSD repository's: Adam 1e-4, 3 epochs, batch 128, CE).

  Fields:
    optimizer: 'adam' (reference) or 'sgd'.
    lr: learning rate (with Adam 1e-4 a small model may keep some forget accuracy; raise it here).
    momentum: SGD momentum (used with optimizer='sgd' only).
    weight_decay: L2 weight decay added to the gradient (0 in the reference).
    epochs: passes over relabelled D_f + D_r.
    batch_size: minibatch size; the last partial batch is kept (masked padding), as DataLoader does.
  """
  return ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-4, momentum=0.9, weight_decay=0.0,
                                        epochs=3, batch_size=128))


def validate_config(cfg, problem: base.Problem | None = None) -> None:
  del problem
  _repair.check_positive(cfg, "amnesiac", ints=("epochs", "batch_size"),
                         floats=("lr", "momentum", "weight_decay"))


@jax.jit
def _shift(key, labels, num_classes):
  return (labels + jax.random.randint(key, labels.shape, 1, num_classes)) % num_classes


def relabel_other_class(key, labels, num_classes: int) -> np.ndarray:
  """A label drawn uniformly from the K - 1 classes other than each true label (int32 [N]).

  (y + u) mod K with u uniform on {1, ..., K-1} hits every other class with probability 1/(K-1).
  """
  labels = jnp.asarray(labels, jnp.int32)
  return np.asarray(_shift(key, labels, jnp.int32(num_classes)), np.int32)


@base.register("amnesiac", default_config=default_config, validate_config=validate_config, order=50,
               data="D_f (relabelled), D_r")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """Trains a copy of `ctx.original` on randomly relabelled D_f + D_r. Uses D_f and D_r."""
  cfg = ctx.cfg
  k_label, k_shuffle = jax.random.split(ctx.key)
  forget, retain = ctx.data.forget_train, ctx.data.retain_train
  wrong = relabel_other_class(k_label, forget.labels, int(ctx.num_classes))
  images = np.concatenate([forget.images, retain.images])
  labels = np.concatenate([wrong, retain.labels]).astype(np.int32)
  variables, history = _repair.fit(
      ctx.model, ctx.original, _repair.tx_from_config(cfg, "amnesiac"), images, labels,
      _repair.CrossEntropy(), batch_size=int(cfg.batch_size), epochs=int(cfg.epochs), key=k_shuffle,
      info=ctx.data.info, log=ctx.log, name="amnesiac")
  return base.UnlearnResult(variables=variables, info={
      "n_forget": len(forget), "n_retain": len(retain),
      "steps": sum(h["steps"] for h in history), "history": history})
