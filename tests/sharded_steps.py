"""Runs a few sharded supervised train steps on digits and saves the parameters (a test helper).

python tests/sharded_steps.py OUT.npz NUM_DEVICES
"""
import os
import sys

n_dev = int(sys.argv[2])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jax_unlearn import data, models  # noqa: E402
from jax_unlearn.train import sharding, supervised  # noqa: E402

assert jax.device_count() == n_dev, jax.devices()
ds = data.load_dataset(ml_collections.ConfigDict(dict(name="digits", data_dir="", download=False)), 0)
model = models.AllCNN(num_classes=10, width=0.25)
tcfg = ml_collections.ConfigDict(dict(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(),
                                      gamma=0.1, batch_size=64))
state = supervised.create_train_state(model, jax.random.key(0), ds.info.image_shape,
                                      supervised.make_optimizer(tcfg, 10))
state = sharding.replicate(state)
for i, batch in enumerate(data.batches(ds.train, 64, seed=0)):
  if i == 5:
    break
  state, m = supervised.train_step(state, sharding.shard_batch(batch), jax.random.key(i),
                                   np.asarray(ds.info.mean, np.float32), np.asarray(ds.info.std, np.float32))
assert len(batch["image"].sharding.device_set if hasattr(batch["image"], "sharding") else [0]) >= 1
leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.variables))[0]
np.savez(sys.argv[1], **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
print("devices", jax.device_count(), "loss", float(m["loss"]))
