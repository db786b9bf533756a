"""LiRA: the per-example likelihood-ratio membership attack (Carlini et al., "Membership Inference
Attacks From First Principles", IEEE S&P 2022), as pure functions of score arrays.

Statistic (§IV-B, "logit scaling"; reference `research/mi_lira_2021/score.py`): for a model's logits z
on an example of label y, with p = softmax(z),

    phi = log p_y - log sum_{j != y} p_j = z_y - logsumexp_{j != y} z_j,

computed in float64 from the logits directly, so it is exact where the reference's
log(p + 1e-45) saturates (a logit gap above ~100). With augmented queries (the image and its mirror,
`inference.py`) there is one phi per query, kept on a trailing axis.

Attacks (Algorithm 1; reference `plot.py`). Per example and per query, fit a Gaussian to the shadow
models' phi: location = median, scale = standard deviation (ddof 0), as `plot.py` does; with
`global_variance=True` one scale for all examples and queries (the paper's "fixed variance" variant).
* online:  Lambda = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2);
* offline: Lambda = log Phi((phi - mu_out) / s_out) (one-sided: the paper's Pr[Z <= phi], Z ~ out);
  `one_sided=False` gives `plot.py`'s two-sided -log N(phi; mu_out, s_out^2).
With several queries Lambda is the mean over them (`plot.py`: `score.mean(1)`). Higher = member.

Population evaluation (`leave_one_out_lira`): M models trained on random halves (`membership_masks`,
as `train.py`'s keep.npy: each example in exactly half of the models), scores [M, N] (or [M, N, A]);
each model in turn is the target and the other M-1 are its shadows (`plot.py` holds out the last
model). `roc_metrics` gives AUC, balanced accuracy and TPR at 0.1 % / 1 % FPR as the paper reports.

Everything here is numpy float64 rather than JAX: the statistic needs float64 (JAX would need the
global x64 switch) and the arrays are small (models x examples).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.errors import DataError
from jax_unlearn.metrics._callable import make_callable

__all__ = ["lira", "GaussianFit", "lira_score", "membership_masks", "fit_gaussians", "gaussian_logpdf",
           "offline_lira", "online_lira", "leave_one_out_lira", "tpr_at_fpr", "roc_metrics"]

# plot.py adds this to every fitted standard deviation, so that a shadow population with one repeated
# score still gives a finite (if enormous) log-likelihood instead of a division by zero.
_STD_FLOOR = 1e-30


class GaussianFit(NamedTuple):
  """Per-example (and per-query) Gaussian fit of shadow scores: `loc` (the median), `scale` (the std,
  or one global std broadcast), `count` (models used per example, [N])."""
  loc: np.ndarray
  scale: np.ndarray
  count: np.ndarray


def _finite(name: str, a: np.ndarray) -> np.ndarray:
  if a.size == 0:
    raise DataError(f"{name} is empty; pass at least one model and one example")
  if not np.all(np.isfinite(a)):
    raise DataError(f"{name} contains NaN or inf; compute scores with lira_score from finite logits "
                    "(a NaN logit usually means a diverged model)")
  return a


def lira_score(logits: ArrayLike, labels: ArrayLike, *, augmented: bool = False) -> np.ndarray:
  """LiRA's logit-scaled confidence phi = log p_y - log(1 - p_y), float64, stable for any logits.

  Args:
    logits: [..., N, K], or [..., N, A, K] with `augmented=True` (A queries per example, e.g. the
      image and its mirror).
    labels: integer labels, [N] or any shape that broadcasts to logits.shape[:-1] (with `augmented`,
      to logits.shape[:-2]).
  Returns: float64 [..., N] (or [..., N, A]).
  """
  z = _finite("logits", np.asarray(logits, np.float64))
  if z.ndim < 2 or z.shape[-1] < 2:
    raise DataError(f"logits must be [..., N, K] with K >= 2 classes, got shape {z.shape}")
  y = np.asarray(labels)
  if not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"labels must be integers, got dtype {y.dtype}")
  if augmented:
    y = y[..., None]
  try:
    y = np.broadcast_to(y, z.shape[:-1])
  except ValueError:
    raise DataError(f"labels of shape {np.shape(labels)} do not match logits of shape {z.shape}; "
                    "labels are [N] for logits [..., N, K] (or [..., N, A, K] with augmented=True)"
                    ) from None
  if y.min() < 0 or y.max() >= z.shape[-1]:
    raise DataError(f"labels must lie in [0, {z.shape[-1]}), got range [{y.min()}, {y.max()}]")
  z_y = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
  wrong = np.where(np.arange(z.shape[-1]) == y[..., None], -np.inf, z)
  top = wrong.max(axis=-1)
  # log sum_{j != y} exp(z_j) with the largest wrong logit factored out: no overflow, and no
  # underflow to log(0) however far z_y is above the others.
  lse_wrong = top + np.log(np.sum(np.exp(wrong - top[..., None]), axis=-1))
  return z_y - lse_wrong


def membership_masks(num_models: int, num_examples: int, rng: np.random.Generator, *,
                     pkeep: float = 0.5) -> np.ndarray:
  """[M, N] bool: each example in exactly floor(pkeep * M) of the M models' training sets, chosen
  independently per example (`train.py`'s keep.npy for --num_experiments runs)."""
  if num_models < 2 or num_examples < 1 or not 0.0 < pkeep < 1.0:
    raise DataError(f"membership_masks needs num_models >= 2, num_examples >= 1, 0 < pkeep < 1; got "
                    f"{num_models}, {num_examples}, {pkeep}")
  # The rank of a uniform draw within its column is a uniformly random permutation of the models.
  ranks = rng.random((num_models, num_examples)).argsort(axis=0).argsort(axis=0)
  return ranks < int(pkeep * num_models)


def _as_scores(name: str, scores, num_examples: int | None = None) -> np.ndarray:
  s = _finite(name, np.asarray(scores, np.float64))
  if s.ndim not in (2, 3):
    raise DataError(f"{name} must be [models, examples] or [models, examples, queries], got shape "
                    f"{s.shape}")
  if num_examples is not None and s.shape[1] != num_examples:
    raise DataError(f"{name} has {s.shape[1]} examples, the target scores {num_examples}")
  return s


def _as_mask(name: str, mask, shape: tuple[int, int]) -> np.ndarray:
  if mask is None:
    return np.ones(shape, bool)
  m = np.asarray(mask)
  if m.dtype != bool or m.shape != shape:
    raise DataError(f"{name} must be a bool array of shape {shape} (models x examples), got "
                    f"{m.dtype} {m.shape}")
  return m


def fit_gaussians(scores: ArrayLike, mask: ArrayLike | None = None, *, global_variance: bool = False,
                  min_count: int | None = None) -> GaussianFit:
  """Per-example Gaussian fits of shadow scores, as `plot.py`: loc = median, scale = std (ddof 0).

  Args:
    scores: [M, N] or [M, N, A] shadow scores (M models, N examples, A queries).
    mask: [M, N] bool, which models' scores belong to the population (e.g. the in-models of each
      example); None = all.
    global_variance: one scale for the whole population (all examples and queries).
    min_count: fewest models an example's population may have (default 2 for per-example variance,
      1 for a global one); fewer raise DataError.
  Returns: `GaussianFit` with loc/scale of shape [N] (or [N, A]) and count [N].
  """
  s = _as_scores("scores", scores)
  m = _as_mask("mask", mask, s.shape[:2])
  count = m.sum(axis=0)
  need = (1 if global_variance else 2) if min_count is None else int(min_count)
  if np.any(count < need):
    bad = np.flatnonzero(count < need)
    raise DataError(f"{len(bad)} example(s) (first: {bad[:5].tolist()}) have fewer than {need} shadow "
                    f"model(s) in this population (min {count.min()}); train more shadow models or "
                    "drop those examples")
  mm = m.reshape(m.shape + (1,) * (s.ndim - 2))
  vals = np.where(mm, s, np.nan)
  # With min_count=0 an example may have no model in the population: its loc/scale are NaN, without
  # numpy's "All-NaN slice" / "Degrees of freedom" warnings (the caller checks `count`).
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    loc = np.nanmedian(vals, axis=0)
    if global_variance:
      scale = np.full_like(loc, np.std(s[np.broadcast_to(mm, s.shape)]) if m.any() else np.nan)
    else:
      scale = np.nanstd(vals, axis=0)
  return GaussianFit(loc, scale, count)


def gaussian_logpdf(x: ArrayLike, loc: ArrayLike, scale: ArrayLike) -> np.ndarray:
  """log N(x; loc, scale^2), float64, with `plot.py`'s 1e-30 added to the scale."""
  scale = np.asarray(scale, np.float64) + _STD_FLOOR
  z = (np.asarray(x, np.float64) - loc) / scale
  return -0.5 * z * z - np.log(scale) - 0.5 * np.log(2.0 * np.pi)


def _target(target_scores, fit: GaussianFit) -> np.ndarray:
  t = _finite("target_scores", np.asarray(target_scores, np.float64))
  if t.shape[-fit.loc.ndim:] != fit.loc.shape:
    raise DataError(f"target_scores of shape {t.shape} must end in the shadow fit's shape "
                    f"{fit.loc.shape} (examples[, queries])")
  return t


def _query_mean(stat: np.ndarray, fit: GaussianFit) -> np.ndarray:
  return stat.mean(axis=-1) if fit.loc.ndim == 2 else stat


def offline_lira(target_scores: ArrayLike, out_scores: ArrayLike, *, out_mask: ArrayLike | None = None,
                 global_variance: bool = False, one_sided: bool = True) -> np.ndarray:
  """Offline LiRA statistic (higher = member) from out-models only.

  Args:
    target_scores: [..., N] (or [..., N, A]) scores of the model(s) under attack.
    out_scores: [M, N] (or [M, N, A]) shadow scores; `out_mask` [M, N] marks which are out-models
      of each example (None = all of them).
    one_sided: log Phi((phi - mu_out) / s_out) (Algorithm 1); False: `plot.py`'s -log N(phi; out).
  Returns: [..., N], the mean over queries of the per-query statistic.
  """
  fit = fit_gaussians(out_scores, out_mask, global_variance=global_variance)
  t = _target(target_scores, fit)
  if one_sided:
    # scipy.special costs ~1 s to import on a loaded machine; only this branch needs it.
    from scipy.special import log_ndtr  # noqa: PLC0415
    stat = log_ndtr((t - fit.loc) / (fit.scale + _STD_FLOOR))
  else:
    stat = -gaussian_logpdf(t, fit.loc, fit.scale)
  return _query_mean(stat, fit)


def online_lira(target_scores: ArrayLike, in_scores: ArrayLike, out_scores: ArrayLike, *,
                in_mask: ArrayLike | None = None, out_mask: ArrayLike | None = None,
                global_variance: bool = False) -> np.ndarray:
  """Online LiRA statistic log N(phi; in) - log N(phi; out) (higher = member).

  Args:
    target_scores: [..., N] (or [..., N, A]).
    in_scores, out_scores: [M, N] (or [M, N, A]) shadow scores, usually the same array with
      `in_mask` = keep and `out_mask` = ~keep ([M, N] bool; None = every row).
  Returns: [..., N], the mean over queries of the per-query log-likelihood ratio.
  """
  # With global_variance each population gets its own global scale (the paper's sigma_in, sigma_out);
  # plot.py's fixed-variance online attack uses the in-scores' std for both (`std_out =
  # np.std(dat_in)`), which we take for a slip.
  fin = fit_gaussians(in_scores, in_mask, global_variance=global_variance)
  fout = fit_gaussians(out_scores, out_mask, global_variance=global_variance)
  if fin.loc.shape != fout.loc.shape:
    raise DataError(f"in and out shadow scores disagree on examples/queries: {fin.loc.shape} vs "
                    f"{fout.loc.shape}")
  t = _target(target_scores, fin)
  stat = gaussian_logpdf(t, fin.loc, fin.scale) - gaussian_logpdf(t, fout.loc, fout.scale)
  return _query_mean(stat, fin)


def leave_one_out_lira(scores: ArrayLike, keep: ArrayLike, *, online: bool = True,
                       global_variance: bool = False, one_sided: bool = True,
                       target_models: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """LiRA on a population: each target model in turn is attacked with all other models as shadows.

  Args:
    scores: [M, N] (or [M, N, A]) phi of every example under every model.
    keep: [M, N] bool, True where the example was in the model's training set.
    online: online (in and out fits) or offline (out only) attack.
    target_models: indices of the models to attack (default: all M).
  Returns: (stat [T, N], is_member [T, N]) for the T targets, ready for `roc_metrics`.
  """
  s = _as_scores("scores", scores)
  k = _as_mask("keep", keep, s.shape[:2])
  targets = np.arange(s.shape[0]) if target_models is None else np.asarray(target_models, int)
  if targets.ndim != 1 or targets.size == 0 or targets.min() < 0 or targets.max() >= s.shape[0]:
    raise DataError(f"target_models must be a non-empty list of model indices in [0, {s.shape[0]}), "
                    f"got {target_models!r}")
  stats = []
  for t in targets:
    others = np.arange(s.shape[0]) != t
    sh, kk = s[others], k[others]
    if online:
      stats.append(online_lira(s[t], sh, sh, in_mask=kk, out_mask=~kk, global_variance=global_variance))
    else:
      stats.append(offline_lira(s[t], sh, out_mask=~kk, global_variance=global_variance,
                                one_sided=one_sided))
  return np.stack(stats), k[targets]


def tpr_at_fpr(fpr: ArrayLike, tpr: ArrayLike, max_fpr: float) -> float:
  """The highest TPR among ROC points with FPR strictly below `max_fpr` (`plot.py`:
  tpr[np.where(fpr < .001)[0][-1]]); 0 when only the (0, 0) point qualifies."""
  fpr, tpr = np.asarray(fpr), np.asarray(tpr)
  ok = fpr < max_fpr
  return float(tpr[ok].max()) if np.any(ok) else 0.0


def roc_metrics(stat: ArrayLike, is_member: ArrayLike) -> dict:
  """ROC of a membership statistic (higher = member) against the truth.

  Returns dict(auc, balanced_accuracy = max over thresholds of 1 - (FPR + FNR) / 2,
  tpr_at_01pct_fpr (FPR < 0.1 %), tpr_at_1pct_fpr (FPR < 1 %), fpr, tpr, thresholds), as `plot.py`'s
  `sweep` and `do_plot` report them. Every ROC point is kept (`drop_intermediate=False`) so the TPR at
  a low FPR is never read off a pruned curve.
  """
  x = np.asarray(stat, np.float64).reshape(-1)
  y = np.asarray(is_member).reshape(-1)
  if x.shape != y.shape:
    raise DataError(f"stat and is_member must have the same number of entries, got {np.shape(stat)} "
                    f"and {np.shape(is_member)}")
  if x.size == 0 or np.any(np.isnan(x)):
    raise DataError("the membership statistic is empty or has NaN entries; check the shadow fits "
                    "(too few shadow models?) and the scores")
  if y.dtype != bool:
    if not np.all((y == 0) | (y == 1)):
      raise DataError(f"is_member must be bool or 0/1, got values {np.unique(y)[:5]}")
    y = y.astype(bool)
  if y.all() or not y.any():
    raise DataError(f"is_member has a single class ({int(y.sum())} members of {y.size}); a ROC needs "
                    "both members and non-members")
  # scikit-learn is heavy to import (~2.5 s on a loaded machine) and only the ROC needs it.
  from sklearn.metrics import auc, roc_curve  # noqa: PLC0415
  fpr, tpr, thresholds = roc_curve(y, x, drop_intermediate=False)
  return {"auc": float(auc(fpr, tpr)),
          "balanced_accuracy": float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)),
          "tpr_at_01pct_fpr": tpr_at_fpr(fpr, tpr, 1e-3),
          "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 1e-2),
          "fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def lira(scores: ArrayLike, keep: ArrayLike, *, online: bool = True, global_variance: bool = False,
         one_sided: bool = True, target_models: ArrayLike | None = None) -> dict:
  """The LiRA metric of a population: `roc_metrics` of `leave_one_out_lira(scores, keep, ...)`.

  `scores` [M, N] (or [M, N, A]) are `lira_score`s of N examples under M models, `keep` [M, N] which
  examples each model trained on (`membership_masks`). Returns AUC, balanced accuracy and TPR at
  0.1 % / 1 % FPR (plus the ROC arrays) over every attacked (model, example) pair; 0.5 AUC = no
  membership signal. `metrics.lira(...)` (the module) calls this function.
  """
  stat, is_member = leave_one_out_lira(scores, keep, online=online, global_variance=global_variance,
                                       one_sided=one_sided, target_models=target_models)
  return roc_metrics(stat, is_member)


make_callable(__name__)
