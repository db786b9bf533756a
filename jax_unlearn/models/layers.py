"""Shared layers: a BatchNorm that exposes its input statistics and honours a row mask."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from numpy.typing import ArrayLike

# PyTorch's default conv/linear init (kaiming-uniform with a=sqrt(5)) is a fan-in uniform with
# variance 1/(3 fan_in). The reference models use it; matching it keeps training dynamics comparable.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_STATS = "bn_stats"  # collection that holds (input mean, input var, running mean, running var)
# `BatchNorm.running_var`: how a train step updates the running variance. 'unbiased' is PyTorch's rule
# (the reference models), 'biased' Flax's (this library before the option existed).
RUNNING_VAR_MODES = ("unbiased", "biased")


def _row_mask(mask, x):
  if mask is None:
    return None
  return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def masked_moments(x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and *biased* variance over all axes but the last, over kept rows only."""
  axes = tuple(range(x.ndim - 1))
  if mask is None:
    mean = x.mean(axes)
    return mean, jnp.square(x - mean).mean(axes)
  m = _row_mask(mask, x).astype(x.dtype)
  n = jnp.maximum(m.sum(axes), 1.0)
  mean = (x * m).sum(axes) / n
  var = (jnp.square(x - mean) * m).sum(axes) / n
  return mean, var


def column_sums(a: jax.Array, chunks: int = 256) -> jax.Array:
  """Sums of a `[P, C]` array over P, as one GEMV (a ones vector times `a` viewed as `[P/k, k*C]`,
  then the k partial sums added): accumulation chains are P/k long, so it is as accurate as XLA's
  tree reduction, and on XLA:CPU 2-5x faster than the column reduction it replaces (BUILD_NOTES,
  Performance change 10). `precision=HIGHEST` keeps it float32 on TPU/GPU."""
  p, c = a.shape
  k = math.gcd(p, chunks)
  ones = jnp.ones((p // k,), a.dtype)
  return jnp.matmul(ones, a.reshape(p // k, k * c), precision=jax.lax.Precision.HIGHEST).reshape(k, c).sum(0)


def bessel_correction(n: int | ArrayLike, dtype: Any = jnp.float32) -> float | jax.Array:
  """n/(n-1): the biased variance of n values times it is the unbiased one (PyTorch's running-var
  update). For n <= 1 it is 1: the unbiased variance of one value is 0/0, and PyTorch refuses such a
  training batch ("Expected more than 1 value per channel"); we keep the biased value (0) rather than
  write inf/NaN into the running variance. `n` is a Python int (static shapes) or an array (a mask)."""
  if isinstance(n, int):
    return n / (n - 1) if n > 1 else 1.0
  n = jnp.asarray(n, dtype)
  return jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Train-mode batch norm over all axes but the last: returns `(y, mean, var)` with
  y = (x - mean) / sqrt(var + eps) * scale + bias and the biased `var` = E[x^2] - mean^2 (Flax's
  `use_fast_variance`). Statistics and every backward-pass sum are `column_sums` GEMVs; the VJP is
  the closed form dx = scale/(sigma P) (P dy - sum dy - x_hat sum(dy x_hat)) plus the terms of the
  `mean`/`var` outputs. Same values as `flax.linen.BatchNorm` to float rounding (tested)."""
  return _bn_fwd(x, scale, bias, epsilon)[0]


def _bn_fwd(x, scale, bias, epsilon):
  c = x.shape[-1]
  x2 = x.reshape(-1, c)
  p = x2.shape[0]
  mean = column_sums(x2) / p
  var = jnp.maximum(column_sums(x2 * x2) / p - mean * mean, 0.0)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv * scale) + bias
  return (y, mean, var), (x, mean, inv, scale)


def _bn_bwd(epsilon, res, cts):
  del epsilon
  x, mean, inv, scale = res
  gy, gmean, gvar = cts
  c = x.shape[-1]
  p = x.size // c
  xhat = (x - mean) * inv
  sdy = column_sums(gy.reshape(-1, c))
  sdy_xhat = column_sums((gy * xhat).reshape(-1, c))
  dx = (scale * inv / p) * (p * gy - sdy - xhat * sdy_xhat) + gmean / p + gvar * (2.0 / p) * (x - mean)
  return dx, sdy_xhat, sdy


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` (PyTorch momentum 0.1 == Flax 0.9, eps 1e-5) plus four things.

  * `running_var` ('unbiased' | 'biased'): a train step normalises with the biased batch variance
    σ²_B = (1/n) Σ (x - μ_B)² in both modes; the running variance is updated as in PyTorch,
    v <- m v + (1 - m) σ²_B n/(n-1) ('unbiased', the default: the reference models are PyTorch's),
    or as in Flax, v <- m v + (1 - m) σ²_B ('biased', this library before the option existed). n is
    the number of values per channel that entered σ²_B: N·H·W, or kept rows·H·W under `mask`;
    n <= 1 keeps the biased value (`bessel_correction`). Outputs and the running mean do not depend
    on the mode.
  * `mask` (shape `[N]`, bool): batch statistics and the running-average update use kept rows only.
    This is what a PyTorch BN sees after PreFilter/BlockF shrink the batch
    (the reference drops the filtered rows; a jitted step keeps a fixed shape).
  * It sows `(mean, var, running_mean, running_var)` of its *input* into the `bn_stats` collection:
    the DeepInversion/DFQ BN-statistics loss L_BN needs them; `var` is the biased batch
    variance, as in the reference hook (`var(1, unbiased=False)`), whatever `running_var` is. Ask for
    them with `apply(..., mutable=['bn_stats'])`; otherwise the sow is a no-op.
  * `dot_stats=True`: in train mode without `mask`, the layer runs `batch_norm_train` (statistics and
    backward sums as GEMVs, ~2x faster BN on XLA:CPU). Same variables and update rule; values differ
    from Flax's by float rounding only. Models set it from `config.model.fast_cpu_kernels`: on in the
    paper configs, off for digits, whose recorded numbers were made with Flax's reductions.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dot_stats: bool = False
  running_var: str = "unbiased"

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None, **kw: Any) -> jax.Array:
    if self.running_var not in RUNNING_VAR_MODES:
      raise ValueError(f"BatchNorm(running_var={self.running_var!r}): use one of {RUNNING_VAR_MODES}")
    train = not nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    update = train and not self.is_initializing()  # Flax does not update running stats at init
    if self.dot_stats and update and mask is None and not kw:
      y = self._dot_stats_train(x)
    else:
      row_mask = _row_mask(mask, x)
      unbiased = update and self.running_var == "unbiased"
      old_var = self.get_variable("batch_stats", "var") if unbiased else None
      # Flax's own call normalises (so outputs are bit-for-bit those of 'biased') and writes the biased
      # update; 'unbiased' then overwrites the running variance from the value before the call. The
      # overwritten update is dead code to XLA, and `_batch_var` repeats Flax's reductions, which XLA
      # merges with Flax's (same reduce count in the compiled step; a mask adds one, its count).
      y = super().__call__(x, use_running_average, mask=row_mask, **kw)
      if unbiased:
        var, n = self._batch_var(x, row_mask)
        self.put_variable("batch_stats", "var", self._running_var_update(old_var, var, n))
    if self.is_mutable_collection(BN_STATS) and not self.is_initializing():
      mean, var = masked_moments(x, mask)
      self.sow(BN_STATS, "input", (mean, var, self.get_variable("batch_stats", "mean"),
                                   self.get_variable("batch_stats", "var")))
    return y

  def _running_var_update(self, old, var, n):
    """m v + (1 - m) σ²_B, with σ²_B n/(n-1) in 'unbiased' mode (PyTorch's `running_var` rule)."""
    if self.running_var == "unbiased":
      var = var * bessel_correction(n, var.dtype)
    return self.momentum * old + (1.0 - self.momentum) * var

  def _batch_var(self, x, row_mask):
    """The biased batch variance `nn.BatchNorm` normalises with, and n, the number of values per
    feature behind it. Flax's reductions (`_compute_stats`) are repeated rather than imported (they
    are private): at least float32, E[x²] - E[x]² clipped at 0 (`use_fast_variance`) or E[(x - μ)²],
    over mask positions only, averaged over `axis_name` when there is one."""
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    features = {a % x.ndim for a in axis}
    axes = tuple(i for i in range(x.ndim) if i not in features)
    dtype = jnp.result_type(x) if self.dtype is None else self.dtype
    if self.force_float32_reductions:
      dtype = jnp.promote_types(dtype, jnp.float32)
    x = x.astype(dtype)
    where = None if row_mask is None else jnp.asarray(row_mask, bool)
    if row_mask is None:
      n = math.prod(x.shape[i] for i in axes)
    else:
      n = where.sum(axes).astype(dtype)

    def pmean(v):
      if self.axis_name is None:
        return v
      return jax.lax.pmean(v, self.axis_name, axis_index_groups=self.axis_index_groups)
    if self.axis_name is not None:
      n = jax.lax.psum(n, self.axis_name, axis_index_groups=self.axis_index_groups)
    mu = pmean(x.mean(axes, where=where))
    if self.use_fast_variance:
      var = jnp.maximum(0.0, pmean(jax.lax.square(x).mean(axes, where=where)) - jax.lax.square(mu))
    else:
      var = pmean(jax.lax.square(x - jnp.expand_dims(mu, axes)).mean(axes, where=where))
    return var, n

  def _dot_stats_train(self, x):
    """Train mode through `batch_norm_train`, on the variables `nn.BatchNorm` creates (feature axis -1,
    scale and bias on, float32 statistics)."""
    if (self.axis not in (-1, x.ndim - 1) or not self.use_scale or not self.use_bias
        or self.axis_name is not None):
      raise ValueError("BatchNorm(dot_stats=True) supports the default layout only (axis=-1, scale, "
                       "bias, no axis_name); use dot_stats=False")
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
    ra_var.value = self._running_var_update(ra_var.value, var, x.size // c)
    return y


def bn_input_stats(bn_stats: Any) -> list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
  """Flattens a `bn_stats` collection into a list of (mean, var, running_mean, running_var)."""
  leaves = []

  def visit(node):
    if isinstance(node, dict) or hasattr(node, "items"):
      for k in sorted(node):
        visit(node[k])
    elif isinstance(node, tuple) and len(node) == 4 and not isinstance(node[0], tuple):
      leaves.append(node)
    elif isinstance(node, (tuple, list)):
      for n in node:
        visit(n)
  visit(bn_stats)
  return leaves


class ConvClassifier(nn.Module):
  """The fields AllCNN and ResNet18 share (`config.model`): `num_classes` K, `width` (channel
  multiplier), `fast_cpu_kernels` (GEMV BatchNorm statistics and phase-split strided-conv gradients,
  same math, other rounding) and `bn_running_var` ('unbiased': PyTorch's update, 'biased': Flax's).
  Subclasses define `__call__(x, train=False, mask=None, features=False)`."""
  num_classes: int = 10
  width: float = 1.0
  fast_cpu_kernels: bool = False
  bn_running_var: str = "unbiased"

