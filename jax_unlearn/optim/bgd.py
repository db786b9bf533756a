"""Bayesian Gradient Descent (BGD) as an optax transformation (SPEC §5.1).

BGD (Zeno, Golan, Hoffer & Soudry, "Task Agnostic Continual Learning Using Online Variational Bayes",
reference code `igolan/bgd: optimizers_lib/bgd_optimizer.py`) keeps a factorised Gaussian
q(θ) = N(μ, diag σ²) over the parameters. Per minibatch it draws K Monte-Carlo samples

    ε_k ~ N(0, I),   θ_k = μ + σ ⊙ ε_k,   g_k = ∇_θ L_sum(θ_k; batch),

where L_sum is the **summed** minibatch loss (the reference computes the batch-mean loss and multiplies
its gradient by the batch size, `aggregate_grads(batch_size)`), and forms

    E[g] = (1/K) Σ_k g_k,        E[gε] = (1/K) Σ_k g_k ⊙ ε_k.

E[g] is ∂E_q[L]/∂μ and E[gε] is ∂E_q[L]/∂σ (reparameterisation). The step is (SPEC §5.1; the
DiStruction paper's Eq. 1 misplaces the square root, SPEC §5.2 (b)):

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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.errors import ConfigError

PyTree = Any


class BGDState(NamedTuple):
  """State of `bgd`: the Gaussian posterior N(mean, std²) over every parameter leaf."""
  mean: PyTree
  std: PyTree


class BGDExpectations(NamedTuple):
  """Monte-Carlo statistics of one minibatch (see `bgd_expectations`)."""
  e_grad: PyTree        # E[g], g = gradient of the summed minibatch loss at θ = μ + σε
  e_grad_eps: PyTree    # E[g ⊙ ε]
  loss: jax.Array       # mean over the K samples of the (batch-mean) loss
  aux: Any              # aux output of the first sample (e.g. new BN running statistics), or None


def bgd_std_update(std, e_grad_eps):
  """σ ← σ sqrt(1 + (σE[gε]/2)²) − σ²E[gε]/2 (SPEC §5.1), in a cancellation-free form.

  With x = σE[gε]/2 the rule is σ(sqrt(1+x²) − x). For x > 0 this subtracts two nearly equal numbers
  (in float32 it returns exactly 0 once x ≳ 4e3), so we use the algebraically identical
  σ / (sqrt(1+x²) + x) there; `hypot` avoids overflowing x². The result is always > 0 for σ > 0.
  """
  x = 0.5 * std * e_grad_eps
  root = jnp.hypot(jnp.ones_like(x), x)
  return jnp.where(x > 0, std / (root + x), std * (root - x))


def bgd(mean_eta: float = 1.0, std_init: float = 0.02, *, update_std: bool = True
        ) -> optax.GradientTransformationExtraArgs:
  """Bayesian Gradient Descent (Zeno et al. 2018; SPEC §5.1) as an optax transformation.

  Args:
    mean_eta: η in μ ← μ − η σ² E[g] (reference default 1; 8 for CIFAR-10 VGG with BN). With the
      Python value 0 the mean is left bit-for-bit unchanged (DiStruction's preparation, SPEC §5.2).
    std_init: initial σ for every parameter (reference library default 0.02; CLI default 0.05).
    update_std: set False to keep σ fixed (then BGD is preconditioned noisy SGD).

  Returns:
    `GradientTransformationExtraArgs` with state `BGDState(mean, std)`, `mean` initialised from the
    params and `std` to `std_init`. `update(e_grad, state, params=None, *, e_grad_eps)` takes E[g]
    as the updates and E[gε] as a keyword; it returns updates with `params + updates == new mean`
    (when `params` is the current mean or None; bit-for-bit outside jit and with `mean_eta=0`,
    within an ulp under jit, where XLA may fuse μ + (−ησ²)E[g] into one multiply-add, so treat
    `state.mean` as the authoritative posterior mean) and the new state, whose σ uses the rule of
    `bgd_std_update`. The mean step uses the *old* σ, as the reference does.
  """
  if std_init <= 0:
    raise ConfigError(f"bgd std_init must be > 0, got {std_init}; pass a positive initial std")
  if isinstance(mean_eta, (int, float)) and mean_eta < 0:
    raise ConfigError(f"bgd mean_eta must be >= 0, got {mean_eta}; pass a non-negative step size")
  freeze_mean = isinstance(mean_eta, (int, float)) and mean_eta == 0

  def init_fn(params):
    mean = jax.tree.map(jnp.asarray, params)
    std = jax.tree.map(lambda p: jnp.full(jnp.shape(p), std_init, jnp.result_type(p)), params)
    return BGDState(mean=mean, std=std)

  def update_fn(e_grad, state, params=None, *, e_grad_eps=None, **extra_args):
    del extra_args  # other transforms' extra arguments, forwarded by optax.chain
    if e_grad_eps is None:
      raise TypeError("bgd.update needs the keyword argument e_grad_eps=E[g*eps] "
                      "(see jax_unlearn.optim.bgd_expectations)")
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
    return updates, BGDState(mean=new_mean, std=new_std)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def bgd_sample(state: BGDState, key: jax.Array, num_samples: int | None = None):
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


def _infer_batch_size(batch) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves or jnp.ndim(leaves[0]) == 0:
    raise ConfigError("bgd_expectations cannot infer the batch size from the batch; pass batch_size=")
  return jnp.shape(leaves[0])[0]


def bgd_expectations(loss_fn: Callable[..., Any], state: BGDState, key: jax.Array, num_samples: int,
                     *batch, batch_size: int | None = None, has_aux: bool = False,
                     vectorize: str = "vmap") -> BGDExpectations:
  """E[g] and E[g ⊙ ε] over `num_samples` Monte-Carlo samples of `state` (SPEC §5.1, steps 1–4).

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


def find_bgd_state(opt_state) -> BGDState:
  """The (single) `BGDState` inside an optax state, e.g. of `optax.chain(..., bgd(...))`."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, BGDState))
           if isinstance(s, BGDState)]
  if len(found) != 1:
    raise ConfigError(f"expected exactly one BGDState in the optimizer state, found {len(found)}; "
                      "use a single jax_unlearn.optim.bgd transform")
  return found[0]


def bgd_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformationExtraArgs, params,
                   opt_state, key: jax.Array, *batch, num_samples: int = 10, has_aux: bool = False,
                   vectorize: str = "vmap", batch_size: int | None = None):
  """One BGD minibatch step for any model: sample, average, update (SPEC §5.1).

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
