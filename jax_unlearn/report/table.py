"""The comparison table: results.json (schema below), results.md (paper style), results.csv, a plot.

results.json: {"config": {...}, "rows": [{"method", "forget_classes", "seed", "acc_forget",
"acc_retain", "mia_i", "mia_ii", "mia_entropy", "ain", "kl_to_retrain", "wall_s"}, ...]}
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from jax_unlearn.io import atomic_write_json, atomic_write_text

ROW_KEYS = ("method", "forget_classes", "seed", "acc_forget", "acc_retain", "mia_i", "mia_ii",
            "mia_entropy", "ain", "kl_to_retrain", "wall_s")
# (key, column title, format) in the order of ISPF Table 1, then the other papers' columns.
COLUMNS = (("acc_forget", "Acc D_f test (%)", "{:.2f}"), ("acc_retain", "Acc D_r test (%)", "{:.2f}"),
           ("mia_i", "MIA-I (%)", "{:.2f}"), ("mia_ii", "MIA-II F1 (%)", "{:.2f}"),
           ("mia_entropy", "MIA-entropy (%)", "{:.2f}"), ("ain", "AIN", "{:.3f}"),
           ("kl_to_retrain", "KL to Retrain", "{:.4f}"), ("wall_s", "Time (s)", "{:.1f}"))


def _num(x):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return float("nan")
  return x


def _cell(values, fmt):
  vals = np.array([_num(v) for v in values], float)
  vals = vals[np.isfinite(vals)]
  if len(vals) == 0:
    return "n/a"
  if len(vals) == 1:
    return fmt.format(vals[0])
  return f"{fmt.format(vals.mean())} ± {fmt.format(vals.std(ddof=0))}"


def markdown_table(rows: list[dict], title: str = "") -> str:
  """One line per (method, forget set); mean ± std over seeds when there are several."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], tuple(r["forget_classes"])), []).append(r)
  out = io.StringIO()
  if title:
    out.write(f"{title}\n\n")
  out.write("| Method | Forget | Seeds | " + " | ".join(c[1] for c in COLUMNS) + " |\n")
  out.write("|---|---|---|" + "---|" * len(COLUMNS) + "\n")
  for (method, forget), rs in groups.items():
    cells = [_cell([r.get(k) for r in rs], fmt) for k, _, fmt in COLUMNS]
    forget_s = ",".join(str(c) for c in forget) or "random"
    out.write(f"| {method} | {forget_s} | {len(rs)} | " + " | ".join(cells) + " |\n")
  out.write("\nAcc: accuracy on the test split's forget (D_f) / retain (D_r) samples. MIA-I: % of forget "
            "training samples called non-members (SalUn confidence attack; Retrain ≈ 100). MIA-II: F1 of "
            "a shadow-model attack; closest to Retrain is best. MIA-entropy: % of forget samples called "
            "members (SSD attack). AIN: relearn steps / Retrain's (1 is ideal). KL: KL(unlearned ‖ "
            "Retrain) on forget-class test images.\n")
  return out.getvalue()


def write_results(workdir: str, config_dict: dict, rows: list[dict], title: str = "") -> dict:
  rows = [{k: r.get(k) for k in ROW_KEYS} for r in rows]
  for r in rows:
    for k in ROW_KEYS[3:]:
      v = _num(r[k])
      r[k] = v if math.isfinite(v) else None
  results = {"config": config_dict, "rows": rows}
  atomic_write_json(os.path.join(workdir, "results.json"), results)
  atomic_write_text(os.path.join(workdir, "results.md"), markdown_table(rows, title))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=ROW_KEYS)
  w.writeheader()
  for r in rows:
    w.writerow({**r, "forget_classes": " ".join(str(c) for c in r["forget_classes"])})
  atomic_write_text(os.path.join(workdir, "results.csv"), buf.getvalue())
  plot_results(os.path.join(workdir, "results.png"), rows)
  return results


def plot_results(path: str, rows: list[dict]) -> None:
  """Forget vs retain test accuracy per method (bars), the table at a glance."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = list(dict.fromkeys(r["method"] for r in rows))
  f = [np.nanmean([_num(r["acc_forget"]) for r in rows if r["method"] == m]) for m in methods]
  t = [np.nanmean([_num(r["acc_retain"]) for r in rows if r["method"] == m]) for m in methods]
  x = np.arange(len(methods))
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(methods) + 2), 3.5))
  ax.bar(x - 0.2, f, 0.4, label="forget (D_f test)")
  ax.bar(x + 0.2, t, 0.4, label="retain (D_r test)")
  ax.set_xticks(x, methods, rotation=45, ha="right")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
