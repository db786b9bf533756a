"""launch.compare / report.compare: paired comparisons of two methods over seeds."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jax_unlearn.errors import DataError
from jax_unlearn.report import compare, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ISPF and GKT acc_retain for (forget class, seed); the differences are +1, +2, -0.5, +3 / +1 (class 3).
_RUNS = {("ispf", 1, 0): 98.0, ("gkt", 1, 0): 97.0, ("ispf", 1, 1): 97.0, ("gkt", 1, 1): 95.0,
         ("ispf", 1, 2): 96.0, ("gkt", 1, 2): 96.5, ("ispf", 3, 0): 99.0, ("gkt", 3, 0): 96.0,
         ("ispf", 3, 1): 95.0, ("gkt", 3, 1): 94.0}


def _write_metrics(root, method, forget, seed, acc_retain, dataset="digits"):
  d = root / f"c{forget}_s{seed}_{dataset}" / method
  d.mkdir(parents=True)
  (d / "metrics.json").write_text(json.dumps({
      "method": method, "dataset": dataset, "model": "allcnn", "forget_mode": "class",
      "forget_classes": [forget], "seed": seed, "acc_forget": 0.0, "acc_retain": acc_retain}))


def _tree(tmp_path):
  for (m, c, s), v in _RUNS.items():
    _write_metrics(tmp_path, m, c, s, v)
  return tmp_path


def test_paired_statistics_by_hand(tmp_path):
  res = compare.paired(compare.load_runs([str(_tree(tmp_path))]), "ispf", "gkt")
  assert [(p["forget_classes"], p["seed"], p["diff"]) for p in res["pairs"]] == [
      ((1,), 0, 1.0), ((1,), 1, 2.0), ((1,), 2, -0.5), ((3,), 0, 3.0), ((3,), 1, 1.0)]
  d = np.array([1.0, 2.0, -0.5, 3.0, 1.0])
  s = res["overall"]
  sd = float(np.sqrt(((d - d.mean()) ** 2).sum() / 4))
  assert s["n"] == 5 and math.isclose(s["mean"], 1.3) and math.isclose(s["sd"], sd)
  half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
  np.testing.assert_allclose(s["ci95"], (1.3 - half, 1.3 + half), rtol=1e-9)
  t = 1.3 / (sd / math.sqrt(5))
  assert math.isclose(s["t"], t)
  from scipy import stats
  assert math.isclose(s["p_two_sided"], stats.ttest_rel(d, np.zeros(5)).pvalue)
  assert math.isclose(s["p_greater"], s["p_two_sided"] / 2)
  assert (s["wins"], s["ties"], s["losses"]) == (4, 0, 1)
  assert math.isclose(s["sign_p_two_sided"], 12 / 32)  # P(<=1 or >=4 of 5 fair coins)
  assert res["by_forget"]["3"]["n"] == 2 and math.isclose(res["by_forget"]["3"]["mean"], 2.0)
  md = compare.markdown(res)
  assert "| 1 | 2 | 96.00 | 96.50 | -0.50 |" in md and "| all | 5 | +1.30 |" in md


def test_pairs_need_every_identifying_field_equal(tmp_path):
  _tree(tmp_path)
  _write_metrics(tmp_path, "ispf", 8, 0, 90.0)                 # no gkt partner
  _write_metrics(tmp_path, "gkt", 1, 0, 50.0, dataset="svhn")  # another data set: no partner either
  res = compare.paired(compare.load_runs([str(tmp_path)]), "ispf", "gkt")
  assert res["overall"]["n"] == 5
  assert len(res["unpaired"]) == 2 and "Runs without a partner" in compare.markdown(res)


def test_reads_experiment_results_and_single_pairs(tmp_path):
  rows = [{"method": m, "forget_classes": [3], "seed": 0, "acc_forget": 0.0, "acc_retain": v}
          for m, v in (("gkt", 97.0), ("ispf", 98.0), ("retrain", 99.0))]
  table.write_results(str(tmp_path), {"dataset": {"name": "digits"}, "model": {"name": "allcnn"},
                                      "forget": {"mode": "class"}}, rows)
  res = compare.paired(compare.load_runs([str(tmp_path / "results.json")]), "ispf", "gkt")
  assert res["overall"]["n"] == 1 and res["overall"]["mean"] == 1.0
  assert math.isnan(res["overall"]["sd"]) and "n/a" in compare.markdown(res)  # no spread from one pair


def test_clear_errors(tmp_path):
  root = _tree(tmp_path)
  runs = compare.load_runs([str(root)])
  with pytest.raises(DataError, match="no 'pd' runs found"):
    compare.paired(runs, "ispf", "pd")
  with pytest.raises(DataError, match="pick a --key"):
    compare.paired(runs, "ispf", "gkt", key="mia_i")
  with pytest.raises(DataError, match="does not exist"):
    compare.load_runs([str(root / "nope")])
  _write_metrics(root / "again", "ispf", 1, 0, 10.0)
  with pytest.raises(DataError, match="two ispf runs"):
    compare.paired(compare.load_runs([str(root)]), "ispf", "gkt")


def test_launcher_writes_json_and_fails_cleanly(tmp_path):
  root = _tree(tmp_path / "runs")
  out = tmp_path / "cmp.json"
  r = subprocess.run([sys.executable, "-m", "launch.compare", "--a=ispf", "--b=gkt", f"--runs={root}",
                      f"--out={out}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "| all | 5 | +1.30 |" in r.stdout
  assert json.loads(out.read_text())["overall"]["wins"] == 4 and (tmp_path / "cmp.md").exists()
  r = subprocess.run([sys.executable, "-m", "launch.compare", "--a=ispf", "--b=ispf", f"--runs={root}"],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --a and --b")
