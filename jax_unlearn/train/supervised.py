"""Supervised training of the original and retrain models (SPEC §1.8).

The step is a pure function `train_step(state, batch, key) -> (state, metrics)`, jitted, with the
batch sharded along the 'data' axis of a device mesh and the state replicated. `fit` is the loop:
seeded shuffling per epoch, per-step keys from `fold_in(key, step)`, an orbax checkpoint every
epoch (resume from it), selection of the best epoch by validation accuracy, and a NaN/inf guard.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jax_unlearn import data as data_lib
from jax_unlearn.errors import NumericalError
from jax_unlearn.io import atomic_write_json, read_json_list
from jax_unlearn.models import init_variables
from jax_unlearn.train import sharding
from jax_unlearn.train.checkpoint import Checkpointer
from jax_unlearn.train.evaluate import accuracy


class TrainState(train_state.TrainState):
  batch_stats: Any = None

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(train_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum, PyTorch-style weight decay (added to the gradient before momentum) and a
  MultiStep schedule (lr * gamma at each milestone epoch)."""
  boundaries = {int(m) * steps_per_epoch: float(train_cfg.gamma) for m in train_cfg.milestones}
  schedule = optax.piecewise_constant_schedule(float(train_cfg.lr), boundaries)
  return optax.chain(optax.add_decayed_weights(float(train_cfg.weight_decay)),
                     optax.sgd(schedule, momentum=float(train_cfg.momentum)))


def create_train_state(model, key, image_shape, tx) -> TrainState:
  variables = init_variables(model, key, (1,) + tuple(image_shape))
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("augment",), donate_argnums=(0,))
def train_step(state: TrainState, batch: dict, key, mean, std, augment: bool = False):
  """One SGD step on cross-entropy. `batch['image']` is raw [0,1]; augmentation and normalisation
  run on device. Returns the new state and {'loss', 'accuracy'} (accuracy as a fraction)."""
  images = batch["image"]
  if augment:
    images = data_lib.augment(key, images)
  x = data_lib.normalize(images, mean, std)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                     train=True, mutable=["batch_stats"])
    return cross_entropy(logits, batch["label"]), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, {"loss": loss, "accuracy": acc}


@flax.struct.dataclass
class _Checkpoint:
  state: TrainState
  best: dict
  best_acc: jax.Array
  epoch: jax.Array


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def fit(model, train: data_lib.Split, val: data_lib.Split, info, train_cfg, key, ckpt_dir: str,
        log: Callable[[str], None] = print, name: str = "train", seed: int = 0):
  """Trains `model` from a fresh initialisation drawn from `key`; returns (best variables, history).

  Resumes from the newest checkpoint in `ckpt_dir` if there is one; the run continues exactly as an
  uninterrupted one would (shuffling is a function of (seed, epoch), step keys of the step number).
  """
  bs = int(train_cfg.batch_size)
  sharding.check_batch_size(bs, field="--config.train.batch_size")
  steps_per_epoch = data_lib.num_batches(len(train), bs, drop_remainder=True)
  tx = make_optimizer(train_cfg, steps_per_epoch)
  init_key, step_key = jax.random.split(key)
  state = create_train_state(model, init_key, info.image_shape, tx)
  # `train_step` donates the state's buffers, so the best variables are always a copy.
  ck = _Checkpoint(state=state, best=_copy(state.variables), best_acc=jnp.asarray(-1.0),
                   epoch=jnp.asarray(0))
  ckptr = Checkpointer(ckpt_dir)
  history = []
  # The per-epoch history is JSON next to the orbax steps (written after each save), so a resumed
  # run reports the same history as an uninterrupted one, not only the epochs after the restart.
  history_path = os.path.join(ckptr.directory, "history.json")
  if ckptr.latest_step() is not None:
    ck = ckptr.restore(ck)
    history = [h for h in read_json_list(history_path) if h["epoch"] <= int(ck.epoch)]
    log(f"[{name}] resumed from epoch {int(ck.epoch)} (best val acc {float(ck.best_acc):.2f}%)")
  ck = sharding.replicate(ck)
  state = ck.state
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  t0 = time.time()
  for epoch in range(int(ck.epoch), int(train_cfg.epochs)):
    losses, accs = [], []
    for batch in data_lib.batches(train, bs, seed=seed, epoch=epoch):
      k = jax.random.fold_in(step_key, int(state.step))
      state, m = train_step(state, sharding.shard_batch(batch), k, mean, std, augment=info.augment)
      losses.append(m["loss"]); accs.append(m["accuracy"])
    loss = float(jnp.mean(jnp.stack(losses)))
    if not np.isfinite(loss) or not _finite(state.params):
      raise NumericalError(
          f"[{name}] loss became {loss} at epoch {epoch + 1} (step {int(state.step)}); " +
          (f"the last good checkpoint (epoch {int(ck.epoch)}) is kept in {ckptr.directory}"
           if int(ck.epoch) else "no checkpoint was written yet") +
          ": lower --config.train.lr and run the same command again")
    val_acc = accuracy(model, state.variables, val, info)
    best, best_acc = ck.best, float(ck.best_acc)
    if val_acc > best_acc:
      best, best_acc = _copy(state.variables), val_acc
    ck = _Checkpoint(state=state, best=best, best_acc=jnp.asarray(best_acc),
                     epoch=jnp.asarray(epoch + 1))
    rec = {"epoch": epoch + 1, "loss": loss, "train_acc": 100 * float(jnp.mean(jnp.stack(accs))),
           "val_acc": val_acc, "elapsed_s": time.time() - t0}
    history.append(rec)
    # History first, then the state: a kill between the two leaves an extra history entry that the
    # resume drops (epoch > restored epoch), never a missing one.
    atomic_write_json(history_path, history)
    ckptr.save(epoch + 1, ck)
    log(f"[{name}] epoch {epoch + 1}/{train_cfg.epochs} loss {loss:.4f} train {rec['train_acc']:.1f}% "
        f"val {val_acc:.2f}% ({rec['elapsed_s']:.1f}s)")
  ckptr.close()
  best = jax.device_get(ck.best)
  return best, {"history": history, "best_val_acc": float(ck.best_acc)}
