"""Selective Synaptic Dampening (SSD; Foster, Schoepf & Brintrup, AAAI'24).

Reference code: `if-loops/selective-synaptic-dampening src/ssd.py: ParameterPerturber`.

SSD needs no training: it estimates how important every parameter is for the full training set D and for
the forget set D_f, and shrinks the parameters that matter disproportionately to D_f:

* Importance: the diagonal of the Fisher information, estimated from cross-entropy gradients.
  The reference (`ParameterPerturber.calc_importance`) squares the gradient of the *batch-mean* loss of each
  minibatch and averages over minibatches, in eval mode (BN uses running statistics), for every parameter
  including BN scale and bias.
* Dampening (`modify_weight`): where I_Df > alpha * I_D, theta <- theta * min(lam * I_D / I_Df, 1).

This module holds the machinery shared with LFSSD (`lfssd.py`, which only swaps the loss for the squared
output norm and the square for an absolute value): the jitted importance accumulator, `dampen`, the
`run` driver with its on-disk cache of the D importance, and `select_alpha`, the validation sweep.

Importance modes (the second is our addition; BUILD_NOTES.md "LFSSD and SSD"):
* 'reference': per minibatch, g_B = grad of the batch-mean loss; I = mean_B r(g_B) with r = square (SSD)
  or abs (LFSSD). Batch size and batch composition matter, so `run` keeps the reference's batch sizes and
  its unshuffled D = retain_train ++ forget_train order.
* 'per_sample': per-example gradients (vmap of grad); I = mean_i r(g_i). In eval mode an example's gradient
  does not depend on its batch-mates, so this is invariant to batch size and order.

Inputs: `batches` is any iterable of dicts with an 'image' array [B, H, W, C] (and 'label' [B] for SSD).
Images are passed through `preprocess` on device before the model; the default (None) means the images
are already normalised. `run` feeds raw [0,1] images with `preprocess=Normalize(info.mean, info.std)`.
A last partial batch is zero-padded to the first batch's size and masked out, so the batch-mean is exact
and one compiled program serves every batch.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.io import atomic_write_json
from jax_unlearn.methods import base
from jax_unlearn.methods._importance_io import (
  Normalize,
  _batches,  # noqa: F401  (re-exported for tests)
  compute_importances,
  concat_batches,
  full_importance_cache_path,
)
from jax_unlearn.methods._selection import closest_score, positive_grid, selection_key
from jax_unlearn.models.adapters import as_classifier
from jax_unlearn.train.evaluate import accuracy

MODES = ("reference", "per_sample")
AUTO = "auto"
# 'auto' candidates: from "dampen almost everything the forget set touches" to the paper's 10 and past
# it (digits chose 6 / 8.5, the papers use 3.5-25).
ALPHA_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 25.0)


def default_config() -> ml_collections.ConfigDict:
  """`config.ssd` defaults (the SSD code's `selection_weighting` and `dampening_constant`: ResNet18
  alpha = 10 in every scenario, ViT 5 full class / 25 sub-class, lambda = 1; its loaders: batch 64 for
  D and D_f, D_f batch 128 in random forgetting).

  Fields:
    alpha: selection weighting; parameters with I_Df > alpha * I_D are dampened. 'auto' (the default
      outside the digits and paper configs) picks it on the validation split among `alpha_grid` with
      `select_alpha` (criterion by forget mode: see there) each time the method runs.
    alpha_grid: the candidates 'auto' chooses from.
    lam: dampening constant lambda; theta *= min(lam * I_D / I_Df, 1).
    mode: 'reference' (batch-mean gradients, as the SSD code) or 'per_sample' (per-example gradients).
    batch_size: minibatch size over D (unshuffled retain_train ++ forget_train).
    forget_batch_size: minibatch size over D_f for class and sub-class forgetting.
    random_forget_batch_size: minibatch size over D_f when config.forget.mode == 'random'.
    per_sample_chunk: examples per vmapped gradient chunk in 'per_sample' mode (memory knob only).
    cache_full_importance: store I_D next to the original model (in `cache_dir`) and reuse it.
    cache_dir: where that cache lives; '' means the parent directory of the method's workdir.
  """
  c = ml_collections.ConfigDict()
  # A number, or 'auto': chosen on the validation split among `alpha_grid` (`select_alpha`) when the
  # method runs; the choice is recorded in the run's info (metrics.json). Typed `object` so that
  # `--config.ssd.alpha=auto` and `--config.ssd.alpha=8.5` both parse.
  c.alpha = config_dict.FieldReference(AUTO, field_type=object)
  c.alpha_grid = ALPHA_GRID
  c.lam = 1.0
  c.mode = "reference"
  c.batch_size = 64
  c.forget_batch_size = 64
  c.random_forget_batch_size = 128
  c.per_sample_chunk = 16
  # The SSD paper times both importances at forgetting time; LFSSD's point is that I_D can be precomputed.
  c.cache_full_importance = False
  c.cache_dir = ""
  return c


# ----------------------------------------------------------------------------------------------------
# Losses (per example). `labels` is None for label-free losses and must not be touched by them.

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy: the loss whose gradient's square is SSD's Fisher diagonal."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _identity(x):
  return x


# ----------------------------------------------------------------------------------------------------
# Importance: the array-level function and the accumulator behind the iterator helpers.

_REDUCE = {"square": jnp.square, "abs": jnp.abs}


def output_norm_sq(logits: jax.Array, labels: jax.Array | None = None) -> jax.Array:
  """Per-example ||f(x)||_2^2 of the logits; `labels` is ignored (LFSSD is label-free)."""
  del labels
  return jnp.sum(jnp.square(logits.astype(jnp.float32)), axis=-1)


# loss name -> (per-example loss, reduction r, uses labels)
LOSSES: dict[str, tuple[Callable, str, bool]] = {
    "fisher": (cross_entropy, "square", True),        # SSD: diagonal Fisher of the cross-entropy
    "output_norm": (output_norm_sq, "abs", False),    # LFSSD: sensitivity of ||f(x)||^2, label-free
}


def _split_variables(variables):
  if "params" not in variables:
    raise ConfigError("variables have no 'params' collection; pass the model's full variables dict "
                      "({'params': ..., 'batch_stats': ...})")
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _accumulate(acc, logits_fn, params, images, labels, mask, *, loss_fn, reduce, mode, chunk):
  """acc + r(grad of the masked batch-mean loss) ('reference') or acc + sum_i mask_i r(g_i)
  ('per_sample', `chunk` examples per vmapped gradient). `logits_fn(params, x) -> logits`."""
  r = _REDUCE[reduce]

  def loss(p, x, y, m):
    per_example = loss_fn(logits_fn(p, x), y)
    return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)

  if mode == "reference":
    g = jax.grad(loss)(params, images, labels, mask)
    return jax.tree.map(lambda a, gi: a + r(gi).astype(a.dtype), acc, g)

  # per_sample: each example goes through the model as a batch of one (eval mode, so no batch coupling).
  def example_loss(p, x, y):
    return loss(p, x[None], None if y is None else y[None], jnp.ones((1,), jnp.float32))

  per_example_grad = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))
  n = images.shape[0]
  if n % chunk:
    raise ConfigError(f"per_sample importance: the batch of {n} is not a multiple of chunk={chunk}; "
                      "pass a chunk that divides the batch (or chunk=None)")
  xs = images.reshape((n // chunk, chunk) + images.shape[1:])
  ys = None if labels is None else labels.reshape((n // chunk, chunk))
  ms = mask.reshape((n // chunk, chunk))

  def body(a, inp):
    x, y, m = inp
    g = per_example_grad(params, x, y)
    # Padded rows carry weight 0; the sum over kept rows is divided by the example count at the end.
    return jax.tree.map(lambda ai, gi: ai + jnp.tensordot(m, r(gi), axes=1).astype(ai.dtype), a, g), None

  acc, _ = jax.lax.scan(body, acc, (xs, ys, ms))
  return acc


def importance(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: jax.Array,
               y: jax.Array | None = None, *, loss: str = "fisher", mode: str = "reference",
               mask: jax.Array | None = None, chunk: int | None = None) -> Any:
  """SSD/LFSSD importance of every entry of `params` on ONE batch: a pure, jittable, vmappable function.

  With per-example loss l_i (loss='fisher': cross-entropy CE(f(x_i), y_i), SSD's diagonal Fisher
  information, Foster et al. AAAI'24; loss='output_norm': ||f(x_i)||_2^2, LFSSD's label-free
  sensitivity, Foster et al. 2024, arXiv 2402.19308) and r = square (fisher) or abs (output_norm):

    'reference':  I = r( grad_params (1/|B|) sum_{i in B} m_i l_i )   (|B| = sum_i m_i; the SSD code's
                  per-minibatch term: the iterator helpers average it over minibatches);
    'per_sample': I = (1/|B|) sum_i m_i r( grad_params l_i ).

  Args:
    apply_fn: `apply_fn(params, x) -> logits [B, K]`, eval mode (close over BN statistics, e.g.
      `lambda p, x: model.apply({'params': p, 'batch_stats': bs}, x)`). Under `jax.jit` mark it
      static (`static_argnums=0`) or bind it with `functools.partial`.
    params: the pytree differentiated.
    x: [B, ...] inputs as the model takes them (normalised).
    y: [B] integer labels; needed by 'fisher', never read by 'output_norm'.
    mask: optional [B] weights (bool or 0/1) of the rows that count (padding rows 0).
    chunk: 'per_sample' only: examples per vmapped gradient (memory; a divisor of B; None = B).
  Returns:
    float32 pytree shaped like `params`.

  `jax.jit(jax.vmap(importance, in_axes=(None, None, 0)), static_argnums=0)(apply_fn, params, xs)`
  gives one importance per batch of a stack `xs` [S, B, ...].
  """
  _check_mode(mode)
  if loss not in LOSSES:
    raise ConfigError(f"unknown importance loss {loss!r}; use one of: {', '.join(LOSSES)}")
  loss_fn, reduce, uses_labels = LOSSES[loss]
  if uses_labels and y is None:
    raise ConfigError(f"importance(loss={loss!r}) needs the labels y; pass y (or loss='output_norm')")
  n = jnp.shape(x)[0]
  mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)
  acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  acc = _accumulate(acc, apply_fn, params, x, jnp.asarray(y, jnp.int32) if uses_labels else None, mask,
                    loss_fn=loss_fn, reduce=reduce, mode=mode, chunk=n if chunk is None else int(chunk))
  if mode == "per_sample":
    count = jnp.maximum(jnp.sum(mask), 1.0)
    acc = jax.tree.map(lambda a: a / count, acc)
  return acc


@functools.partial(jax.jit, static_argnames=("apply_fn", "preprocess", "loss_fn", "reduce", "mode",
                                             "chunk"))
def _importance_step(acc, variables, images, labels, mask, *, apply_fn, preprocess, loss_fn, reduce,
                     mode, chunk):
  """`_accumulate` for a `model.apply`-style `apply_fn(variables, x, train=False)`."""
  params, rest = _split_variables(variables)

  def logits_fn(p, x):
    return apply_fn({"params": p, **rest}, preprocess(x), train=False)

  return _accumulate(acc, logits_fn, params, images, labels, mask, loss_fn=loss_fn, reduce=reduce,
                     mode=mode, chunk=chunk)


def _unpack(batch, uses_labels: bool):
  """(images, labels or None) of a batch: a dict with 'image' (and 'label'), an `(x, y)` / `(x,)`
  tuple, or a bare image array. The label is looked up only when `uses_labels`."""
  if isinstance(batch, dict):
    return batch["image"], (batch["label"] if uses_labels else None)
  if isinstance(batch, (tuple, list)):
    if uses_labels and len(batch) < 2:
      raise DataError("this importance needs labels: pass (x, y) batches or dicts with 'label'")
    return batch[0], (batch[1] if uses_labels else None)
  if uses_labels:
    raise DataError("this importance needs labels: pass (x, y) batches or dicts with 'label'")
  return batch, None


def _check_mode(mode):
  if mode not in MODES:
    raise ConfigError(f"unknown importance mode {mode!r}; set --config.<method>.mode to one of: "
                      f"{', '.join(MODES)}")


def accumulate_importance(apply_fn: Callable, variables: Any, batches: Iterable[dict], *, loss_fn: Callable,
                          reduce: str, uses_labels: bool, mode: str = "reference",
                          preprocess: Callable | None = None, per_sample_chunk: int = 16) -> Any:
  """Importance of every entry of `variables['params']` for the data in `batches` (`calc_importance`).

  Args:
    apply_fn: `model.apply`; called as `apply_fn(variables, x, train=False)` and returning logits.
    variables: `{'params': ..., 'batch_stats': ...}`; only 'params' are differentiated.
    batches: iterable of dicts with 'image' [B, ...] and, iff `uses_labels`, 'label' [B]. The 'label'
      entry is never looked up when `uses_labels` is False.
    loss_fn: per-example loss `(logits [B, K], labels [B] | None) -> [B]`; a module-level function (it is a
      static jit argument).
    reduce: 'square' (Fisher diagonal, SSD) or 'abs' (sensitivity, LFSSD).
    mode: 'reference' = mean over batches of r(grad of batch-mean loss); 'per_sample' = mean over examples
      of r(per-example gradient).
    preprocess: on-device map applied to images before the model (must be hashable; None = identity).
    per_sample_chunk: examples per vmapped chunk in 'per_sample' mode (memory only; results identical).
  Returns:
    A float32 pytree shaped like `variables['params']`.
  """
  _check_mode(mode)
  if reduce not in _REDUCE:
    raise ConfigError(f"unknown reduction {reduce!r}; use 'square' or 'abs'")
  params, _ = _split_variables(variables)
  preprocess = _identity if preprocess is None else preprocess
  acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  size = chunk = None  # padded batch size and chunk, fixed by the first batch: one compile for all
  n_batches = n_examples = 0
  for batch in batches:
    images, labels = _unpack(batch, uses_labels)
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32) if uses_labels else None
    b = images.shape[0]
    if b == 0:
      continue
    if labels is not None and labels.shape[0] != b:
      raise DataError(f"batch has {b} images but {labels.shape[0]} labels; pass aligned 'image'/'label'")
    if size is None:
      chunk = min(int(per_sample_chunk), b) if mode == "per_sample" else 1
      size = -(-b // chunk) * chunk
    target = max(size, -(-b // chunk) * chunk)  # a later, larger batch (unusual) gets its own compile
    pad = target - b
    mask = np.concatenate([np.ones(b, np.float32), np.zeros(pad, np.float32)])
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      if labels is not None:
        labels = np.concatenate([labels, np.zeros(pad, np.int32)])
    acc = _importance_step(acc, variables, images, labels, mask, apply_fn=apply_fn, preprocess=preprocess,
                           loss_fn=loss_fn, reduce=reduce, mode=mode, chunk=chunk)
    n_batches += 1
    n_examples += b
  if n_batches == 0:
    raise DataError("no examples to compute importances on (empty data set); check the forget/retain "
                    "selection in config.forget")
  denom = float(n_batches if mode == "reference" else n_examples)
  return jax.tree.map(lambda a: a / denom, acc)


def ssd_importance(apply_fn: Callable, variables: Any, batches: Iterable[dict], mode: str = "reference", *,
                   preprocess: Callable | None = None, per_sample_chunk: int = 16) -> Any:
  """SSD importance: diagonal Fisher from cross-entropy with labels (`calc_importance`).

  'reference': I = (1/n_B) sum_B (grad_theta (1/|B|) sum_{i in B} CE(f(x_i), y_i))^2.
  'per_sample': I = (1/N) sum_i (grad_theta CE(f(x_i), y_i))^2.
  See `accumulate_importance` for the arguments; batches need 'image' and 'label'.
  """
  return accumulate_importance(apply_fn, variables, batches, loss_fn=cross_entropy, reduce="square",
                               uses_labels=True, mode=mode, preprocess=preprocess,
                               per_sample_chunk=per_sample_chunk)


# ----------------------------------------------------------------------------------------------------
# Dampening.

@jax.jit
def dampen(params: Any, imp_full: Any, imp_forget: Any, alpha: float | jax.Array, lam: float | jax.Array
           ) -> Any:
  """Selective dampening (the reference's `modify_weight` with exponent 1 and the cap at 1).

  For every element: if I_Df > alpha * I_D then theta <- theta * min(lam * I_D / I_Df, 1), else theta is
  unchanged. Pure over pytrees of the same structure; `alpha`, `lam` are traced (sweeps do not recompile).
  """
  def one(p, i_d, i_f):
    sel = i_f > alpha * i_d
    # Selected entries have I_Df > alpha * I_D >= 0; the where keeps unselected zeros from dividing.
    beta = jnp.minimum(lam * i_d / jnp.where(sel, i_f, 1.0), 1.0)
    return jnp.where(sel, p * beta, p).astype(p.dtype)
  return jax.tree.map(one, params, imp_full, imp_forget)


@jax.jit
def _selection_counts(imp_full, imp_forget, alpha):
  return jax.tree.map(lambda i_d, i_f: jnp.sum(i_f > alpha * i_d), imp_full, imp_forget)


def selection_stats(imp_full: Any, imp_forget: Any, alpha: float) -> dict:
  """How many parameters `dampen` modifies at `alpha`: total, fraction, and in normalisation layers."""
  counts = _selection_counts(imp_full, imp_forget, alpha)
  flat, _ = jax.tree_util.tree_flatten_with_path(counts)
  sizes = [int(np.size(x)) for x in jax.tree.leaves(imp_full)]
  n_sel = sum(int(c) for _, c in flat)
  n_norm = sum(int(c) for path, c in flat if "norm" in jax.tree_util.keystr(path).lower())
  total = max(sum(sizes), 1)
  return {"n_selected": n_sel, "n_params": sum(sizes), "frac_selected": n_sel / total,
          "n_selected_norm": n_norm}


def validate_config(cfg: Any, problem: base.Problem | None = None, name: str = "ssd") -> None:
  """ConfigError naming `--config.<name>.<field>` for invalid SSD/LFSSD settings."""
  del problem
  _check_mode(cfg.mode)
  for k in ("batch_size", "forget_batch_size", "random_forget_batch_size", "per_sample_chunk"):
    if int(cfg[k]) < 1:
      raise ConfigError(f"config.{name}.{k} = {cfg[k]} must be a positive integer; set e.g. "
                        f"--config.{name}.{k}=64")
  alpha = cfg.alpha
  if isinstance(alpha, str) and alpha != AUTO:
    try:
      alpha = float(alpha)
    except ValueError:
      raise ConfigError(f"--config.{name}.alpha must be a number > 0 or 'auto', got {alpha!r}") from None
  if alpha == AUTO:
    grid = cfg.alpha_grid if isinstance(cfg.alpha_grid, (tuple, list)) else (cfg.alpha_grid,)
    bad = [a for a in grid if isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0]
    if not grid or bad:
      raise ConfigError(f"--config.{name}.alpha_grid must be positive numbers, got {tuple(grid)!r}; "
                        f"e.g. --config.{name}.alpha_grid='(2,4,8,16)'")
  elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
    raise ConfigError(f"--config.{name}.alpha must be > 0 or 'auto', got {cfg.alpha!r}; the paper uses "
                      "alpha = 10")
  if not float(cfg.lam) > 0:
    raise ConfigError(f"--config.{name}.lam must be > 0, got {cfg.lam}; the paper uses lam = 1")


def is_auto(cfg: Any) -> bool:
  """Whether `cfg.alpha` asks for the validation-split choice."""
  return isinstance(cfg.alpha, str) and cfg.alpha == AUTO


def run_dampening(ctx: base.UnlearnContext, name: str, importance_fn: Callable, uses_labels: bool
                  ) -> base.UnlearnResult:
  """Shared `run` of SSD and LFSSD: importances on D and D_f, then `dampen` with config alpha/lam."""
  cfg = ctx.cfg
  t0 = time.perf_counter()
  imp_full, imp_forget, info = compute_importances(ctx, name, importance_fn, uses_labels, cfg)
  alpha = float(cfg.alpha) if not is_auto(cfg) else None
  if alpha is None:  # chosen on the validation split; the sweep's time is part of the method's
    t_sel = time.perf_counter()
    choice = sweep_alpha(ctx, name, imp_full, imp_forget, cfg.alpha_grid, float(cfg.lam))
    alpha = choice["alpha"]
    info.update(alpha_auto=True, alpha_select_s=time.perf_counter() - t_sel,
                alpha_selection={k: choice[k] for k in ("criterion", "target_forget_acc", "target_met",
                                                        "forget_split", "original", "table")})
    if ctx.workdir:
      atomic_write_json(os.path.join(ctx.workdir, f"alpha_sweep_{name}.json"),
                        {**choice, "importance": {k: v for k, v in info.items() if k != "alpha_auto"}})
  t1 = time.perf_counter()
  params = jax.block_until_ready(dampen(ctx.original["params"], imp_full, imp_forget,
                                        alpha, float(cfg.lam)))
  t2 = time.perf_counter()
  info.update(alpha=alpha, lam=float(cfg.lam), dampen_s=t2 - t1, total_s=t2 - t0,
              **selection_stats(imp_full, imp_forget, alpha))
  ctx.log(f"{name}: dampened {info['n_selected']}/{info['n_params']} parameters "
          f"(alpha={alpha:g}{' chosen on validation' if info.get('alpha_auto') else ''}, "
          f"lam={cfg.lam}) in {t2 - t1:.3f}s; total {t2 - t0:.2f}s")
  return base.UnlearnResult(variables={**ctx.original, "params": params}, info=info)


@base.register("ssd", default_config=default_config, validate_config=validate_config, order=140,
               data="D_r, D_f (labels)")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """SSD on `ctx` (uses labelled D and D_f; reads `ctx.config.ssd`)."""
  return run_dampening(ctx, "ssd", ssd_importance, uses_labels=True)


# ----------------------------------------------------------------------------------------------------
# The functional entry: a user's model and arrays, no UnlearnContext.

def _as_batches(data, batch_size: int, uses_labels: bool):
  """Batches of `data`: an `(x, y)` pair or an `x` array (split into `batch_size` rows, unshuffled,
  last partial batch kept), or an iterable of batches as `accumulate_importance` takes them."""
  if hasattr(data, "shape"):
    data = (data,)
  if isinstance(data, tuple) and data and hasattr(data[0], "shape"):
    if uses_labels and len(data) < 2:
      raise DataError("SSD needs labels: pass (x, y) arrays (LFSSD takes x alone)")
    x = data[0]
    return [(x[i:i + batch_size],) + ((data[1][i:i + batch_size],) if uses_labels else ())
            for i in range(0, len(x), batch_size)]
  return data


def unlearn_dampening(name: str, importance_fn: Callable, uses_labels: bool, model: Any, variables: Any,
                      full: Any, forget: Any, config: Any = None, *, preprocess: Callable | None = None,
                      **hparams: Any) -> base.UnlearnResult:
  """`ssd.unlearn` / `lfssd.unlearn`: I_D on `full`, I_Df on `forget`, then `dampen`."""
  cfg = base.method_config(name, config, **hparams)
  if is_auto(cfg):
    raise ConfigError(f"{name}.unlearn needs a number for alpha ('auto' chooses on a validation split, "
                      f"which arrays do not name): pass alpha=..., or choose it with "
                      f"ssd.select_alpha on an UnlearnContext")
  model, variables = as_classifier(model, variables)
  kw = dict(mode=cfg.mode, preprocess=preprocess, per_sample_chunk=int(cfg.per_sample_chunk))
  t0 = time.perf_counter()
  imp_full = importance_fn(model.apply, variables, _as_batches(full, int(cfg.batch_size), uses_labels),
                           **kw)
  imp_forget = importance_fn(model.apply, variables,
                             _as_batches(forget, int(cfg.forget_batch_size), uses_labels), **kw)
  params = jax.block_until_ready(dampen(variables["params"], imp_full, imp_forget, float(cfg.alpha),
                                        float(cfg.lam)))
  info = {"alpha": float(cfg.alpha), "lam": float(cfg.lam), "mode": cfg.mode,
          "total_s": time.perf_counter() - t0, **selection_stats(imp_full, imp_forget, float(cfg.alpha))}
  return base.UnlearnResult(variables={**variables, "params": params}, info=info,
                            artifacts={"importance_full": imp_full, "importance_forget": imp_forget})


def unlearn(model: Any, variables: Any, full: Any, forget: Any, config: Any = None, *,
            preprocess: Callable | None = None, **hparams: Any) -> base.UnlearnResult:
  """SSD on your own model and arrays, without an `UnlearnContext`.

  Args:
    model: anything `models.as_model` takes: `apply_fn(params, x) -> logits` (then `variables` is the
      bare params), a linen module, an NNX module (`variables=None`), a `models.Model`, or one of ours.
    variables: its variables (see `model`).
    full: D, the whole training set: `(x, y)` arrays, or an iterable of `(x, y)` / dict batches. Arrays
      are split unshuffled into `batch_size` batches ('reference' mode averages over batches, so the
      batch size matters: the SSD code uses 64).
    forget: D_f the same way (`forget_batch_size`).
    config / hparams: `config.ssd` fields (`default_config()`), as a dict, ConfigDict, dataclass or
      keywords (`alpha=8.5, lam=1.0`), merged by `base.method_config`.
    preprocess: on-device map applied to x before the model (hashable; None: x is already normalised).
  Returns:
    `UnlearnResult`: `variables` with dampened 'params' (same structure; for NNX
    `nnx.update(module, result.variables['params'])`), `info` (alpha, lam, how many parameters were
    dampened), `artifacts` (both importances).
  """
  return unlearn_dampening("ssd", ssd_importance, True, model, variables, full, forget, config,
                           preprocess=preprocess, **hparams)


# ----------------------------------------------------------------------------------------------------
# Alpha selection on the validation split.

# method name -> (importance function, uses labels); lfssd.py adds itself on import.
IMPORTANCES: dict[str, tuple[Callable, bool]] = {"ssd": (ssd_importance, True)}


def sweep_alpha(ctx: base.UnlearnContext, method: str, imp_full: Any, imp_forget: Any,
                alphas: Sequence[float], lam: float, *,
                target_forget_acc: float | None = None, criterion: str | None = None) -> dict:
  """`select_alpha`'s sweep on importances already computed: dampen at each alpha, measure the
  validation accuracies, choose by `criterion` (see `select_alpha`). Never reads the test split."""
  alphas = positive_grid(alphas, "the alpha sweep")
  data, info = ctx.data, ctx.data.info
  forget_split, forget_name = data.forget_val, "forget_val"
  if len(forget_split) == 0:
    forget_split, forget_name = data.forget_train, "forget_train"
  acc = lambda v, s: accuracy(ctx.model, v, s, info)  # noqa: E731
  original = {"acc_forget": acc(ctx.original, forget_split),
              "acc_retain_val": acc(ctx.original, data.retain_val)}
  forget_mode = ctx.forget_mode
  criterion = criterion or ("threshold" if forget_mode == "class" else "closest")
  if criterion not in ("threshold", "closest"):
    raise ConfigError(f"unknown alpha-selection criterion {criterion!r}; use 'threshold' or 'closest'")
  if target_forget_acc is None:
    target_forget_acc = (100.0 / ctx.num_classes if criterion == "threshold"
                         else original["acc_retain_val"])
  rows = []
  for a in alphas:
    v = {**ctx.original, "params": dampen(ctx.original["params"], imp_full, imp_forget, a, lam)}
    row = {"alpha": a, "acc_forget": acc(v, forget_split), "acc_retain_val": acc(v, data.retain_val),
           **selection_stats(imp_full, imp_forget, a)}
    rows.append(row)
    ctx.log(f"{method} alpha={a:g}: {forget_name} {row['acc_forget']:.2f}%  retain_val "
            f"{row['acc_retain_val']:.2f}%  dampened {row['frac_selected']:.4%}")
  closest = None
  if criterion == "closest":
    closest = (target_forget_acc, original["acc_retain_val"])
    for r in rows:
      r["score"] = closest_score(r["acc_forget"], r["acc_retain_val"], *closest)
  # `_selection.selection_key`, DiStruction's rule too; ties go to the larger alpha (fewer dampened).
  best = min(rows, key=lambda r: selection_key(r["acc_forget"], r["acc_retain_val"], target_forget_acc,
                                               closest, tiebreak=(-r["alpha"],)))
  result = {"method": method, "alpha": best["alpha"], "lam": lam, "criterion": criterion,
            "target_forget_acc": target_forget_acc,
            "target_met": bool(best["acc_forget"] <= target_forget_acc), "forget_split": forget_name,
            "table": rows, "original": original}
  return result


def select_alpha(ctx: base.UnlearnContext, alphas: Sequence[float], method: str = "ssd", *,
                 importance_fn: Callable | None = None, uses_labels: bool | None = None,
                 lam: float | None = None, target_forget_acc: float | None = None,
                 criterion: str | None = None, write: bool = True) -> dict:
  """Sweeps alpha for SSD/LFSSD (importances computed once) and picks it on the VALIDATION split.

  For each alpha: dampen, then measure accuracy on forget_val and retain_val (never test). In random
  forgetting forget_val is usually empty, so the forget accuracy is measured on forget_train.
  Criteria (`criterion`, default by forget mode):
  * 'threshold' (class forgetting): among alphas with forget accuracy <= `target_forget_acc` (default
    chance, 100/K), the one with the highest retain_val accuracy (ties: the larger alpha, which dampens
    fewer parameters); if none qualifies, the lowest forget accuracy (ties: higher retain).
  * 'closest' (sub-class and random forgetting, where Retrain still classifies the forget data about as
    well as unseen data): minimise |acc_forget - target| + (original retain_val - retain_val), with the
    target defaulting to the original's retain_val accuracy (the level of data it never saw); ties: the
    larger alpha. Driving such forget accuracy to 0 would overshoot Retrain.

  Returns {'alpha', 'lam', 'target_forget_acc', 'forget_split', 'table': [rows], 'original': {...},
  'importance': {...timings}}; with `write`, also saves it as `<ctx.workdir>/alpha_sweep_<method>.json`.
  """
  if importance_fn is None:
    if method not in IMPORTANCES:
      importlib.import_module(f"jax_unlearn.methods.{method}")
    if method not in IMPORTANCES:
      raise ConfigError(f"no importance function for method {method!r}; use one of "
                        f"{', '.join(sorted(IMPORTANCES))} or pass importance_fn")
    importance_fn, default_labels = IMPORTANCES[method]
    uses_labels = default_labels if uses_labels is None else uses_labels
  elif uses_labels is None:
    raise ConfigError("select_alpha: pass uses_labels together with a custom importance_fn")
  alphas = positive_grid(alphas, "select_alpha")
  cfg = ctx.cfg
  lam = float(cfg.lam if lam is None else lam)
  imp_full, imp_forget, imp_info = compute_importances(ctx, method, importance_fn, uses_labels, cfg)
  result = {**sweep_alpha(ctx, method, imp_full, imp_forget, alphas, lam,
                          target_forget_acc=target_forget_acc, criterion=criterion),
            "importance": imp_info}
  if write and ctx.workdir:
    atomic_write_json(os.path.join(ctx.workdir, f"alpha_sweep_{method}.json"), result)
  return result


__all__ = ["MODES", "LOSSES", "default_config", "cross_entropy", "output_norm_sq", "Normalize", "importance",
           "accumulate_importance", "ssd_importance", "dampen", "selection_stats", "concat_batches",
           "compute_importances", "run_dampening", "run", "unlearn", "unlearn_dampening", "select_alpha",
           "sweep_alpha", "is_auto", "AUTO", "ALPHA_GRID",
           "IMPORTANCES", "validate_config", "full_importance_cache_path"]
