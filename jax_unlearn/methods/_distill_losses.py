"""The equations of data-free unlearning by distillation (ISPF, Zhang et al. AAAI'25), as pure functions.

Generator losses (DFQ, Eq. 2-5 and Eq. 7 of ISPF), the sample filters (GKT's PreFilter, BlockF), the
distillation targets (PostFilter, Eq. 8-9; PD, App. I), the masked KL and the retain entropy (Eq. 11),
and the engine's two optimisers. `forget_mask` is always a [K] bool vector of the classes in F. The
engine that runs them is `methods.distill`; these are re-exported there.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

__all__ = ["bn_statistics_loss", "one_hot_loss", "balance_loss", "activation_loss", "adversarial_loss",
           "inhibited_synthesis_loss", "postfilter_row", "postfilter", "pd_teacher_probs",
           "prefilter_mask", "blockf_mask", "masked_kl", "retain_entropy", "cosine_lr"]

# ----------------------------------------------------------------------------------------------------
# Losses, filters and targets (pure functions; `forget_mask` is a [K] bool vector of the classes in F).

def bn_statistics_loss(stats: Sequence[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]) -> jax.Array:
  """L_BN of DFQ/DeepInversion: Σ_l ‖σ²_l − v_l‖₂ + ‖μ_l − m_l‖₂ (`ChildEden/ISPF datafree/hooks.py`).

  `stats` is a list of (input mean μ_l, input *biased* variance σ²_l, running mean m_l, running var v_l),
  one per teacher BatchNorm (`models.bn_input_stats`). The norms are plain (unsquared) L2 norms as in the
  reference hook; `optax.safe_norm` keeps the gradient finite when a gap is exactly zero.
  """
  total = jnp.zeros((), jnp.float32)
  for mean, var, run_mean, run_var in stats:
    total = total + optax.safe_norm(run_var - var, 0.0) + optax.safe_norm(run_mean - mean, 0.0)
  return total


def one_hot_loss(t_logits: jax.Array) -> jax.Array:
  """L_oh: mean_b CE(z^T_b, argmax z^T_b), the instance-entropy term of DFQ.

  Reference: `ChildEden/ISPF datafree/synthesis/generative_unlearning.py`.
  """
  labels = jnp.argmax(t_logits, -1)
  return optax.softmax_cross_entropy_with_integer_labels(t_logits, labels).mean()


def balance_loss(t_logits: jax.Array) -> jax.Array:
  """L_bal: Σ_c p̄_c log p̄_c with p̄ the batch-mean teacher softmax (negative entropy).

  Reference: `ChildEden/ISPF datafree/synthesis/generative_unlearning.py`.
  """
  p_bar = jax.nn.softmax(t_logits, -1).mean(0)
  return jnp.sum(jax.scipy.special.xlogy(p_bar, p_bar))


def activation_loss(t_features: jax.Array) -> jax.Array:
  """L_act (DAFL): −mean |f^T| of the teacher's penultimate features (weight 0 in ISPF's script)."""
  return -jnp.mean(jnp.abs(t_features))


def _kl_terms(t_logits, s_logits):
  """Element-wise k_bc = p^T_bc (log p^T_bc − log p^S_bc), as `F.kl_div(log p^S, p^T, 'none')`."""
  p_t = jax.nn.softmax(t_logits, -1)
  return jax.scipy.special.xlogy(p_t, p_t) - p_t * jax.nn.log_softmax(s_logits, -1)


def adversarial_loss(t_logits: jax.Array, s_logits: jax.Array) -> jax.Array:
  """L_adv of DFKD/GKT/PF/BlockF (ISPF paper Eq. 2): −KL(p^T ‖ p^S), T = 1, batchmean.

  Reference: `ChildEden/ISPF datafree/criterions.py: kldiv`.

  Minimising it makes the generator seek samples on which student and teacher disagree (Eq. 2–5).
  """
  return -jnp.sum(_kl_terms(t_logits, s_logits)) / t_logits.shape[0]


def inhibited_synthesis_loss(t_logits: jax.Array, s_logits: jax.Array, forget_mask: ArrayLike) -> jax.Array:
  """Inhibited Synthesis, ISPF paper Eq. 7 in its code form (`generative_unlearning.py`).

  L_adv^IS = (1/B) Σ_b [ Σ_{c∈F} k_bc − Σ_{c∈R} k_bc ],  k_bc = p^T_bc (log p^T_bc − log p^S_bc).

  The generator still maximises the teacher–student gap on retained classes, but *minimises* it on the
  forget classes; since the student's forget probability stays tiny, this drives the teacher's forget
  probability (and hence forget-class synthesis) down. Gradients flow through both networks.
  """
  k = _kl_terms(t_logits, s_logits)
  signed = jnp.where(jnp.asarray(forget_mask, bool)[None, :], k, -k)
  return jnp.sum(signed) / t_logits.shape[0]


def postfilter_row(z: jax.Array, forget_mask: ArrayLike, tau: ArrayLike, gated: ArrayLike = True
                   ) -> jax.Array:
  """PostFilter on one row of teacher logits, ISPF paper Eq. 8–9 as implemented in
  `ChildEden/ISPF unlearning_utils/dfkd_unlearning_strategies.py`.

  With m = min_c z_c and M_c = [c ∈ F] ∧ [p_c > τ] (gate, reference code; M_c = [c ∈ F] if not gated):
    Δ = Σ_c M_c (z_c − m)                  (Eq. 8)
    z̃_c = z_c + Δ / (K − |F|)  for c ∈ R   (Eq. 9)
    z̃_c = m                   where M_c    (forget logits not selected by the gate are unchanged).
  The retained logits all move by one constant, so softmax restricted to R is unchanged.
  """
  forget_mask = jnp.asarray(forget_mask, bool)
  p = jax.nn.softmax(z, -1)
  m = jnp.min(z)
  sel = forget_mask & jnp.where(jnp.asarray(gated), p > tau, True)
  delta = jnp.sum(jnp.where(sel, z - m, 0.0))
  n_retain = z.shape[-1] - jnp.sum(forget_mask)
  z_tilde = jnp.where(forget_mask, z, z + delta / n_retain)
  return jnp.where(sel, m, z_tilde)


postfilter = jax.vmap(postfilter_row, in_axes=(0, None, None, None))
postfilter.__doc__ = "`postfilter_row` over the rows of [B, K] teacher logits (Eq. 8–9 of ISPF)."


def pd_teacher_probs(t_logits: jax.Array, forget_mask: ArrayLike, tau: ArrayLike = 0.0,
                     gated: ArrayLike = False) -> jax.Array:
  """PD target (ISPF paper App. I; not in the reference code): zero the forget probabilities and renormalise.

  p̃_c = p^T_c [c ∈ R] / Σ_{r∈R} p^T_r, i.e. softmax with forget logits set to −∞. Ungated by default (the
  paper describes PD as unconditional); `gated=True` zeroes only forget entries with p^T_c > τ. Pair it
  with `masked_kl(..., target_is_probs=True)`, which uses xlogy so that 0·log 0 = 0.
  """
  forget_mask = jnp.asarray(forget_mask, bool)
  drop = forget_mask[None, :] & jnp.where(jnp.asarray(gated), jax.nn.softmax(t_logits, -1) > tau, True)
  # The softmax over the kept logits: renormalising p after zeroing would be 0/0 = NaN once every
  # kept probability underflows (a logit gap of ~104 in float32).
  return jax.nn.softmax(jnp.where(drop, -jnp.inf, t_logits), -1)


def prefilter_mask(t_logits: jax.Array, forget_mask: ArrayLike, tau: ArrayLike) -> jax.Array:
  """GKT PreFilter (ISPF paper Eq. 3): keep row b iff p^T_bf < τ (strict) for every forget class f."""
  p = jax.nn.softmax(t_logits, -1)
  ok = jnp.where(jnp.asarray(forget_mask, bool)[None, :], p < tau, True)
  return jnp.all(ok, -1)


def blockf_mask(t_logits: jax.Array, forget_mask: ArrayLike) -> jax.Array:
  """BlockF (ISPF paper §4.1, "Baselines"): keep row b iff argmax_c z^T_bc ∉ F."""
  return ~jnp.asarray(forget_mask, bool)[jnp.argmax(t_logits, -1)]


def masked_kl(t_logits_or_probs: jax.Array, s_logits: jax.Array, mask: jax.Array | None = None,
              target_is_probs: bool = False) -> jax.Array:
  """KL(p^T ‖ p^S) with T = 1, `batchmean` over the kept rows only (ISPF paper Eq. 1 and 10).

  (1/N_kept) Σ_{b kept} Σ_c p_bc (log p_bc − log p^S_bc); the target is logits (softmaxed here) or, with
  `target_is_probs`, probabilities (PD). An empty mask gives 0 (the caller skips such steps anyway).
  """
  p = t_logits_or_probs if target_is_probs else jax.nn.softmax(t_logits_or_probs, -1)
  row = jnp.sum(jax.scipy.special.xlogy(p, p) - p * jax.nn.log_softmax(s_logits, -1), -1)
  if mask is None:
    return row.mean()
  m = mask.astype(row.dtype)
  return jnp.sum(row * m) / jnp.maximum(jnp.sum(m), 1.0)


def retain_entropy(t_logits: jax.Array, forget_mask: ArrayLike, mask: jax.Array | None = None) -> jax.Array:
  """ISPF paper Eq. 11: H = −Σ_{b kept} Σ_{c∈R} q_bc log q_bc, q_b = softmax over retain logits.

  Summed (not averaged) over the N samples taking part in distillation, as the reference's `entropy()`.
  The PostFilter shift leaves q unchanged, so raw teacher logits are used.
  """
  q = jax.nn.softmax(jnp.where(jnp.asarray(forget_mask, bool)[None, :], -jnp.inf, t_logits), -1)
  h = -jnp.sum(jax.scipy.special.xlogy(q, q), -1)
  return jnp.sum(h if mask is None else h * mask.astype(h.dtype))


def cosine_lr(lr: ArrayLike, eta_min: ArrayLike, t_max: ArrayLike, t: ArrayLike) -> jax.Array:
  """PyTorch `CosineAnnealingLR` closed form: η_min + (η_0 − η_min)(1 + cos(π t / T_max)) / 2.

  `t` counts scheduler steps, taken once per post-warm-up epoch (`ChildEden/ISPF UN_datafree_kd.py`;
  T_max = 200 there whatever the number of epochs).
  """
  return eta_min + (lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.asarray(t, jnp.float32) / t_max))


# The engine's optimisers (`ChildEden/ISPF UN_datafree_kd.py`), kept beside its losses.

def _sgd_with_wd(learning_rate, momentum, weight_decay):
  # PyTorch SGD: wd·θ joins the gradient before the momentum buffer; lr multiplies the buffer.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def _student_tx(lr=0.1, momentum=0.9, weight_decay=1e-4) -> optax.GradientTransformation:
  """SGD(momentum, PyTorch weight decay) with its hyper-parameters in the optimiser state, so the
  cosine schedule (set per loop from `sched_step`) and the values themselves are traced."""
  return optax.inject_hyperparams(_sgd_with_wd)(learning_rate=lr, momentum=momentum,
                                               weight_decay=weight_decay)


def _generator_tx(lr_g=1e-3) -> optax.GradientTransformation:
  """Adam, betas (0.5, 0.999), no schedule (the reference's `--lr_g 1e-3`); lr_g is in the state."""
  return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2"))(learning_rate=lr_g, b1=0.5,
                                                                        b2=0.999)
