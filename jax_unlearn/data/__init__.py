"""Data: datasets, forget/retain partitions, minibatches, augmentation and normalisation.

    from jax_unlearn import data
    ds = data.load_dataset(config.dataset, seed=config.seed)        # Dataset(info, train, val, test)
    ud = data.make_unlearn_data(ds, config.forget, seed=config.seed)
    for batch in data.batches(ud.retain_train, 64, seed=config.seed, epoch=0):
      x = data.normalize(data.augment(key, batch['image']), ds.info.mean, ds.info.std)

Datasets come from sources registered by name (`registry.py`, one module per kind): `digits`
(scikit-learn), `svhn_cropped`/`cifar10`/`cifar100`/`cifar20` and `tfds:<name>` (TFDS),
`fashion_mnist` and `idx` (IDX files), `arrays` (an .npz, or `register_arrays` from Python).
`names()` lists them; `default_config()` is `config.dataset` with every field they read.

Images are float32 in [0,1] on the host; `normalize` is applied on device, after any augmentation
(as torchvision's ToTensor + Normalize in the reference code).
"""

from __future__ import annotations

from jax_unlearn.data.augment import augment
from jax_unlearn.data.dataset import (
  DataInfo,
  Dataset,
  Split,
  channel_stats,
  check_name,
  dataset_info,
  default_config,
  get_source,
  load_dataset,
  names,
  train_val_split,
)
from jax_unlearn.data.normalize import normalize
from jax_unlearn.data.partition import MODES, UnlearnData, make_unlearn_data, validate_forget
from jax_unlearn.data.pipeline import batches, num_batches
from jax_unlearn.data.registry import Source, register

# The source modules register their names on import. None of them imports this package back (only
# its sibling modules), and none imports tensorflow_datasets or scikit-learn before a load.
from jax_unlearn.data import digits, tfds_data, idx, arrays  # noqa: E402,F401  (isort: skip)
from jax_unlearn.data.arrays import from_arrays, register_arrays, unregister_arrays  # noqa: E402


def __getattr__(attr: str) -> tuple[str, ...]:
  # `DATASETS` was a fixed tuple; it is now derived from the registry on every access, so names
  # registered later (register_arrays) appear in it too.
  if attr == "DATASETS":
    return names()
  raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "DATASETS", "MODES", "DataInfo", "Dataset", "Source", "Split", "UnlearnData", "augment",
    "batches", "channel_stats", "check_name", "dataset_info", "default_config", "from_arrays",
    "get_source", "load_dataset", "make_unlearn_data", "names", "normalize", "num_batches",
    "register", "register_arrays", "train_val_split", "unregister_arrays", "validate_forget",
]
