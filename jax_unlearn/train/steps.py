"""The one supervised training step, shared by every phase that fits a classifier to targets.

`sgd_step(state, x, targets)` is one optimiser step on the (weighted) mean of a per-example loss, with
BatchNorm in train mode; the original and retrain models (`train.supervised`), the repair baselines
(`methods._repair`), the MIA-II shadow models (`metrics.mia_ii`, vmapped over shadows) and AIN's
relearning (`metrics.ain`, inside a `lax.while_loop`) all call it. `weight` (1 for real rows, 0 for
padding) masks padding out of the loss mean *and* out of the BatchNorm batch statistics, so a padded
last batch is exactly the short batch PyTorch's `DataLoader(drop_last=False)` would give.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

__all__ = ["TrainState", "CrossEntropy", "SoftTargetKL", "cross_entropy", "loss_and_grads", "sgd_step",
           "scan_member_steps"]


class TrainState(train_state.TrainState):
  """flax's `TrainState` plus the BatchNorm running statistics (`{}` for BN-free models)."""
  batch_stats: Any = None

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Batch-mean softmax cross-entropy on integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# Per-example losses as frozen dataclasses: hashable by value, so they can be static jit arguments.

@dataclasses.dataclass(frozen=True)
class CrossEntropy:
  """Per-example softmax cross-entropy on integer labels (`F.cross_entropy` before its batch mean)."""

  def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


@dataclasses.dataclass(frozen=True)
class SoftTargetKL:
  """Per-example KL(target || softmax(logits / T)) to precomputed teacher probabilities `targets`.

  The blindspot reference calls `F.kl_div(log_softmax(s / T), p_teacher)` with its default 'mean'
  reduction, i.e. the sum over the batch and classes divided by N*K; `reduction='mean'` reproduces that
  1/K factor, 'batchmean' drops it (true per-example KL). Under Adam the factor barely matters.
  """
  temperature: float = 1.0
  reduction: str = "mean"

  def __call__(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
    kl = optax.losses.kl_divergence(jax.nn.log_softmax(logits / self.temperature, -1), targets)
    return kl / logits.shape[-1] if self.reduction == "mean" else kl


def loss_and_grads(apply_fn: Callable, params: Any, batch_stats: Any, x: jax.Array, targets: jax.Array, *,
                   loss_fn: Callable = CrossEntropy(), weight: jax.Array | None = None
                   ) -> tuple[tuple[jax.Array, tuple[jax.Array, Any]], Any]:
  """`((loss, (logits, new batch_stats)), grads)` of the per-example `loss_fn` averaged over the batch
  (over rows with `weight` > 0, weighted, when given; those rows alone enter the BN statistics)."""
  def objective(p):
    kw = {} if weight is None else {"mask": weight > 0}
    logits, upd = apply_fn({"params": p, "batch_stats": batch_stats}, x, train=True,
                           mutable=["batch_stats"], **kw)
    per_example = loss_fn(logits, targets)
    if weight is None:
      loss = per_example.mean()
    else:
      loss = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, (logits, upd.get("batch_stats", batch_stats))

  return jax.value_and_grad(objective, has_aux=True)(params)


def sgd_step(state: TrainState, x: jax.Array, targets: jax.Array, *, loss_fn: Callable = CrossEntropy(),
             weight: jax.Array | None = None) -> tuple[TrainState, jax.Array, jax.Array]:
  """One optimiser step of `state.tx` on `loss_and_grads`; returns (state, loss, logits)."""
  (loss, (logits, batch_stats)), grads = loss_and_grads(state.apply_fn, state.params, state.batch_stats,
                                                        x, targets, loss_fn=loss_fn, weight=weight)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss, logits


def scan_member_steps(one: Callable, state: Any, idx: jax.Array, keys: jax.Array, t0: int | jax.Array,
                      vmapped: bool) -> tuple[Any, jax.Array]:
  """`lax.scan` of `one(state, idx_t, key_t) -> (state, loss)` over the rows of `idx`: row t is global
  step t0 + t and uses `fold_in(key, t0 + t)`, so a schedule run in pieces equals one scan over it.
  vmapped: `state` is stacked over members, `idx` [T, G, B] and `keys` [G] (one key per member);
  else one member, `idx` [T, B] and one key. Used by the model populations and the MIA-II shadows.
  Returns (state, losses [T(, G)])."""
  if vmapped:
    one = jax.vmap(one)

  def body(s, xs):
    t, idx_t = xs
    k = jax.vmap(jax.random.fold_in, (0, None))(keys, t) if vmapped else jax.random.fold_in(keys, t)
    return one(s, idx_t, k)

  return jax.lax.scan(body, state, (t0 + jnp.arange(idx.shape[0]), idx))
