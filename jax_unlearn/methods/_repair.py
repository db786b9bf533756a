"""The loop shared by the repair baselines of the SSD repository (`if-loops/selective-synaptic-dampening`).

finetune, bad_teacher (blindspot), amnesiac and UNSIR all start from a copy of the original model and
train it, BN in train mode, on a fixed set of (image, target) pairs: integer labels with cross-entropy
(the reference's `fit_one_cycle` / `fit_one_unlearning_cycle`) or teacher probabilities with a KL loss
(`blindspot_unlearner`). `fit` is that loop; each method only builds its set and its optimiser.

* Batches follow PyTorch's `DataLoader(shuffle=True)`, which keeps the last partial batch. Here the last
  batch is padded to full size and its padding rows are masked out of both the loss mean and the
  BatchNorm statistics (the classifiers' `mask` argument), so it is exactly the short batch PyTorch sees
  while one compiled step serves every batch.
* Epoch e's order is `jax.random.permutation(fold_in(key, e), n)`: a function of the method key only,
  so a run is reproducible from `config.seed`. The steps need no randomness (unlearning data are not
  augmented in the reference).
* The step is the library's one supervised step (`train.steps.sgd_step`, with a padding weight) and
  the optimiser the supervised one (`supervised.make_optimizer`: PyTorch-style SGD weight decay); it
  is data-parallel over the 'data' mesh like `supervised.train_step`, and the epochs run through the
  resumable loop (`train.loop.run_chunks`: NaN guard, progress; no checkpoint, these runs are short).
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError
from jax_unlearn.train import sharding, supervised
from jax_unlearn.train.loop import finite_guard, run_chunks
from jax_unlearn.train.steps import CrossEntropy, SoftTargetKL, TrainState, sgd_step

__all__ = ["OPTIMIZERS", "KL_REDUCTIONS", "make_tx", "tx_from_config", "check_positive", "CrossEntropy",
           "SoftTargetKL", "repair_step", "epoch_order", "padded_batches", "copy_variables", "fit"]

OPTIMIZERS = ("sgd", "adam")


@functools.lru_cache(maxsize=None)
def make_tx(optimizer: str, lr: float, momentum: float = 0.9,
            weight_decay: float = 0.0) -> optax.GradientTransformation:
  """The reference optimisers, with PyTorch's coupled (L2) weight decay.

  'sgd': `torch.optim.SGD(lr, momentum, weight_decay)` = `supervised.make_optimizer` without milestones
  (`fit_one_cycle` without a schedule). 'adam': `torch.optim.Adam(lr)` (betas 0.9/0.999, eps 1e-8, the
  optax defaults), with the decay added to the gradient as torch does. Cached, so equal settings return
  the same object and the jitted step (whose state holds `tx` statically) compiles once per process.
  """
  if optimizer == "sgd":
    cfg = ml_collections.ConfigDict(dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                         milestones=(), gamma=1.0))
    return supervised.make_optimizer(cfg, steps_per_epoch=1)
  if optimizer == "adam":
    tx = optax.adam(lr)
    return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx
  raise ConfigError(f"unknown optimizer {optimizer!r}; use one of: {', '.join(OPTIMIZERS)}")


def tx_from_config(cfg, name: str, lr_field: str = "lr") -> optax.GradientTransformation:
  """`make_tx` from a method sub-config's optimizer/lr/momentum/weight_decay fields."""
  opt = str(cfg.get("optimizer", "adam"))
  if opt not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {opt!r} in config.{name}; set --config.{name}.optimizer to "
                      f"one of: {', '.join(OPTIMIZERS)}")
  return make_tx(opt, float(cfg[lr_field]), float(cfg.get("momentum", 0.9)),
                 float(cfg.get("weight_decay", 0.0)))


def check_positive(cfg, name: str, ints: tuple[str, ...] = (), floats: tuple[str, ...] = ()) -> None:
  """ConfigError for a non-positive integer field (epochs, batch sizes), a negative float (lr...) or
  an unknown `optimizer`."""
  if "optimizer" in cfg and str(cfg.optimizer) not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r} in config.{name}; set --config.{name}.optimizer "
                      f"to one of: {', '.join(OPTIMIZERS)}")
  for f in ints:
    v = cfg[f]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ConfigError(f"config.{name}.{f} must be a positive integer, got {v!r}; set "
                        f"--config.{name}.{f} to a positive integer")
  for f in floats:
    v = float(cfg[f])
    if not np.isfinite(v) or v < 0:
      raise ConfigError(f"config.{name}.{f} must be a finite number >= 0, got {cfg[f]!r}; set "
                        f"--config.{name}.{f} to one (e.g. 1e-4)")


KL_REDUCTIONS = ("mean", "batchmean")


# ----------------------------------------------------------------------------------------------------
# The step and the loop.

@functools.partial(jax.jit, static_argnames=("loss_fn",), donate_argnums=(0,))
def repair_step(state: TrainState, batch: dict, mean, std, loss_fn):
  """One optimiser step on the weighted mean of `loss_fn(logits, batch['target'])`, BN in train mode.

  `batch['weight']` is 1 for real rows and 0 for padding; padding rows are left out of the loss and of
  the BN batch statistics and running-average update. `batch['image']` is raw [0,1]. Returns the new
  state and the batch loss.
  """
  state, loss, _ = sgd_step(state, normalize(batch["image"], mean, std), batch["target"], loss_fn=loss_fn,
                            weight=batch["weight"])
  return state, loss


def epoch_order(key, epoch: int, n: int) -> np.ndarray:
  """Shuffled order of epoch `epoch` (host numpy), a function of (key, epoch) only."""
  return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def padded_batches(images: np.ndarray, targets: np.ndarray, batch_size: int, order: np.ndarray):
  """Batches of `order` as {'image', 'target', 'weight'}; the last one is padded (weight 0)."""
  n = len(order)
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    real = len(idx)
    if real < batch_size:
      idx = np.concatenate([idx, np.full(batch_size - real, idx[0], idx.dtype)])
    weight = np.zeros(batch_size, np.float32)
    weight[:real] = 1.0
    yield {"image": images[idx], "target": targets[idx], "weight": weight}


def copy_variables(variables) -> dict:
  """A device copy: the step donates its state, and `ctx.original` must survive the method."""
  return jax.tree.map(lambda a: jnp.array(a, copy=True), dict(variables))


def fit(model, variables, tx: optax.GradientTransformation, images: np.ndarray, targets: np.ndarray,
        loss_fn, *, batch_size: int, epochs: int, key, info, log: Callable[[str], None] = print,
        name: str = "repair", lr_flag: str = "lr", batch_flag: str = "batch_size",
        tag: str | None = None):
  """Trains a copy of `variables` for `epochs` passes over (images, targets); returns (variables, history).

  images: float32 [N, H, W, C] raw in [0, 1] (normalised on device with `info.mean/std`); targets:
  int32 [N] labels for `CrossEntropy` or float32 [N, K] probabilities for `SoftTargetKL`. `key` drives
  the shuffling only. `history` has one {'epoch', 'loss', 'steps', 'elapsed_s'} per epoch. Raises
  NumericalError (naming `--config.<name>.<lr_flag>`) when the loss or the parameters become NaN/inf.
  `tag` labels the progress lines (default `name`). The result has the collections of `variables`.
  """
  tag = tag or name
  n = len(images)
  if n == 0:
    raise ConfigError(f"[{name}] nothing to train on (0 samples); check config.forget")
  sharding.check_batch_size(batch_size, field=f"--config.{name}.{batch_flag}")
  v = copy_variables(variables)
  state = TrainState.create(apply_fn=model.apply, params=v["params"], tx=tx,
                            batch_stats=v.get("batch_stats", {}))
  state = sharding.replicate(state)
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  t0 = time.time()

  def epoch_fn(state, epoch):
    losses = []
    for batch in padded_batches(images, targets, batch_size, epoch_order(key, epoch, n)):
      state, loss = repair_step(state, sharding.shard_batch(batch), mean, std, loss_fn=loss_fn)
      losses.append(loss)
    return state, {"epoch": epoch + 1, "loss": float(jnp.mean(jnp.stack(losses))), "steps": len(losses),
                   "elapsed_s": time.time() - t0}

  state, history = run_chunks(
      epoch_fn, state, int(epochs), phase=tag, guard=finite_guard(("loss",), check=lambda s: s.params),
      fix=f"lower --config.{name}.{lr_flag} and run again",
      progress=lambda i, r: f"[{tag}] epoch {i + 1}/{epochs} loss {r['loss']:.4f} ({r['steps']} steps)",
      log=log)
  # A model without BatchNorm (ViT) has no 'batch_stats' collection: return exactly the input's.
  out = jax.device_get(state.variables)
  return {k: out[k] for k in variables}, history
