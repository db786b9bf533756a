"""MIA-I: SalUn's confidence-based membership-inference attack (ISPF paper §4.1, "MIA_I").

Protocol (`OPTML-Group/Unlearn-Saliency: Classification/evaluation/SVC_MIA.py`, as copied into ISPF's
`unlearning_utils/svc_mia.py`, which keeps only the confidence feature):
* feature = softmax probability of the true label (the "confidence"), one scalar per image;
* attack = `sklearn.svm.SVC(C=3, gamma='auto', kernel='rbf')` fitted on
  members (label 1) = retain *training* images the evaluated model is asked about, vs
  non-members (label 0) = the test split without the forget classes (`data.retain_test`; SalUn's
  loaders drop the forgotten class from the test set);
* SalUn takes the first |test| retain training samples as members, so both sides have equal size; we
  take a seeded uniformly random subsample of the same size (a prefix of a split depends on its storage
  order, which may be sorted by class). Both sides are capped at
  `max_samples` (the RBF-SVC fit is quadratic in the sample count);
* target = the forget *training* images (`data.forget_train`);
* MIA-I = 100 * (1 - mean SVC prediction on the target) = percent of forget training samples
  called non-members. Full-class forgetting saturates it at 100 whenever forget accuracy is ~0.
The attack is refitted for every evaluated model (its features are that model's outputs), as SalUn does.

**The attack's own held-out accuracy** (`mia_i_attack_acc`, `mia_i_attack_accuracy`): MIA-I near 100 on
a forgotten class is only evidence of forgetting if the attack can tell members from non-members at
all. Per evaluated model, the member and non-member confidence pools are each split 50/50 (seeded; each
side halved separately, so the split is stratified), the same SVC is fitted on the first halves and
scored on the second: balanced accuracy = (TPR + TNR) / 2 in percent; 50 = no usable membership
signal. `mia_i` itself is unchanged (still fitted on the whole pools). Cost: the SVC fit is quadratic
in its sample count, so the half-size fit costs at most about a quarter of MIA-I's at large pools; on
digits (404 members + 404 non-members) MIA-I takes 0.02-0.04 s per model and this estimate 0.01-0.02 s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data import UnlearnData
from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.train.evaluate import predict_logits

__all__ = ["true_label_confidence", "sample_index", "retain_member_index", "fit_predict_1d",
           "mia_i_from_confidences", "mia_i_from_logits", "mia_i_attack_accuracy", "balanced_accuracy",
           "mia_i_pools", "mia_i", "MiaI", "member_pool_config", "check_member_pool"]

# Independent seeded streams (np.random.default_rng([seed, stream])) for every subsample we draw.
STREAM_MEMBERS = 11
STREAM_HELDOUT = 13  # the 50/50 split of `mia_i_attack_accuracy`


@jax.jit
def true_label_confidence(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """softmax(logits)[i, labels[i]], computed through log_softmax for stability. [N, K] -> [N]."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.exp(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=-1)[:, 0])


def sample_index(n: int, k: int, seed: int, stream: int) -> np.ndarray:
  """A seeded random permutation of range(n), truncated to min(k, n) entries."""
  return np.random.default_rng([seed, stream]).permutation(n)[:min(int(k), n)]


def retain_member_index(data: UnlearnData, max_samples: int, seed: int) -> np.ndarray:
  """Indices into `data.train` of a seeded random subsample (<= max_samples) of the retain training
  images, in random order, so that any prefix is itself a uniform subsample. Shared by MIA-I (which
  takes a prefix of length |non-members|) and `mia_entropy`."""
  retain = np.flatnonzero(~np.asarray(data.forget_train_mask, bool))
  return retain[sample_index(len(retain), max_samples, seed, STREAM_MEMBERS)]


def fit_predict_1d(clf: Any, member: ArrayLike, nonmember: ArrayLike, target: ArrayLike,
                   needs: str) -> np.ndarray | None:
  """Fits `clf` on 1-D scalar features, `member` (label 1) vs `nonmember` (label 0), and returns its
  predictions on `target` (None when the target is empty). Shared by MIA-I and `mia_entropy`;
  `needs` completes the error raised when a training pool is empty."""
  member, nonmember, target = (np.asarray(a, np.float64).reshape(-1, 1)
                               for a in (member, nonmember, target))
  if len(target) == 0:
    return None
  if len(member) == 0 or len(nonmember) == 0:
    raise DataError(f"{needs}; check the forget config leaves retain data in the train and test splits")
  x = np.concatenate([member, nonmember])
  y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
  return clf.fit(x, y).predict(target)


def mia_i_from_confidences(member_conf: ArrayLike, nonmember_conf: ArrayLike, target_conf: ArrayLike
                           ) -> float:
  """Percent of `target_conf` samples an RBF-SVC (C=3, gamma='auto') calls non-members.

  The SVC is fitted on `member_conf` (label 1) vs `nonmember_conf` (label 0); every argument is a
  1-D array of true-label confidences. NaN when the target is empty.
  """
  from sklearn.svm import SVC  # scikit-learn only when an attack is fitted (import time)
  pred = fit_predict_1d(SVC(C=3, gamma="auto", kernel="rbf"), member_conf, nonmember_conf, target_conf,
                        "MIA-I needs both member (retain-train) and non-member (retain-test) samples")
  return float("nan") if pred is None else float(100.0 * (1.0 - pred.mean()))


def balanced_accuracy(pred_member: ArrayLike, pred_nonmember: ArrayLike) -> float:
  """(TPR + TNR) / 2 in percent from 0/1 "member" predictions on true members and true non-members."""
  pm, pn = np.asarray(pred_member, np.float64), np.asarray(pred_nonmember, np.float64)
  return float(100.0 * 0.5 * (pm.mean() + (1.0 - pn.mean())))


def mia_i_attack_accuracy(member_conf: ArrayLike, nonmember_conf: ArrayLike, seed: int = 0) -> float:
  """Held-out balanced accuracy (percent) of the MIA-I attack on its own pools.

  Each pool (1-D true-label confidences) is permuted with `np.random.default_rng([seed, 13, side])`
  and split in half (stratified: members and non-members are halved separately); an RBF-SVC (C=3,
  gamma='auto', as `mia_i_from_confidences`) is fitted on the first halves and scored on the second:
  (TPR + TNR) / 2. About 50 when the confidences carry no membership signal. NaN when either pool has
  fewer than 2 samples (nothing to hold out).
  """
  member, nonmember = (np.asarray(a, np.float64).reshape(-1) for a in (member_conf, nonmember_conf))
  if len(member) < 2 or len(nonmember) < 2:
    return float("nan")
  halves = []
  for side, x in ((1, member), (0, nonmember)):
    perm = np.random.default_rng([seed, STREAM_HELDOUT, side]).permutation(len(x))
    halves.append((x[perm[:len(x) // 2]], x[perm[len(x) // 2:]]))
  (m_fit, m_eval), (n_fit, n_eval) = halves
  from sklearn.svm import SVC  # scikit-learn only when an attack is fitted (import time)
  clf = SVC(C=3, gamma="auto", kernel="rbf")
  pred = fit_predict_1d(clf, m_fit, n_fit, np.concatenate([m_eval, n_eval]), "MIA-I's held-out "
                        "accuracy needs member and non-member samples")
  return balanced_accuracy(pred[:len(m_eval)], pred[len(m_eval):])


def mia_i_from_logits(member_logits: ArrayLike, member_labels: ArrayLike, nonmember_logits: ArrayLike,
                      nonmember_labels: ArrayLike, target_logits: ArrayLike, target_labels: ArrayLike
                      ) -> float:
  """MIA-I from the evaluated model's logits on the three pools (see the module docstring)."""
  conf = lambda lg, lb: np.asarray(true_label_confidence(lg, lb))  # noqa: E731
  return mia_i_from_confidences(conf(member_logits, member_labels),
                                conf(nonmember_logits, nonmember_labels),
                                conf(target_logits, target_labels))


def mia_i_pools(data: UnlearnData, max_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(member indices into train, non-member indices into test, target indices into train)."""
  nonmember = np.flatnonzero(~np.asarray(data.forget_test_mask, bool))
  nonmember = nonmember[sample_index(len(nonmember), max_samples, seed, STREAM_MEMBERS + 1)]
  member = retain_member_index(data, max_samples, seed)[:len(nonmember)]
  target = np.flatnonzero(np.asarray(data.forget_train_mask, bool))
  return member, np.sort(nonmember), target


def mia_i(model: Any, variables: Any, data: UnlearnData, *, max_samples: int = 10000, seed: int = 0,
          batch_size: int = 512) -> float:
  """MIA-I (percent of forget training samples predicted non-member) of `model` with `variables`.

  `data` is an `UnlearnData`; `max_samples` caps each attack pool; `seed` draws the member pool.
  `metrics.mia_i(...)` (the module) calls this function.
  """
  member, nonmember, target = mia_i_pools(data, max_samples, seed)
  logits = functools.partial(predict_logits, model, variables, info=data.info, batch_size=batch_size)
  tr, te = data.train, data.test
  return mia_i_from_logits(logits(tr.images[member]), tr.labels[member],
                           logits(te.images[nonmember]), te.labels[nonmember],
                           logits(tr.images[target]), tr.labels[target])


def member_pool_config() -> dict:
  """`config.metrics` fields of the confidence and entropy attacks."""
  # Cap per side on the attack's training samples (the RBF-SVC fit is quadratic).
  return {"mia_max_samples": 10000}


def check_member_pool(cfg: Any, problem: Any = None) -> None:
  """Raises ConfigError unless `config.metrics.mia_max_samples` >= 1."""
  del problem
  if int(cfg.mia_max_samples) < 1:
    raise ConfigError(f"config.metrics.mia_max_samples must be >= 1, got {cfg.mia_max_samples}; the "
                      "default is 10000")


def add_member_pool(suite: Any) -> np.ndarray:
  """The shared pool of retain-train members (MIA-I takes a prefix, mia_entropy all of it)."""
  idx = retain_member_index(suite.data, suite.cfg.mia_max_samples, suite.seed)
  suite.add_pool("retain_members", np.asarray(suite.data.train.images)[idx])
  return idx


@register("mia_i", columns=(("mia_i", "MIA-I (%)", "{:.2f}"),
                            ("mia_i_attack_acc", "MIA-I attack acc (%)", "{:.1f}")), order=30,
          default_config=member_pool_config, validate_config=check_member_pool)
class MiaI(Evaluator):
  """MIA-I from the shared test, forget-train and retain-member logits (the SVC is refitted per
  model, as SalUn does), and the attack's held-out balanced accuracy on the same pools."""

  def __init__(self, suite):
    super().__init__(suite)
    self.member_idx = add_member_pool(suite)
    self.member, self.nonmember, _ = mia_i_pools(suite.data, suite.cfg.mia_max_samples, suite.seed)

  def __call__(self, out) -> dict:
    d, n = self.suite.data, len(self.member)  # the MIA-I members are this prefix of `member_idx`
    train_y, test_y = np.asarray(d.train.labels), np.asarray(d.test.labels)
    conf = lambda lg, lb: np.asarray(true_label_confidence(lg, lb))  # noqa: E731
    member = conf(out.logits("retain_members")[:n], train_y[self.member_idx[:n]])
    nonmember = conf(out.logits("test")[self.nonmember], test_y[self.nonmember])
    target = conf(out.logits("forget_train"), train_y[self.suite.forget_idx])
    return {"mia_i": mia_i_from_confidences(member, nonmember, target),
            "mia_i_attack_acc": mia_i_attack_accuracy(member, nonmember, self.suite.seed)}

  def info(self) -> dict:
    return {"mia_i_members": len(self.member), "mia_i_nonmembers": len(self.nonmember)}


make_callable(__name__)
