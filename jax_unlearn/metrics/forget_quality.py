"""The NeurIPS 2023 Machine Unlearning Challenge's forgetting quality F and final score.

Re-written in numpy from the challenge's scorer (google-deepmind/unlearning_evaluation, `metric.py`
and `main.py`, commit ffae0ff; the technical report "Machine_Unlearning_Metric.pdf" on
unlearning-challenge.github.io describes the maths). Pure functions of confidence arrays; no models are
trained here.

Inputs are logit-scaled confidences (LiRA's statistic, `lira.lira_score`) of each forget example
under N unlearned models and N retrained-from-scratch models, both [N, n] (models x examples).

Per example (`per_example_epsilons`, metric.py `_get_epsilons`):
1. The "positive" population is whichever of the two has the larger median confidence.
2. If range(smaller-range population) / range(larger-range one) < 1 %, the example's epsilon is
   `EPSILON_CAP` (a very peaky population would escape the threshold grid below).
3. Two families of decision rules, each a grid of thresholds (100 per unit, `NUM_THRESHOLDS_PER_UNIT`):
   * single threshold t over [min, max] of both populations: "positive" iff c >= t;
   * double threshold (l, r): "positive" iff l <= c <= r, where for this family "positive" is the
     population with the *smaller* range (width w): r runs over [min + w - 2, max + 2] of that
     population, and for each r, l runs over 400 points of [r - w - 2, r - w + 2].
   For every rule, FPR/FNR/TPR/TNR over the N models of each population.
4. Per rule: both FPR = FNR = 0 (perfect separation) gives epsilon = inf; exactly one of them 0 is
   discarded (taken as too few samples); otherwise the (epsilon, delta = 1e-5)-DP hypothesis-testing
   bound
       epsilon = max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR), 0).
5. The example's epsilon is the maximum over the surviving rules, clipped to [0, EPSILON_CAP].

Forgetting quality (`forget_quality_from_epsilons`, metric.py `compute_forget_score_from_confs`):
buckets [0, 0.5), [0.5, 1), ... up to ceil(log(N - 1)) (the largest epsilon N samples per side can
certify) are worth 1, 1/2, 1/4, ... points; an epsilon past the last bucket scores 0; F is the mean
over examples, in [0, 1] (1: every example's epsilon is below 0.5). `final_score` (main.py) is
F x (RA_u / RA_r) x (TA_u / TA_r), with RA/TA the mean retain/test accuracies of the unlearned (u) and
retrained (r) models.

Reference quirks kept on purpose, so results agree with the scorer on the same inputs:
* FPR/FNR/TPR/TNR are float32 (the reference takes torch.mean of float32 indicators) and the epsilon
  formula runs in float32 (numpy keeps float32 when a Python float meets a float32 array);
* the single-threshold grid is float32, as the reference's torch.linspace returns it (torch's
  default dtype), with torch's formula (`_torch_linspace_float32`); the double-threshold grid is
  numpy.linspace's float64 one;
* confidences are used in float64 (the scorer's `compute_logit_scaled_confidence` returns float64).
Deviation: where every rule of an example is discarded (e.g. all 2N confidences equal), the reference
fails on an assertion; we raise DataError naming the example. (The published metric.py's
`assert thr_eps` on a numpy array raises ValueError whenever more than one rule survives; the
reference therefore only runs with `python -O`.)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.errors import DataError
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import register_population

__all__ = ["forget_quality", "DELTA", "EPSILON_CAP", "NUM_THRESHOLDS_PER_UNIT", "BUCKET_SIZE",
           "per_example_epsilons", "epsilon_bucket_points", "forget_quality_from_epsilons", "final_score"]

DELTA = 1e-5
EPSILON_CAP = 50.0
NUM_THRESHOLDS_PER_UNIT = 100
BUCKET_SIZE = 0.5
# Half-width of the double-threshold grid, in confidence units (metric.py `buffer`).
_BUFFER = 2.0
# Below this range ratio the example gets EPSILON_CAP (metric.py: "the unlearned distribution is very
# peaky").
_PEAKY_RATIO = 0.01


def _torch_linspace_float32(start: float, stop: float, num: int) -> np.ndarray:
  """torch.linspace(start, stop, num) with torch's default dtype, float32, as the reference calls it
  (its end points are 0-d float64 tensors, but the output dtype is the default one).

  torch's CPU kernel rounds the end points to float32, fills the first half as start + i*step and
  the second half as stop - (num-1-i)*step, all in float32. Its vectorised loop forms interior points
  as (start + j*step) + k*step instead, which can differ by one float32 ulp depending on the CPU's
  vector width; that changes a rate only when a confidence lies within ~1e-7 of a grid point."""
  if num <= 0:
    return np.zeros(0, np.float32)
  start32, stop32 = np.float32(start), np.float32(stop)
  if num == 1:
    return np.array([start32], np.float32)
  step = (stop32 - start32) / np.float32(num - 1)
  i = np.arange(num)
  first = start32 + step * i.astype(np.float32)
  second = stop32 - step * (num - 1 - i).astype(np.float32)
  return np.where(i < num // 2, first, second).astype(np.float32)


def _rate(count: np.ndarray, num_models: int) -> np.ndarray:
  """count / N as float32, the value torch.mean gives over N float32 0/1 indicators."""
  return (np.asarray(count, np.float64) / num_models).astype(np.float32)


def _count_in(sorted_c: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """#{c : left <= c <= right} for each (left, right); 0 where left > right."""
  n = np.searchsorted(sorted_c, right, side="right") - np.searchsorted(sorted_c, left, side="left")
  return np.maximum(n, 0)


def _double_threshold_rates(pos: np.ndarray, neg: np.ndarray):
  """(tpr, fnr, fpr, tnr) of the rules "l <= c <= r" (metric.py `_get_double_threshold_rates`)."""
  pos_diff = pos.max() - pos.min()
  neg_diff = neg.max() - neg.min()
  width = neg_diff if pos_diff > neg_diff else pos_diff
  # For this family "positive" is the peakier population (the smaller range), as in the reference;
  # the epsilon formula is not symmetric in (FPR, FNR) <-> (TPR, TNR), so the swap matters.
  if pos_diff >= neg_diff:
    pos, neg = neg, pos
  lo = pos.min() + width - _BUFFER
  hi = pos.max() + _BUFFER
  right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
  # numpy.linspace with array end points does per row the arithmetic of the reference's one call per
  # right threshold, so the grid is the same to the bit.
  base = right - width
  n_left = int(np.ceil(2 * _BUFFER * NUM_THRESHOLDS_PER_UNIT))
  left = np.linspace(base - _BUFFER, base + _BUFFER, num=n_left, axis=-1).reshape(-1)
  right = np.repeat(right, n_left)
  m = len(pos)
  k_pos = _count_in(np.sort(pos), left, right)
  k_neg = _count_in(np.sort(neg), left, right)
  return _rate(k_pos, m), _rate(m - k_pos, m), _rate(k_neg, m), _rate(m - k_neg, m)


def _single_threshold_rates(pos: np.ndarray, neg: np.ndarray):
  """(tpr, fnr, fpr, tnr) of the rules "c >= t" (metric.py `_get_single_threshold_rates`)."""
  both = np.concatenate([pos, neg])
  lo, hi = both.min(), both.max()
  # float32 grid points, compared with the float64 confidences after promotion (as torch does).
  t = _torch_linspace_float32(lo, hi, int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
  t = t.astype(np.float64)
  m = len(pos)
  k_pos = m - np.searchsorted(np.sort(pos), t, side="left")  # #{c >= t}
  k_neg = m - np.searchsorted(np.sort(neg), t, side="left")
  return _rate(k_pos, m), _rate(m - k_pos, m), _rate(k_neg, m), _rate(m - k_neg, m)


def _example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float, index: int) -> float:
  pos_diff = pos.max() - pos.min()
  neg_diff = neg.max() - neg.min()
  largest, smallest = (pos_diff, neg_diff) if pos_diff > neg_diff else (neg_diff, pos_diff)
  # The reference's 0/0 (both populations constant) is NaN and fails this test; so does ours.
  if largest > 0 and smallest / largest < _PEAKY_RATIO:
    return EPSILON_CAP
  rates = [np.concatenate(r) for r in zip(_double_threshold_rates(pos, neg),
                                          _single_threshold_rates(pos, neg))]
  tpr, fnr, fpr, tnr = rates
  with np.errstate(divide="ignore", invalid="ignore"):
    eps = np.clip(np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr)),
                  0, None)
    separated = (fpr + fnr == 0) & (tpr + tnr == 2)
    eps = np.where(separated, np.inf, np.where(fpr * fnr == 0, np.nan, eps))
  eps = eps[~np.isnan(eps)]
  if eps.size == 0:
    raise DataError(f"forget example {index}: every decision threshold has FPR or FNR = 0, so its "
                    "epsilon is undefined (are all its unlearned and retrained confidences equal?); "
                    "check the confidences, or drop the example")
  return float(eps.max())


def _check_confs(unlearned_confs, retrained_confs) -> tuple[np.ndarray, np.ndarray]:
  u = np.asarray(unlearned_confs, np.float64)
  r = np.asarray(retrained_confs, np.float64)
  if u.ndim != 2 or u.shape != r.shape:
    raise DataError(f"unlearned and retrained confidences must both be [num_models, num_examples] of "
                    f"the same shape (the challenge uses as many unlearned as retrained models); got "
                    f"{u.shape} and {r.shape}")
  if u.shape[0] < 3 or u.shape[1] == 0:
    raise DataError(f"need at least 3 models per side and 1 example, got {u.shape}: with N models the "
                    "largest certifiable epsilon is ceil(log(N - 1)), 0 for N = 2 (F would be 0 "
                    "whatever the method); the challenge used N = 512")
  if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
    raise DataError("unlearned/retrained confidences contain NaN or inf; compute them with "
                    "lira.lira_score (float64, stable) from finite logits")
  return u, r


def per_example_epsilons(unlearned_confs: ArrayLike, retrained_confs: ArrayLike, *,
                         delta: float = DELTA) -> np.ndarray:
  """Each forget example's empirical epsilon (steps 1-5 of the module docstring).

  Args:
    unlearned_confs: [N, n] confidences of the n forget examples under N unlearned models.
    retrained_confs: [N, n] the same under N retrained-from-scratch models.
    delta: the delta of (epsilon, delta)-unlearning; the challenge's is 1e-5.
  Returns: [n] float64 epsilons in [0, EPSILON_CAP].
  """
  u, r = _check_confs(unlearned_confs, retrained_confs)
  # A Python float keeps the epsilon formula in float32 against the float32 rates (a numpy float64
  # scalar would promote it, and the results would no longer be the reference's).
  delta = float(delta)
  retrain_is_positive = np.median(r, axis=0) > np.median(u, axis=0)
  pos = np.where(retrain_is_positive, r, u)
  neg = np.where(retrain_is_positive, u, r)
  eps = [_example_epsilon(pos[:, i], neg[:, i], delta, i) for i in range(u.shape[1])]
  return np.clip(np.asarray(eps, np.float64), 0.0, EPSILON_CAP)


def epsilon_bucket_points(num_models: int) -> tuple[np.ndarray, np.ndarray]:
  """(bucket starts, points): [0, 0.5) -> 1, [0.5, 1) -> 0.5, ..., last bucket ending at
  ceil(log(num_models - 1)); empty for num_models <= 2."""
  if num_models < 2:
    return np.zeros(0), np.zeros(0)
  max_epsilon = float(np.ceil(np.log(num_models - 1)))
  n = int(max_epsilon / BUCKET_SIZE) if max_epsilon > 0 else 0
  starts = BUCKET_SIZE * np.arange(n, dtype=np.float64)
  return starts, 0.5 ** np.arange(n, dtype=np.float64)


def forget_quality_from_epsilons(epsilons: ArrayLike, num_models: int) -> float:
  """F = mean over examples of the points of each epsilon's bucket (`epsilon_bucket_points`)."""
  eps = np.asarray(epsilons, np.float64).reshape(-1)
  if eps.size == 0 or np.any(np.isnan(eps)) or np.any(eps < 0):
    raise DataError(f"need a non-empty array of epsilons >= 0 without NaN, got {eps!r}")
  starts, points = epsilon_bucket_points(num_models)
  # First bucket with eps < start + 0.5 (metric.py's scan): index floor(eps / 0.5), exact in binary.
  idx = np.floor(eps / BUCKET_SIZE)
  inside = idx < len(points)  # an epsilon past the last bucket (or inf) scores 0
  score = np.zeros_like(eps)
  score[inside] = points[idx[inside].astype(int)]
  return float(np.sum(score) / eps.size)


def forget_quality(unlearned_confs: ArrayLike, retrained_confs: ArrayLike, *, delta: float = DELTA) -> float:
  """The challenge's forgetting quality F in [0, 1] from [N, n] unlearned and retrained confidences
  (1: for every example, no threshold rule separates the two populations by epsilon >= 0.5).
  `metrics.forget_quality(...)` (the module) calls this function."""
  eps = per_example_epsilons(unlearned_confs, retrained_confs, delta=delta)
  return forget_quality_from_epsilons(eps, np.shape(unlearned_confs)[0])


def final_score(forget_quality_value: float, ra_u: ArrayLike, ra_r: ArrayLike, ta_u: ArrayLike,
                ta_r: ArrayLike) -> float:
  """The challenge's final score F x (RA_u / RA_r) x (TA_u / TA_r) (main.py).

  RA = retain accuracy, TA = test accuracy, u = unlearned, r = retrained; each may be a scalar or
  the per-model accuracies (their mean is used, as main.py does). Any common unit (fraction or %).
  """
  means = []
  for name, v in (("ra_u", ra_u), ("ra_r", ra_r), ("ta_u", ta_u), ("ta_r", ta_r)):
    a = np.asarray(v, np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
      raise DataError(f"final_score: {name} must be a finite accuracy or array of them, got {v!r}")
    means.append(float(np.mean(a)))
  ra_u_m, ra_r_m, ta_u_m, ta_r_m = means
  if ra_r_m <= 0 or ta_r_m <= 0:
    raise DataError(f"final_score: the retrained models' accuracies must be > 0 (got RA_r={ra_r_m}, "
                    f"TA_r={ta_r_m}); they are the denominators of the utility ratios")
  return float(forget_quality_value) * (ra_u_m / ra_r_m) * (ta_u_m / ta_r_m)


make_callable(__name__)


# Table columns through `launch.audit` (`--config.metrics.names=acc,...,forget_quality`, random forgetting).
register_population("forget_quality", columns=(("forget_quality", "Forget score F", "{:.3f}"),
                                               ("final_score", "Final score", "{:.3f}")), order=90)

