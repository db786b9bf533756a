"""Supervised training of the original and retrain models (ISPF paper App. C).

Reference: `ChildEden/ISPF UN_train_scratch.py`, `UN_retrain_scratch.py`.

The step is a pure function `train_step(state, batch, key) -> (state, metrics)`, jitted, with the
batch sharded along the 'data' axis of a device mesh and the state replicated. `fit` runs it through the
one resumable loop (`train.loop.run_chunks`): seeded shuffling per epoch, per-step keys from
`fold_in(key, step)`, an orbax checkpoint every epoch, selection of the best epoch by validation
accuracy, and the NaN/inf guard. `fit_or_load` caches the finished model in a directory named by the
fingerprint of everything it depends on (data content, recipe, model, key), so a changed config never
reuses a stale model.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jax_unlearn.data.augment import augment as augment_images
from jax_unlearn.data.dataset import DataInfo, Split
from jax_unlearn.data.normalize import normalize
from jax_unlearn.data.pipeline import batches, num_batches
from jax_unlearn.models import init_variables
from jax_unlearn.train import fingerprint, sharding
from jax_unlearn.train.checkpoint import has_variables, load_variables, save_variables
from jax_unlearn.train.evaluate import accuracy
from jax_unlearn.train.loop import finite_guard, run_chunks
from jax_unlearn.train.steps import TrainState, cross_entropy, sgd_step

__all__ = ["TrainState", "make_optimizer", "create_train_state", "cross_entropy", "train_step", "fit",
           "fit_or_load", "recipe", "default_train_config", "default_recipe", "DEFAULT_BATCH_SIZE",
           "FORMAT_VERSION"]

# Version of what `fit_or_load` stores (state layout, selection rule); part of the fingerprint.
FORMAT_VERSION = 2
RECIPE_FIELDS = ("epochs", "lr", "momentum", "weight_decay", "milestones", "gamma", "batch_size")


def make_optimizer(train_cfg: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum, PyTorch-style weight decay (added to the gradient before momentum) and a
  MultiStep schedule (lr * gamma at each milestone epoch)."""
  boundaries = {int(m) * steps_per_epoch: float(train_cfg.gamma) for m in train_cfg.milestones}
  schedule = optax.piecewise_constant_schedule(float(train_cfg.lr), boundaries)
  return optax.chain(optax.add_decayed_weights(float(train_cfg.weight_decay)),
                     optax.sgd(schedule, momentum=float(train_cfg.momentum)))


def default_train_config() -> ml_collections.ConfigDict:
  """`config.train`: the supervised recipe of the original (and retrain, shadow) models."""
  return ml_collections.ConfigDict(dict(epochs=30, lr=0.05, momentum=0.9, weight_decay=1e-4,
                                        milestones=(20,), gamma=0.1))


DEFAULT_BATCH_SIZE = 64  # config.batch_size: the supervised training batch


def default_recipe() -> ml_collections.ConfigDict:
  """`recipe(default_train_config(), DEFAULT_BATCH_SIZE)`."""
  return recipe(default_train_config(), DEFAULT_BATCH_SIZE)


def recipe(train_cfg: ml_collections.ConfigDict | dict[str, Any],
           batch_size: int | None = None) -> ml_collections.ConfigDict:
  """The training recipe `fit` reads (`config.train` plus the supervised batch size)."""
  d = {k: train_cfg[k] for k in RECIPE_FIELDS if k in train_cfg}
  if batch_size is not None:
    d["batch_size"] = int(batch_size)
  d["milestones"] = tuple(int(m) for m in d.get("milestones", ()))
  return ml_collections.ConfigDict(d)


def create_train_state(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...],
                       tx: optax.GradientTransformation) -> TrainState:
  """A flax `TrainState` (with `batch_stats`) for `model` initialised from `key` on `image_shape`."""
  variables = init_variables(model, key, (1,) + tuple(image_shape))
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


@functools.partial(jax.jit, static_argnames=("augment",), donate_argnums=(0,))
def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, mean: jax.Array,
               std: jax.Array, augment: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on cross-entropy. `batch['image']` is raw [0,1]; augmentation and normalisation
  run on device. Returns the new state and {'loss', 'accuracy'} (accuracy as a fraction)."""
  images = batch["image"]
  if augment:
    images = augment_images(key, images)
  state, loss, logits = sgd_step(state, normalize(images, mean, std), batch["label"])
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, {"loss": loss, "accuracy": acc}


@flax.struct.dataclass
class _FitState:
  state: TrainState
  best: dict
  best_acc: jax.Array


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def fit(model: nn.Module, train: Split, val: Split, info: DataInfo, train_cfg: ml_collections.ConfigDict,
        key: jax.Array, ckpt_dir: str | None, log: Callable[[str], None] = print, name: str = "train",
        seed: int = 0, fingerprint_desc: dict | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains `model` from a fresh initialisation drawn from `key`; returns (best variables, history).

  Resumes from the newest checkpoint in `ckpt_dir` if there is one; the run continues exactly as an
  uninterrupted one would (shuffling is a function of (seed, epoch), step keys of the step number).
  `fingerprint_desc` is recorded beside the checkpoint and checked on resume (`train.loop`).
  """
  bs = int(train_cfg.batch_size)
  sharding.check_batch_size(bs, field="--config.batch_size")
  steps_per_epoch = num_batches(len(train), bs, drop_remainder=True)
  tx = make_optimizer(train_cfg, steps_per_epoch)
  init_key, step_key = jax.random.split(key)
  state = create_train_state(model, init_key, info.image_shape, tx)
  # `train_step` donates the state's buffers, so the best variables are always a copy.
  fs = _FitState(state=state, best=_copy(state.variables), best_acc=jnp.asarray(-1.0))
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  t0 = time.time()

  def epoch_fn(fs: _FitState, epoch: int):
    state, losses, accs = sharding.replicate(fs.state), [], []
    for batch in batches(train, bs, seed=seed, epoch=epoch):
      k = jax.random.fold_in(step_key, int(state.step))
      state, m = train_step(state, sharding.shard_batch(batch), k, mean, std, augment=info.augment)
      losses.append(m["loss"])
      accs.append(m["accuracy"])
    loss = float(jnp.mean(jnp.stack(losses)))
    val_acc = accuracy(model, state.variables, val, info)
    best, best_acc = fs.best, float(fs.best_acc)
    if val_acc > best_acc:
      best, best_acc = _copy(state.variables), val_acc
    rec = {"epoch": epoch + 1, "loss": loss, "train_acc": 100 * float(jnp.mean(jnp.stack(accs))),
           "val_acc": val_acc, "elapsed_s": time.time() - t0}
    return _FitState(state=state, best=best, best_acc=jnp.asarray(best_acc)), rec

  epochs = int(train_cfg.epochs)
  fs, history = run_chunks(
      epoch_fn, fs, epochs, phase=name, ckpt_dir=ckpt_dir, fingerprint=fingerprint_desc,
      guard=finite_guard(("loss",), check=lambda f: f.state.params),
      fix=f"lower --config.train.lr and run the same command again ({name} training)",
      progress=lambda i, r: (f"[{name}] epoch {i + 1}/{epochs} loss {r['loss']:.4f} train "
                             f"{r['train_acc']:.1f}% val {r['val_acc']:.2f}%"), log=log)
  return jax.device_get(fs.best), {"history": history, "best_val_acc": float(fs.best_acc)}


def describe_fit(model_cfg: dict[str, Any] | None, train: Split, val: Split,
                 train_cfg: ml_collections.ConfigDict | dict[str, Any], key: jax.Array, kind: str) -> dict:
  """What a model trained by `fit` depends on: the data by content, the recipe, the model config,
  the init/step key and the format version."""
  return fingerprint.describe(kind=kind, version=FORMAT_VERSION, data=fingerprint.split_digest(train, val),
                              recipe=recipe(train_cfg).to_dict(), model=model_cfg,
                              key=fingerprint.array_digest(key))


def fit_or_load(model: nn.Module, model_cfg: dict[str, Any] | None, train: Split, val: Split, info: DataInfo,
                train_cfg: ml_collections.ConfigDict, key: jax.Array, parent: str, tag: str, *, name: str,
                seed: int = 0, log: Callable[[str], None] = print) -> tuple[Any, dict]:
  """Trains `model` on (train, val) into `parent/<tag>-<fingerprint>/`, or loads it from there.

  Returns (variables, info) with info = {'history', 'best_val_acc', 'train_s', 'directory',
  'fingerprint', 'cached'}; the stored info of a cached model is returned as it was measured."""
  desc = describe_fit(model_cfg, train, val, train_cfg, key, name)
  directory = fingerprint.tagged(parent, tag, desc)
  final = os.path.join(directory, "final")
  meta = {"model": model_cfg, "image_shape": list(info.image_shape), "num_classes": info.num_classes}
  target = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (1,) + tuple(info.image_shape)))
  if has_variables(final):
    variables, stored = load_variables(final, target, meta, with_meta=True)
    out = dict(stored.get("info", {}))
    out.update(directory=directory, fingerprint=fingerprint.digest(desc), cached=True)
    return variables, out
  t0 = time.time()
  variables, hist = fit(model, train, val, info, train_cfg, key, os.path.join(directory, "ckpt"), log=log,
                        name=name, seed=seed, fingerprint_desc=desc)
  out = {**hist, "train_s": time.time() - t0}
  save_variables(final, variables, {**meta, "fingerprint": desc, "info": out})
  out.update(directory=directory, fingerprint=fingerprint.digest(desc), cached=False)
  return variables, out
