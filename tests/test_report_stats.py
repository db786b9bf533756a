"""Multi-seed statistics of results.json/md (report.stats) and the attacks' held-out accuracies."""
import json
import math

import numpy as np
import pytest
from scipy import stats as sstats

from jax_unlearn import io
from jax_unlearn.io import atomic_write_json
from jax_unlearn.metrics import mia_i, mia_ii
from jax_unlearn.report import compare, stats, table

CONFIG = {"dataset": {"name": "digits"}, "model": {"name": "allcnn"}, "forget": {"mode": "class"}}


def _rows(methods=("retrain", "gkt", "ispf", "finetune"), seeds=(0, 1, 2), mia_ii_missing=False):
  """Rows of a table with a reproducible per-(method, seed) spread."""
  rng = np.random.default_rng(7)
  rows = []
  for seed in seeds:
    for m in methods:
      rows.append({"method": m, "forget_classes": [3], "seed": seed, "acc_forget": rng.uniform(0, 3),
                   "acc_retain": rng.uniform(94, 99), "mia_i": 100.0, "mia_i_attack_acc": 50 + seed,
                   "mia_ii": None if mia_ii_missing else rng.uniform(20, 60), "mia_ii_attack_acc": 61.0,
                   "mia_entropy": float("nan"), "ain": 1.0,
                   "kl_to_retrain": 0.0 if m == "retrain" else rng.uniform(0.0, 0.2), "wall_s": 2.0})
  return rows


def _jsonable(x):
  """What `atomic_write_json` makes of `x` (tuples -> lists, NaN -> null), read back."""
  return json.loads(json.dumps(io._clean(x)))


def test_t_interval_equals_scipy_and_single_values_have_none():
  x = np.array([96.2, 97.5, 95.1, 98.0, 96.9])
  want = sstats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sstats.sem(x))
  np.testing.assert_allclose(stats.t_interval(x), want, rtol=1e-12)
  s = stats.column_stats([*x, None, float("nan")])     # missing seeds are not counted
  assert s["n"] == 5 and math.isclose(s["mean"], x.mean()) and math.isclose(s["std"], x.std(ddof=1))
  np.testing.assert_allclose(s["ci95"], want, rtol=1e-12)
  assert stats.t_interval([3.0]) is None
  assert stats.column_stats([3.0]) == {"n": 1, "mean": 3.0, "std": None, "ci95": None}
  assert stats.column_stats([None, float("nan")]) == {"n": 0, "mean": None, "std": None, "ci95": None}


def test_results_json_round_trips_with_summary(tmp_path):
  rows = _rows()
  res = table.write_results(str(tmp_path), CONFIG, rows, title="digits")
  got = json.loads((tmp_path / "results.json").read_text())
  assert set(got) == {"config", "rows", "summary", "summary_info", "paired"}
  assert got == _jsonable(res)
  for r in got["rows"]:
    assert tuple(r) == table.row_keys()
  # The summary is recomputed exactly from the rows read back, per (method, forget set).
  assert got["summary"] == _jsonable(stats.summarize(got["rows"], (*table.metric_keys(), "wall_s")))
  ispf = next(g for g in got["summary"] if g["method"] == "ispf")
  assert ispf["n_rows"] == 3 and set(ispf["stats"]) == {*table.metric_keys(), "wall_s"}
  acc = [r["acc_retain"] for r in got["rows"] if r["method"] == "ispf"]
  want = sstats.t.interval(0.95, 2, loc=np.mean(acc), scale=sstats.sem(acc))
  np.testing.assert_allclose(ispf["stats"]["acc_retain"]["ci95"], want, rtol=1e-12)
  assert ispf["stats"]["mia_entropy"] == {"n": 0, "mean": None, "std": None, "ci95": None}
  # Other readers of results.json still see one run per row.
  assert len(compare.load_runs([str(tmp_path)])) == len(rows)
  md = (tmp_path / "results.md").read_text()
  lo, hi = want
  assert f"[{lo:.2f}, {hi:.2f}]" in md and "ddof=1" in md
  sd = float(np.std(acc, ddof=1))
  assert f"{np.mean(acc):.2f} ± {sd:.2f}" in md


def test_paired_section_equals_compare_paired(tmp_path):
  table.write_results(str(tmp_path), CONFIG, _rows(), title="digits")
  got = json.loads((tmp_path / "results.json").read_text())
  runs = compare.load_runs([str(tmp_path / "results.json")])
  assert [(p["a"], p["b"], p["key"]) for p in got["paired"]] == list(stats.PAIRED_COMPARISONS)
  for p in got["paired"]:
    want = compare.paired(runs, p["a"], p["b"], p["key"])
    assert p == _jsonable(want)
    assert p["overall"]["n"] == 3
  md = (tmp_path / "results.md").read_text()
  assert "Paired comparisons" in md
  g = next(p for p in got["paired"] if (p["a"], p["b"], p["key"]) == ("ispf", "gkt", "acc_retain"))
  lo, hi = g["overall"]["ci95"]
  assert f"| ispf − gkt | Acc D_r test (%) | 3 | {g['overall']['mean']:+.2f} |" in md
  assert f"[{lo:+.2f}, {hi:+.2f}]" in md


def test_paired_skips_absent_methods_missing_metrics_and_single_pairs(tmp_path):
  # No GKT: only the ISPF vs Retrain comparisons; MIA-II not computed: not compared.
  table.write_results(str(tmp_path), CONFIG, _rows(("retrain", "ispf"), mia_ii_missing=True))
  got = json.loads((tmp_path / "results.json").read_text())
  assert [(p["a"], p["b"], p["key"]) for p in got["paired"]] == [
      ("ispf", "retrain", "acc_retain"), ("ispf", "retrain", "kl_to_retrain")]
  # One seed: no pairs to compare, no interval, and results.md as before (no extra sections).
  res = table.write_results(str(tmp_path), CONFIG, _rows(seeds=(0,)))
  assert res["paired"] == []
  assert all(s["ci95"] is None and s["std"] is None for g in res["summary"] for s in g["stats"].values())
  md = (tmp_path / "results.md").read_text()
  assert "95 % intervals" not in md and "Paired comparisons" not in md and " ± " not in md


def test_mia_i_attack_accuracy_chance_without_signal_and_high_with_one():
  rng = np.random.default_rng(0)
  same = lambda n: 1.0 - rng.beta(0.5, 20.0, n)  # noqa: E731  (confidences piled up near 1)
  acc = mia_i.mia_i_attack_accuracy(same(1500), same(1500), seed=0)
  assert abs(acc - 50.0) < 6.0, acc
  planted = mia_i.mia_i_attack_accuracy(rng.uniform(0.9, 1.0, 600), rng.uniform(0.0, 0.8, 600), seed=0)
  assert planted > 98.0, planted
  assert math.isnan(mia_i.mia_i_attack_accuracy([0.9], [0.1, 0.2]))
  # Seeded: the same split, the same number.
  a, b = same(400), same(400)
  assert mia_i.mia_i_attack_accuracy(a, b, seed=3) == mia_i.mia_i_attack_accuracy(a, b, seed=3)
  assert mia_i.balanced_accuracy([1, 1, 0, 1], [0, 0]) == pytest.approx(87.5)


def _shadow_probs(rng, in_mask, signal: bool, k: int = 10):
  """[S, N, K] softmax vectors; with `signal` the "in" rows are confident (top-1 ~0.999)."""
  s, n = in_mask.shape
  top = rng.uniform(0.3, 0.9, (s, n))
  if signal:
    top = np.where(in_mask, rng.uniform(0.995, 0.9999, (s, n)), rng.uniform(0.3, 0.9, (s, n)))
  rest = rng.dirichlet(np.ones(k - 1), (s, n)) * (1.0 - top)[..., None]
  return np.concatenate([top[..., None], rest], axis=-1).astype(np.float32)


def test_mia_ii_heldout_accuracy_chance_without_signal_and_high_with_one():
  rng = np.random.default_rng(1)
  in_mask = mia_ii.shadow_in_masks(1200, 3, seed=0)
  blind = mia_ii.heldout_attack_accuracy(_shadow_probs(rng, in_mask, False), in_mask, topk=10, seed=0)
  assert abs(blind - 50.0) < 6.0, blind
  probs = _shadow_probs(rng, in_mask, True)
  assert mia_ii.heldout_attack_accuracy(probs, in_mask, topk=10, seed=0) > 98.0
  assert math.isnan(mia_ii.heldout_attack_accuracy(probs[:1], in_mask[:1], topk=10))
  # A single held-out shadow (the last) is the same as fitting on the others by hand.
  last = mia_ii.heldout_attack_accuracy(probs, in_mask, topk=10, seed=0, max_heldout=1)
  clf, _ = mia_ii.fit_attack_from_probs(probs[:2][in_mask[:2]], probs[:2][~in_mask[:2]], topk=10, seed=0)
  pred = clf.predict(np.asarray(mia_ii.attack_features(probs[2], 10), np.float64))
  want = 50.0 * (np.mean(pred[in_mask[2]] == 1) + np.mean(pred[~in_mask[2]] == 0))
  assert last == pytest.approx(want)


def test_atomic_json_of_the_summary_is_valid_json(tmp_path):
  """NaN statistics of compare.paired (sd of one pair, p of zero spread) are written as null."""
  runs = [{"method": m, "forget_classes": (3,), "seed": s, "acc_retain": 90.0 + (m == "ispf"),
           "source": f"x#{i}"} for i, (m, s) in enumerate([(m, s) for m in ("ispf", "gkt") for s in (0, 1)])]
  res = stats.paired_comparisons(runs, (("ispf", "gkt", "acc_retain"),))
  assert res[0]["overall"]["sd"] == 0.0 and math.isnan(res[0]["overall"]["t"])
  atomic_write_json(str(tmp_path / "p.json"), res)
  assert json.loads((tmp_path / "p.json").read_text())[0]["overall"]["t"] is None
