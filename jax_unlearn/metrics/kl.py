"""`kl_to_retrain`: KL(p_unlearned || p_retrain) on forget-class test images (ISPF paper App. G).

Protocol: both models in eval mode on the same raw images (the forget view of the test split; for
random-sample forgetting, which has no forget test images, the forgotten training samples — see
`accuracy.forget_eval_split`); per image KL(p || q) = sum_k p_k (log p_k - log q_k) with p, q the
softmax outputs, computed from `log_softmax` of both logits so that saturated outputs stay finite;
the metric is the mean over images (nats). 0 means the unlearned model answers exactly like Retrain.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data import DataInfo, UnlearnData
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.accuracy import forget_eval_split
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.train.evaluate import predict_logits

__all__ = ["kl", "kl_divergence_from_logits", "mean_kl_from_logits", "kl_to_retrain", "KLToRetrain"]


@jax.jit
def kl_divergence_from_logits(logits_p: ArrayLike, logits_q: ArrayLike) -> jax.Array:
  """Per-row KL(softmax(logits_p) || softmax(logits_q)), [N, K] x [N, K] -> [N] (nats, >= 0)."""
  logp = jax.nn.log_softmax(jnp.asarray(logits_p, jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(jnp.asarray(logits_q, jnp.float32), axis=-1)
  # Rounding can give -1e-8 for identical rows; KL is non-negative by definition.
  return jnp.maximum(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1), 0.0)


def mean_kl_from_logits(logits_p: ArrayLike, logits_q: ArrayLike) -> float:
  """Mean over rows of KL(p || q); NaN for no rows."""
  if len(logits_p) == 0:
    return float("nan")
  return float(np.mean(np.asarray(kl_divergence_from_logits(logits_p, logits_q), np.float64)))


def kl_to_retrain(model: Any, unlearned_vars: Any, retrain_vars: Any, images: ArrayLike, info: DataInfo,
                  batch_size: int = 512) -> float:
  """Mean KL(p_unlearned || p_retrain) over `images` (raw [0,1], normally `data.forget_test.images`)."""
  lp = predict_logits(model, unlearned_vars, images, info, batch_size)
  lq = predict_logits(model, retrain_vars, images, info, batch_size)
  return mean_kl_from_logits(lp, lq)


def kl(model: Any, variables: Any, data: UnlearnData, *, retrain_vars: Any, batch_size: int = 512) -> float:
  """The `kl` metric of one model: mean KL(p_model || p_retrain) in nats (module docstring).

  Measured on `accuracy.forget_eval_split(data)` (the forget test images, or the forgotten training
  samples in random-sample forgetting), as the `MetricSuite` does; `retrain_vars` are the Retrain
  model's variables (same `model`). `metrics.kl(...)` (the module) calls this function.
  """
  return kl_to_retrain(model, variables, retrain_vars, forget_eval_split(data).images, data.info,
                       batch_size)


@register("kl", columns=(("kl_to_retrain", "KL to Retrain", "{:.4f}"),), order=70, needs_retrain=True)
class KLToRetrain(Evaluator):
  """Mean KL(p_unlearned ‖ p_retrain) on `accuracy.forget_eval_split` (Retrain's logits cached)."""

  def __init__(self, suite):
    super().__init__(suite)
    self._retrain_logits = None

  def __call__(self, out) -> dict:
    d = self.suite.data
    has_ftest = bool(np.any(d.forget_test_mask))
    mine = out.logits("test")[np.asarray(d.forget_test_mask, bool)] if has_ftest else \
        out.logits("forget_train")
    if self._retrain_logits is None:
      self._retrain_logits = self.suite.logits_of(self.suite.retrain, forget_eval_split(d).images)
    return {"kl_to_retrain": mean_kl_from_logits(mine, self._retrain_logits)}


make_callable(__name__)
