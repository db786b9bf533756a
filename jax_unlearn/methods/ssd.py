"""Selective Synaptic Dampening (SSD; Foster, Schoepf & Brintrup, AAAI'24), SPEC §4.

SSD needs no training: it estimates how important every parameter is for the full training set D and for
the forget set D_f, and shrinks the parameters that matter disproportionately to D_f:

* Importance (SPEC §4.1): the diagonal of the Fisher information, estimated from cross-entropy gradients.
  The reference (`ParameterPerturber.calc_importance`) squares the gradient of the *batch-mean* loss of each
  minibatch and averages over minibatches, in eval mode (BN uses running statistics), for every parameter
  including BN scale and bias.
* Dampening (SPEC §4.2, `modify_weight`): where I_Df > alpha * I_D, theta <- theta * min(lam * I_D / I_Df, 1).

This module holds the machinery shared with LFSSD (`lfssd.py`, which only swaps the loss for the squared
output norm and the square for an absolute value): the jitted importance accumulator, `dampen`, the
`run` driver with its on-disk cache of the D importance, and `select_alpha`, the validation sweep.

Importance modes (project decision 5 of SPEC):
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

import dataclasses
import functools
import hashlib
import importlib
import os
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import CheckpointError, ConfigError, DataError
from jax_unlearn.io import atomic_write_json
from jax_unlearn.methods import base
from jax_unlearn.methods._selection import closest_score, selection_key
from jax_unlearn.train.checkpoint import has_variables, load_variables, save_variables
from jax_unlearn.train.evaluate import accuracy

MODES = ("reference", "per_sample")


def default_config() -> ml_collections.ConfigDict:
  """`config.ssd` defaults (SPEC §4.3: ResNet18 alpha = 10 in every scenario, ViT 5 full class / 25
  sub-class, lambda = 1; SPEC §4.1: batch 64 for D and D_f, D_f batch 128 in random forgetting).

  Fields:
    alpha: selection weighting; parameters with I_Df > alpha * I_D are dampened.
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
  c.alpha = 10.0
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

def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy: the loss whose gradient's square is SSD's Fisher diagonal."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass(frozen=True)
class Normalize:
  """Hashable on-device preprocessing (x - mean) / std, so the jitted step is reused across calls."""
  mean: tuple
  std: tuple

  def __call__(self, x):
    return normalize(x, self.mean, self.std)


def _identity(x):
  return x


# ----------------------------------------------------------------------------------------------------
# Importance accumulation.

_REDUCE = {"square": jnp.square, "abs": jnp.abs}


def _split_variables(variables):
  if "params" not in variables:
    raise ConfigError("variables have no 'params' collection; pass the model's full variables dict "
                      "({'params': ..., 'batch_stats': ...})")
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _batch_mean_loss(apply_fn, preprocess, loss_fn, params, rest, images, labels, mask):
  logits = apply_fn({"params": params, **rest}, preprocess(images), train=False)
  per_example = loss_fn(logits, labels)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.partial(jax.jit, static_argnames=("apply_fn", "preprocess", "loss_fn", "reduce", "mode",
                                             "chunk"))
def _importance_step(acc, variables, images, labels, mask, *, apply_fn, preprocess, loss_fn, reduce,
                     mode, chunk):
  """acc + r(grad of the masked batch-mean loss) ('reference') or + sum_i mask_i r(g_i) ('per_sample')."""
  params, rest = _split_variables(variables)
  r = _REDUCE[reduce]
  loss = lambda p, x, y, m: _batch_mean_loss(apply_fn, preprocess, loss_fn, p, rest, x, y, m)  # noqa: E731
  if mode == "reference":
    g = jax.grad(loss)(params, images, labels, mask)
    return jax.tree.map(lambda a, gi: a + r(gi).astype(a.dtype), acc, g)

  # per_sample: each example goes through the model as a batch of one (eval mode, so no batch coupling).
  def example_loss(p, x, y):
    return loss(p, x[None], None if y is None else y[None], jnp.ones((1,), jnp.float32))

  per_example_grad = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))
  n = images.shape[0]
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


def _check_mode(mode):
  if mode not in MODES:
    raise ConfigError(f"unknown importance mode {mode!r}; set --config.<method>.mode to one of: "
                      f"{', '.join(MODES)}")


def accumulate_importance(apply_fn: Callable, variables, batches: Iterable[dict], *, loss_fn: Callable,
                          reduce: str, uses_labels: bool, mode: str = "reference",
                          preprocess: Callable | None = None, per_sample_chunk: int = 16):
  """Importance of every entry of `variables['params']` for the data in `batches` (SPEC §4.1).

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
    images = np.asarray(batch["image"])
    labels = np.asarray(batch["label"], np.int32) if uses_labels else None
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


def ssd_importance(apply_fn: Callable, variables, batches: Iterable[dict], mode: str = "reference", *,
                   preprocess: Callable | None = None, per_sample_chunk: int = 16):
  """SSD importance: diagonal Fisher from cross-entropy with labels (SPEC §4.1).

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
def dampen(params, imp_full, imp_forget, alpha, lam):
  """Selective dampening (SPEC §4.2, `modify_weight` with exponent 1 and the cap at 1).

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


def selection_stats(imp_full, imp_forget, alpha) -> dict:
  """How many parameters `dampen` modifies at `alpha`: total, fraction, and in normalisation layers."""
  counts = _selection_counts(imp_full, imp_forget, alpha)
  flat, _ = jax.tree_util.tree_flatten_with_path(counts)
  sizes = [int(np.size(x)) for x in jax.tree.leaves(imp_full)]
  n_sel = sum(int(c) for _, c in flat)
  n_norm = sum(int(c) for path, c in flat if "norm" in jax.tree_util.keystr(path).lower())
  total = max(sum(sizes), 1)
  return {"n_selected": n_sel, "n_params": sum(sizes), "frac_selected": n_sel / total,
          "n_selected_norm": n_norm}


# ----------------------------------------------------------------------------------------------------
# Driver: data, cache, timings.

def concat_batches(arrays: list[np.ndarray], batch_size: int):
  """Unshuffled batches over the concatenation of `arrays`, last partial batch kept.

  Equivalent to torch `DataLoader(ConcatDataset(...), shuffle=False)`: batches straddle the boundary
  between arrays, and nothing is copied beyond one batch.
  """
  bounds = np.cumsum([0] + [len(a) for a in arrays])
  total = int(bounds[-1])
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    pieces = []
    for a, lo, hi in zip(arrays, bounds[:-1], bounds[1:]):
      s, e = max(start, lo), min(stop, hi)
      if s < e:
        pieces.append(np.asarray(a[s - lo:e - lo]))
    yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _batches(splits, batch_size: int, uses_labels: bool):
  """Dict batches over `splits` concatenated; labels only when the importance needs them."""
  images = concat_batches([s.images for s in splits], batch_size)
  if not uses_labels:
    for x in images:
      yield {"image": x}
    return
  labels = concat_batches([s.labels for s in splits], batch_size)
  for x, y in zip(images, labels):
    yield {"image": x, "label": y}


def validate_config(cfg, problem: base.Problem | None = None, name: str = "ssd") -> None:
  """ConfigError naming `--config.<name>.<field>` for invalid SSD/LFSSD settings."""
  del problem
  _check_mode(cfg.mode)
  for k in ("batch_size", "forget_batch_size", "random_forget_batch_size", "per_sample_chunk"):
    if int(cfg[k]) < 1:
      raise ConfigError(f"config.{name}.{k} = {cfg[k]} must be a positive integer; set e.g. "
                        f"--config.{name}.{k}=64")
  for k, paper in (("alpha", 10), ("lam", 1)):
    if not float(cfg[k]) > 0:
      raise ConfigError(f"--config.{name}.{k} must be > 0, got {cfg[k]}; the paper uses {k} = {paper}")


def _fingerprint(variables, splits, extra: str, uses_labels: bool) -> str:
  """Content hash of the model and of D in its iteration order, so a stale cache is never reused."""
  h = hashlib.sha1(extra.encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  for s in splits:
    h.update(np.ascontiguousarray(np.asarray(s.images)).tobytes())
    if uses_labels:  # label-free methods never look at labels, not even to hash them
      h.update(np.ascontiguousarray(np.asarray(s.labels)).tobytes())
  return h.hexdigest()[:16]


def full_importance_cache_path(ctx, name: str, cfg, splits, uses_labels: bool) -> str:
  """`<cache_dir>/<name>_full_importance_<mode>_b<batch>_<hash>`: beside the original model
  (`ctx.cache_dir`) unless `cfg.cache_dir` is set; the hash covers the original variables, D in its
  iteration order, the mode and the batch size."""
  directory = cfg.cache_dir or ctx.cache_dir or os.path.dirname(os.path.abspath(ctx.workdir))
  fp = _fingerprint(ctx.original, splits, f"{name}/{cfg.mode}/{cfg.batch_size}", uses_labels)
  return os.path.join(directory, f"{name}_full_importance_{cfg.mode}_b{cfg.batch_size}_{fp}")


def _load_cache(path, params):
  """A cached importance tree (orbax, `train.checkpoint`), or None if absent or unreadable."""
  if not has_variables(path):
    return None
  target = jax.eval_shape(lambda: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params))
  try:
    return load_variables(path, target)
  except CheckpointError:  # a corrupt or foreign cache is recomputed, never trusted
    return None


def _save_cache(path, imp):
  save_variables(path, jax.device_get(imp), {"kind": "importance"})


def compute_importances(ctx, name: str, importance_fn: Callable, uses_labels: bool, cfg=None):
  """(I_D, I_Df, info) for `ctx`, following SPEC §4.1's data and batch sizes.

  D = retain_train ++ forget_train, unshuffled, batch `cfg.batch_size`; D_f = forget_train, batch
  `cfg.forget_batch_size` (`cfg.random_forget_batch_size` in random forgetting). With
  `cfg.cache_full_importance`, I_D is read from / written to a msgpack file keyed by a hash of the
  original variables, D, the mode and the batch size.
  """
  cfg = ctx.cfg if cfg is None else cfg
  data = ctx.data
  if data is None:
    raise DataError(f"{name} needs the training data (retain and forget sets); build the context with data")
  preprocess = Normalize(tuple(float(m) for m in data.info.mean), tuple(float(s) for s in data.info.std))
  apply_fn = ctx.model.apply
  full_splits = (data.retain_train, data.forget_train)
  if len(data.forget_train) == 0:
    raise DataError("the forget set is empty; set config.forget.classes / num_samples to select data")
  fb = cfg.random_forget_batch_size if ctx.forget_mode == "random" else cfg.forget_batch_size
  kw = dict(mode=cfg.mode, preprocess=preprocess, per_sample_chunk=int(cfg.per_sample_chunk))
  info = {"mode": cfg.mode, "batch_size": int(cfg.batch_size), "forget_batch_size": int(fb)}

  t0 = time.perf_counter()
  imp_full, cache_path = None, None
  if cfg.cache_full_importance:
    cache_path = full_importance_cache_path(ctx, name, cfg, full_splits, uses_labels)
    if os.path.exists(cache_path):
      imp_full = _load_cache(cache_path, ctx.original["params"])
  cached = imp_full is not None
  if imp_full is None:
    imp_full = importance_fn(apply_fn, ctx.original, _batches(full_splits, int(cfg.batch_size), uses_labels),
                             **kw)
    if cache_path is not None:
      _save_cache(cache_path, imp_full)
  jax.block_until_ready(imp_full)
  t1 = time.perf_counter()
  imp_forget = importance_fn(apply_fn, ctx.original, _batches((data.forget_train,), int(fb), uses_labels),
                             **kw)
  jax.block_until_ready(imp_forget)
  t2 = time.perf_counter()
  info.update(importance_full_s=t1 - t0, importance_forget_s=t2 - t1, importance_s=t2 - t0,
              full_importance_cached=cached, full_importance_cache=cache_path or "")
  ctx.log(f"{name}: importances ({cfg.mode}) D {t1 - t0:.2f}s{' (cached)' if cached else ''}, "
          f"D_f {t2 - t1:.2f}s")
  return imp_full, imp_forget, info


def run_dampening(ctx, name: str, importance_fn: Callable, uses_labels: bool) -> base.UnlearnResult:
  """Shared `run` of SSD and LFSSD: importances on D and D_f, then `dampen` with config alpha/lam."""
  cfg = ctx.cfg
  t0 = time.perf_counter()
  imp_full, imp_forget, info = compute_importances(ctx, name, importance_fn, uses_labels, cfg)
  t1 = time.perf_counter()
  params = jax.block_until_ready(dampen(ctx.original["params"], imp_full, imp_forget,
                                        float(cfg.alpha), float(cfg.lam)))
  t2 = time.perf_counter()
  info.update(alpha=float(cfg.alpha), lam=float(cfg.lam), dampen_s=t2 - t1, total_s=t2 - t0,
              **selection_stats(imp_full, imp_forget, float(cfg.alpha)))
  ctx.log(f"{name}: dampened {info['n_selected']}/{info['n_params']} parameters "
          f"(alpha={cfg.alpha}, lam={cfg.lam}) in {t2 - t1:.3f}s; total {t2 - t0:.2f}s")
  return base.UnlearnResult(variables={**ctx.original, "params": params}, info=info)


@base.register("ssd", default_config=default_config, validate_config=validate_config, order=140,
               data="D_r, D_f (labels)")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """SSD on `ctx` (uses labelled D and D_f; reads `ctx.config.ssd`)."""
  return run_dampening(ctx, "ssd", ssd_importance, uses_labels=True)


# ----------------------------------------------------------------------------------------------------
# Alpha selection on the validation split.

# method name -> (importance function, uses labels); lfssd.py adds itself on import.
IMPORTANCES: dict[str, tuple[Callable, bool]] = {"ssd": (ssd_importance, True)}


def select_alpha(ctx, alphas, method: str = "ssd", *, importance_fn: Callable | None = None,
                 uses_labels: bool | None = None, lam: float | None = None,
                 target_forget_acc: float | None = None, criterion: str | None = None,
                 write: bool = True) -> dict:
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
  alphas = [float(a) for a in alphas]
  if not alphas or min(alphas) <= 0:
    raise ConfigError(f"select_alpha needs positive alphas, got {alphas}")
  cfg = ctx.cfg
  lam = float(cfg.lam if lam is None else lam)
  imp_full, imp_forget, imp_info = compute_importances(ctx, method, importance_fn, uses_labels, cfg)

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
            "table": rows, "original": original,
            "importance": imp_info}
  if write and ctx.workdir:
    atomic_write_json(os.path.join(ctx.workdir, f"alpha_sweep_{method}.json"), result)
  return result


__all__ = ["MODES", "default_config", "cross_entropy", "Normalize", "accumulate_importance", "ssd_importance",
           "dampen", "selection_stats", "concat_batches", "compute_importances", "run_dampening", "run",
           "select_alpha", "IMPORTANCES", "validate_config", "full_importance_cache_path"]
