"""ROC curves of membership attacks on log-log axes, as the LiRA paper draws them (Carlini et al.,
S&P 2022, Fig. 1 onwards; reference `research/mi_lira_2021/plot.py`): FPR and TPR from 1e-5 to 1,
the diagonal of a blind attacker dashed grey, one curve per attack with its AUC and TPR at 0.1 % FPR
in the legend. Low-FPR behaviour, invisible on linear axes, is what the paper argues matters.
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping

import numpy as np

from jax_unlearn.errors import DataError

__all__ = ["plot_roc"]

_LIMIT = 1e-5


def _auc_and_low_tpr(fpr: np.ndarray, tpr: np.ndarray) -> tuple[float, float]:
  # Trapezoid AUC and TPR at FPR < 0.1 %, as lira.roc_metrics (this module reads plain arrays, so
  # that finished runs can be re-plotted without the metric code).
  order = np.argsort(fpr, kind="stable")
  f, t = fpr[order], tpr[order]
  auc = float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2.0))
  low = t[f < 1e-3]
  return auc, float(low.max()) if low.size else 0.0


def plot_roc(path: str, curves: Mapping[str, tuple], title: str) -> str:
  """Writes a log-log ROC plot of `curves` = {attack name: (fpr, tpr)} to the PNG `path`, atomically
  (a temporary file in the same directory, then os.replace); returns `path`."""
  if not curves:
    raise DataError("plot_roc needs at least one curve: {name: (fpr, tpr)}")
  checked = {}
  for name, curve in curves.items():
    fpr, tpr = (np.asarray(a, np.float64).reshape(-1) for a in curve)
    if fpr.size == 0 or fpr.shape != tpr.shape or not (np.all(np.isfinite(fpr)) and
                                                       np.all(np.isfinite(tpr))):
      raise DataError(f"curve {name!r}: fpr and tpr must be finite 1-D arrays of equal, non-zero "
                      f"length, got shapes {np.shape(curve[0])} and {np.shape(curve[1])}")
    checked[name] = (fpr, tpr)
  # matplotlib is heavy to import and only plotting needs it; Agg draws without a display.
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(4.8, 4.0))
  for name, (fpr, tpr) in checked.items():
    auc, low = _auc_and_low_tpr(fpr, tpr)
    # Zeros cannot be drawn on log axes; the (0, 0) start of a ROC is clipped to the axis corner.
    ax.plot(np.maximum(fpr, _LIMIT), np.maximum(tpr, _LIMIT), linewidth=1.3,
            label=f"{name}\nAUC={auc:.3f}, TPR@0.1%FPR={low:.3f}")
  ax.plot([_LIMIT, 1], [_LIMIT, 1], linestyle="--", color="gray", linewidth=1.0, label="chance")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(_LIMIT, 1)
  ax.set_ylim(_LIMIT, 1)
  ax.set_xlabel("False positive rate")
  ax.set_ylabel("True positive rate")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3, which="major")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".png")
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  finally:
    plt.close(fig)
  return path
