"""Data-free distillation engine (DFKD/BlockF/GKT/IS/PF/ISPF/PD): loss closed forms and invariants,
masked BN/KL = physically filtered batch, scanned epoch = Python loop, empty-batch skip, end-to-end runs."""

import dataclasses
import json
import os
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import base, data_free, distill
from jax_unlearn.models import AllCNN, BatchNorm, bn_input_stats, create_generator, init_variables
from jax_unlearn.report import method_plots

K = 10
FORGET = (3,)
SHAPE = (8, 8, 1)
MEAN, STD = (0.5,), (0.25,)
KERNEL_SCALE = 40.0


class TinyNet(nn.Module):
  """Two conv-BN-ReLU blocks and a linear head, with the classifier call signature (fast to compile)."""
  num_classes: int = K
  width: float = 1.0

  @nn.compact
  def __call__(self, x, train=False, mask=None, features=False):
    for ch in (max(1, round(4 * self.width)), max(1, round(6 * self.width))):
      x = nn.Conv(ch, (3, 3), use_bias=False)(x)
      x = nn.relu(BatchNorm(use_running_average=not train)(x, mask=mask))
    feat = x.mean((1, 2))
    logits = nn.Dense(self.num_classes)(feat)
    return (logits, feat) if features else logits


def _teacher(forget_bias=-4.0, seed=0):
  """A random TinyNet whose forget-class logit is pushed down (p_f ~ 2e-3 < tau = 0.01)."""
  model = TinyNet()
  v = init_variables(model, jax.random.key(seed), (1,) + SHAPE)
  bias = v["params"]["Dense_0"]["bias"]
  v["params"]["Dense_0"]["bias"] = bias.at[jnp.asarray(FORGET)].add(forget_bias)
  # A sharper head makes the teacher's output depend on the input (a fresh one is nearly constant).
  v["params"]["Dense_0"]["kernel"] = v["params"]["Dense_0"]["kernel"] * KERNEL_SCALE
  return model, v


def _cfg(**kw):
  c = distill.default_config()
  c.update(dict(batch_size=16, nz=8, ngf=4, kd_steps=4, loops_per_epoch=2, warmup=1, epochs=1, lr=0.05,
                plots=False))
  c.update(kw)
  return c


def _engine(strategy="ispf", **kw):
  cfg = _cfg(**kw)
  model, tv = _teacher()
  gen = create_generator(cfg.generator, SHAPE[0], SHAPE[2], nz=cfg.nz, ngf=cfg.ngf)
  st = distill.STRATEGIES[strategy] if isinstance(strategy, str) else strategy
  eng = distill.make_engine(model, model, gen, cfg, num_classes=K, mean=MEAN, std=STD)
  knobs = distill.make_knobs(st, cfg, forget_classes=FORGET, num_classes=K)
  return eng, tv, distill.init_state(eng, knobs, jax.random.key(1))


# ---------------------------------------------------------------------------------------------------
# Pure losses, filters and targets.

def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _pf_logits():
  rng = np.random.RandomState(0)
  z = rng.randn(64, K).astype(np.float32) * 3
  z[::3, 3] -= 8.0   # forget logit far below tau in every third row: the gate must leave it alone
  z[1::3, 7] += 6.0  # ... and far above it in others
  return z


@pytest.mark.parametrize("gated", [True, False])
def test_postfilter_invariants(gated):
  z = _pf_logits()
  fm = np.zeros(K, bool)
  fm[[3, 7]] = True
  tau = 0.01
  out = np.asarray(distill.postfilter(jnp.asarray(z), jnp.asarray(fm), tau, gated))
  chex.assert_shape(out, z.shape)
  p = _np_softmax(z)
  m = z.min(-1)
  sel = fm[None] & ((p > tau) if gated else np.ones_like(p, bool))
  if gated:  # the data has forget logits on both sides of the gate
    assert sel.any() and (fm[None] & ~sel).any()
  else:
    assert sel[:, fm].all()
  # Forget logits chosen by the gate become the row minimum; the others are unchanged.
  np.testing.assert_allclose(out[sel], np.broadcast_to(m[:, None], z.shape)[sel], rtol=1e-6)
  np.testing.assert_array_equal(out[fm[None] & ~sel], z[fm[None] & ~sel])
  # Eq. 8-9: the removed mass is spread evenly over the retained logits.
  delta = np.where(sel, z - m[:, None], 0.0).sum(-1)
  np.testing.assert_allclose(out[:, ~fm] - z[:, ~fm], np.repeat((delta / (~fm).sum())[:, None],
                                                                (~fm).sum(), 1), rtol=1e-5, atol=1e-5)
  # Softmax restricted to the retained classes is unchanged.
  np.testing.assert_allclose(_np_softmax(out[:, ~fm]), _np_softmax(z[:, ~fm]), rtol=1e-5, atol=1e-6)
  # Rows whose forget probability is at most tau are untouched when gated.
  if gated:
    untouched = ~sel.any(-1)
    assert untouched.any()
    np.testing.assert_array_equal(out[untouched], z[untouched])


def test_postfilter_row_matches_vmap():
  z = jnp.asarray(_pf_logits())
  fm = jnp.zeros(K, bool).at[3].set(True)
  rows = jnp.stack([distill.postfilter_row(r, fm, 0.01, True) for r in z[:5]])
  np.testing.assert_allclose(rows, distill.postfilter(z[:5], fm, 0.01, True), rtol=1e-6)


def _np_kl_terms(t, s):
  pt, ps = _np_softmax(t.astype(np.float64)), _np_softmax(s.astype(np.float64))
  return pt * (np.log(pt) - np.log(ps))


def test_inhibited_synthesis_loss_closed_form_and_sign():
  rng = np.random.RandomState(1)
  t, s = rng.randn(8, K).astype(np.float32), rng.randn(8, K).astype(np.float32)
  fm = np.zeros(K, bool)
  fm[FORGET] = True
  k = _np_kl_terms(t, s)
  want = (k[:, fm].sum() - k[:, ~fm].sum()) / 8
  got = distill.inhibited_synthesis_loss(jnp.asarray(t), jnp.asarray(s), jnp.asarray(fm))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without forget classes it is the plain adversarial term −KL(T‖S).
  np.testing.assert_allclose(distill.inhibited_synthesis_loss(t, s, jnp.zeros(K, bool)),
                             distill.adversarial_loss(t, s), rtol=1e-6)
  np.testing.assert_allclose(distill.adversarial_loss(t, s), -k.sum() / 8, rtol=1e-5)
  # Direction: with a student that gives the forget class ~0 probability, raising the teacher's
  # forget logit raises L_IS (so the generator, minimising it, lowers p^T_f) but lowers −KL (the plain
  # adversarial generator is rewarded for forget-class samples: the over-synthesis of ISPF §3.1).
  s_low = s.copy()
  s_low[:, FORGET] = -12.0

  def shift(loss_fn):
    return jax.grad(lambda a: loss_fn(jnp.asarray(t).at[:, 3].add(a), jnp.asarray(s_low)))(0.0)

  assert shift(lambda a, b: distill.inhibited_synthesis_loss(a, b, jnp.asarray(fm))) > 0
  assert shift(distill.adversarial_loss) < 0
  # The generator still maximises the teacher-student gap on retained classes: moving the student
  # towards the teacher on R raises L_IS.
  s_close = s_low.copy()
  s_close[:, ~fm] = t[:, ~fm]
  assert (distill.inhibited_synthesis_loss(t, s_close, jnp.asarray(fm))
          > distill.inhibited_synthesis_loss(t, s_low, jnp.asarray(fm)))


def test_generator_terms_closed_form():
  rng = np.random.RandomState(2)
  t = rng.randn(12, K).astype(np.float32) * 2
  p = _np_softmax(t.astype(np.float64))
  np.testing.assert_allclose(distill.one_hot_loss(t), -np.log(p.max(-1)).mean(), rtol=1e-5)
  pbar = p.mean(0)
  np.testing.assert_allclose(distill.balance_loss(t), (pbar * np.log(pbar)).sum(), rtol=1e-5)
  f = rng.randn(12, 7).astype(np.float32)
  np.testing.assert_allclose(distill.activation_loss(f), -np.abs(f).mean(), rtol=1e-6)
  stats = [tuple(jnp.asarray(rng.randn(5).astype(np.float32)) for _ in range(4)) for _ in range(3)]
  want = sum(np.linalg.norm(np.asarray(rv) - np.asarray(v)) + np.linalg.norm(np.asarray(rm) - np.asarray(m))
             for m, v, rm, rv in stats)
  np.testing.assert_allclose(distill.bn_statistics_loss(stats), want, rtol=1e-5)
  # Unsquared norms: a zero gap still has a finite (zero) gradient.
  zero = [(jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3))]
  g = jax.grad(lambda a: distill.bn_statistics_loss([(a, *zero[0][1:])]))(jnp.ones(3))
  assert np.all(np.isfinite(g))


def test_bn_statistics_loss_covers_every_teacher_bn():
  model = AllCNN(num_classes=K, width=0.1)
  v = jax.jit(lambda k: init_variables(model, k, (1,) + SHAPE))(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (6,) + SHAPE)
  stats = jax.jit(lambda v, x: bn_input_stats(model.apply(v, x, train=False, mutable=["bn_stats"])[1]
                                              ["bn_stats"]))(v, x)
  assert len(stats) == 8  # every BatchNorm of AllCNN (SPEC §1.7)
  for mean, var, rm, rv in stats:
    chex.assert_equal_shape([mean, var, rm, rv])
  # Running stats of a fresh model are (0, 1): L_BN is then Σ ‖1 − σ²‖ + ‖μ‖ over the BN inputs.
  want = sum(np.linalg.norm(1 - np.asarray(var)) + np.linalg.norm(np.asarray(mean))
             for mean, var, _, _ in stats)
  np.testing.assert_allclose(distill.bn_statistics_loss(stats), want, rtol=1e-5)


def test_filters_and_targets():
  fm = jnp.zeros(K, bool).at[3].set(True)
  t = jnp.zeros((4, K))
  t = t.at[0, 3].set(10.0)           # argmax 3, p_3 ~ 1
  t = t.at[1, 3].set(-10.0)          # p_3 ~ 0
  t = t.at[2, 5].set(10.0).at[2, 3].set(6.0)  # argmax 5 but p_3 ~ 0.018 > 0.01
  keep_gkt = distill.prefilter_mask(t, fm, 0.01)
  keep_blockf = distill.blockf_mask(t, fm)
  chex.assert_shape([keep_gkt, keep_blockf], (4,))
  chex.assert_type([keep_gkt, keep_blockf], bool)
  np.testing.assert_array_equal(keep_gkt, [False, True, False, False])  # row 3: p_3 = 0.1
  np.testing.assert_array_equal(keep_blockf, [False, True, True, True])
  assert not distill.prefilter_mask(t, fm, 0.0).any()  # strict `<`: tau = 0 rejects everything
  # PD: forget probability 0, retained ratios kept, rows sum to 1.
  q = distill.pd_teacher_probs(t, fm)
  p = jax.nn.softmax(t, -1)
  np.testing.assert_allclose(q[:, 3], 0.0)
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(q[:, :3] / q[:, 4:5], p[:, :3] / p[:, 4:5], rtol=1e-5)
  # Finite when every retained probability underflows (forget logit ~120 above the rest).
  extreme = distill.pd_teacher_probs(jnp.asarray([[0.0, 120.0, 1.0]]), jnp.asarray([False, True, False]))
  np.testing.assert_allclose(extreme, [_np_softmax(np.asarray([[0.0, -np.inf, 1.0]]))[0]], rtol=1e-6)
  gq = distill.pd_teacher_probs(t, fm, 0.05, True)  # gated: row 2's p_3 ~ 0.018 stays
  np.testing.assert_allclose(gq[2], p[2], rtol=1e-6)
  np.testing.assert_allclose(gq[0, 3], 0.0)
  # masked KL: batchmean over kept rows, also for probability targets with exact zeros (xlogy).
  s = jax.random.normal(jax.random.key(0), (4, K))
  mask = jnp.asarray([True, False, True, True])
  for tgt, probs in ((t, False), (q, True)):
    full = distill.masked_kl(tgt, s, None, probs)
    np.testing.assert_allclose(distill.masked_kl(tgt, s, jnp.ones(4, bool), probs), full, rtol=1e-6)
    np.testing.assert_allclose(distill.masked_kl(tgt, s, mask, probs),
                               distill.masked_kl(tgt[mask], s[mask], None, probs), rtol=1e-6)
    assert np.isfinite(full)
  # Eq. 11: per-row entropy of softmax over retain logits, summed over kept rows.
  h = distill.retain_entropy(t, fm, mask)
  pr = _np_softmax(np.asarray(t)[:, np.arange(K) != 3])
  np.testing.assert_allclose(h, -(pr * np.log(pr)).sum(-1)[np.asarray(mask)].sum(), rtol=1e-5)


def test_cosine_lr_matches_pytorch_closed_form():
  np.testing.assert_allclose(distill.cosine_lr(0.05, 2e-4, 200, 0), 0.05, rtol=1e-6)
  np.testing.assert_allclose(distill.cosine_lr(0.05, 2e-4, 200, 200), 2e-4, rtol=1e-5)
  np.testing.assert_allclose(distill.cosine_lr(0.05, 2e-4, 200, 100), (0.05 + 2e-4) / 2, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Engine.

@pytest.mark.parametrize("shape", [(4, 8, 8, 3, 5, 3, 1, ((1, 1), (1, 1))),
                                   (4, 8, 8, 3, 5, 3, 2, ((1, 1), (1, 1))),   # AllCNN's stride-2 conv
                                   (3, 9, 7, 2, 4, 3, 2, ((1, 1), (0, 2))),
                                   (2, 6, 6, 4, 3, 1, 1, ((0, 0), (0, 0))),
                                   (2, 8, 8, 2, 3, 3, 2, "SAME")])
def test_loop_safe_conv_matches_lax(shape):
  n, h, w_, c, o, k, s, pad = shape
  x = jax.random.normal(jax.random.key(0), (n, h, w_, c))
  w = jax.random.normal(jax.random.key(1), (k, k, c, o))
  dn = ("NHWC", "HWIO", "NHWC")

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), pad, dimension_numbers=dn)))

  ref = jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.value_and_grad(loss(distill.loop_safe_conv_general_dilated), (0, 1))(x, w)
  chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)


def test_engine_with_and_without_loop_safe_convs_agree():
  eng, _, state = _engine("gkt")
  x = jax.random.normal(jax.random.key(2), (16,) + SHAPE)
  t = jax.random.normal(jax.random.key(3), (16, K))
  mask = jnp.arange(16) % 3 > 0
  f = jax.jit(distill.student_loss_and_grads, static_argnums=0)
  outs = [f(dataclasses.replace(eng, loop_safe_convs=flag), state.knobs, state.s_params,
            state.s_batch_stats, x, t, mask) for flag in (True, False)]
  chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("target", ["kl", "pd"])
def test_masked_student_step_equals_filtered_batch(target):
  eng, _, state = _engine(distill.Strategy("t", prefilter="gkt", teacher_target=target))
  # Non-trivial running stats, so the running-average update is visible.
  state = state.replace(s_batch_stats=jax.tree.map(lambda a: a + 0.3, state.s_batch_stats))
  x = jax.random.normal(jax.random.key(2), (16,) + SHAPE)
  t = jax.random.normal(jax.random.key(3), (16, K)) * 2
  mask = jax.random.bernoulli(jax.random.key(4), 0.6, (16,))
  assert 2 <= int(mask.sum()) <= 14
  f = jax.jit(lambda x, t, m: distill.student_loss_and_grads(eng, state.knobs, state.s_params,
                                                             state.s_batch_stats, x, t, m))
  (l_m, (logits_m, bs_m)), g_m = f(x, t, mask)
  idx = np.flatnonzero(np.asarray(mask))
  (l_f, (logits_f, bs_f)), g_f = f(x[idx], t[idx], None)
  np.testing.assert_allclose(l_m, l_f, rtol=1e-5)
  np.testing.assert_allclose(logits_m[idx], logits_f, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(bs_m, bs_f, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(g_m, g_f, rtol=1e-4, atol=1e-6)
  # and it differs from the unmasked full batch (the test can fail)
  (l_all, _), _ = f(x, t, jnp.ones(16, bool))
  assert abs(float(l_all) - float(l_m)) > 1e-4


@pytest.fixture(scope="module")
def scan_setup():
  # IS with PreFilter: exercises the IS loss, masked BN/KL and partial batches. tau is set to the
  # median teacher forget probability of a synthetic batch, so about half of every batch is rejected.
  eng, tv, s0 = _engine("is", kd_steps=3, loops_per_epoch=3)
  _, t = distill.synthetic_batch(eng, tv, {"params": s0.g_params, "batch_stats": s0.g_batch_stats},
                                 jax.random.key(5))
  tau = jnp.median(jax.nn.softmax(t, -1)[:, FORGET[0]])
  return eng, tv, s0.replace(knobs=s0.knobs.replace(tau=tau))


def test_scanned_epoch_equals_python_loop(scan_setup):
  eng, tv, s0 = scan_setup
  scanned, looped = s0, s0
  for _ in range(2):  # a warm-up epoch, then a distillation epoch
    scanned = distill.run_epoch(eng, tv, scanned)
    looped = distill.begin_epoch(eng, looped)
    for _ in range(eng.loops_per_epoch):
      looped = distill.loop_step(eng, tv, looped)
    looped = distill.end_epoch(eng, looped)
    chex.assert_trees_all_equal_shapes_and_dtypes(scanned, s0)
    _assert_states_close(scanned, looped)
  d = distill.epoch_diagnostics(eng, scanned)
  assert d["epoch"] == 2 and d["phase"] == "distill"
  assert d["student_attempts"] >= eng.loops_per_epoch
  assert 0 < d["student_steps"] <= eng.kd_steps * eng.loops_per_epoch
  assert 0 < d["kept_fraction"] < 1  # partial batches: masked BN and KL are exercised
  assert int(scanned.step) == d["student_steps"]
  assert sum(d["gen_label_hist"]) == eng.batch_size * eng.loops_per_epoch
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), scanned.s_params, s0.s_params))


def _assert_states_close(a, b):
  np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
  la, lb = jax.tree.leaves(a.replace(key=0)), jax.tree.leaves(b.replace(key=0))
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "biu":
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def test_warmup_trains_generator_only(scan_setup):
  eng, tv, s0 = scan_setup
  s1 = distill.run_epoch(eng, tv, s0)
  chex.assert_trees_all_equal(s1.s_params, s0.s_params)
  chex.assert_trees_all_equal(s1.s_batch_stats, s0.s_batch_stats)
  assert int(s1.step) == 0 and int(s1.sched_step) == 0 and int(s1.epoch) == 1
  assert int(s1.loop) == eng.loops_per_epoch
  assert not np.allclose(jax.tree.leaves(s1.g_params)[0], jax.tree.leaves(s0.g_params)[0])
  d = distill.epoch_diagnostics(eng, s1)
  assert d["phase"] == "warmup" and d["student_steps"] == 0 and d["kept_mean"] is None


def test_empty_batches_skip_student_but_generator_trains():
  eng, tv, s0 = _engine("gkt", tau=0.0, warmup=0, loops_per_epoch=2, kd_steps=3)
  s1 = distill.run_epoch(eng, tv, s0)
  chex.assert_trees_all_equal(s1.s_params, s0.s_params)
  chex.assert_trees_all_equal(s1.s_batch_stats, s0.s_batch_stats)
  chex.assert_trees_all_equal(s1.s_opt_state.inner_state, s0.s_opt_state.inner_state)
  assert int(s1.step) == 0
  g0, g1 = jax.tree.leaves(s0.g_params), jax.tree.leaves(s1.g_params)
  assert any(not np.allclose(a, b) for a, b in zip(g0, g1))
  d = distill.epoch_diagnostics(eng, s1)
  # One attempt per loop: the first (empty) batch ends each loop's student phase.
  assert d["student_steps"] == 0 and d["student_attempts"] == 2 and d["skipped_loops"] == 2
  assert int(s1.sched_step) == 0  # the reference skips the epoch-end scheduler step too
  assert np.isfinite(d["gen_loss"])


def test_first_empty_batch_ends_the_loop():
  eng, tv, s = _engine("gkt", warmup=0, kd_steps=6)
  # Keep a batch iff its first row's class-0 logit is above the batch mean: ~50 % of batches are empty.
  eng = dataclasses.replace(eng, keep_fn=lambda t: jnp.broadcast_to(t[0, 0] > t[:, 0].mean(), t.shape[:1]))
  early = 0
  for _ in range(4):
    before = jax.device_get(s.diag)
    p_before = s.s_params
    s = distill.loop_step(eng, tv, s)
    after = jax.device_get(s.diag)
    att = int(after["s_attempts"] - before["s_attempts"])
    cnt = int(after["s_count"] - before["s_count"])
    skipped = int(after["skipped_loops"] - before["skipped_loops"])
    if skipped:
      assert att == cnt + 1 and bool(s.last_skipped)
      early += att < eng.kd_steps
    else:
      assert att == cnt == eng.kd_steps
    if cnt == 0:
      chex.assert_trees_all_equal(s.s_params, p_before)
  assert early >= 1


def test_strategies_share_one_compiled_program(scan_setup):
  eng, tv, s0 = scan_setup
  distill.loop_step(eng, tv, s0)
  n = distill.loop_step._cache_size()
  cfg = _cfg(tau=0.05, lr=0.01)
  for name in ("dfkd", "pf", "pd_is", "blockf"):
    knobs = distill.make_knobs(distill.STRATEGIES[name], cfg, forget_classes=(1, 2), num_classes=K)
    out = distill.loop_step(eng, tv, s0.replace(knobs=knobs))
    assert np.isfinite(float(out.diag["g_loss"]))
  assert distill.loop_step._cache_size() == n


def test_keys_are_per_loop_and_reproducible(scan_setup):
  eng, tv, s0 = scan_setup
  a = distill.loop_step(eng, tv, s0)
  b = distill.loop_step(eng, tv, s0)
  chex.assert_trees_all_equal(a.g_params, b.g_params)
  c = distill.loop_step(eng, tv, a)
  # a different loop counter draws a different z batch, so the generator update differs
  ga, gc = jax.tree.leaves(a.g_params)[0], jax.tree.leaves(c.g_params)[0]
  da = ga - jax.tree.leaves(s0.g_params)[0]
  dc = gc - ga
  assert not np.allclose(da, dc)


# ---------------------------------------------------------------------------------------------------
# Method entry points.

def _ctx(tmp_path, name, forget=FORGET, **ispf):
  model, tv = _teacher()
  config = ml_collections.ConfigDict({"ispf": _cfg(**ispf)})
  info = types.SimpleNamespace(num_classes=K, image_shape=SHAPE, mean=MEAN, std=STD, name="fake")
  lines = []
  return base.context("ispf", config, model=model, original=tv, data=types.SimpleNamespace(info=info),
                             key=jax.random.key(7), workdir=str(tmp_path / name), log=lines.append,
                             forget_classes=forget, num_classes=K), lines


def test_every_strategy_is_registered():
  assert {"dfkd", "blockf", "gkt", "is", "pf", "ispf", "pd", "pd_is"} <= set(base.names())
  for name in ("dfkd", "blockf", "gkt", "is", "pf", "ispf", "pd", "pd_is"):
    assert base.get(name) is not None


@pytest.mark.parametrize("name", ["dfkd", "blockf", "gkt", "is", "pf", "ispf", "pd", "pd_is"])
def test_strategy_runs_end_to_end(tmp_path, name):
  ctx, lines = _ctx(tmp_path, name, plots=(name == "ispf"), loops_per_epoch=1, kd_steps=2)
  res = base.get(name)(ctx)
  method_plots.write(ctx.workdir, res, name)  # what api.run_method does after a method
  chex.assert_trees_all_equal_shapes_and_dtypes(res.variables, ctx.original)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(res.variables))
  with open(os.path.join(ctx.workdir, "diagnostics.jsonl")) as fh:
    recs = [json.loads(line) for line in fh]
  assert [r["phase"] for r in recs] == ["warmup", "distill"]
  assert recs[1]["student_attempts"] >= 1 and 0.0 <= recs[1]["forget_synthesis_rate"] <= 1.0
  assert len(recs[1]["gen_label_hist"]) == K
  assert res.info["strategy"]["name"] == name and res.info["epochs_run"] == 2
  # Summary means are over the distillation epochs only (the reference logs after warm-up).
  assert res.info["mean_forget_synthesis_rate"] == pytest.approx(recs[1]["forget_synthesis_rate"])
  assert len(lines) == 2
  json.dumps(res.info)
  if name == "ispf":
    assert os.path.getsize(os.path.join(ctx.workdir, "distill_curves.png")) > 0
    assert os.path.getsize(os.path.join(ctx.workdir, "synthetic_samples.png")) > 0


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "ispf" else pytest.mark.slow)
                                  for n in distill.STRATEGIES])
def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, monkeypatch, name):
  """Every data-free strategy (ISPF in the default run, the other seven with -m slow): interrupted
  after warm-up + one epoch, the same call again resumes from the checkpoint and returns the
  uninterrupted run's variables bit for bit."""
  small = dict(loops_per_epoch=1, kd_steps=2, epochs=2)
  strategy = distill.STRATEGIES[name]
  full = data_free.run_strategy(_ctx(tmp_path, "full", **small)[0], strategy)
  first, _ = _ctx(tmp_path, "resumed", **small)
  calls = []
  real = data_free.run_epoch

  def interrupted(*a):  # a kill after warm-up + 1 epoch (checkpointed every epoch by default)
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*a)
  monkeypatch.setattr(data_free, "run_epoch", interrupted)
  with pytest.raises(KeyboardInterrupt):
    data_free.run_strategy(first, strategy)
  monkeypatch.setattr(data_free, "run_epoch", real)
  again, lines = _ctx(tmp_path, "resumed", **small)
  res = data_free.run_strategy(again, strategy)  # resumes at epoch 2, runs epoch 3
  assert any("resumed at epoch 2/3" in line for line in lines) and len(lines) == 2
  chex.assert_trees_all_equal(res.variables, full.variables)
  assert [r["epoch"] for r in res.artifacts["diagnostics"]] == [1, 2, 3]
  assert res.artifacts["diagnostics"][:2] == [
      {**r, "time_s": r2["time_s"]} for r, r2 in zip(full.artifacts["diagnostics"][:2],
                                                     res.artifacts["diagnostics"][:2])]


def test_best_retain_test_selection_is_opt_in_and_logged(tmp_path):
  ctx, _ = _ctx(tmp_path, "sel", selection="best_retain_test", epochs=2, loops_per_epoch=1, kd_steps=2)
  rng = np.random.RandomState(0)
  split = lambda n, labels: types.SimpleNamespace(  # noqa: E731
      images=rng.rand(n, *SHAPE).astype(np.float32), labels=np.asarray(labels, np.int32))
  ctx.data.retain_test = split(20, [0, 1, 2, 4, 5] * 4)
  ctx.data.forget_test = split(4, [3] * 4)
  res = data_free.run_strategy(ctx, distill.STRATEGIES["pf"])
  recs = res.artifacts["diagnostics"]
  assert "retain_test_acc" not in recs[0]  # warm-up epochs are never evaluated
  accs = [r["retain_test_acc"] for r in recs[1:]]
  assert len(accs) == 2 and res.info["best_retain_test_acc"] == max(accs)
  assert res.info["selection"] == "best_retain_test"
  for r in recs[1:]:  # overall test accuracy = retain and forget accuracies weighted by their sizes
    assert r["test_acc"] == pytest.approx((20 * r["retain_test_acc"] + 4 * r["forget_test_acc"]) / 24)
  # dfkd (the reference's 'None' strategy) selects on overall accuracy instead.
  ctx2, _ = _ctx(tmp_path, "sel_dfkd", selection="best_retain_test", epochs=2, loops_per_epoch=1,
                 kd_steps=2)
  ctx2.data.retain_test, ctx2.data.forget_test = ctx.data.retain_test, ctx.data.forget_test
  res2 = data_free.run_strategy(ctx2, distill.STRATEGIES["dfkd"])
  recs2 = res2.artifacts["diagnostics"]
  assert res2.info["best_retain_test_acc"] == max(r["test_acc"] for r in recs2[1:])
  assert (res.info["selection_metric"], res2.info["selection_metric"]) == ("retain_test_acc", "test_acc")


def test_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="selectoin"):
    _ctx(tmp_path, "bad", selectoin="final")
  ctx, _ = _ctx(tmp_path, "noforget", forget=())
  problem = base.Problem(info=ctx.data.info, forget_mode="class", forget_classes=())
  with pytest.raises(ConfigError, match="forget"):
    data_free.validate_config(ctx.cfg, problem, distill.STRATEGIES["gkt"])
  ctx, _ = _ctx(tmp_path, "sel", selection="best_retain_test")
  with pytest.raises(ConfigError, match="test split"):
    data_free.run_strategy(ctx, distill.STRATEGIES["ispf"])
