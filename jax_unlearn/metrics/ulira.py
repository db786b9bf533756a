"""U-LiRA: the per-example likelihood-ratio attack adapted to unlearning (Hayes et al., "Inexact
Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy", SaTML 2025,
arXiv:2403.01218, §4), as pure functions of score arrays.

The question: given a model produced by the unlearning pipeline, was example x trained on and then
unlearned (x in the forget set), or never trained on? For an ideal unlearning method (Retrain) the
two worlds give the same output distribution and the attack is at chance (accuracy = AUC = 0.5).

Protocol implemented by `ulira` (every choice stated):
* **Populations.** scores [M, N] (or [M, N, A] with A queries, e.g. an image and its mirror) of N
  candidate examples under M models of the pipeline under audit, with two disjoint [M, N] masks:
  `forgotten[m, j]` (model m trained on j, then unlearned it: the "in" world) and `unseen[m, j]`
  (model m never trained on j: the "out" world, e.g. a model retrained without j). Other entries
  (retained examples) are ignored. Scores are LiRA's phi (`lira.lira_score`).
* **Per-example fits, leave-one-out.** For a target model t and example j, the in-Gaussian is fitted
  to phi_j of the models m != t with forgotten[m, j], the out-Gaussian to those with unseen[m, j]
  (location = median, scale = std, or one global scale per population; as `lira.fit_gaussians`).
  The target never enters its own fits; every other model, targets included, is a shadow.
* **Balanced shadows** (`balance_shadows=True`, what `jax_unlearn.audit` uses). With LiRA's masks
  every example is in exactly half of the models, so leaving the target out always leaves its own
  world one shadow short (N/2 - 1 against N/2); the smaller fit is the noisier one, its expected
  log-density at a fresh point is lower, and on pure noise the test leans to the *other* world
  (AUC 0.34 at N = 6, 0.48 at N = 16, per-example variance; tests/test_privacy_metrics.py). With the
  option, per target and example, the larger side keeps a uniformly drawn (`rng`) subset of the
  smaller side's size, and chance is chance again.
* **Target set.** Candidate pairs (t, j) for t in `target_models`: "forgotten" if forgotten[t, j],
  "unseen" if unseen[t, j]; a pair counts only if example j has >= `min_shadows` in- and out-models
  besides t (otherwise no Gaussian can be fitted; the number dropped is reported).
* **Balanced set.** k = min(#forgotten, #unseen, `max_pairs_per_side`) pairs of each kind, drawn
  uniformly without replacement by the `rng` passed in (forgotten first, then unseen).
* **Statistic and decision.** Lambda = mean over queries of log N(phi; in) - log N(phi; out);
  "forgotten" iff Lambda > 0 (likelihood ratio > 1, the Bayes rule at the balanced prior), which is
  the reported accuracy `acc` (as U-LiRA and RULI report it). AUC, best-threshold balanced accuracy
  and TPR at 1 % / 0.1 % FPR come from the ROC of Lambda (`lira.roc_metrics`).
* **Intervals (95 % by default).** `acc_ci` and `auc_ci`: percentile bootstrap over *examples*
  (`n_bootstrap` draws from the same `rng`; a drawn example brings all its pairs in the balanced set),
  because pairs of one example share its fitted Gaussians and are not independent. `acc_ci_binomial`:
  Clopper-Pearson on (correct, 2k), which assumes independent pairs. The chance level is 0.5 for
  both; `acc_within_chance` / `auc_within_chance` say whether it lies inside `acc_ci` / `auc_ci` (on
  40 seeded exchangeable populations of the test's size, 95 % / 92.5 % of the intervals held 0.5).

`ulira_from_populations` is the same attack for the common layout of two populations: unlearned
models (trained with the forget examples, then unlearned them) and retrained models (never saw them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.errors import DataError
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import register_population
from jax_unlearn.metrics.lira import fit_gaussians, gaussian_logpdf, roc_metrics

__all__ = ["ulira", "ulira_from_populations", "clopper_pearson"]


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """Exact binomial (Clopper-Pearson) interval for successes / trials."""
  # scipy.special costs ~1 s to import on a loaded machine; only the intervals need it.
  from scipy.special import betaincinv  # noqa: PLC0415
  a = 1.0 - confidence
  lo = 0.0 if successes == 0 else float(betaincinv(successes, trials - successes + 1, a / 2))
  hi = 1.0 if successes == trials else float(betaincinv(successes + 1, trials - successes, 1 - a / 2))
  return lo, hi


def _cluster_bootstrap(stat: np.ndarray, truth: np.ndarray, example: np.ndarray,
                       rng: np.random.Generator, n_bootstrap: int, confidence: float):
  """Percentile intervals of (acc, AUC), resampling *examples* with replacement and keeping all of a
  drawn example's pairs: pairs of one example share its Gaussian fits, so they are not independent,
  and resampling pairs would give intervals that are too narrow."""
  nan2 = (float("nan"), float("nan"))
  if n_bootstrap <= 0:
    return nan2, nan2
  uniq, inv = np.unique(example, return_inverse=True)
  counts = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=n_bootstrap)
  w = counts[:, inv].astype(np.float64)                     # [B, pairs]: weight of each pair
  correct = ((stat > 0) == truth).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    accs = (w * correct).sum(1) / w.sum(1)
    pos, neg = stat[truth], stat[~truth]
    wp, wn = w[:, truth], w[:, ~truth]
    order = np.argsort(neg, kind="stable")
    cum = np.concatenate([np.zeros((n_bootstrap, 1)), np.cumsum(wn[:, order], axis=1)], axis=1)
    lo = np.searchsorted(neg[order], pos, side="left")
    hi = np.searchsorted(neg[order], pos, side="right")
    # Weighted Mann-Whitney: negatives below each positive count 1, ties 1/2.
    wins = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])
    aucs = (wp * wins).sum(1) / (wp.sum(1) * wn.sum(1))
  a = 1.0 - confidence
  q = [a / 2, 1 - a / 2]
  acc_ci = tuple(float(v) for v in np.nanquantile(accs, q))
  auc_ci = tuple(float(v) for v in np.nanquantile(aucs, q))
  return acc_ci, auc_ci


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """[M, N] masks a, b with, per column, the larger one cut to a uniform random subset of the
  smaller one's size (the rank of a uniform draw among a column's selected rows is a uniformly
  random order of them)."""
  k = np.minimum(a.sum(0), b.sum(0))
  u = rng.random(a.shape)
  out = []
  for m in (a, b):
    ranks = np.where(m, u, np.inf).argsort(0, kind="stable").argsort(0, kind="stable")
    out.append(m & (ranks < k[None]))
  return out[0], out[1]


def ulira(scores: ArrayLike, forgotten: ArrayLike, unseen: ArrayLike, target_models: ArrayLike, *,
          rng: np.random.Generator, max_pairs_per_side: int | None = None, global_variance: bool = False,
          min_shadows: int = 2, n_bootstrap: int = 1000, confidence: float = 0.95,
          balance_shadows: bool = False) -> dict:
  """U-LiRA on one population of models (the protocol is the module docstring's).

  `metrics.ulira(...)` (the module) calls this function.

  Args:
    scores: [M, N] or [M, N, A] phi of N examples under M models of the audited pipeline.
    forgotten: [M, N] bool, model m trained on example j and unlearned it.
    unseen: [M, N] bool, model m never trained on example j (disjoint from `forgotten`).
    target_models: indices (or an [M] bool mask) of the models under attack.
    rng: numpy Generator for the balanced draw and the bootstrap.
    max_pairs_per_side: cap on the forgotten and on the unseen pairs (None: as many as the smaller
      side has).
    global_variance: one Gaussian scale per population instead of one per example.
    min_shadows: fewest in- and out-models (besides the target) an example needs to be a candidate.
    n_bootstrap: bootstrap draws for `acc_ci` and `auc_ci` (0: NaN intervals, within_chance False).
    balance_shadows: as many in- as out-shadows per target and example (module docstring).
  Returns: dict with acc, auc, balanced_accuracy, tpr_at_1pct_fpr, tpr_at_01pct_fpr, acc_ci, auc_ci,
    acc_ci_binomial, chance (0.5), acc_within_chance, auc_within_chance, n_per_side,
    n_candidates_forgotten, n_candidates_unseen, n_dropped (pairs without enough shadows), and the
    balanced set's arrays stat, is_forgotten, pair_model, pair_example, fpr, tpr.
  """
  s = np.asarray(scores, np.float64)
  if s.ndim not in (2, 3) or s.size == 0:
    raise DataError(f"scores must be a non-empty [models, examples] or [models, examples, queries] "
                    f"array, got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise DataError("scores contain NaN or inf; compute them with lira.lira_score from finite logits")
  num_models = s.shape[0]
  masks = []
  for name, m in (("forgotten", forgotten), ("unseen", unseen)):
    m = np.asarray(m)
    if m.dtype != bool or m.shape != s.shape[:2]:
      raise DataError(f"{name} must be a bool array of shape {s.shape[:2]} (models x examples), got "
                      f"{m.dtype} {m.shape}")
    masks.append(m)
  fg, un = masks
  if np.any(fg & un):
    raise DataError("forgotten and unseen overlap: an example cannot be both unlearned by a model and "
                    "never seen by it; check the masks")
  t = np.asarray(target_models)
  targets = np.flatnonzero(t) if t.dtype == bool else t.astype(int).reshape(-1)
  if (t.dtype == bool and t.shape != (num_models,)) or targets.size == 0 or targets.min() < 0 \
     or targets.max() >= num_models or len(np.unique(targets)) != targets.size:
    raise DataError(f"target_models must be distinct model indices in [0, {num_models}) or an "
                    f"[{num_models}] bool mask with at least one True, got {target_models!r}")
  if min_shadows < 1:
    raise DataError(f"min_shadows must be >= 1, got {min_shadows}")

  stat_rows, ok_rows = [], []
  for tm in targets:
    others = np.arange(num_models) != tm
    fin_mask, fout_mask = fg[others], un[others]
    if balance_shadows:
      fin_mask, fout_mask = _balanced(fin_mask, fout_mask, rng)
    fin = fit_gaussians(s[others], fin_mask, global_variance=global_variance, min_count=0)
    fout = fit_gaussians(s[others], fout_mask, global_variance=global_variance, min_count=0)
    ok = (fin.count >= min_shadows) & (fout.count >= min_shadows)
    with np.errstate(invalid="ignore"):
      llr = gaussian_logpdf(s[tm], fin.loc, fin.scale) - gaussian_logpdf(s[tm], fout.loc, fout.scale)
    stat_rows.append(llr.mean(axis=-1) if s.ndim == 3 else llr)
    ok_rows.append(ok)
  stat_all, ok_all = np.stack(stat_rows), np.stack(ok_rows)          # [T, N]
  pos_t, pos_j = np.nonzero(fg[targets] & ok_all)
  neg_t, neg_j = np.nonzero(un[targets] & ok_all)
  n_dropped = int(np.sum((fg[targets] | un[targets]) & ~ok_all))
  k = min(len(pos_t), len(neg_t))
  if max_pairs_per_side is not None:
    k = min(k, int(max_pairs_per_side))
  if k < 1:
    raise DataError(f"no balanced set: {len(pos_t)} forgotten and {len(neg_t)} unseen target pairs "
                    f"with >= {min_shadows} in- and out-shadows each ({n_dropped} dropped); add target "
                    "models, shadow models, or forgotten/unseen examples")
  ip = rng.choice(len(pos_t), size=k, replace=False)
  ineg = rng.choice(len(neg_t), size=k, replace=False)
  pair_t = np.concatenate([pos_t[ip], neg_t[ineg]])
  pair_j = np.concatenate([pos_j[ip], neg_j[ineg]])
  truth = np.concatenate([np.ones(k, bool), np.zeros(k, bool)])
  stat = stat_all[pair_t, pair_j]

  correct = int(np.sum((stat > 0) == truth))
  roc = roc_metrics(stat, truth)
  acc_ci, auc_ci = _cluster_bootstrap(stat, truth, pair_j, rng, n_bootstrap, confidence)
  out = {"acc": correct / (2 * k), "auc": roc["auc"], "balanced_accuracy": roc["balanced_accuracy"],
         "tpr_at_1pct_fpr": roc["tpr_at_1pct_fpr"], "tpr_at_01pct_fpr": roc["tpr_at_01pct_fpr"],
         "acc_ci": acc_ci, "auc_ci": auc_ci,
         "acc_ci_binomial": clopper_pearson(correct, 2 * k, confidence), "chance": 0.5,
         "acc_within_chance": bool(acc_ci[0] <= 0.5 <= acc_ci[1]),
         "auc_within_chance": bool(auc_ci[0] <= 0.5 <= auc_ci[1])}
  out.update(n_per_side=k, n_candidates_forgotten=len(pos_t), n_candidates_unseen=len(neg_t),
             n_dropped=n_dropped, stat=stat, is_forgotten=truth, pair_model=targets[pair_t],
             pair_example=pair_j, fpr=roc["fpr"], tpr=roc["tpr"])
  return out


def ulira_from_populations(unlearned_scores: ArrayLike, forget_mask: ArrayLike, retrained_scores: ArrayLike,
                           *, target_unlearned: ArrayLike, target_retrained: ArrayLike,
                           rng: np.random.Generator, unlearned_unseen: ArrayLike | None = None,
                           retrained_unseen: ArrayLike | None = None, **kwargs: Any) -> dict:
  """U-LiRA from an unlearned and a retrained population (stacked, then `ulira`).

  Args:
    unlearned_scores: [Mu, N] (or [Mu, N, A]) phi under the unlearned models.
    forget_mask: [Mu, N] bool, example j was in unlearned model m's training and forget sets.
    retrained_scores: [Mr, N] (or [Mr, N, A]) phi under the retrained models.
    target_unlearned, target_retrained: indices of the target models within each population (the
      forgotten pairs come from the former, the unseen pairs from the latter, unless
      `unlearned_unseen` marks unseen examples of the unlearned models too).
    unlearned_unseen: [Mu, N] bool, examples an unlearned model never trained on (default none).
    retrained_unseen: [Mr, N] bool, examples a retrained model never trained on (default all: the
      retrained models exclude every candidate example, e.g. the forget set).
    **kwargs: passed to `ulira` (max_pairs_per_side, global_variance, min_shadows, n_bootstrap,
      confidence). Returned `pair_model` indices are into the stack [unlearned; retrained].
  """
  u = np.asarray(unlearned_scores, np.float64)
  r = np.asarray(retrained_scores, np.float64)
  if u.ndim not in (2, 3) or u.shape[1:] != r.shape[1:] or r.ndim != u.ndim:
    raise DataError(f"unlearned and retrained scores must both be [models, examples(, queries)] with "
                    f"the same examples and queries, got {u.shape} and {r.shape}")
  mu, mr, n = u.shape[0], r.shape[0], u.shape[1]
  uu = np.zeros((mu, n), bool) if unlearned_unseen is None else np.asarray(unlearned_unseen)
  ru = np.ones((mr, n), bool) if retrained_unseen is None else np.asarray(retrained_unseen)
  fm = np.asarray(forget_mask)
  for name, m, rows in (("forget_mask", fm, mu), ("unlearned_unseen", uu, mu),
                        ("retrained_unseen", ru, mr)):
    if m.dtype != bool or m.shape != (rows, n):
      raise DataError(f"{name} must be a bool array of shape {(rows, n)}, got {m.dtype} {m.shape}")
  tu = np.asarray(target_unlearned, int).reshape(-1)
  tr = np.asarray(target_retrained, int).reshape(-1)
  if (tu.size and (tu.min() < 0 or tu.max() >= mu)) or (tr.size and (tr.min() < 0 or tr.max() >= mr)):
    raise DataError(f"target indices out of range: target_unlearned in [0, {mu}), target_retrained in "
                    f"[0, {mr}), got {tu.tolist()} and {tr.tolist()}")
  return ulira(np.concatenate([u, r]), np.concatenate([fm, np.zeros((mr, n), bool)]),
               np.concatenate([uu, ru]), np.concatenate([tu, mu + tr]), rng=rng, **kwargs)


make_callable(__name__)


# A table column through `launch.audit` (`--config.metrics.names=acc,...,ulira`, random forgetting).
register_population("ulira", columns=(("ulira_auc", "U-LiRA AUC", "{:.3f}"),
                                      ("ulira_acc", "U-LiRA acc", "{:.3f}"),
                                      ("ulira_tpr_at_1pct_fpr", "U-LiRA TPR@1%FPR", "{:.4f}"),
                                      ("ulira_tpr_at_01pct_fpr", "U-LiRA TPR@0.1%FPR", "{:.4f}")), order=80)

