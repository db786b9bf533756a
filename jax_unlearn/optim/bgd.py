"""Bayesian Gradient Descent (BGD) as an optax transformation (reference: `igolan/bgd`).

BGD (Zeno, Golan, Hoffer & Soudry, "Task Agnostic Continual Learning Using Online Variational Bayes",
reference code `igolan/bgd: optimizers_lib/bgd_optimizer.py`) keeps a factorised Gaussian
q(θ) = N(μ, diag σ²) over the parameters. Per minibatch it draws K Monte-Carlo samples

    ε_k ~ N(0, I),   θ_k = μ + σ ⊙ ε_k,   g_k = ∇_θ L_sum(θ_k; batch),

where L_sum is the **summed** minibatch loss (the reference computes the batch-mean loss and multiplies
its gradient by the batch size, `aggregate_grads(batch_size)`), and forms

    E[g] = (1/K) Σ_k g_k,        E[gε] = (1/K) Σ_k g_k ⊙ ε_k.

E[g] is ∂E_q[L]/∂μ and E[gε] is ∂E_q[L]/∂σ (reparameterisation). The step is the reference code's `step()`
(the DiStruction paper's Eq. 1 puts the −½σ²E[gε] term inside the square root; the code's form is used):

    μ ← μ − η σ² ⊙ E[g]                                     (old σ; η = `mean_eta`)
    σ ← σ ⊙ sqrt(1 + (σ ⊙ E[gε] / 2)²) − σ² ⊙ E[gε] / 2.

Every parameter leaf (BN affine parameters included) is its own group; BGD has no weight decay.

Because the update needs *two* statistics, the transformation takes E[g] as its `updates` argument and
E[gε] as the keyword extra argument `e_grad_eps` (optax forwards extra arguments through `optax.chain`,
as it does for SAM's `grad_fn`). The returned updates move the parameters to the new mean, and the new σ
lives in the state. Deterministic inference uses μ (the reference's `map` mode).

Typical use with any Flax model (this is `bgd_train_step`)::

    tx = bgd(mean_eta=1.0, std_init=0.02)
    opt_state = tx.init(params)
    ex = bgd_expectations(loss_fn, opt_state, key, 10, images, labels)   # loss_fn: batch-mean loss
    updates, opt_state = tx.update(ex.e_grad, opt_state, params, e_grad_eps=ex.e_grad_eps)
    params = optax.apply_updates(params, updates)                          # == opt_state.mean

For BatchNorm models let `loss_fn` return `(loss, new_batch_stats)` with `has_aux=True`: the aux of the
*first* Monte-Carlo sample is returned, so running statistics advance once per minibatch, which is what
the reference's `save_bn_running`/`load_bn_running` snapshot/restore achieves.

**The standard optax contract** (`tx.update(grads, state, params)`, hence `optax.chain` with other
transforms and flax's `TrainState.apply_gradients`): build `bgd(..., num_samples=K, key=seed)`. Its
state `BGDSampledState` also holds the noise ε_1..ε_K of the coming step (K × the parameters' memory),
drawn from `fold_in(key, step)` exactly as `bgd_expectations(..., key=fold_in(key, step), K)` draws it.
`bgd_sample_params(opt_state)` gives the stacked θ_k = μ + σ ⊙ ε_k; the gradients at them, stacked on a
leading K axis, are the `grads`; `update` forms E[g] and E[gε] with the stored ε, steps, and draws the
next step's ε. BGD wants gradients of the *summed* minibatch loss: differentiate a sum, or put
`optax.scale(batch_size)` before `bgd` (which is exactly `bgd_expectations`' scaling)::

    tx = optax.chain(optax.scale(batch_size), bgd(mean_eta=1.0, std_init=0.02, num_samples=10, key=0))
    state = flax.training.train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, x, y):                       # loss_fn(params, x, y): batch-mean loss
      thetas = bgd_sample_params(state.opt_state)      # leaves [K, ...]
      grads = jax.vmap(jax.grad(loss_fn), in_axes=(0, None, None))(thetas, x, y)
      return state.apply_gradients(grads=grads)        # state.params: the new posterior mean

Transforms before `bgd` act on the stacked gradients: element-wise ones (`scale`, `clip`) act on
every g_k alike; `clip_by_global_norm(c)` clips the joint norm (Σ_k ‖g_k‖²)^½, scaling E[g] and E[gε]
by one factor (think c·√K); `per_sample(clip_by_global_norm(c))` clips each g_k by its own norm, as
per-example clipping does. Transforms after `bgd` would distort the move to the new mean: don't.
The `e_grad_eps=` keyword stays the fast path (then `grads` is E[g], unstacked, as without num_samples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.errors import ConfigError

__all__ = ["BGDExpectations", "BGDSampledState", "BGDState", "bgd", "bgd_expectations", "bgd_sample",
           "bgd_sample_params", "bgd_std_update", "bgd_train_step", "find_bgd_state", "per_sample"]

PyTree = Any


class BGDState(NamedTuple):
  """State of `bgd`: the Gaussian posterior N(mean, std²) over every parameter leaf."""
  mean: PyTree
  std: PyTree


class BGDSampledState(NamedTuple):
  """State of `bgd(..., num_samples=K)`: the posterior, the noise of the coming step and its key.

  `eps` has the params' structure with a leading K axis; it is the noise of step `count`, drawn from
  `fold_in(key, count)` (sample k from `fold_in(fold_in(key, count), k)`, as in `bgd_sample`)."""
  mean: PyTree
  std: PyTree
  eps: PyTree
  key: jax.Array
  count: jax.Array


class BGDExpectations(NamedTuple):
  """Monte-Carlo statistics of one minibatch (see `bgd_expectations`)."""
  e_grad: PyTree        # E[g], g = gradient of the summed minibatch loss at θ = μ + σε
  e_grad_eps: PyTree    # E[g ⊙ ε]
  loss: jax.Array       # mean over the K samples of the (batch-mean) loss
  aux: Any              # aux output of the first sample (e.g. new BN running statistics), or None


def bgd_std_update(std: jax.Array, e_grad_eps: jax.Array) -> jax.Array:
  """σ ← σ sqrt(1 + (σE[gε]/2)²) − σ²E[gε]/2 (the reference's `step()`), in a cancellation-free form.

  With x = σE[gε]/2 the rule is σ(sqrt(1+x²) − x). For x > 0 this subtracts two nearly equal numbers
  (in float32 it returns exactly 0 once x ≳ 4e3), so we use the algebraically identical
  σ / (sqrt(1+x²) + x) there; `hypot` avoids overflowing x². The result is always > 0 for σ > 0.
  """
  x = 0.5 * std * e_grad_eps
  root = jnp.hypot(jnp.ones_like(x), x)
  return jnp.where(x > 0, std / (root + x), std * (root - x))


def bgd(mean_eta: float = 1.0, std_init: float = 0.02, *, update_std: bool = True,
        num_samples: int | None = None, key: jax.Array | int = 0
        ) -> optax.GradientTransformationExtraArgs:
  """Bayesian Gradient Descent (Zeno et al. 2018; `igolan/bgd optimizers_lib/bgd_optimizer.py`) in optax.

  Args:
    mean_eta: η in μ ← μ − η σ² E[g] (reference default 1; 8 for CIFAR-10 VGG with BN). With the
      Python value 0 the mean is left bit-for-bit unchanged (the DiStruction paper's §3.1 preparation).
    std_init: initial σ for every parameter (reference library default 0.02; CLI default 0.05).
    update_std: set False to keep σ fixed (then BGD is preconditioned noisy SGD).
    num_samples: K. None (default): state `BGDState(mean, std)` and `update` needs `e_grad_eps=`.
      An int: state `BGDSampledState` holding the step's noise, and `update(grads, state, params)`
      takes the K gradients at `bgd_sample_params(state)` stacked on a leading axis (module docstring).
    key: PRNG key (or int seed) of the stored noise; only with `num_samples`.

  Returns:
    `GradientTransformationExtraArgs` whose state has `mean` initialised from the params and `std`
    to `std_init`. `update(e_grad, state, params=None, *, e_grad_eps)` takes E[g] as the updates and
    E[gε] as a keyword; it returns updates with `params + updates == new mean` (when `params` is
    the current mean or None; bit-for-bit outside jit and with `mean_eta=0`, within an ulp under
    jit, where XLA may fuse μ + (−ησ²)E[g] into one multiply-add, so treat `state.mean` as the
    authoritative posterior mean) and the new state, whose σ uses the rule of `bgd_std_update`.
    The mean step uses the *old* σ, as the reference does.
  """
  if std_init <= 0:
    raise ConfigError(f"bgd std_init must be > 0, got {std_init}; pass a positive initial std")
  if isinstance(mean_eta, (int, float)) and mean_eta < 0:
    raise ConfigError(f"bgd mean_eta must be >= 0, got {mean_eta}; pass a non-negative step size")
  if num_samples is not None and num_samples < 1:
    raise ConfigError(f"bgd num_samples must be >= 1 (or None), got {num_samples}")
  freeze_mean = isinstance(mean_eta, (int, float)) and mean_eta == 0
  base_key = jax.random.key(key) if isinstance(key, int) else key

  def init_fn(params):
    mean = jax.tree.map(jnp.asarray, params)
    std = jax.tree.map(lambda p: jnp.full(jnp.shape(p), std_init, jnp.result_type(p)), params)
    if num_samples is None:
      return BGDState(mean=mean, std=std)
    count = jnp.zeros((), jnp.int32)
    return BGDSampledState(mean=mean, std=std, eps=_noise(mean, base_key, count, num_samples),
                           key=base_key, count=count)

  def update_fn(e_grad, state, params=None, *, e_grad_eps=None, **extra_args):
    del extra_args  # other transforms' extra arguments, forwarded by optax.chain
    sampled = isinstance(state, BGDSampledState)
    if e_grad_eps is None and not sampled:
      raise TypeError("bgd.update needs the keyword argument e_grad_eps=E[g*eps] "
                      "(see jax_unlearn.optim.bgd_expectations), or build bgd(..., num_samples=K) "
                      "to pass the K sampled gradients instead")
    if e_grad_eps is None:
      e_grad, e_grad_eps = _stacked_expectations(e_grad, state.eps, state.mean)
    if freeze_mean:
      delta = jax.tree.map(jnp.zeros_like, state.mean)
    else:
      delta = jax.tree.map(lambda s, g: -mean_eta * jnp.square(s) * g, state.std, e_grad)
    new_mean = jax.tree.map(lambda m, d: m + d, state.mean, delta)
    new_std = (jax.tree.map(bgd_std_update, state.std, e_grad_eps) if update_std else state.std)
    if params is None:
      updates = delta
    else:
      # d + (m - p) is exactly d when params is the current mean, so params + updates == new mean.
      updates = jax.tree.map(lambda d, m, p: d + (m - p), delta, state.mean, params)
    if not sampled:
      return updates, BGDState(mean=new_mean, std=new_std)
    count = state.count + 1
    return updates, BGDSampledState(mean=new_mean, std=new_std,
                                    eps=_noise(new_mean, state.key, count, num_samples),
                                    key=state.key, count=count)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _noise(template: PyTree, key: jax.Array, step: jax.Array | int, num_samples: int) -> PyTree:
  """ε of step `step`, leaves [K, ...]: the very noise `bgd_sample(state, fold_in(key, step), K)`
  and hence `bgd_expectations(..., key=fold_in(key, step), K)` draw (it depends on shapes only)."""
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda k: optax.tree.random_like(jax.random.fold_in(step_key, k), template,
                                                   jax.random.normal))(jnp.arange(num_samples))


def _stacked_expectations(grads: PyTree, eps: PyTree, mean: PyTree) -> tuple[PyTree, PyTree]:
  """E[g] = mean_k g_k and E[gε] = mean_k g_k ⊙ ε_k from gradients stacked on a leading K axis."""
  for g, e, m in zip(jax.tree.leaves(grads), jax.tree.leaves(eps), jax.tree.leaves(mean)):
    if jnp.shape(g) != jnp.shape(e):
      raise ConfigError(
          f"bgd(num_samples={jnp.shape(e)[0]}).update takes the gradients at the K samples of "
          f"bgd_sample_params, stacked on a leading axis: expected shape {jnp.shape(e)} for a "
          f"parameter of shape {jnp.shape(m)}, got {jnp.shape(g)}; or pass E[g] with e_grad_eps=")
  e_grad = jax.tree.map(lambda g: g.mean(0), grads)
  e_grad_eps = jax.tree.map(lambda g, e: (g * e).mean(0), grads, eps)
  return e_grad, e_grad_eps


def bgd_sample_params(opt_state: Any) -> PyTree:
  """θ_k = μ + σ ⊙ ε_k for the K noise samples stored in the (single) `BGDSampledState` inside
  `opt_state` (e.g. `TrainState.opt_state`); leaves have a leading K axis. Differentiate the loss at
  each (`jax.vmap(jax.grad(loss))`) and pass the stacked gradients to `update`/`apply_gradients`."""
  state = find_bgd_state(opt_state)
  if not isinstance(state, BGDSampledState):
    raise ConfigError("bgd_sample_params needs the noise in the state; build the transform with "
                      "bgd(..., num_samples=K, key=seed)")
  return jax.tree.map(lambda m, s, e: m + s * e, state.mean, state.std, state.eps)


def per_sample(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Runs a transform on each Monte-Carlo gradient g_k of a stacked `grads` separately (vmap over the
  leading K axis), e.g. `optax.chain(per_sample(optax.clip_by_global_norm(c)), bgd(..., num_samples=K))`
  clips every ‖g_k‖ to c. `inner` must not keep per-sample state (its new state may not depend on
  the gradients: `clip_by_global_norm`, `scale`, schedules are fine; vmap refuses the others)."""
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    return jax.vmap(lambda g: inner.update(g, state, params, **extra_args), out_axes=(0, None))(updates)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def bgd_sample(state: BGDState | BGDSampledState, key: jax.Array, num_samples: int | None = None
               ) -> tuple[PyTree, PyTree]:
  """Monte-Carlo parameter samples θ = μ + σ ⊙ ε, ε ~ N(0, I) independently per leaf.

  With `num_samples=K` returns `(thetas, eps)` whose leaves have a leading K axis; sample k uses
  `jax.random.fold_in(key, k)`, so it is the same sample whether the K samples are drawn together
  (vmap) or one by one (scan). With `num_samples=None` returns one sample without that axis.
  """
  if num_samples is None:
    eps = optax.tree.random_like(key, state.mean, jax.random.normal)
    thetas = jax.tree.map(lambda m, s, e: m + s * e, state.mean, state.std, eps)
    return thetas, eps
  ks = jnp.arange(num_samples)
  return jax.vmap(lambda k: bgd_sample(state, jax.random.fold_in(key, k)))(ks)


def _infer_batch_size(batch: Any) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves or jnp.ndim(leaves[0]) == 0:
    raise ConfigError("bgd_expectations cannot infer the batch size from the batch; pass batch_size=")
  return jnp.shape(leaves[0])[0]


def bgd_expectations(loss_fn: Callable[..., Any], state: BGDState | BGDSampledState, key: jax.Array,
                     num_samples: int, *batch: Any, batch_size: int | None = None, has_aux: bool = False,
                     vectorize: str = "vmap") -> BGDExpectations:
  """E[g] and E[g ⊙ ε] over `num_samples` Monte-Carlo samples of `state` (the reference's
  `mc_iters` loop with `aggregate_grads(batch_size)`).

  Args:
    loss_fn: `loss_fn(params, *batch)` returning the batch-**mean** loss, or `(loss, aux)` when
      `has_aux`. Its gradient is multiplied by `batch_size`, giving the gradient of the summed
      minibatch loss as BGD's `aggregate_grads` does (this sets the scale of η and of σ's dynamics).
    state: the `BGDState` (posterior) to sample from.
    key: PRNG key; sample k uses `fold_in(key, k)` (see `bgd_sample`).
    num_samples: K, the reference's `mc_iters` (default 10 there).
    *batch: forwarded to `loss_fn`.
    batch_size: multiplier of the gradient; inferred from the first batch leaf's leading axis.
    has_aux: `loss_fn` returns `(loss, aux)`; the aux of sample 0 is returned, e.g. BatchNorm running
      statistics, so they advance once per minibatch (the reference's snapshot/restore).
    vectorize: 'vmap' (all K samples at once; K× activation memory) or 'scan' (one at a time).

  Returns:
    `BGDExpectations(e_grad, e_grad_eps, loss, aux)`.
  """
  if vectorize not in ("vmap", "scan"):
    raise ConfigError(f"vectorize must be 'vmap' or 'scan', got {vectorize!r}")
  if num_samples < 1:
    raise ConfigError(f"num_samples (mc_iters) must be >= 1, got {num_samples}")
  scale = _infer_batch_size(batch) if batch_size is None else batch_size
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def one(k):
    theta, eps = bgd_sample(state, jax.random.fold_in(key, k))
    out, g = grad_fn(theta, *batch)
    loss, aux = out if has_aux else (out, None)
    g = jax.tree.map(lambda x: x * scale, g)
    return g, jax.tree.map(lambda a, b: a * b, g, eps), loss, aux

  if vectorize == "vmap":
    g, ge, loss, aux = jax.vmap(one)(jnp.arange(num_samples))
    e_grad = jax.tree.map(lambda x: x.mean(0), g)
    e_grad_eps = jax.tree.map(lambda x: x.mean(0), ge)
    return BGDExpectations(e_grad, e_grad_eps, loss.mean(), jax.tree.map(lambda x: x[0], aux))

  g0, ge0, loss0, aux0 = one(0)

  def body(carry, k):
    sg, sge, sl = carry
    g, ge, loss, _ = one(k)
    return (jax.tree.map(jnp.add, sg, g), jax.tree.map(jnp.add, sge, ge), sl + loss), None

  (sg, sge, sl), _ = jax.lax.scan(body, (g0, ge0, loss0), jnp.arange(1, num_samples))
  inv = 1.0 / num_samples
  return BGDExpectations(jax.tree.map(lambda x: x * inv, sg), jax.tree.map(lambda x: x * inv, sge),
                         sl * inv, aux0)


def find_bgd_state(opt_state: Any) -> BGDState | BGDSampledState:
  """The (single) `BGDState`/`BGDSampledState` inside an optax state, e.g. of
  `optax.chain(..., bgd(...))`."""
  kinds = (BGDState, BGDSampledState)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds))
           if isinstance(s, kinds)]
  if len(found) != 1:
    raise ConfigError(f"expected exactly one BGDState in the optimizer state, found {len(found)}; "
                      "use a single jax_unlearn.optim.bgd transform")
  return found[0]


def bgd_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformationExtraArgs,
                   params: PyTree, opt_state: Any, key: jax.Array, *batch: Any, num_samples: int = 10,
                   has_aux: bool = False, vectorize: str = "vmap", batch_size: int | None = None
                   ) -> tuple[PyTree, Any, dict[str, Any]]:
  """One BGD minibatch step for any model: sample, average, update (`igolan/bgd`).

  `tx` is `bgd(...)` or a chain containing it. Returns `(params, opt_state, metrics)` where `params`
  is the new posterior mean and `metrics = {'loss', 'aux'}` (`aux` from the first sample, e.g. new
  BN statistics). Jit it with `loss_fn`, `tx`, `num_samples`, `has_aux`, `vectorize` static, e.g.
  `jax.jit(functools.partial(bgd_train_step, loss_fn, tx, num_samples=10))`.
  """
  ex = bgd_expectations(loss_fn, find_bgd_state(opt_state), key, num_samples, *batch,
                        batch_size=batch_size, has_aux=has_aux, vectorize=vectorize)
  _, opt_state = tx.update(ex.e_grad, opt_state, params, e_grad_eps=ex.e_grad_eps)
  # The state's mean, not params + updates: identical up to XLA's fused multiply-add rounding, and
  # this way the returned weights are exactly the posterior mean.
  return find_bgd_state(opt_state).mean, opt_state, {"loss": ex.loss, "aux": ex.aux}
