"""Convolutions that stay fast on XLA:CPU where `lax.conv_general_dilated` does not.

* `loop_safe_conv`: fast when differentiated inside `lax.scan`/`while_loop`/`cond` (jax-ml/jax#12868).
  Use `with loop_safe_convs(): model.apply(...)` around any scanned training step (the distillation
  engine, shadow models, AIN relearning).
* `matmul_conv`: im2col and one `dot_general`, fast under `jax.vmap` with a batched kernel (vmapped
  sweeps, `jax_unlearn.sweep`) and inside loops (it has no convolution at all).
* `phase_grad_conv`: a strided conv whose input gradient skips the zeros XLA's dilated form
  multiplies (`fast_cpu_kernels=True` models, top-level training steps).

Both are drop-ins for `lax.conv_general_dilated` (`nn.Conv(conv_general_dilated=...)`), and
`loop_safe_convs` / `matmul_convs` are `nn.intercept_methods` interceptors that install them into every
plain `nn.Conv` a model applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, padding, lhs_dilation=None, rhs_dilation=None):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=_DN)


# ----------------------------------------------------------------------------------------------------
# Loop-safe convolution.
#
# XLA:CPU leaves the weight-gradient convolution of a conv in a non-canonical form when it sits inside a
# while loop or a conditional, and then runs it through a naive loop emitter: ~100x slower than the same
# op at top level (jax-ml/jax#12868, measured here: 2.7 s vs 0.03 s for one 128x8x8x128 -> 64 conv
# gradient). The engine's scanned epoch would run ~30x slower than a Python loop. The fix is a conv
# whose VJP is written with a canonical NHWC/HWIO convolution for dx and one GEMM per kernel tap for dw
# (`conv_weight_grad`, which is also 2.6x faster than XLA's own weight-gradient conv at top level); it
# is numerically the same convolution.

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def loop_safe_conv(x: jax.Array, w: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]]) -> jax.Array:
  """`lax.conv_general_dilated(x, w, strides, padding)` (NHWC, HWIO, explicit padding pairs) whose
  gradients are canonical convolutions, fast inside `lax.scan`/`lax.cond` on XLA:CPU."""
  return _conv(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
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
  return dx, conv_weight_grad(x, dy, ks, strides, padding)


# Shifted slices with fewer elements than this stay one GEMM per tap (conv_weight_grad). The largest
# digits-config slice (the DFQ generator, ngf 64, batch 128: 128x8x8x128) has 2^20.
_CHUNK_MIN_ELEMENTS = 1 << 22


def conv_weight_grad(x: jax.Array, dy: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                     padding: Sequence[tuple[int, int]], chunks: int | None = None) -> jax.Array:
  """dL/dw of an NHWC x HWIO convolution, as one batched GEMM per kernel tap.

  dw[i, j] = Σ_{n,h,w} x_pad[n, i + s·h, j + s·w, :]ᵀ dy[n, h, w, :] — a [cin, cout] matmul contracting
  P = N·H·W per tap. For large layers (P·cin >= `_CHUNK_MIN_ELEMENTS` = 2^22) the P rows are split
  into `chunks` (default 4, or 2 if P is not a multiple of 4) that act as the batch dimension of one
  `dot_general` per tap, whose partial sums are then added. Measured at AllCNN's 256 x 32 x 32 x 96
  layer (BUILD_NOTES "Performance (issue 7)"):
  * XLA:CPU's own weight gradient is a convolution whose "kernel" is dy (H x W, e.g. 32 x 32):
    1.5-4.4 s with the default YNNPACK fusions, and ~100x slower again inside loops (jax-ml/jax#12868).
  * One plain [P, cin]ᵀ[P, cout] dot per tap makes XLA transpose every shifted slice into a [cin, P]
    copy first (190 ms per tap) and then runs a GEMM with a single huge K on one thread: 1.5-1.8 s.
  * With the chunk axis as a GEMM batch the slice is a plain copy and both cores get work: 0.7 s.
  Small layers (all of the digits configs) keep one chunk: there the copy is cheap, and the result is
  bit-identical to the unchunked tap GEMMs that produced the recorded digits numbers.
  Slices, reshapes and dots only: loop- and vmap-safe too.
  """
  kh, kw = kernel_size
  sh, sw = strides
  n, ho, wo, cout = dy.shape
  cin = x.shape[3]
  p = n * ho * wo
  if chunks is None:
    chunks = 1 if p * cin < _CHUNK_MIN_ELEMENTS else next(c for c in (4, 2, 1) if p % c == 0)
  if p % chunks:
    raise ValueError(f"conv_weight_grad: chunks={chunks} does not divide N*H*W={p}")
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                     (1, sh, sw, 1))
      if chunks == 1:  # contract N, H, W directly (the recorded digits numbers were made this way)
        taps.append(lax.dot_general(xs, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))))
      else:
        taps.append(jnp.sum(lax.dot_general(xs.reshape(chunks, p // chunks, cin),
                                            dy.reshape(chunks, p // chunks, cout),
                                            (((1,), (1,)), ((0,), (0,)))), axis=0))
  return jnp.stack(taps).reshape(kh, kw, cin, cout)


loop_safe_conv.defvjp(_conv_fwd, _loop_safe_conv_bwd)


# ----------------------------------------------------------------------------------------------------
# im2col convolution.
#
# Under vmap with a per-member kernel (each sweep run has its own student and generator) XLA:CPU lowers
# a convolution to a grouped convolution that runs ~2.4x slower than the members' convs one by one
# (BUILD_NOTES "Performance (issue 7)"). As im2col + `dot_general` the same conv becomes a *batched*
# matmul under vmap (one Eigen GEMM per member), and its gradients are slices, pads and matmuls.

def matmul_conv(x: jax.Array, w: jax.Array, strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> jax.Array:
  """NHWC x HWIO convolution (explicit padding pairs) as im2col (k·k strided slices, concatenated)
  and one contraction. Patch features are ordered (kh, kw, cin), the row-major order of an HWIO kernel
  reshaped to [kh·kw·cin, cout]."""
  kh, kw, cin, cout = w.shape
  sh, sw = strides
  if (kh, kw) == (1, 1) and all(p == (0, 0) for p in padding):
    x = x[:, ::sh, ::sw, :]
    return lax.dot_general(x, w.reshape(cin, cout), (((3,), (0,)), ((), ())))
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  cols = [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)
  return lax.dot_general(patches, w.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


# ----------------------------------------------------------------------------------------------------
# Strided convolution whose input gradient skips the zeros.
#
# XLA computes dx of a stride-s convolution as a convolution over dy dilated by s (`lhs_dilation`):
# (s*s - 1)/(s*s) of its multiply-adds hit inserted zeros. Split dx by output phase instead
# (positions p = s*m + r in each spatial dim): phase (r_h, r_w) is a stride-1 convolution of dy with
# the kernel taps k = r + lo (mod s), so the s*s small convolutions together do the forward's FLOPs.
# At AllCNN's 96->192 stride-2 layer (256x32x32) it took 191 ms vs XLA's 324 ms (BUILD_NOTES,
# Performance change 10). The forward and dw are XLA's own, so only dx changes, by float rounding.

def _phase_taps(n_in, k, s, lo, r):
  """Phase r of one spatial dim: (kernel taps, number of positions, offset of the first dy index)."""
  taps = [t for t in range(k) if (t - lo - r) % s == 0]
  count = len(range(r, n_in, s))
  return taps, count, (min((r + lo - t) // s for t in taps) if taps else 0)


def strided_conv_input_grad(dy: jax.Array, w: jax.Array, x_shape: tuple[int, ...], strides: Sequence[int],
                            padding: Sequence[tuple[int, int]]) -> jax.Array:
  """dx of `lax.conv_general_dilated(x, w, strides, padding)` (NHWC, HWIO, explicit padding pairs) as
  s_h * s_w stride-1 convolutions of `dy`, one per output phase, interleaved."""
  n, h, wd, cin = x_shape
  phases = []
  for r_h in range(strides[0]):
    th, mh, dh = _phase_taps(h, w.shape[0], strides[0], padding[0][0], r_h)
    row = []
    for r_w in range(strides[1]):
      tw, mw, dw = _phase_taps(wd, w.shape[1], strides[1], padding[1][0], r_w)
      if not th or not tw:
        row.append(jnp.zeros((n, mh, mw, cin), dy.dtype))
        continue
      # Taps in increasing dy offset (decreasing k); I/O swapped: [kh', kw', cout, cin].
      sub = jnp.flip(w[th[0]:th[-1] + 1:strides[0], tw[0]:tw[-1] + 1:strides[1]], (0, 1))
      sub = sub.transpose(0, 1, 3, 2)
      pads = ((-dh, mh + dh + len(th) - 1 - dy.shape[1]), (-dw, mw + dw + len(tw) - 1 - dy.shape[2]))
      row.append(_conv(dy, sub, (1, 1), pads))
    phases.append(row)
  if all(p.shape == phases[0][0].shape for row in phases for p in row):
    st = jnp.stack([jnp.stack(row) for row in phases])  # [s_h, s_w, n, mh, mw, cin]
    return st.transpose(2, 3, 0, 4, 1, 5).reshape(x_shape)
  dx = jnp.zeros(x_shape, dy.dtype)
  for r_h, row in enumerate(phases):
    for r_w, p in enumerate(row):
      dx = dx.at[:, r_h::strides[0], r_w::strides[1]].set(p)
  return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def phase_grad_conv(x: jax.Array, w: jax.Array, strides: Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> jax.Array:
  """`lax.conv_general_dilated(x, w, strides, padding)` (NHWC, HWIO, explicit padding pairs) with dx
  from `strided_conv_input_grad`; dw is XLA's own."""
  return _conv(x, w, strides, padding)


def _phase_grad_conv_bwd(strides, padding, res, dy):
  x, w = res
  _, w_vjp = jax.vjp(lambda w_: _conv(x, w_, strides, padding), w)
  return strided_conv_input_grad(dy, w, x.shape, strides, padding), w_vjp(dy)[0]


phase_grad_conv.defvjp(_conv_fwd, _phase_grad_conv_bwd)  # same forward residuals as loop_safe_conv


def _strided_phase_grad_conv(x, w, strides, padding):
  if all(s == 1 for s in strides):
    return _conv(x, w, strides, padding)  # stride 1: XLA's dx has no zeros to skip
  return phase_grad_conv(x, w, strides, padding)


# ----------------------------------------------------------------------------------------------------
# Drop-ins for `lax.conv_general_dilated` and the interceptors that install them.

def _dispatch(conv, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
              preferred_element_type=None):
  """`conv(lhs, rhs, strides, explicit_padding)` for plain 2-D NHWC/HWIO convolutions; anything else
  (groups, dilation, other layouts, explicit precision) goes to `lax.conv_general_dilated`."""
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
  return conv(lhs, rhs, tuple(int(s) for s in window_strides),
              tuple((int(lo), int(hi)) for lo, hi in padding))


def loop_safe_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                   padding: Any, *args: Any, **kwargs: Any) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated`: plain 2-D NHWC convolutions go through `loop_safe_conv`."""
  return _dispatch(loop_safe_conv, lhs, rhs, window_strides, padding, *args, **kwargs)


def matmul_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                padding: Any, *args: Any, **kwargs: Any) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated`: plain 2-D NHWC convolutions go through `matmul_conv`."""
  return _dispatch(matmul_conv, lhs, rhs, window_strides, padding, *args, **kwargs)


def phase_grad_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                    padding: Any, *args: Any, **kwargs: Any) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated`: plain strided 2-D NHWC convolutions go through
  `phase_grad_conv` (input gradient without the dilation zeros); everything else is `lax`'s. Models
  take it with `fast_cpu_kernels=True`; the loop-safe and matmul interceptors replace it like a plain
  conv."""
  return _dispatch(_strided_phase_grad_conv, lhs, rhs, window_strides, padding, *args, **kwargs)


def _interceptor(conv_general_dilated):
  def intercept(next_fun, args, kwargs, context):
    m = context.module
    if (context.method_name == "__call__" and isinstance(m, nn.Conv)
        and m.conv_general_dilated in (None, phase_grad_conv_general_dilated)
        and m.conv_general_dilated_cls is None):
      # A bound module is a per-apply clone, so this touches no user object.
      object.__setattr__(m, "conv_general_dilated", conv_general_dilated)
    return next_fun(*args, **kwargs)
  intercept.__name__ = f"intercept_{conv_general_dilated.__name__}"
  intercept.__doc__ = (f"`nn.intercept_methods` interceptor: every plain `nn.Conv` applied under it uses "
                       f"`{conv_general_dilated.__name__}`.")
  return intercept


# Module-level constants: jitted code keys on them by identity (e.g. `distill.Engine.conv_interceptor`).
_loop_safe_convs = _interceptor(loop_safe_conv_general_dilated)
matmul_convs = _interceptor(matmul_conv_general_dilated)
"""Interceptor: every plain `nn.Conv` applied under it uses `matmul_conv_general_dilated`."""


def convs_as_gemms(enabled: bool = True) -> contextlib.AbstractContextManager:
  """`with convs_as_gemms(flag):` every plain `nn.Conv` applied inside runs as `matmul_conv` when
  `flag` is true (a config switch such as `distruction.matmul_convs`), unchanged otherwise."""
  return nn.intercept_methods(matmul_convs) if enabled else contextlib.nullcontext()


@contextlib.contextmanager
def loop_safe_convs() -> Iterator[None]:
  """Within this context every `nn.Conv` applied uses `loop_safe_conv_general_dilated`."""
  with nn.intercept_methods(_loop_safe_convs):
    yield


@dataclasses.dataclass(frozen=True)
class with_loop_safe_convs:  # noqa: N801 (used like a function: `with_loop_safe_convs(model.apply)`)
  """`apply_fn` (e.g. `model.apply`) run under `loop_safe_convs()`: a drop-in `TrainState.apply_fn`
  whose conv weight gradients are tap GEMMs (`conv_weight_grad`). Hashable and comparable by its
  `apply_fn`, so jitted steps taking the state as an argument keep their cache."""
  apply_fn: Callable

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    with nn.intercept_methods(_loop_safe_convs):
      return self.apply_fn(*args, **kwargs)
