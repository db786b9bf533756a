"""DiStruction's equations (Dugue 2024): the KL between diagonal Gaussians, its analytic gradients, the
unlearning objectives U and one BGD forgetting step, as pure functions, and `ForgetBatches`, the only
data source of the forgetting loop (the driver is `methods.distruction`, which re-exports these)."""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import DataError
from jax_unlearn.methods._posterior import bgd_tx, epoch_order, forward
from jax_unlearn.models import init_variables
from jax_unlearn.models.conv import convs_as_gemms
from jax_unlearn.optim.bgd import BGDState, bgd_expectations

__all__ = ["kl_diag_gaussians", "kl_grads", "UNLEARNING_OBJECTIVES", "forget_step", "forget_chunk",
           "make_teacher", "ForgetBatches"]


def _variables(params, batch_stats):
  return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


# ---------------------------------------------------------------------------------------------------
# KL between diagonal Gaussians (DiStruction paper §3.2)

def kl_diag_gaussians(mu_q: Any, sigma_q: Any, mu_p: Any, sigma_p: Any) -> jax.Array:
  """KL(q‖p) = ½ Σ_i [(μ_p−μ_q)²/σ_p² + σ_q²/σ_p² − 1 + log(σ_p²/σ_q²)], summed over every leaf.

  Evaluated as ½ Σ [((μ_p−μ_q)/σ_p)² + u(2+u) − 2 log1p(u)] with u = σ_q/σ_p − 1: the same value, but
  when q is near p (early forgetting iterations, small λ) the naive form subtracts two logs of
  ~−4 and its float32 rounding dominates (it even went negative, −0.006 for one BGD step on the
  README's model); this form keeps full relative precision (tested against float64)."""
  def leaf(mq, sq, mp, sp):
    u = (sq - sp) / sp
    return 0.5 * jnp.sum(jnp.square((mp - mq) / sp) + u * (2.0 + u) - 2.0 * jnp.log1p(u))
  terms = jax.tree.leaves(jax.tree.map(leaf, mu_q, sigma_q, mu_p, sigma_p))
  return sum(terms, jnp.zeros((), jnp.float32))


def kl_grads(mu_q: Any, sigma_q: Any, mu_p: Any, sigma_p: Any) -> tuple[Any, Any]:
  """(∂KL/∂μ_q, ∂KL/∂σ_q) = ((μ_q−μ_p)/σ_p², σ_q/σ_p² − 1/σ_q): DiStruction paper §3.2 with
  the sign of the mean gradient corrected (the paper prints (μ_p−μ_q)/σ_p², which would push q
  *away* from p)."""
  d_mu = jax.tree.map(lambda mq, mp, sp: (mq - mp) / jnp.square(sp), mu_q, mu_p, sigma_p)
  d_sigma = jax.tree.map(lambda sq, sp: sq / jnp.square(sp) - 1.0 / sq, sigma_q, sigma_p)
  return d_mu, d_sigma


# ---------------------------------------------------------------------------------------------------
# Unlearning objectives U (per-sample values; minimised)

def _entropy_objective(logits, labels, target):
  del labels, target
  logp = jax.nn.log_softmax(logits)
  return jnp.sum(jnp.exp(logp) * logp, axis=-1)          # −H(softmax)


def _entropy_other_objective(logits, labels, target):
  """KL(u_{≠y} ‖ softmax f(x)) with u_{≠y} the uniform distribution over the K−1 classes other than y.

  Maximum entropy *among the other classes* with the label's probability driven to 0: its minimiser
  (value 0) is p_y = 0 and p_k = 1/(K−1) for k ≠ y. Pure −H ('entropy') is minimised by the uniform
  distribution over all K classes, where the argmax is a tie that the label usually still wins
  (BUILD_NOTES: on digits H reaches 2.29 of log 10 = 2.30 while forget accuracy wanders 30–100 %).
  This is also the expectation of 'random_label' over its random other labels."""
  del target
  num_classes = logits.shape[-1]
  others = 1.0 - jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(others * logp, axis=-1) / (num_classes - 1) - jnp.log(num_classes - 1.0)


def _neggrad_objective(logits, labels, target):
  del target
  return -optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def _bad_teacher_objective(logits, labels, target):
  del labels                                              # target: the random teacher's probabilities
  return optax.losses.kl_divergence(jax.nn.log_softmax(logits), target)


def _random_label_objective(logits, labels, target):
  del labels                                              # target: random other labels
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, target)


UNLEARNING_OBJECTIVES: dict[str, Callable] = {
    "entropy": _entropy_objective, "entropy_other": _entropy_other_objective,
    "neggrad": _neggrad_objective,
    "bad_teacher": _bad_teacher_objective, "random_label": _random_label_objective}


def make_teacher(model, key, image_shape):
  """A randomly initialised network of `model`'s architecture: the 'bad_teacher' objective's target."""
  return init_variables(model, key, (1,) + tuple(image_shape))


def _objective_target(objective, apply_fn, teacher, key, x, labels, num_classes):
  if objective == "bad_teacher":
    return jax.nn.softmax(apply_fn(teacher, x, train=False))
  if objective == "random_label":
    return (labels + jax.random.randint(key, labels.shape, 1, num_classes)) % num_classes
  return labels


def forget_step(q: BGDState, batch_stats: Any, p: BGDState, key: jax.Array, images: jax.Array,
                labels: jax.Array, lam: jax.Array, teacher: Any, mean: jax.Array, std: jax.Array, *,
                apply_fn: Callable[..., Any], tx: optax.GradientTransformationExtraArgs, objective: str,
                num_samples: int, bn_mode: str, vectorize: str, num_classes: int,
                max_std_ratio: float = 0.0) -> tuple[BGDState, Any, dict]:
  """One DiStruction iteration (paper §3.2): BGD on (1−λ)E_q[U_sum] plus the analytic λ KL(q‖p).

  `max_std_ratio` > 0 caps σ_q at that multiple of σ_p after the step (a stability guard, not in the
  paper: for a concave U such as NegGrad, E[gε] < 0 grows σ_q without bound, and the KL pull on the
  mean, η λ σ_q²/σ_p², then overshoots and diverges once it exceeds 2).

  Returns (q, batch_stats, metrics) with metrics {'objective': E_q[U] (batch mean), 'kl': KL after
  the step, 'batch_acc': accuracy of μ_q on this forget batch before the step, 'std_ratio_mean' and
  'std_ratio_max' of σ_q/σ_p}."""
  x = normalize(images, mean, std)
  k_mc, k_target = jax.random.split(key)
  target = _objective_target(objective, apply_fn, teacher, k_target, x, labels, num_classes)
  u_fn = UNLEARNING_OBJECTIVES[objective]

  def loss_fn(params):
    logits, new_bs = forward(apply_fn, params, batch_stats, x, bn_mode)
    return u_fn(logits, labels, target).mean(), new_bs

  ex = bgd_expectations(loss_fn, q, k_mc, num_samples, batch_size=labels.shape[0], has_aux=True,
                        vectorize=vectorize)
  d_mu, d_sigma = kl_grads(q.mean, q.std, p.mean, p.std)
  e_grad = jax.tree.map(lambda g, k: (1.0 - lam) * g + lam * k, ex.e_grad, d_mu)
  e_grad_eps = jax.tree.map(lambda g, k: (1.0 - lam) * g + lam * k, ex.e_grad_eps, d_sigma)
  mu_logits = apply_fn(_variables(q.mean, batch_stats), x, train=False)
  _, q = tx.update(e_grad, q, None, e_grad_eps=e_grad_eps)
  if max_std_ratio:
    q = q._replace(std=jax.tree.map(lambda s, sp: jnp.minimum(s, max_std_ratio * sp), q.std, p.std))
  ratio = jnp.concatenate([jnp.ravel(s / sp) for s, sp in zip(jax.tree.leaves(q.std),
                                                               jax.tree.leaves(p.std))])
  metrics = {"objective": ex.loss, "kl": kl_diag_gaussians(q.mean, q.std, p.mean, p.std),
             "batch_acc": 100.0 * jnp.mean(mu_logits.argmax(-1) == labels),
             "std_ratio_mean": ratio.mean(), "std_ratio_max": ratio.max()}
  return q, ex.aux, metrics


@functools.lru_cache(maxsize=32)
def forget_chunk(apply_fn, mean_eta, std_init, objective, num_samples, bn_mode, vectorize, num_classes,
                  max_std_ratio, matmul):
  """jit(`lax.scan` over a chunk of forgetting steps of vmap-over-λ `forget_step`), built once per
  static setting so that repeated `forget` calls (a λ sweep, every U, tests) reuse one compiled program.

  Signature: (q, batch_stats, p, key, t0, images [C, B, ...], labels [C, B], lams, teacher, mean, std)
  -> (q, batch_stats, metrics with leaves [C, L]). Step t0 + i uses `fold_in(key, t0 + i)`.
  `matmul` routes every conv through `models.conv.matmul_conv_general_dilated` (im2col GEMMs): under
  the λ and Monte-Carlo vmaps each conv has a batched kernel, which XLA:CPU otherwise runs as a slow
  grouped convolution, and a conv gradient inside `lax.scan` hits jax-ml/jax#12868."""
  tx = bgd_tx(mean_eta, std_init)
  step = jax.vmap(
      functools.partial(forget_step, apply_fn=apply_fn, tx=tx, objective=objective,
                        num_samples=num_samples, bn_mode=bn_mode, vectorize=vectorize,
                        num_classes=num_classes, max_std_ratio=max_std_ratio),
      in_axes=(0, 0, None, None, None, None, 0, None, None, None))

  def chunk(q, batch_stats, p, key, t0, images, labels, lams, teacher, mean, std):
    def body(carry, xs):
      q, bs = carry
      t, x, y = xs
      q, bs, m = step(q, bs, p, jax.random.fold_in(key, t), x, y, lams, teacher, mean, std)
      return (q, bs), m

    ts = t0 + jnp.arange(labels.shape[0])
    with convs_as_gemms(matmul):
      (q, batch_stats), m = jax.lax.scan(body, (q, batch_stats), (ts, images, labels))
    return q, batch_stats, m

  return jax.jit(chunk)


class ForgetBatches:
  """Minibatches of the forget set, and nothing else.

  Built from the forget split itself (or its `(images, labels)`); every batch it hands out is checked
  against a fingerprint of each forget sample (and, for class forgetting, against the forget classes),
  raising DataError on anything else. DiStruction is repair-free: the forgetting loop sees only this."""

  def __init__(self, forget_split, batch_size: int, seed: int, forget_classes: Sequence[int] = ()):
    x, y = (forget_split.images, forget_split.labels) if hasattr(forget_split, "labels") else forget_split
    self.images, self.labels = np.asarray(x, np.float32), np.asarray(y, np.int32)
    n = len(self.labels)
    if n == 0:
      raise DataError("DiStruction got an empty forget set; set --config.forget.classes (or "
                      "num_samples) so that some training samples are forgotten")
    self.forget_classes = tuple(int(c) for c in forget_classes)
    if self.forget_classes and not np.isin(self.labels, self.forget_classes).all():
      bad = sorted(set(self.labels.tolist()) - set(self.forget_classes))
      raise DataError(f"DiStruction's forget source got labels {bad} outside the forget classes "
                      f"{self.forget_classes}; pass ctx.data.forget_train, never retain data")
    self._fingerprints = {self._fingerprint(x) for x in self.images}
    self.batch_size = min(int(batch_size), n)
    self.seed = int(seed)
    self.batches_per_epoch = n // self.batch_size

  def __len__(self) -> int:
    return len(self.labels)

  @staticmethod
  def _fingerprint(x) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(x, np.float32).tobytes(), digest_size=16).digest()

  def check(self, images, labels) -> None:
    """Raises DataError unless every (image, label) is a forget sample."""
    labels = np.asarray(labels)
    if self.forget_classes and not np.isin(labels, self.forget_classes).all():
      raise DataError("a DiStruction forgetting batch holds a label outside the forget classes; only "
                      "forget samples may be used")
    if not all(self._fingerprint(x) in self._fingerprints for x in np.asarray(images)):
      raise DataError("a DiStruction forgetting batch holds a sample that is not in the forget set; "
                      "only forget samples may be used")

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch `step` (deterministic: pass `step // batches_per_epoch` reshuffles the forget set)."""
    epoch, i = divmod(int(step), self.batches_per_epoch)
    idx = epoch_order(len(self.labels), self.seed, epoch)[i * self.batch_size:(i + 1) * self.batch_size]
    images, labels = self.images[idx], self.labels[idx]
    self.check(images, labels)
    return images, labels
