"""Forget / retain accuracy on the test split (ISPF paper §4.1, "Classification Accuracies").

Reference: `ChildEden/ISPF unlearning_utils/metric.py: test_all_in_one`.

Protocol:
* `acc_forget` = top-1 accuracy (percent) on the test images of the forget classes (the test split's
  forget view, `data.forget_test`); `acc_retain` = accuracy on the rest of the test split
  (`data.retain_test`).
* Random-sample forgetting has no forget *test* images (the forgotten samples are training samples),
  so `acc_forget` is then measured on the forgotten training samples `data.forget_train`, as the SSD
  repository does (`if-loops/selective-synaptic-dampening`, random forgetting:
  `forget_valid_dl = forget_train_dl`).
Inference is batched and jitted (`train.evaluate.predict_logits`, eval-mode BatchNorm).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.data import Split, UnlearnData
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.train.evaluate import predict_logits

__all__ = ["accuracy", "masked_accuracy", "forget_eval_split", "accuracy_from_logits",
           "forget_retain_accuracy", "Accuracy"]


def masked_accuracy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
  """Top-1 accuracy in percent over rows where `mask` is True (all rows if None); NaN if none."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  correct = logits.argmax(-1) == labels
  if mask is not None:
    correct = correct[np.asarray(mask, bool)]
  return float(100.0 * correct.mean()) if correct.size else float("nan")


def forget_eval_split(data: UnlearnData) -> Split:
  """The images `acc_forget` (and `kl_to_retrain`) are measured on: forget_test, or forget_train when
  the test split has no forget images (random-sample forgetting)."""
  return data.forget_test if np.any(data.forget_test_mask) else data.forget_train


def accuracy_from_logits(test_logits: ArrayLike, test_labels: ArrayLike, forget_test_mask: ArrayLike,
                         forget_train_logits: ArrayLike | None = None,
                         forget_train_labels: ArrayLike | None = None) -> dict[str, float]:
  """The metric from precomputed logits (the `MetricSuite` shares one forward pass between metrics)."""
  forget_test_mask = np.asarray(forget_test_mask, bool)
  if forget_test_mask.any() or forget_train_logits is None:
    acc_forget = masked_accuracy(test_logits, test_labels, forget_test_mask)
  else:
    acc_forget = masked_accuracy(forget_train_logits, forget_train_labels)
  return {"acc_forget": acc_forget,
          "acc_retain": masked_accuracy(test_logits, test_labels, ~forget_test_mask)}


def forget_retain_accuracy(model: Any, variables: Any, data: UnlearnData, batch_size: int = 512
                           ) -> dict[str, float]:
  """{'acc_forget', 'acc_retain'} in percent for `model` with `variables` on `data` (an UnlearnData).

  One batched forward pass over the test split; in random-sample forgetting a second one over the
  forgotten training samples.
  """
  test_logits = predict_logits(model, variables, data.test.images, data.info, batch_size)
  ft_logits = ft_labels = None
  if not np.any(data.forget_test_mask):
    ft = data.forget_train
    ft_logits = predict_logits(model, variables, ft.images, data.info, batch_size)
    ft_labels = ft.labels
  return accuracy_from_logits(test_logits, data.test.labels, data.forget_test_mask, ft_logits,
                              ft_labels)


def accuracy(model: Any, variables: Any, data: UnlearnData, *, batch_size: int = 512) -> dict[str, float]:
  """The `acc` metric of one model: {'acc_forget', 'acc_retain'} in percent (module docstring).

  `model` is any classifier `models.as_model` accepts (our own need no conversion), `variables` its
  variables, `data` an `UnlearnData` (`data.make_unlearn_data`). Same as `forget_retain_accuracy`; the
  `MetricSuite` gives the same numbers from its shared forward passes. `metrics.accuracy(...)` (the
  module) calls this function.
  """
  return forget_retain_accuracy(model, variables, data, batch_size)


@register("acc", columns=(("acc_forget", "Acc D_f test (%)", "{:.2f}"),
                          ("acc_retain", "Acc D_r test (%)", "{:.2f}")), order=10)
class Accuracy(Evaluator):
  """`acc_forget` / `acc_retain` (percent) from the shared test and forget-train logits."""

  def __call__(self, out) -> dict:
    d = self.suite.data
    forget_y = np.asarray(d.train.labels)[self.suite.forget_idx]
    return accuracy_from_logits(out.logits("test"), np.asarray(d.test.labels), d.forget_test_mask,
                                out.logits("forget_train"), forget_y)


make_callable(__name__)
