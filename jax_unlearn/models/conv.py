"""Convolutions that stay fast when differentiated inside `lax.scan`/`while_loop`/`cond` on XLA:CPU.

Use `with loop_safe_convs(): model.apply(...)` around any scanned training step (the distillation
engine, shadow models, AIN relearning) or build `nn.Conv(conv_general_dilated=loop_safe_conv_general_dilated)`.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# XLA:CPU leaves the weight-gradient convolution of a conv in a non-canonical form when it sits inside a
# while loop or a conditional, and then runs it through a naive loop emitter: ~100x slower than the same
# op at top level (jax-ml/jax#12868, measured here: 2.7 s vs 0.03 s for one 128x8x8x128 -> 64 conv
# gradient). The engine's scanned epoch would run ~30x slower than a Python loop. The fix is a conv
# whose VJP is written with canonical NHWC/HWIO convolutions on explicitly transposed operands; it is
# numerically the same convolution. `loop_safe_convs()` installs it into every `nn.Conv` of the models
# the engine applies (unless a model already chose its own conv function).

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, padding, lhs_dilation=None, rhs_dilation=None):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def loop_safe_conv(x, w, strides, padding):
  """`lax.conv_general_dilated(x, w, strides, padding)` (NHWC, HWIO, explicit padding pairs) whose
  gradients are canonical convolutions, fast inside `lax.scan`/`lax.cond` on XLA:CPU."""
  return _conv(x, w, strides, padding)


def _loop_safe_conv_fwd(x, w, strides, padding):
  return _conv(x, w, strides, padding), (x, w)


def _loop_safe_conv_bwd(strides, padding, res, dy):
  x, w = res
  ks = w.shape[:2]
  # dx: the transposed convolution (dy dilated by the strides, kernel flipped, I/O swapped).
  pads = []
  for (lo, _), k, st, n, m in zip(padding, ks, strides, x.shape[1:3], dy.shape[1:3]):
    lo_t = k - 1 - lo
    pads.append((lo_t, n + k - 1 - (m - 1) * st - 1 - lo_t))
  dx = _conv(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), pads, lhs_dilation=strides)
  # dw: batch and channels swapped by explicit transposes, dy as a kernel dilated by the strides.
  dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), padding, rhs_dilation=strides)
  return dx, dw[:, :ks[0], :ks[1], :].transpose(1, 2, 0, 3)


loop_safe_conv.defvjp(_loop_safe_conv_fwd, _loop_safe_conv_bwd)


def loop_safe_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                   rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                                   batch_group_count=1, precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated` (`nn.Conv(conv_general_dilated=...)`): plain 2-D NHWC
  convolutions go through `loop_safe_conv`; anything else falls back to lax."""
  simple = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
            and precision is None and preferred_element_type is None
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
  if not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return loop_safe_conv(lhs, rhs, tuple(int(s) for s in window_strides),
                        tuple((int(lo), int(hi)) for lo, hi in padding))


def _loop_safe_convs(next_fun, args, kwargs, context):
  m = context.module
  if (context.method_name == "__call__" and isinstance(m, nn.Conv) and m.conv_general_dilated is None
      and m.conv_general_dilated_cls is None):
    # A bound module is a per-apply clone, so this touches no user object.
    object.__setattr__(m, "conv_general_dilated", loop_safe_conv_general_dilated)
  return next_fun(*args, **kwargs)




@contextlib.contextmanager
def loop_safe_convs():
  """Within this context every `nn.Conv` applied uses `loop_safe_conv_general_dilated`."""
  with nn.intercept_methods(_loop_safe_convs):
    yield
