"""`mia_entropy`: the SSD repository's entropy membership-inference attack (its "MIA"; our name for it).

Protocol (`if-loops/selective-synaptic-dampening: src/metrics.py`, from bad-teaching):
* feature = entropy of the softmax output, H(p) = -sum_k p_k log p_k (one scalar per image);
* attack = `LogisticRegression(class_weight='balanced', solver='lbfgs')` fitted on
  retain-train entropies (label 1, members) vs test-split entropies (label 0, non-members). The SSD
  code uses the *whole* test loader (forget classes included) and the whole retain-train loader; we do
  the same except that the retain side is a seeded random subsample capped at `max_samples`
  (`class_weight='balanced'` makes the fit insensitive to the size ratio). SSD's `multi_class=
  'multinomial'` is irrelevant for a binary problem (and is gone from recent scikit-learn);
* result = percent of forget *training* samples predicted "member" (lower = more forgetting).
Differences from the reference, on purpose: SSD re-batches every loader with batch size 1 and its
retain-train loader applies training augmentation; we evaluate un-augmented images in eval mode,
batched. Entropy is computed from `log_softmax`, so saturated outputs give 0, not NaN.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data import UnlearnData
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.metrics.mia_i import (
  add_member_pool,
  check_member_pool,
  fit_predict_1d,
  member_pool_config,
  retain_member_index,
)
from jax_unlearn.train.evaluate import predict_logits

__all__ = ["softmax_entropy", "mia_entropy_from_entropies", "mia_entropy_from_logits", "mia_entropy",
           "MiaEntropy"]


@jax.jit
def softmax_entropy(logits: ArrayLike) -> jax.Array:
  """Entropy (nats) of softmax(logits) per row, [N, K] -> [N]; exact 0 for one-hot outputs."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def mia_entropy_from_entropies(member_ent: ArrayLike, nonmember_ent: ArrayLike, target_ent: ArrayLike
                               ) -> float:
  """Percent of `target_ent` samples a balanced logistic regression calls members (label 1).

  Fitted on `member_ent` (label 1) vs `nonmember_ent` (label 0); 1-D arrays of entropies. NaN when
  the target is empty.
  """
  from sklearn.linear_model import LogisticRegression  # only when fitted (import time)
  pred = fit_predict_1d(LogisticRegression(class_weight="balanced", solver="lbfgs"), member_ent,
                        nonmember_ent, target_ent, "mia_entropy needs retain-train and test samples")
  return float("nan") if pred is None else float(100.0 * pred.mean())


def mia_entropy_from_logits(member_logits: ArrayLike, nonmember_logits: ArrayLike, target_logits: ArrayLike
                            ) -> float:
  """`mia_entropy_from_entropies` of the softmax entropies of three pools of logits."""
  ent = lambda lg: np.asarray(softmax_entropy(lg))  # noqa: E731
  return mia_entropy_from_entropies(ent(member_logits), ent(nonmember_logits), ent(target_logits))


def mia_entropy(model: Any, variables: Any, data: UnlearnData, *, max_samples: int = 10000, seed: int = 0,
                batch_size: int = 512) -> float:
  """`mia_entropy` (percent of forget training samples predicted member) of one model.

  `data` is an `UnlearnData`; `max_samples` caps the retain-train member pool, drawn with `seed`.
  `metrics.mia_entropy(...)` (the module) calls this function.
  """
  member = retain_member_index(data, max_samples, seed)
  target = np.flatnonzero(np.asarray(data.forget_train_mask, bool))
  logits = functools.partial(predict_logits, model, variables, info=data.info, batch_size=batch_size)
  return mia_entropy_from_logits(logits(data.train.images[member]), logits(data.test.images),
                                 logits(data.train.images[target]))


@register("mia_entropy", columns=(("mia_entropy", "MIA-entropy (%)", "{:.2f}"),), order=50,
          default_config=member_pool_config, validate_config=check_member_pool)
class MiaEntropy(Evaluator):
  """`mia_entropy` from the shared retain-member, test and forget-train logits."""

  def __init__(self, suite):
    super().__init__(suite)
    self.member_idx = add_member_pool(suite)

  def __call__(self, out) -> dict:
    return {"mia_entropy": mia_entropy_from_logits(out.logits("retain_members"), out.logits("test"),
                                                   out.logits("forget_train"))}

  def info(self) -> dict:
    return {"mia_entropy_members": len(self.member_idx)}


make_callable(__name__)
