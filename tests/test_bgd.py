"""BGD as an optax transformation (SPEC §5.1): hand-computed steps, MC expectations, stability."""


import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from jax_unlearn import optim
from jax_unlearn.errors import ConfigError
from jax_unlearn.optim import BGDState, bgd, bgd_expectations, bgd_sample, bgd_std_update


def _params():
  return {"a": jnp.array([0.5, -1.0, 2.0], jnp.float32),
          "b": {"w": jnp.array([[0.1, 0.2], [-0.3, 0.4]], jnp.float32)}}


def _np_bgd(mean, std, e_grad, e_grad_eps, eta):
  """SPEC §5.1 written out in float64 numpy, in the reference's (non-rewritten) form."""
  mean, std = np.float64(mean), np.float64(std)
  new_mean = mean - eta * std ** 2 * e_grad
  new_std = std * np.sqrt(1 + (std * e_grad_eps / 2) ** 2) - std ** 2 * e_grad_eps / 2
  return new_mean, new_std


def test_init_state_structure():
  params = _params()
  state = bgd(std_init=0.03).init(params)
  assert isinstance(state, BGDState)
  chex.assert_trees_all_equal(state.mean, params)
  chex.assert_trees_all_equal_structs(state.std, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state.std, params)
  for s in jax.tree.leaves(state.std):
    np.testing.assert_array_equal(s, np.float32(0.03))


def test_one_step_matches_hand_formula():
  params = _params()
  rng = np.random.default_rng(0)
  e_grad = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 30, jnp.float32), params)
  e_ge = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 300, jnp.float32), params)
  tx = bgd(mean_eta=2.0, std_init=0.1)
  state = tx.init(params)
  updates, new = jax.jit(tx.update)(e_grad, state, params, e_grad_eps=e_ge)
  chex.assert_trees_all_equal_structs(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new.mean, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new.std, params)
  for p, g, ge, m, s in zip(*(jax.tree.leaves(t) for t in (params, e_grad, e_ge, new.mean, new.std))):
    want_m, want_s = _np_bgd(p, 0.1, np.float64(g), np.float64(ge), 2.0)
    np.testing.assert_allclose(m, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, want_s, rtol=1e-5)
  # params + updates is the new mean: to the last ulp under jit (XLA may fuse the multiply-add),
  # bit-for-bit eagerly.
  chex.assert_trees_all_close(optax.apply_updates(params, updates), new.mean, rtol=2e-7, atol=1e-12)
  updates, new = tx.update(e_grad, state, params, e_grad_eps=e_ge)
  chex.assert_trees_all_equal(optax.apply_updates(params, updates), new.mean)


def test_quadratic_loss_step_matches_spec_with_mc_samples():
  """Whole pipeline on L(θ; x) = ½ Σ_i h_i (θ_i − x_i)², batch-mean over B rows: E[g] and E[gε]
  from bgd_expectations, then the step, against numpy with the same ε."""
  h = jnp.array([1.0, 4.0, 0.5], jnp.float32)
  batch = jnp.array([[0.1, 0.2, 0.3], [0.5, -0.2, 0.0], [1.0, 1.0, -1.0], [0.0, 0.3, 0.2]])
  loss_fn = lambda p, x: jnp.mean(0.5 * jnp.sum(h * jnp.square(p["t"] - x), axis=-1))  # noqa
  params = {"t": jnp.array([0.3, -0.4, 0.8], jnp.float32)}
  tx = bgd(mean_eta=1.5, std_init=0.2)
  state = tx.init(params)
  key, k_samples = jax.random.key(3), 7
  ex = bgd_expectations(loss_fn, state, key, k_samples, batch)
  _, eps = bgd_sample(state, key, k_samples)
  eps = np.float64(eps["t"])                                   # [K, 3]
  theta = np.float64(params["t"]) + 0.2 * eps
  b = batch.shape[0]
  # gradient of the summed batch loss: B * mean_x h (θ − x)
  g = b * np.float64(h) * (theta - np.float64(batch).mean(0))
  np.testing.assert_allclose(ex.e_grad["t"], g.mean(0), rtol=1e-5)
  np.testing.assert_allclose(ex.e_grad_eps["t"], (g * eps).mean(0), rtol=1e-4, atol=1e-6)
  _, new = tx.update(ex.e_grad, state, params, e_grad_eps=ex.e_grad_eps)
  want_m, want_s = _np_bgd(params["t"], 0.2, g.mean(0), (g * eps).mean(0), 1.5)
  np.testing.assert_allclose(new.mean["t"], want_m, rtol=1e-5)
  np.testing.assert_allclose(new.std["t"], want_s, rtol=1e-5)


class _TinyBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(5)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(3)(nn.relu(x))


def _tiny_bn_problem():
  model = _TinyBN()
  x = jax.random.normal(jax.random.key(0), (8, 4))
  y = jnp.arange(8) % 3
  variables = model.init(jax.random.key(1), x)

  def loss_fn(params, xb, yb):
    logits, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, xb,
                              train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd["batch_stats"]
  return model, variables, loss_fn, x, y


@pytest.mark.parametrize("vectorize", ["vmap", "scan"])
def test_expectations_equal_manual_loop(vectorize):
  _, variables, loss_fn, x, y = _tiny_bn_problem()
  state = bgd(std_init=0.05).init(variables["params"])
  key, k_samples = jax.random.key(5), 4
  ex = jax.jit(lambda s, k, *b: bgd_expectations(loss_fn, s, k, k_samples, *b, has_aux=True,
                                                 vectorize=vectorize))(state, key, x, y)
  @jax.jit
  def one(k):  # the k-th sample, by hand
    theta, eps = bgd_sample(state, jax.random.fold_in(key, k))
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(theta, x, y)
    g = jax.tree.map(lambda a: a * x.shape[0], g)
    return g, jax.tree.map(jnp.multiply, g, eps), loss, aux

  gs, ges, losses = [], [], []
  for k in range(k_samples):
    g, ge, loss, aux = one(k)
    gs.append(g)
    ges.append(ge)
    losses.append(loss)
    if k == 0:
      aux0 = aux
  mean = lambda ts: jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *ts)  # noqa: E731
  chex.assert_trees_all_close(ex.e_grad, mean(gs), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(ex.e_grad_eps, mean(ges), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ex.loss, np.mean(losses), rtol=1e-5)
  # BN running statistics come from the first MC sample only (advance once per minibatch).
  chex.assert_trees_all_close(ex.aux, aux0, rtol=1e-5, atol=1e-6)


def test_sample_leading_axis_and_per_sample_keys():
  state = bgd(std_init=0.1).init(_params())
  thetas, eps = bgd_sample(state, jax.random.key(2), 6)
  chex.assert_tree_shape_prefix(thetas, (6,))
  chex.assert_trees_all_equal_shapes(eps, thetas)
  chex.assert_trees_all_close(thetas, jax.tree.map(lambda m, s, e: m + s * e, state.mean, state.std, eps))
  one, _ = bgd_sample(state, jax.random.fold_in(jax.random.key(2), 3))
  chex.assert_trees_all_close(jax.tree.map(lambda t: t[3], thetas), one)


def test_std_stays_positive_and_finite_under_large_e_grad_eps():
  params = _params()
  tx = bgd(std_init=0.05)
  state = tx.init(params)
  big = jax.tree.map(lambda p: jnp.full(p.shape, 1e6, jnp.float32), params)
  zero = jax.tree.map(jnp.zeros_like, params)
  step = jax.jit(lambda s, ge: tx.update(zero, s, None, e_grad_eps=ge)[1])
  for _ in range(200):
    state = step(state, big)
  for s in jax.tree.leaves(state.std):
    assert np.all(np.isfinite(s)) and np.all(s > 0)
  # The literal formula loses every digit there: float32 σ(sqrt(1+x²) − x) is exactly 0.
  x = np.float32(0.05 * 1e6 / 2)
  assert np.float32(0.05) * (np.sqrt(np.float32(1) + x * x) - x) == 0
  # Large negative E[gε] grows σ, still finitely.
  s = bgd_std_update(jnp.float32(0.05), jnp.float32(-1e3))
  assert np.isfinite(s) and s > 0.05
  # Agreement with the literal formula where it is well conditioned.
  for ge in (-50.0, -1.0, 0.0, 3.0, 400.0):
    np.testing.assert_allclose(bgd_std_update(jnp.float32(0.1), jnp.float32(ge)),
                               _np_bgd(0.0, 0.1, 0.0, ge, 1.0)[1], rtol=1e-5)


def test_mean_eta_zero_freezes_mean_bit_for_bit():
  params = _params()
  tx = bgd(mean_eta=0.0, std_init=0.02)
  state = tx.init(params)
  huge = jax.tree.map(lambda p: jnp.full(p.shape, 1e30, jnp.float32), params)
  updates, new = tx.update(huge, state, params, e_grad_eps=huge)
  chex.assert_trees_all_equal(new.mean, params)
  chex.assert_trees_all_equal(optax.apply_updates(params, updates), params)


def test_chain_forwards_extra_arg_and_missing_arg_raises():
  params = _params()
  g = jax.tree.map(jnp.ones_like, params)
  direct = bgd(mean_eta=1.0, std_init=0.1)
  chained = optax.chain(optax.identity(), bgd(mean_eta=1.0, std_init=0.1))
  u1, _ = direct.update(g, direct.init(params), params, e_grad_eps=g)
  s2 = chained.init(params)
  u2, s2 = chained.update(g, s2, params, e_grad_eps=g)
  chex.assert_trees_all_close(u1, u2)
  assert isinstance(optim.find_bgd_state(s2), BGDState)
  with pytest.raises(TypeError, match="e_grad_eps"):
    direct.update(g, direct.init(params), params)
  with pytest.raises(ConfigError):
    bgd(std_init=0.0)


def test_train_step_fits_a_flax_model_and_advances_bn_once():
  model, variables, _, x, y = _tiny_bn_problem()
  holder = {"bs": variables["batch_stats"]}

  def loss_fn(params, xb, yb, bs):
    logits, upd = model.apply({"params": params, "batch_stats": bs}, xb, train=True,
                              mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd["batch_stats"]

  tx = bgd(mean_eta=20.0, std_init=0.05)
  params = variables["params"]
  opt_state = tx.init(params)
  step = jax.jit(lambda p, s, k, *b: optim.bgd_train_step(loss_fn, tx, p, s, k, *b, num_samples=4,
                                                          has_aux=True, batch_size=8))
  first = None
  for t in range(60):
    old_state = opt_state
    params, opt_state, m = step(params, opt_state, jax.random.key(t), x, y, holder["bs"])
    if t == 0:
      # running stats after one step == one momentum update from the first MC sample's batch
      theta0, _ = bgd_sample(old_state, jax.random.fold_in(jax.random.key(0), 0))
      _, upd = model.apply({"params": theta0, "batch_stats": holder["bs"]}, x, train=True,
                           mutable=["batch_stats"])
      chex.assert_trees_all_close(m["aux"], upd["batch_stats"], rtol=1e-5, atol=1e-6)
      first = float(m["loss"])
    holder["bs"] = m["aux"]
    chex.assert_trees_all_equal(params, opt_state.mean)
  assert float(m["loss"]) < 0.5 * first


# ----------------------------------------------------------------------------------------------------
# The standard optax contract: bgd(..., num_samples=K) keeps the noise and takes stacked gradients.

def _mlp_problem():
  """A tiny MLP classifier with a batch-mean loss; `loss_fn(params, x, y)` (numpy-drawn values: no
  PRNG compile; two parameter leaves keep the per-shape noise compiles few)."""
  rng = np.random.default_rng(11)
  params = {"w1": jnp.asarray(0.5 * rng.normal(size=(4, 6)), jnp.float32),
            "w2": jnp.asarray(0.5 * rng.normal(size=(6, 3)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  y = jnp.arange(8) % 3

  def loss_fn(p, xb, yb):
    logits = jnp.tanh(xb @ p["w1"]) @ p["w2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
  return params, x, y, loss_fn


def test_train_state_apply_gradients_equals_expectations_path_bit_for_bit():
  """TrainState + optax.chain(scale(B), bgd(num_samples=K)) + apply_gradients(stacked grads) gives
  the very μ and σ of bgd_expectations + e_grad_eps, step after step (same ε: step t's noise is
  bgd_expectations' noise for key fold_in(key, t)). Bit for bit op by op; under jit the two
  programs are fused differently by XLA, so jitted they agree to float32 rounding."""
  params, x, y, loss_fn = _mlp_problem()
  k_samples, b, seed = 5, x.shape[0], 7
  tx = optax.chain(optax.scale(b), bgd(mean_eta=3.0, std_init=0.05, num_samples=k_samples, key=seed))
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  assert isinstance(optim.find_bgd_state(state.opt_state), optim.BGDSampledState)

  def standard_step(state):
    thetas = optim.bgd_sample_params(state.opt_state)
    grads = jax.vmap(jax.grad(loss_fn), in_axes=(0, None, None))(thetas, x, y)
    return state.apply_gradients(grads=grads)

  plain = bgd(mean_eta=3.0, std_init=0.05)

  def fast_step(q, t):
    ex = bgd_expectations(loss_fn, q, jax.random.fold_in(jax.random.key(seed), t), k_samples, x, y)
    return plain.update(ex.e_grad, q, None, e_grad_eps=ex.e_grad_eps)[1]

  q = plain.init(params)
  for t in range(2):
    state, q = standard_step(state), fast_step(q, t)
    s = optim.find_bgd_state(state.opt_state)
    chex.assert_trees_all_equal((s.mean, s.std), (q.mean, q.std))
    chex.assert_trees_all_equal(state.params, q.mean)
    assert int(s.count) == t + 1 and int(state.step) == t + 1
  # The jitted recipe: the same step to float32 rounding (one compile; XLA fuses differently).
  jitted, eager = jax.jit(standard_step)(state), standard_step(state)
  js, es = optim.find_bgd_state(jitted.opt_state), optim.find_bgd_state(eager.opt_state)
  chex.assert_trees_all_close((js.mean, js.std, js.eps, jitted.params),
                              (es.mean, es.std, es.eps, eager.params), rtol=1e-6, atol=1e-9)
  assert not np.allclose(s.std["w1"], 0.05)  # σ moved: the comparisons are not vacuous


def test_closed_form_step_on_a_quadratic_and_noise_redraw():
  """L(θ) = ½ Σ_i h_i (θ_i − c_i)²: g_k = h(θ_k − c) in closed form, so one step is
  μ ← μ − η σ² E[g], σ ← σ sqrt(1 + (σE[gε]/2)²) − σ² E[gε]/2 with the stored ε (float64 numpy)."""
  h, c = np.array([1.0, 4.0, 0.5]), np.array([0.2, -0.1, 0.7])
  mu0, k_samples, eta, s0 = np.array([0.3, -0.4, 0.8], np.float32), 6, 1.5, 0.2
  tx = bgd(mean_eta=eta, std_init=s0, num_samples=k_samples, key=jax.random.key(4))
  state = tx.init({"t": jnp.asarray(mu0)})
  eps = np.float64(state.eps["t"])                                  # [K, 3]
  theta = np.float64(optim.bgd_sample_params(state)["t"])
  np.testing.assert_allclose(theta, mu0 + s0 * eps, rtol=1e-6)
  grads = {"t": jnp.asarray(h * (theta - c), jnp.float32)}          # stacked [K, 3]
  _, new = tx.update(grads, state, {"t": jnp.asarray(mu0)})
  g = h * (theta - c)
  want_m, want_s = _np_bgd(mu0, s0, g.mean(0), (g * eps).mean(0), eta)
  np.testing.assert_allclose(new.mean["t"], want_m, rtol=1e-5)
  np.testing.assert_allclose(new.std["t"], want_s, rtol=1e-5)
  # The next step's noise is fresh, from fold_in(key, 1), and the key is kept.
  assert int(new.count) == 1 and not np.allclose(new.eps["t"], state.eps["t"])
  _, want_eps = bgd_sample(new, jax.random.fold_in(jax.random.key(4), 1), k_samples)
  chex.assert_trees_all_equal(new.eps, want_eps)
  # Unstacked gradients are refused with the fix; e_grad_eps= stays the fast path.
  with pytest.raises(ConfigError, match="stacked on a leading axis"):
    tx.update({"t": jnp.ones(3)}, state)
  _, fast = tx.update({"t": jnp.asarray(g.mean(0), jnp.float32)}, state,
                      e_grad_eps={"t": jnp.asarray((g * eps).mean(0), jnp.float32)})
  chex.assert_trees_all_close((fast.mean, fast.std), (new.mean, new.std), rtol=1e-6)
  with pytest.raises(ConfigError, match="num_samples=K"):
    optim.bgd_sample_params(bgd().init({"t": jnp.zeros(3)}))


def test_chain_with_gradient_clipping_on_stacked_grads():
  """Joint clip_by_global_norm scales all K gradients by one factor; per_sample clips each g_k by
  its own norm. Both equal the clipping done by hand followed by the e_grad_eps path."""
  params, x, y, loss_fn = _mlp_problem()
  k_samples, clip = 4, 0.05
  sampler = bgd(std_init=0.05, num_samples=k_samples, key=3)
  thetas = optim.bgd_sample_params(sampler.init(params))
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(0, None, None))(thetas, x, y)
  eps = sampler.init(params).eps
  norms = np.sqrt(sum(np.sum(np.float64(g) ** 2, axis=tuple(range(1, g.ndim)))
                      for g in jax.tree.leaves(grads)))                     # ‖g_k‖, [K]
  assert np.all(norms > clip)  # both clips are active
  joint = float(np.sqrt(np.sum(norms ** 2)))
  by_hand = {"joint": jax.tree.map(lambda g: g * (clip / joint), grads),
             "per_sample": jax.tree.map(
                 lambda g: g * (clip / norms).reshape((-1,) + (1,) * (g.ndim - 1)), grads)}
  plain = bgd(std_init=0.05)
  for name, clipper in (("joint", optax.clip_by_global_norm(clip)),
                        ("per_sample", optim.per_sample(optax.clip_by_global_norm(clip)))):
    tx = optax.chain(clipper, bgd(std_init=0.05, num_samples=k_samples, key=3))
    _, s = tx.update(grads, tx.init(params), params)
    gc = by_hand[name]
    _, want = plain.update(jax.tree.map(lambda g: g.mean(0), gc), plain.init(params), params,
                           e_grad_eps=jax.tree.map(lambda g, e: (g * e).mean(0), gc, eps))
    got = optim.find_bgd_state(s)
    chex.assert_trees_all_close((got.mean, got.std), (want.mean, want.std), rtol=1e-5, atol=1e-7)
