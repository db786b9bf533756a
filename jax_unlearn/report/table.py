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

from jax_unlearn.io import atomic_write_json, atomic_write_text

METRIC_KEYS = ("acc_forget", "acc_retain", "mia_i", "mia_ii", "mia_entropy", "ain", "kl_to_retrain")
ROW_KEYS = ("method", "forget_classes", "seed", *METRIC_KEYS, "wall_s", "ain_reached")
_NUMERIC = (*METRIC_KEYS, "wall_s")
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
  titles = {k: t.replace("D_f test", "D_f train") if random_mode else t for k, t, _ in COLUMNS}
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], tuple(r["forget_classes"])), []).append(r)
  out = io.StringIO()
  if title:
    out.write(f"{title}\n\n")
  out.write("| Method | Forget | Seeds | " + " | ".join(titles[c[0]] for c in COLUMNS) + " |\n")
  out.write("|---|---|---|" + "---|" * len(COLUMNS) + "\n")
  for (method, forget), rs in groups.items():
    capped = any(r.get("ain_reached") is False for r in rs)
    cells = [_cell([r.get(k) for r in rs], fmt, lower_bound=(k == "ain" and capped))
             for k, _, fmt in COLUMNS]
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
  rows = [{k: r.get(k) for k in ROW_KEYS} for r in rows]
  for r in rows:
    for k in _NUMERIC:
      v = _num(r[k])
      r[k] = v if math.isfinite(v) else None
    r["ain_reached"] = None if r["ain_reached"] is None else bool(r["ain_reached"])
  results = {"config": config_dict, "rows": rows}
  atomic_write_json(os.path.join(workdir, "results.json"), results)
  mode = ((config_dict or {}).get("forget") or {}).get("mode", "class")
  atomic_write_text(os.path.join(workdir, "results.md"), markdown_table(rows, title, mode))
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
