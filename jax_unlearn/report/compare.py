"""Paired comparison of two methods over matched runs (same data set, model, forget set and seed).

One run per seed decides "is method A at least as good as method B?" by seed noise when the gap is a
few test images (ISPF vs GKT on digits: BUILD_NOTES, issue 3). This pairs the runs of A and B that
differ only in the method, and reports the per-pair differences, their mean with a 95 % t interval,
the paired t-test and the exact sign test (`scipy.stats`).

Runs are read from `metrics.json` files (`launch.unlearn`, `launch.sweep`) and `results.json` tables
(`launch.experiment`), found recursively under the given paths:
  python -m launch.compare --a=ispf --b=gkt --runs=W1,W2 [--key=acc_retain] [--out=compare.json]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from jax_unlearn.errors import ConfigError, DataError

__all__ = ["PAIR_KEYS", "runs_from_results", "load_runs", "paired", "markdown"]

# The fields that identify a run apart from its method: runs of A and B pair when these are equal.
PAIR_KEYS = ("dataset", "model", "forget_mode", "forget_classes", "forget_samples", "seed")


def _record(raw: dict, source: str, defaults: dict | None = None) -> dict:
  r = {**(defaults or {}), **raw, "source": source}
  r["forget_classes"] = tuple(int(c) for c in (r.get("forget_classes") or ()))
  return r


def runs_from_results(d: dict, path: str) -> list[dict]:
  """The runs of one results.json table `d` (one per row; data set, model and forget mode from its
  config), with sources "<path>#<row index>"."""
  cfg = d.get("config") or {}
  defaults = {"dataset": (cfg.get("dataset") or {}).get("name"),
              "model": (cfg.get("model") or {}).get("name"),
              "forget_mode": (cfg.get("forget") or {}).get("mode")}
  if defaults["forget_mode"] == "random":
    defaults["forget_samples"] = (cfg.get("forget") or {}).get("num_samples")
  return [_record(row, f"{path}#{i}", defaults) for i, row in enumerate(d.get("rows", ()))]


def load_runs(paths: Iterable[str]) -> list[dict]:
  """Every run recorded under `paths` (files or directories, searched recursively).

  `metrics.json` is one run; `results.json` holds one run per row. `sweep_metrics.json` repeats the
  per-run `metrics.json` files of its sweep, so it is skipped.
  """
  files = []
  for p in paths:
    if os.path.isfile(p):
      files.append(p)
    elif os.path.isdir(p):
      for root, dirs, names in os.walk(p):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n in ("metrics.json", "results.json")]
    else:
      raise DataError(f"{p!r} does not exist; pass workdirs of launch.unlearn/sweep/experiment runs.")
  runs = []
  for f in files:
    try:
      with open(f) as fh:
        d = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
      raise DataError(f"cannot read {f}: {e}; remove the file or re-run the job that wrote it.") from e
    if isinstance(d, dict) and "rows" in d:
      runs += runs_from_results(d, f)
    elif isinstance(d, dict) and "method" in d:
      runs.append(_record(d, f))
  if not runs:
    raise DataError(f"no metrics.json or results.json under {list(paths)}; pass the runs' workdirs.")
  return runs


def _pair_id(r: dict) -> tuple:
  return tuple(r.get(k) for k in PAIR_KEYS)


def _by_pair(runs: Sequence[dict], method: str) -> dict[tuple, dict]:
  out: dict[tuple, dict] = {}
  for r in runs:
    if r.get("method") != method:
      continue
    pid = _pair_id(r)
    if pid in out:
      raise DataError(f"two {method} runs for {dict(zip(PAIR_KEYS, pid))}: {out[pid]['source']} and "
                      f"{r['source']}; pass only one of their workdirs.")
    out[pid] = r
  return out


def _stats(d: np.ndarray) -> dict:
  from scipy import stats
  n = len(d)
  wins, ties, losses = int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())
  out = {"n": n, "mean": float(d.mean()), "wins": wins, "ties": ties, "losses": losses,
         "sd": math.nan, "ci95": (math.nan, math.nan), "t": math.nan, "p_two_sided": math.nan,
         "p_greater": math.nan, "sign_p_two_sided": math.nan}
  if wins + losses:
    out["sign_p_two_sided"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue)
  if n >= 2:
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, ci95=(out["mean"] - half, out["mean"] + half))
    if sd > 0:
      t = out["mean"] / (sd / math.sqrt(n))
      out.update(t=t, p_two_sided=float(2 * stats.t.sf(abs(t), n - 1)),
                 p_greater=float(stats.t.sf(t, n - 1)))
  return out


def paired(runs: Sequence[dict], a: str, b: str, key: str = "acc_retain") -> dict:
  """Pairs the runs of methods `a` and `b` and summarises key(a) − key(b).

  Returns {"a", "b", "key", "pairs": [{"forget_classes", "seed", ..., "a", "b", "diff"}],
  "unpaired": [...sources...], "overall": stats, "by_forget": {"1": stats, ...}} where stats holds
  n, mean, sd, ci95 (t interval), t, p_two_sided / p_greater (paired t-test of mean diff = 0 against
  != 0 / > 0) and wins/ties/losses with the exact sign test's two-sided p.
  """
  if a == b:
    raise ConfigError(f"--a and --b are both {a!r}; compare two different methods.")
  ra, rb = _by_pair(runs, a), _by_pair(runs, b)
  methods = sorted({str(r.get("method")) for r in runs})
  for m, r in ((a, ra), (b, rb)):
    if not r:
      raise DataError(f"no {m!r} runs found; the runs hold methods {methods}.")
  common = sorted(set(ra) & set(rb), key=lambda p: tuple(str(x) for x in p))
  if not common:
    raise DataError(f"no {a} run matches a {b} run on {PAIR_KEYS}; run both methods with the same "
                    "data set, model, forget set and seed.")
  common_set, pairs = set(common), []
  for pid in common:
    va, vb = ra[pid].get(key), rb[pid].get(key)
    if va is None or vb is None or not all(isinstance(v, (int, float)) for v in (va, vb)):
      raise DataError(f"{key!r} is missing or not a number in {ra[pid]['source']} or "
                      f"{rb[pid]['source']}; pick a --key both runs record (e.g. acc_retain).")
    pairs.append({**dict(zip(PAIR_KEYS, pid)), "a": float(va), "b": float(vb),
                  "diff": float(va) - float(vb)})
  unpaired = sorted(r["source"] for m in (ra, rb) for pid, r in m.items() if pid not in common_set)
  by_forget: dict[str, dict] = {}
  for fc in sorted({p["forget_classes"] for p in pairs}):
    d = np.array([p["diff"] for p in pairs if p["forget_classes"] == fc])
    by_forget[",".join(map(str, fc)) or "random"] = _stats(d)
  return {"a": a, "b": b, "key": key, "pairs": pairs, "unpaired": unpaired,
          "overall": _stats(np.array([p["diff"] for p in pairs])), "by_forget": by_forget}


def _fmt(x: float, f: str = "{:+.2f}") -> str:
  return "n/a" if x is None or not math.isfinite(x) else f.format(x)


def _p(x: float) -> str:
  return "n/a" if not math.isfinite(x) else f"{x:.2g}"


def markdown(result: dict) -> str:
  """The pairs, then one summary line per forget set and one over all pairs."""
  a, b, key = result["a"], result["b"], result["key"]
  lines = [f"Paired comparison of `{key}`: {a} − {b}", "",
           "| Forget | Seed | " + f"{a} | {b} | {a} − {b} |", "|---|---|---|---|---|"]
  for p in result["pairs"]:
    fc = ",".join(map(str, p["forget_classes"])) or "random"
    lines.append(f"| {fc} | {p['seed']} | {p['a']:.2f} | {p['b']:.2f} | {p['diff']:+.2f} |")
  lines += ["", f"| Forget | n | mean {a} − {b} | sd | 95 % CI | wins/ties/losses | t-test p (two-sided; "
            f"{a} > {b}) | sign test p |", "|---|---|---|---|---|---|---|---|"]
  for name, s in [*result["by_forget"].items(), ("all", result["overall"])]:
    lo, hi = s["ci95"]
    lines.append(f"| {name} | {s['n']} | {_fmt(s['mean'])} | {_fmt(s['sd'], '{:.2f}')} | "
                 f"[{_fmt(lo)}, {_fmt(hi)}] | {s['wins']}/{s['ties']}/{s['losses']} | "
                 f"{_p(s['p_two_sided'])}; {_p(s['p_greater'])} | {_p(s['sign_p_two_sided'])} |")
  if result["unpaired"]:
    lines += ["", f"Runs without a partner (left out): {', '.join(result['unpaired'])}"]
  return "\n".join(lines) + "\n"
