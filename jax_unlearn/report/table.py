"""The comparison table: results.json (schema below), results.md (paper style), results.csv, a plot.

results.json: {"config": {...},
  "rows": [{"method", "forget_classes", "seed", "acc_forget", "acc_retain", "mia_i", "mia_i_attack_acc",
            "mia_ii", "mia_ii_attack_acc", "mia_entropy", "ain", "kl_to_retrain", "wall_s",
            "ain_reached"}, ...],
  "summary": [{"method", "forget_classes", "n_rows", "stats": {key: {"n", "mean", "std", "ci95"}}}, ...],
  "summary_info": {...how the summary is computed...},
  "paired": [report.compare.paired(...) for each comparison of `report.stats.PAIRED_COMPARISONS`]}
`ain_reached` is False when the relearning hit its step cap: that AIN is then a lower bound, shown as
"≥ x" in results.md (None: not measured, or a row cached before the field existed).
"summary" holds, per (method, forget set) and per metric column (and wall_s), the statistics over the
seeds of `report.stats.column_stats`: n finite values, mean, std (ddof=1) and the 95 % Student-t
interval [lo, hi]; std and ci95 are null with one seed. "paired" holds the paired comparisons that
have both methods and at least two (forget set, seed) pairs (others are left out).
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from jax_unlearn import metrics
from jax_unlearn.io import atomic_write_json, atomic_write_text
from jax_unlearn.report import compare, stats

__all__ = ["metric_keys", "row_keys", "table_columns", "markdown_table", "write_results", "plot_results",
           "SUMMARY_INFO"]


def metric_keys() -> tuple[str, ...]:
  """The metric columns' keys, from the metric registry, in table order (ISPF Table 1 first)."""
  return metrics.result_keys()


def row_keys() -> tuple[str, ...]:
  """The keys of one result row (`row.json`): identification, every metric key, wall time."""
  return ("method", "forget_classes", "seed", *metric_keys(), "wall_s", "ain_reached")


def table_columns(rows: list[dict] | None = None) -> tuple[tuple[str, str, str], ...]:
  """(key, column title, format) of every registered metric, then the wall time. Given `rows`, a
  population metric's columns (the privacy audit's, `metrics.base.register_population`) only when a
  row has a value for them: they are opt-in and would be empty in every other table."""
  cols = []
  for s in metrics.specs():
    for c in s.columns:
      if not s.population or rows is None or any(np.isfinite(_num(r.get(c[0]))) for r in rows):
        cols.append(c)
  return (*cols, ("wall_s", "Time (s)", "{:.1f}"))


def _num(x):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return float("nan")
  return x


def _cell(values, fmt, lower_bound: bool = False):
  """Mean ± std (ddof=1) over the finite values; "(n of m)" when some seeds have no value, "≥ " when
  one of them is a lower bound (a capped AIN)."""
  vals = np.array([_num(v) for v in values], float)
  finite = vals[np.isfinite(vals)]
  if len(finite) == 0:
    return "n/a"
  text = (fmt.format(finite[0]) if len(finite) == 1
          else f"{fmt.format(finite.mean())} ± {fmt.format(finite.std(ddof=stats.STD_DDOF))}")
  if len(finite) < len(vals):
    text += f" ({len(finite)} of {len(vals)})"
  return ("≥ " + text) if lower_bound else text


def markdown_table(rows: list[dict], title: str = "", forget_mode: str = "class",
                   paired: list[dict] | None = None) -> str:
  """One line per (method, forget set); mean ± std (ddof=1) over seeds when there are several, then a
  second table of the 95 % t intervals and, given `paired` (`report.stats.paired_comparisons`), the
  paired comparisons. With `forget_mode='random'` the forget accuracy and KL are on the forget
  *training* samples (there are no forget test samples), and the headers say so."""
  random_mode = forget_mode == "random"
  cols = table_columns(rows)
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
            f"its step cap, a lower bound). KL: KL(unlearned ‖ Retrain) on {kl_on}. Attack acc: the "
            "attack's own balanced accuracy on held-out members/non-members (MIA-I: half of its pools, "
            "refitted per model; MIA-II: leave-one-shadow-out, one value per seed); near 50 the attack "
            "finds no membership signal, so its MIA value says nothing about forgetting.\n")
  if any(len(rs) > 1 for rs in groups.values()):
    summary = {(g["method"], tuple(g["forget_classes"])): g["stats"]
               for g in stats.summarize(rows, [c[0] for c in cols])}
    out.write("\n± is the sample standard deviation over seeds (ddof=1). 95 % intervals over seeds "
              "(Student-t: mean ± t(0.975, n−1) · std / √n; n/a with one seed):\n\n")
    out.write("| Method | Forget | Seeds | " + " | ".join(titles[c[0]] for c in cols) + " |\n")
    out.write("|---|---|---|" + "---|" * len(cols) + "\n")
    for (method, forget), rs in groups.items():
      cells = [stats.interval_cell(summary[(method, forget)][k], fmt) for k, _, fmt in cols]
      forget_s = ",".join(str(c) for c in forget) or "random"
      out.write(f"| {method} | {forget_s} | {len(rs)} | " + " | ".join(cells) + " |\n")
  if paired:
    out.write("\nPaired comparisons over the (forget set, seed) pairs (`report.compare.paired`, as "
              "`launch.compare`): mean difference A − B with its 95 % t interval, the paired t-test "
              "(two-sided) and the exact sign test.\n\n")
    out.write(stats.paired_markdown(paired, titles))
  return out.getvalue()


SUMMARY_INFO = {
    "groups": "rows of one (method, forget set): the seeds",
    "n": "finite values (a seed without the metric is not counted)",
    "std": f"sample standard deviation, ddof={stats.STD_DDOF}; null when n < 2",
    "ci95": "95 % Student-t interval mean ± t.ppf(0.975, n-1) * std / sqrt(n); null when n < 2",
    "paired": "report.compare.paired for report.stats.PAIRED_COMPARISONS with both methods present "
              "and >= 2 pairs; rows missing the metric are left out of that comparison"}


def write_results(workdir: str, config_dict: dict, rows: list[dict], title: str = "") -> dict:
  """Writes results.json (module docstring), results.md, results.csv and results.png; returns what
  results.json holds."""
  keys = row_keys()
  rows = [{k: r.get(k) for k in keys} for r in rows]
  for r in rows:
    for k in (*metric_keys(), "wall_s"):
      v = _num(r[k])
      r[k] = v if math.isfinite(v) else None
    r["ain_reached"] = None if r["ain_reached"] is None else bool(r["ain_reached"])
  results = {"config": config_dict, "rows": rows}
  # The paired comparisons read the rows exactly as launch.compare reads this results.json.
  paired = stats.paired_comparisons(compare.runs_from_results(results, "results.json"))
  results.update(summary=stats.summarize(rows, (*metric_keys(), "wall_s")), summary_info=SUMMARY_INFO,
                 paired=paired)
  atomic_write_json(os.path.join(workdir, "results.json"), results)
  mode = ((config_dict or {}).get("forget") or {}).get("mode", "class")
  atomic_write_text(os.path.join(workdir, "results.md"), markdown_table(rows, title, mode, paired))
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
