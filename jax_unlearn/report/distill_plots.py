"""Plots for the data-free distillation engine (`methods/distill.py`).

* `plot_diagnostics`: a Figure-2-style panel (ISPF paper §4.3): forget-class synthesis rate, kept samples per
  student batch, and the Eq. 11 retain entropy, each against the epoch, one line per strategy.
* `save_sample_grid`: a PNG grid of synthetic samples.

Both read plain Python data (the records of `<workdir>/diagnostics.jsonl`), so they also work on runs
finished long ago: `plot_diagnostics({'gkt': load_diagnostics(p1), 'ispf': load_diagnostics(p2)}, out)`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

_PANELS = (
    ("forget_synthesis_rate", "forget-class synthesis rate", 100.0, "% of generated samples"),
    ("kept_mean", "samples used for distillation", 1.0, "kept per student batch"),
    ("retain_entropy", "retain information (Eq. 11)", 1.0, "entropy summed over kept samples"),
)


def load_diagnostics(path: str) -> list[dict]:
  """The per-epoch records of a `diagnostics.jsonl` file."""
  with open(path) as fh:
    return [json.loads(line) for line in fh if line.strip()]


def _series(records: Sequence[dict], key: str, scale: float):
  xs, ys = [], []
  for r in records:
    v = r.get(key)
    if v is not None and math.isfinite(v):
      xs.append(r["epoch"])
      ys.append(scale * v)
  return xs, ys


def plot_diagnostics(runs: Mapping[str, Sequence[dict]], out_png: str,
                     forget_classes: Sequence[int] = ()) -> str:
  """Writes the Figure-2-style panel for `runs` = {strategy name: diagnostics records} to `out_png`."""
  fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.4))
  for ax, (key, title, scale, ylabel) in zip(axes, _PANELS):
    for name, records in runs.items():
      xs, ys = _series(records, key, scale)
      if xs:
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=name)
    warm = [r["epoch"] for r in next(iter(runs.values()), []) if r.get("phase") == "warmup"]
    if warm:
      ax.axvspan(0.5, max(warm) + 0.5, color="0.9", zorder=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if forget_classes:
    fig.suptitle(f"forget class(es) {', '.join(map(str, forget_classes))} (grey: generator warm-up)",
                 fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png


def save_sample_grid(images: ArrayLike, out_png: str, ncols: int = 8, title: str | None = None) -> str:
  """Saves [N, H, W, C] images in [0, 1] (C = 1 or 3) as one PNG grid."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncols = max(1, min(ncols, n))
  nrows = max(1, math.ceil(n / ncols))
  grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  fig, ax = plt.subplots(figsize=(min(12, 0.6 + 0.45 * ncols * max(1, w / 8)),
                                  min(12, 0.6 + 0.45 * nrows * max(1, h / 8))))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
            interpolation="nearest")
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
