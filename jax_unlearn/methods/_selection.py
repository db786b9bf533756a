"""Validation-only selection of a method's data-dependent setting (SSD/LFSSD's alpha, DiStruction's
lambda and iteration), shared so that every method picks by the same rule.

Each candidate is measured on *validation* data only: its forget accuracy (forget-val, or the forget
training samples when the validation split holds none, as the SSD repository does for random
forgetting) and its retain-val accuracy. The smallest `selection_key` wins:

* 'threshold' (class forgetting, `closest=None`): candidates with forget accuracy <= `max_forget_acc`
  come first, by best retain-val accuracy, then lower forget accuracy, then the caller's tie-break; if
  none qualifies, the lowest forget accuracy (then the higher retain accuracy) wins.
* 'closest' (sub-class and random forgetting, `closest=(target, retain_ref)`): Retrain still classifies
  such forget data about as well as unseen data, so the smallest |acc_forget − target| +
  (retain_ref − acc_retain) wins (target = retain_ref = the original's retain-val accuracy); driving
  the forget accuracy to 0 would overshoot Retrain.

A candidate with a NaN measurement (a diverged run) is never chosen over a finite one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jax_unlearn.errors import ConfigError

__all__ = ["selection_key", "closest_score", "positive_grid"]


def positive_grid(alphas: Any, who: str) -> list[float]:
  """SSD/LFSSD's alpha candidates (one number or a sequence) as a non-empty list of finite floats > 0,
  else a ConfigError naming `who` (checked before any importance is computed)."""
  try:
    alphas = [float(a) for a in np.atleast_1d(np.asarray(alphas, dtype=np.float64))]
  except (TypeError, ValueError):
    raise ConfigError(f"{who} needs numbers for alpha, got {alphas!r}") from None
  if not alphas or min(alphas) <= 0 or not all(np.isfinite(alphas)):
    raise ConfigError(f"{who} needs positive alphas, got {alphas}; e.g. --config.ssd.alpha_grid=1,5,10")
  return alphas


def closest_score(acc_forget: float, acc_retain: float, target: float, retain_ref: float) -> float:
  """|acc_forget − target| + (retain_ref − acc_retain), the 'closest' rule's distance (percent)."""
  return abs(float(acc_forget) - float(target)) + (float(retain_ref) - float(acc_retain))


def selection_key(acc_forget: float, acc_retain: float, max_forget_acc: float,
                  closest: tuple[float, float] | None = None, tiebreak: tuple = ()) -> tuple:
  """Sort key of one candidate (the smallest wins); `tiebreak` ends the key (e.g. (-alpha,) prefers
  the larger alpha, (lam, step) the smaller lambda and the earlier iteration)."""
  f, r = float(acc_forget), float(acc_retain)
  if not (math.isfinite(f) and math.isfinite(r)):
    return (2, 0.0, 0.0, *tiebreak)
  if closest is not None:
    return (0, closest_score(f, r, *closest), f, *tiebreak)
  if f <= float(max_forget_acc):
    return (0, -r, f, *tiebreak)
  return (1, f, -r, *tiebreak)
