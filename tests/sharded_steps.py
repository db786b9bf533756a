"""Data-parallel supervised steps on digits on NUM_DEVICES forced host devices (a test helper).

python tests/sharded_steps.py OUT.npz NUM_DEVICES

AllCNN width 0.25 (Flax BatchNorm, ReLU after every BN), digits batch 64 sharded along 'data'.
Writes to OUT.npz, float32 first, then with jax x64 switched on (jit caches are keyed on it):
  f32/grad<leaf>       float32 gradient of the train loss at init on batch 0 (one step's gradient)
  f32/z[i], f64/z[i]   the output of BN layer i (the ReLU input) in that forward pass
  f64/grad<leaf>       the float64 gradient (params, batch statistics and inputs cast)
  f64/grad_f32relu<leaf>  the float64 gradient on the float32 run's side of every ReLU kink: the loss
                       is piecewise smooth, and rounding may put a ReLU input that is within rounding of
                       0 on either side, which changes the gradient by that unit's whole contribution
  f64/state<leaf>      float64 params and batch_stats after STEPS SGD steps (`supervised.train_step`)
"""
import os
import sys

STEPS = 5
n_dev = int(sys.argv[2])
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={n_dev}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jax_unlearn import data, models  # noqa: E402
from jax_unlearn.train import sharding, supervised  # noqa: E402

assert jax.device_count() == n_dev, jax.devices()
ds = data.load_dataset(ml_collections.ConfigDict(dict(name="digits", data_dir="", download=False)), 0)
model = models.AllCNN(num_classes=10, width=0.25)
tcfg = ml_collections.ConfigDict(dict(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(),
                                      gamma=0.1, batch_size=64))
host_batches = [b for _, b in zip(range(STEPS), data.batches(ds.train, 64, seed=0))]
# XLA's -O0 builds the init 5x faster (1.8 s vs 9.6 s) and gives the same bits (integer threefry).
init = jax.jit(lambda key: models.init_variables(model, key, (1,) + tuple(ds.info.image_shape))).lower(
    jax.random.key(0)).compile(compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(0))


def flat(prefix, tree):
  return {prefix + jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def bn_outputs(relu_on=None, pin=False):
  """An interceptor that records every BN output; with `pin`, it moves an output whose sign disagrees
  with `relu_on` (one bool array per BN) to ±1e-30 (value change <= |output|, derivative 1), so the
  ReLU after it takes the recorded branch. (`pin` is traced: the pinned and the plain gradient are one
  compiled program.)"""
  zs, inside = [], []

  def spy(next_fun, args, kwargs, context):
    if inside or context.method_name != "__call__" or not isinstance(context.module, nn.BatchNorm):
      return next_fun(*args, **kwargs)  # `inside`: our BatchNorm's super().__call__
    inside.append(True)
    y = next_fun(*args, **kwargs)
    inside.pop()
    if relu_on is not None:
      on = relu_on[len(zs)]
      moved = (y - jax.lax.stop_gradient(y)) + jnp.where(on, 1e-30, -1e-30)
      y = jnp.where(pin & (on != (y > 0)), moved, y)
    zs.append(y)
    return y
  return zs, spy


def run(dtype, steps, relu_on=None):
  """(gradient at init on batch 0, BN outputs, variables after `steps` steps), all in `dtype`; with
  `relu_on`, also the gradient on the side of every ReLU kink that `relu_on` records."""
  v = jax.tree.map(lambda a: jnp.asarray(a, dtype), init)
  mean, std = np.asarray(ds.info.mean, dtype), np.asarray(ds.info.std, dtype)
  batches = [sharding.shard_batch({"image": b["image"].astype(dtype), "label": b["label"]})
             for b in host_batches]

  def loss(params, batch, relu_on, pin):  # `supervised.train_step`'s loss
    zs, spy = bn_outputs(relu_on, pin)
    with nn.intercept_methods(spy):
      logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]},
                              data.normalize(batch["image"], mean, std), train=True,
                              mutable=["batch_stats"])
    return supervised.cross_entropy(logits, batch["label"]), zs
  grad_fn = jax.jit(jax.grad(loss, has_aux=True))
  params = sharding.replicate(v["params"])
  grad, zs = grad_fn(params, batches[0], relu_on, jnp.bool_(False))
  pinned = None if relu_on is None else grad_fn(params, batches[0], relu_on, jnp.bool_(True))[0]
  state = sharding.replicate(supervised.TrainState.create(
      apply_fn=model.apply, params=v["params"], tx=supervised.make_optimizer(tcfg, 10),
      batch_stats=v["batch_stats"]))
  for i, batch in enumerate(batches[:steps]):
    state, _ = supervised.train_step(state, batch, jax.random.key(i), mean, std)
  assert all(a.dtype == dtype for a in jax.tree.leaves((grad, pinned, zs, state.variables)))
  return grad, pinned, [np.asarray(z) for z in zs], state.variables


grad, _, zs, _ = run(np.float32, 0)
out = {**flat("f32/grad", grad), **{f"f32/z[{i}]": z for i, z in enumerate(zs)}}
jax.config.update("jax_enable_x64", True)
grad, pinned, zs64, variables = run(np.float64, STEPS, relu_on=[z > 0 for z in zs])
out.update({**flat("f64/grad", grad), **flat("f64/grad_f32relu", pinned), **flat("f64/state", variables),
            **{f"f64/z[{i}]": z for i, z in enumerate(zs64)}})
np.savez(sys.argv[1], **out)
print("devices", jax.device_count(), "leaves", len(out))
