"""The comparison table: results.json (schema below), results.md (paper style), results.csv, a plot.

results.json: {"config": {...}, "rows": [{"method", "forget_classes", "seed", "acc_forget",
"acc_retain", "mia_i", "mia_ii", "mia_entropy", "ain", "kl_to_retrain", "wall_s", "ain_reached"}, ...]}
`ain_reached` is False when the relearning hit its step cap: that AIN is then a lower bound, shown as
"≥ x" in results.md (None: not measured, or a row cached before the field existed).
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from jax_unlearn import metrics
from jax_unlearn.io import atomic_write_json, atomic_write_text

__all__ = ["metric_keys", "row_keys", "table_columns", "markdown_table", "write_results", "plot_results"]


def metric_keys() -> tuple[str, ...]:
  """The metric columns' keys, from the metric registry, in table order (ISPF Table 1 first)."""
  return metrics.result_keys()


def row_keys() -> tuple[str, ...]:
  return ("method", "forget_classes", "seed", *metric_keys(), "wall_s", "ain_reached")


def table_columns() -> tuple:
  """(key, column title, format) of every registered metric, then the wall time."""
  return (*metrics.columns(), ("wall_s", "Time (s)", "{:.1f}"))


def _num(x):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return float("nan")
  return x


def _cell(values, fmt, lower_bound: bool = False):
  """Mean ± std over the finite values; "(n of m)" when some seeds have no value, "≥ " when one of
  them is a lower bound (a capped AIN)."""
  vals = np.array([_num(v) for v in values], float)
  finite = vals[np.isfinite(vals)]
  if len(finite) == 0:
    return "n/a"
  text = (fmt.format(finite[0]) if len(finite) == 1
          else f"{fmt.format(finite.mean())} ± {fmt.format(finite.std(ddof=0))}")
  if len(finite) < len(vals):
    text += f" ({len(finite)} of {len(vals)})"
  return ("≥ " + text) if lower_bound else text


def markdown_table(rows: list[dict], title: str = "", forget_mode: str = "class") -> str:
  """One line per (method, forget set); mean ± std over seeds when there are several. With
  `forget_mode='random'` the forget accuracy and KL are on the forget *training* samples (there are no
  forget test samples), and the headers say so."""
  random_mode = forget_mode == "random"
  cols = table_columns()
  titles = {k: t.replace("D_f test", "D_f train") if random_mode else t for k, t, _ in cols}
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], tuple(r["forget_classes"])), []).append(r)
  out = io.StringIO()
  if title:
    out.write(f"{title}\n\n")
  out.write("| Method | Forget | Seeds | " + " | ".join(titles[c[0]] for c in cols) + " |\n")
  out.write("|---|---|---|" + "---|" * len(cols) + "\n")
  for (method, forget), rs in groups.items():
    capped = any(r.get("ain_reached") is False for r in rs)
    cells = [_cell([r.get(k) for r in rs], fmt, lower_bound=(k == "ain" and capped))
             for k, _, fmt in cols]
    forget_s = ",".join(str(c) for c in forget) or "random"
    out.write(f"| {method} | {forget_s} | {len(rs)} | " + " | ".join(cells) + " |\n")
  acc = ("accuracy on the forget (D_f) training samples / the test split (D_r)" if random_mode else
         "accuracy on the test split's forget (D_f) / retain (D_r) samples")
  kl_on = "the forget training samples" if random_mode else "forget-class test images"
  out.write(f"\nAcc: {acc}. MIA-I: % of forget "
            "training samples called non-members (SalUn confidence attack; Retrain ≈ 100). MIA-II: F1 of "
            "a shadow-model attack; closest to Retrain is best. MIA-entropy: % of forget samples called "
            "members (SSD attack). AIN: relearn steps / Retrain's (1 is ideal; ≥: the relearning hit "
            f"its step cap, a lower bound). KL: KL(unlearned ‖ Retrain) on {kl_on}.\n")
  return out.getvalue()


def write_results(workdir: str, config_dict: dict, rows: list[dict], title: str = "") -> dict:
  keys = row_keys()
  rows = [{k: r.get(k) for k in keys} for r in rows]
  for r in rows:
    for k in (*metric_keys(), "wall_s"):
      v = _num(r[k])
      r[k] = v if math.isfinite(v) else None
    r["ain_reached"] = None if r["ain_reached"] is None else bool(r["ain_reached"])
  results = {"config": config_dict, "rows": rows}
  atomic_write_json(os.path.join(workdir, "results.json"), results)
  mode = ((config_dict or {}).get("forget") or {}).get("mode", "class")
  atomic_write_text(os.path.join(workdir, "results.md"), markdown_table(rows, title, mode))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=keys)
  w.writeheader()
  for r in rows:
    w.writerow({**r, "forget_classes": " ".join(str(c) for c in r["forget_classes"])})
  atomic_write_text(os.path.join(workdir, "results.csv"), buf.getvalue())
  plot_results(os.path.join(workdir, "results.png"), rows, title, mode)
  return results


def plot_results(path: str, rows: list[dict], title: str = "", forget_mode: str = "class") -> None:
  """Forget vs retain accuracy per method (bars, mean over seeds), the table at a glance."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = list(dict.fromkeys(r["method"] for r in rows))
  mean = lambda k, m: np.nanmean([_num(r[k]) for r in rows if r["method"] == m])  # noqa: E731
  f = [mean("acc_forget", m) for m in methods]
  t = [mean("acc_retain", m) for m in methods]
  x = np.arange(len(methods))
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(methods) + 3), 3.8))
  where = "train" if forget_mode == "random" else "test"
  ax.bar(x - 0.2, f, 0.4, label=f"forget (D_f {where})")
  ax.bar(x + 0.2, t, 0.4, label="retain (D_r test)")
  ax.set_xticks(x, methods, rotation=45, ha="right")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title or "forget vs retain accuracy per method", fontsize=10)
  # Outside the axes: inside, the legend covered the bars of the first methods.
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
