"""Multi-seed statistics of the comparison table: per-column summaries and the paired comparisons.

`summarize(rows, keys)` groups the rows by (method, forget set), as results.md does, and gives every
metric column n (finite values), mean, std (sample standard deviation, ddof=1) and the 95 % Student-t
interval mean ± t_{0.975, n-1} · std / sqrt(n). With n = 1 the std and the interval are None: one seed
has no spread to estimate, and a made-up interval would read as a measured one.

`paired_comparisons(runs)` runs `report.compare.paired` (the statistics of `launch.compare`) for every
(A, B, key) of `PAIRED_COMPARISONS` whose two methods are in the rows and that has at least two pairs
(seeds or forget sets); the rest are skipped silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from jax_unlearn.errors import DataError
from jax_unlearn.report import compare

__all__ = ["PAIRED_COMPARISONS", "STD_DDOF", "t_interval", "column_stats", "summarize",
           "paired_comparisons", "interval_cell", "paired_markdown"]

# (A, B, key): A − B over the (forget set, seed) pairs. ISPF against its closest data-free rival (GKT)
# and against the gold standard (Retrain), on retain accuracy, MIA-II and the KL to Retrain.
PAIRED_COMPARISONS: tuple[tuple[str, str, str], ...] = tuple(
    (a, b, key) for a, b in (("ispf", "gkt"), ("ispf", "retrain"))
    for key in ("acc_retain", "mia_ii", "kl_to_retrain"))

STD_DDOF = 1  # the std of results.json's summary and of results.md's "mean ± std" cells


def t_interval(values: Iterable[float | None], confidence: float = 0.95) -> tuple[float, float] | None:
  """The Student-t interval mean ± t.ppf((1 + confidence) / 2, n - 1) · std(ddof=1) / sqrt(n) of the
  finite `values` (equal to `scipy.stats.t.interval(confidence, n - 1, mean, sem)`); None when fewer
  than two values are finite."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  v = v[np.isfinite(v)]
  n = len(v)
  if n < 2:
    return None
  from scipy import stats
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(v.std(ddof=1)) / math.sqrt(n)
  mean = float(v.mean())
  return (mean - half, mean + half)


def column_stats(values: Iterable[float | None]) -> dict:
  """{"n", "mean", "std", "ci95"} of the finite `values` (None/NaN are left out and not counted);
  std has ddof=1; std and ci95 ([lo, hi]) are None when n < 2, mean is None when n = 0."""
  v = np.asarray([float(x) for x in values if x is not None], np.float64)
  v = v[np.isfinite(v)]
  n = len(v)
  ci = t_interval(v)
  return {"n": n, "mean": float(v.mean()) if n else None,
          "std": float(v.std(ddof=STD_DDOF)) if n > 1 else None,
          "ci95": None if ci is None else [ci[0], ci[1]]}


def summarize(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
  """One entry per (method, forget set), in first-appearance order: {"method", "forget_classes",
  "n_rows", "stats": {key: column_stats over that group's rows (the seeds)}}."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], tuple(r.get("forget_classes") or ())), []).append(r)
  return [{"method": m, "forget_classes": list(fc), "n_rows": len(rs),
           "stats": {k: column_stats([_num(r.get(k)) for r in rs]) for k in keys}}
          for (m, fc), rs in groups.items()]


def _num(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return None


def paired_comparisons(runs: Sequence[dict], comparisons: Sequence[tuple[str, str, str]] = PAIRED_COMPARISONS,
                       min_pairs: int = 2) -> list[dict]:
  """`compare.paired(runs, a, b, key)` for each (a, b, key) of `comparisons` with both methods in
  `runs` (records as `compare.load_runs` returns them) and at least `min_pairs` pairs. Runs whose
  `key` is missing (None/NaN: the metric was not computed) are left out of that comparison."""
  present = {r.get("method") for r in runs}
  out = []
  for a, b, key in comparisons:
    if a not in present or b not in present:
      continue
    usable = [r for r in runs if r.get("method") in (a, b) and _num(r.get(key)) is not None
              and math.isfinite(_num(r.get(key)))]
    try:
      res = compare.paired(usable, a, b, key)
    except DataError:  # no finite values or no pair for this key
      continue
    if res["overall"]["n"] >= min_pairs:
      out.append(res)
  return out


def interval_cell(stats: dict, fmt: str) -> str:
  """"[lo, hi]" of one summary entry in the column's format; "n/a" without an interval."""
  ci = stats.get("ci95")
  return "n/a" if ci is None else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _f(x, f: str) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f.format(x)


def paired_markdown(results: Sequence[dict], names: dict | None = None) -> str:
  """One line per comparison (over all its pairs): n, mean difference, sd, 95 % t interval,
  wins/ties/losses, the paired t-test's two-sided p and the exact sign test's p."""
  names = names or {}
  lines = ["| A − B | Metric | n | mean A − B | sd | 95 % CI | wins/ties/losses | t-test p | sign test p |",
           "|---|---|---|---|---|---|---|---|---|"]
  for res in results:
    s, f = res["overall"], "{:+.4f}" if res["key"] == "kl_to_retrain" else "{:+.2f}"
    lo, hi = s["ci95"]
    lines.append(f"| {res['a']} − {res['b']} | {names.get(res['key'], res['key'])} | {s['n']} | "
                 f"{_f(s['mean'], f)} | {_f(s['sd'], f.replace('+', ''))} | [{_f(lo, f)}, {_f(hi, f)}] | "
                 f"{s['wins']}/{s['ties']}/{s['losses']} | {_f(s['p_two_sided'], '{:.2g}')} | "
                 f"{_f(s['sign_p_two_sided'], '{:.2g}')} |")
  return "\n".join(lines) + "\n"
