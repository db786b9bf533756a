"""Tests for the per-example privacy audit maths: LiRA, U-LiRA, the NeurIPS'23 challenge's forgetting
quality, and the log-log ROC plot. Closed forms, planted signals, a stored reference run."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from jax_unlearn.errors import DataError
from jax_unlearn.metrics import forget_quality as fq
from jax_unlearn.metrics import lira, ulira
from jax_unlearn.report import privacy_plots

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "forget_quality_reference.npz")


# ----------------------------------------------------------------------------------------- LiRA
def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_lira_score_is_the_float64_logit_of_the_true_class_probability():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 5)
  p = _softmax64(logits)[:, np.arange(5), labels]
  phi = lira.lira_score(logits, labels)
  assert phi.dtype == np.float64 and phi.shape == (3, 5)
  np.testing.assert_allclose(phi, np.log(p) - np.log1p(-p), rtol=1e-12, atol=1e-12)


def test_lira_score_is_exact_and_finite_for_extreme_logits():
  logits = np.array([[1e4, 0.0, 0.0], [0.0, 1e4, -1e4], [-1e4, 0.0, 0.0], [3e4, -3e4, 1e4]])
  labels = np.array([0, 0, 0, 2])
  phi = lira.lira_score(logits, labels)
  assert np.all(np.isfinite(phi))
  # z_y - log sum_{j != y} exp(z_j), by hand: the reference's log(p + 1e-45) would saturate at ~103.
  np.testing.assert_allclose(phi, [1e4 - np.log(2.0), -1e4, -1e4 - np.log(2.0), 1e4 - 3e4], rtol=1e-12)
  # Two classes: phi = z_y - z_other exactly, also from float32 logits.
  two = np.array([[5e3, -5e3]], np.float32)
  np.testing.assert_array_equal(lira.lira_score(two, np.array([1])), [-1e4])


def test_lira_score_keeps_the_augmentation_axis():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 6, 3, 5))  # [models, examples, queries, classes]
  labels = rng.integers(0, 5, 6)
  phi = lira.lira_score(logits, labels, augmented=True)
  assert phi.shape == (2, 6, 3)
  for a in range(3):
    np.testing.assert_allclose(phi[:, :, a], lira.lira_score(logits[:, :, a], labels), rtol=1e-14)


@pytest.mark.parametrize("logits,labels", [
    (np.array([[0.0, np.nan]]), np.array([0])),     # NaN logit
    (np.zeros((2, 3)), np.array([0, 3])),          # label out of range
    (np.zeros((2, 1)), np.array([0, 0])),          # one class
    (np.zeros((2, 3)), np.array([0, 1, 2])),       # labels do not match
])
def test_lira_score_rejects_bad_input(logits, labels):
  with pytest.raises(DataError):
    lira.lira_score(logits, labels)


def test_membership_masks_put_each_example_in_exactly_half_the_models():
  keep = lira.membership_masks(16, 200, np.random.default_rng(0))
  assert keep.dtype == bool and keep.shape == (16, 200)
  np.testing.assert_array_equal(keep.sum(0), 8)
  assert 0.3 < keep.sum(1).min() / 200 and keep.sum(1).max() / 200 < 0.7  # rows are random halves
  np.testing.assert_array_equal(keep, lira.membership_masks(16, 200, np.random.default_rng(0)))


def _population(shift: float, seed: int = 0, m: int = 32, n: int = 300, queries: int = 0):
  """phi of n examples under m models: a per-example mean and spread, members shifted by shift*sd."""
  rng = np.random.default_rng(seed)
  keep = lira.membership_masks(m, n, rng)
  mu, sd = rng.normal(0, 2, n), rng.uniform(0.5, 1.5, n)
  shape = (m, n) if not queries else (m, n, queries)
  noise = rng.normal(size=shape)
  k = keep if not queries else keep[..., None]
  sdq = sd if not queries else sd[:, None]
  muq = mu if not queries else mu[:, None]
  return muq + sdq * (noise + shift * k), keep


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("global_variance", [False, True])
def test_lira_finds_a_planted_membership_signal_and_nothing_in_noise(online, global_variance):
  scores, keep = _population(shift=3.0)
  stat, member = lira.leave_one_out_lira(scores, keep, online=online, global_variance=global_variance)
  assert stat.shape == member.shape == (32, 300)
  assert lira.roc_metrics(stat, member)["auc"] > 0.95
  noise, keep0 = _population(shift=0.0, seed=1)
  stat0, member0 = lira.leave_one_out_lira(noise, keep0, online=online, global_variance=global_variance)
  assert abs(lira.roc_metrics(stat0, member0)["auc"] - 0.5) < 0.05


def test_lira_with_two_queries_and_the_two_sided_offline_variant():
  scores, keep = _population(shift=2.0, queries=2)
  for kw in ({"online": True}, {"online": False}, {"online": False, "one_sided": False}):
    stat, member = lira.leave_one_out_lira(scores, keep, target_models=[0, 5], **kw)
    assert stat.shape == (2, 300)
    assert lira.roc_metrics(stat, member)["auc"] > 0.85, kw


def test_online_lira_by_hand_and_offline_is_one_sided():
  shadow = np.array([[0.0], [1.0], [5.0], [10.0], [12.0], [20.0]])
  keep = np.array([[False], [False], [False], [True], [True], [True]])
  # As plot.py: location = median (out 1, in 12; the means are 2 and 14), scale = std with ddof 0.
  s_out, s_in = np.sqrt(14 / 3), np.sqrt(56 / 3)
  target = np.array([11.0])
  want = (-0.5 * (1 / s_in) ** 2 - np.log(s_in)) - (-0.5 * (10 / s_out) ** 2 - np.log(s_out))
  got = lira.online_lira(target, shadow, shadow, in_mask=keep, out_mask=~keep)
  np.testing.assert_allclose(got, [want], rtol=1e-12)
  np.testing.assert_allclose(lira.offline_lira(np.array([3.0]), shadow, out_mask=~keep),
                             [np.log(0.5 * math.erfc(-(2 / s_out) / math.sqrt(2)))], rtol=1e-12)
  # One-sided: a score far *below* the out-population is no evidence of membership.
  low, high = (lira.offline_lira(np.array([v]), shadow, out_mask=~keep) for v in (-7.0, 9.0))
  assert low < np.log(0.5) < high
  two_sided_low = lira.offline_lira(np.array([-7.0]), shadow, out_mask=~keep, one_sided=False)
  two_sided_high = lira.offline_lira(np.array([9.0]), shadow, out_mask=~keep, one_sided=False)
  np.testing.assert_allclose(two_sided_low, two_sided_high)


def test_fit_gaussians_needs_enough_shadows_per_example():
  scores = np.zeros((3, 2))
  mask = np.array([[True, True], [True, False], [False, False]])
  with pytest.raises(DataError, match="fewer than 2"):
    lira.fit_gaussians(scores, mask)
  with pytest.raises(DataError, match="NaN"):
    lira.fit_gaussians(np.full((3, 2), np.nan))


def test_roc_metrics_on_hand_computed_cases():
  separated = lira.roc_metrics([3.0, 4.0, 5.0, 0.0, 1.0, 2.0], [1, 1, 1, 0, 0, 0])
  assert separated["auc"] == 1.0 and separated["balanced_accuracy"] == 1.0
  assert separated["tpr_at_01pct_fpr"] == 1.0 and separated["tpr_at_1pct_fpr"] == 1.0
  reversed_ = lira.roc_metrics([0.0, 1.0, 3.0, 4.0], [True, True, False, False])
  assert reversed_["auc"] == 0.0 and reversed_["balanced_accuracy"] == 0.5
  assert lira.roc_metrics(np.zeros(6), [1, 0, 1, 0, 1, 0])["auc"] == 0.5  # all tied

  # 1000 non-members at 0..999; members: 10 above all, 10 just below the top non-member, 80 below all.
  non = np.arange(1000.0)
  mem = np.concatenate([np.full(10, 2000.0), np.full(10, 998.5), np.full(80, -1.0)])
  r = lira.roc_metrics(np.concatenate([mem, non]), np.r_[np.ones(100, bool), np.zeros(1000, bool)])
  assert r["tpr_at_01pct_fpr"] == pytest.approx(0.1)   # FPR = 1/1000 is not < 0.1 %: as plot.py
  assert r["tpr_at_1pct_fpr"] == pytest.approx(0.2)
  assert r["auc"] == pytest.approx((10 * 1000 + 10 * 999) / (100 * 1000))
  assert r["balanced_accuracy"] == pytest.approx(1 - (0.001 + 0.8) / 2)
  assert r["fpr"][0] == 0.0 and r["tpr"][-1] == 1.0


@pytest.mark.parametrize("stat,member", [([0.0, 1.0], [1, 1]), ([np.nan, 1.0], [1, 0]),
                                         ([], []), ([0.0, 1.0], [1, 0, 1])])
def test_roc_metrics_rejects_bad_input(stat, member):
  with pytest.raises(DataError):
    lira.roc_metrics(stat, member)


# -------------------------------------------------------------------------------------- U-LiRA
def _unlearning_population(shift: float, seed: int, m: int = 40, n: int = 200):
  """Each model trains on a random half and unlearns a random half of that; forgotten examples'
  scores are shifted by `shift` sd from the never-seen ones (0 = a perfect unlearner)."""
  rng = np.random.default_rng(seed)
  keep = lira.membership_masks(m, n, rng)
  forgotten = keep & (rng.random((m, n)) < 0.5)
  mu, sd = rng.normal(0, 2, n), rng.uniform(0.5, 1.5, n)
  retained = keep & ~forgotten
  scores = mu + sd * (rng.normal(size=(m, n)) + shift * forgotten + 4.0 * retained)
  return scores, forgotten, ~keep


def test_ulira_is_at_chance_for_an_exact_unlearner():
  scores, forgotten, unseen = _unlearning_population(shift=0.0, seed=0)
  r = ulira.ulira(scores, forgotten, unseen, np.arange(10), rng=np.random.default_rng(0))
  assert r["n_per_side"] > 300 and r["chance"] == 0.5
  assert abs(r["acc"] - 0.5) < 0.05 and abs(r["auc"] - 0.5) < 0.05
  assert r["acc_within_chance"] and r["auc_within_chance"]
  for key, value in (("acc_ci", r["acc"]), ("auc_ci", r["auc"]), ("acc_ci_binomial", r["acc"])):
    lo, hi = r[key]
    assert lo < value < hi and hi - lo < 0.1, key


def test_ulira_detects_unlearned_examples_that_are_still_remembered():
  scores, forgotten, unseen = _unlearning_population(shift=5.0, seed=1)
  r = ulira.ulira(scores, forgotten, unseen, np.arange(10), rng=np.random.default_rng(0))
  assert r["acc"] > 0.95 and r["auc"] > 0.99 and r["tpr_at_1pct_fpr"] > 0.5
  assert not r["acc_within_chance"] and not r["auc_within_chance"]


def test_ulira_balanced_set_is_balanced_seeded_and_consistent_with_the_masks():
  scores, forgotten, unseen = _unlearning_population(shift=1.0, seed=2)
  targets = np.array([3, 7, 11])
  a = ulira.ulira(scores, forgotten, unseen, targets, rng=np.random.default_rng(5),
                  max_pairs_per_side=50, n_bootstrap=50)
  b = ulira.ulira(scores, forgotten, unseen, targets, rng=np.random.default_rng(5),
                  max_pairs_per_side=50, n_bootstrap=50)
  assert a["n_per_side"] == 50 and a["is_forgotten"].sum() == 50 and len(a["stat"]) == 100
  assert set(a["pair_model"]) <= set(targets)
  np.testing.assert_array_equal(forgotten[a["pair_model"], a["pair_example"]], a["is_forgotten"])
  np.testing.assert_array_equal(unseen[a["pair_model"], a["pair_example"]], ~a["is_forgotten"])
  assert len(set(zip(a["pair_model"], a["pair_example"]))) == 100  # drawn without replacement
  np.testing.assert_array_equal(a["stat"], b["stat"])
  assert a["auc_ci"] == b["auc_ci"]


def test_ulira_from_populations_equals_the_stacked_single_population():
  rng = np.random.default_rng(3)
  mu, n = rng.normal(0, 2, 30), 30
  unlearned = mu + rng.normal(size=(12, n)) + 3.0  # unlearning left a trace
  retrained = mu + rng.normal(size=(12, n))
  fm = np.ones((12, n), bool)
  r = ulira.ulira_from_populations(unlearned, fm, retrained, target_unlearned=[0, 1, 2],
                                   target_retrained=[0, 1, 2], rng=np.random.default_rng(9))
  s = ulira.ulira(np.concatenate([unlearned, retrained]), np.r_[fm, np.zeros((12, n), bool)],
                  np.r_[np.zeros((12, n), bool), np.ones((12, n), bool)], [0, 1, 2, 12, 13, 14],
                  rng=np.random.default_rng(9))
  assert r["acc"] == s["acc"] and r["auc"] == s["auc"] and r["auc"] > 0.9
  assert set(r["pair_model"][r["is_forgotten"]]) <= {0, 1, 2}
  assert set(r["pair_model"][~r["is_forgotten"]]) <= {12, 13, 14}


def test_ulira_rejects_bad_input():
  scores, forgotten, unseen = _unlearning_population(shift=0.0, seed=0, m=6, n=10)
  with pytest.raises(DataError, match="overlap"):
    ulira.ulira(scores, forgotten, unseen | forgotten, [0], rng=np.random.default_rng(0))
  bad = scores.copy()
  bad[0, 0] = np.nan
  with pytest.raises(DataError, match="NaN"):
    ulira.ulira(bad, forgotten, unseen, [0], rng=np.random.default_rng(0))
  with pytest.raises(DataError, match="target_models"):
    ulira.ulira(scores, forgotten, unseen, [6], rng=np.random.default_rng(0))
  with pytest.raises(DataError, match="no balanced set"):
    ulira.ulira(scores, forgotten, unseen, [0], rng=np.random.default_rng(0), min_shadows=6)


# ------------------------------------------------------------------ the challenge's forget score
@pytest.fixture(scope="module")
def reference():
  with np.load(REFERENCE) as d:
    return {k: d[k] for k in d.files}


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_forget_quality_equals_the_reference_scorer(reference, case):
  u, r = reference[f"{case}_unlearned"], reference[f"{case}_retrained"]
  np.testing.assert_allclose(fq.per_example_epsilons(u, r), reference[f"{case}_eps"], rtol=0, atol=1e-6)
  assert fq.forget_quality(u, r) == pytest.approx(float(reference[f"{case}_forget_score"]), abs=1e-6)


def test_final_score_and_confidence_equal_the_reference(reference):
  f = float(reference["b_forget_score"])
  got = fq.final_score(f, reference["final_ra_u"], reference["final_ra_r"], reference["final_ta_u"],
                       reference["final_ta_r"])
  assert got == pytest.approx(float(reference["final_score"]), abs=1e-6)
  # The scorer's logit-scaled confidence is LiRA's phi (equal where its 1e-45 floor is inactive).
  np.testing.assert_allclose(lira.lira_score(reference["conf_logits"], reference["conf_labels"]),
                             reference["conf"], rtol=0, atol=1e-6)


def test_forget_quality_closed_forms(reference):
  # Identical unlearned and retrained confidences: every rule has TPR = FPR, epsilon 0, F = 1 (the
  # reference gives the same on its case c).
  r = np.random.default_rng(4).normal(size=(8, 5))
  np.testing.assert_array_equal(fq.per_example_epsilons(r, r.copy()), 0.0)
  assert fq.forget_quality(r, r.copy()) == 1.0 == float(reference["c_forget_score"])
  # Perfectly separated populations: some threshold has FPR = FNR = 0, epsilon = inf -> cap, F = 0.
  np.testing.assert_array_equal(fq.per_example_epsilons(r + 100.0, r), fq.EPSILON_CAP)
  assert fq.forget_quality(r + 100.0, r) == 0.0
  # A population 1000x peakier than the other: the range test gives the cap (reference case a, ex. 6).
  assert reference["a_eps"][6] == fq.EPSILON_CAP
  peaky = r.copy()
  peaky[:, 0] = 1e-3 * r[:, 0]
  assert fq.per_example_epsilons(peaky, r)[0] == fq.EPSILON_CAP


def test_forget_quality_buckets_by_hand():
  starts, points = fq.epsilon_bucket_points(512)  # ceil(log 511) = 7: 14 half-unit buckets
  np.testing.assert_array_equal(starts, 0.5 * np.arange(14))
  np.testing.assert_array_equal(points, 0.5 ** np.arange(14))
  assert fq.epsilon_bucket_points(2)[0].size == 0   # log 1 = 0: nothing can be certified
  # 16 models: ceil(log 15) = 3 -> buckets up to [2.5, 3); 100 is past them.
  eps = [0.0, 0.49, 0.5, 1.2, 2.99, 3.0, 100.0]
  want = (1 + 1 + 0.5 + 0.25 + 0.5 ** 5 + 0 + 0) / 7
  assert fq.forget_quality_from_epsilons(eps, 16) == pytest.approx(want, abs=1e-15)


def test_final_score_closed_form():
  assert fq.final_score(0.5, 90.0, 100.0, [80.0, 90.0], 85.0) == pytest.approx(0.5 * 0.9 * 1.0)
  with pytest.raises(DataError, match="> 0"):
    fq.final_score(0.5, 0.9, 0.0, 0.8, 0.8)


def test_forget_quality_rejects_bad_input():
  r = np.random.default_rng(0).normal(size=(8, 3))
  with pytest.raises(DataError, match="same shape"):
    fq.forget_quality(r, r[:7])
  with pytest.raises(DataError, match="at least 3"):
    fq.forget_quality(r[:2], r[:2])
  with pytest.raises(DataError, match="NaN"):
    fq.forget_quality(np.where(r > 1, np.nan, r), r)
  with pytest.raises(DataError, match="example 1"):
    fq.per_example_epsilons(np.c_[r[:, 0], np.ones(8)], np.c_[r[:, 0], np.ones(8)])


# ------------------------------------------------------------------------------------------ plot
def test_plot_roc_writes_a_png_atomically(tmp_path):
  scores, keep = _population(shift=2.0, m=8, n=100)
  stat, member = lira.leave_one_out_lira(scores, keep)
  m = lira.roc_metrics(stat, member)
  path = str(tmp_path / "sub" / "roc.png")
  out = privacy_plots.plot_roc(path, {"LiRA online": (m["fpr"], m["tpr"]),
                                      "blind": ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])}, "LiRA on a toy set")
  assert out == path
  with open(path, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path / "sub") == ["roc.png"]  # no temporary file left behind
  with pytest.raises(DataError):
    privacy_plots.plot_roc(path, {}, "empty")
  with pytest.raises(DataError):
    privacy_plots.plot_roc(path, {"bad": ([0.0, 1.0], [0.0])}, "bad")


def test_ulira_balanced_shadows_remove_the_leave_one_out_bias_of_half_membership():
  """With LiRA's masks (each example in exactly half of the models) leaving the target out leaves its
  own world one shadow short; on pure noise the plain test then leans to the other world (AUC well
  below 0.5 at N = 6), and `balance_shadows` (equal counts) puts it back at chance."""
  plain, balanced = [], []
  for seed in range(3):
    rng = np.random.default_rng(seed)
    keep = lira.membership_masks(6, 200, rng)
    scores = rng.normal(size=(6, 200)) * rng.uniform(0.5, 2, 200) + rng.normal(0, 3, 200)
    for out, bal in ((plain, False), (balanced, True)):
      r = ulira.ulira(scores, keep, ~keep, np.arange(6), rng=np.random.default_rng(seed), n_bootstrap=0,
                      balance_shadows=bal)
      out.append(r["auc"])
  assert np.mean(plain) < 0.4
  assert abs(np.mean(balanced) - 0.5) < 0.03
  a, b = ulira._balanced(keep, ~keep | (np.arange(6) == 0)[:, None], np.random.default_rng(0))
  np.testing.assert_array_equal(a.sum(0), b.sum(0))
  assert (a <= keep).all() and (b <= (~keep | (np.arange(6) == 0)[:, None])).all()
