"""Data: datasets, forget/retain partitions, minibatches, augmentation and normalisation.

    from jax_unlearn import data
    ds = data.load_dataset(config.dataset, seed=config.seed)        # Dataset(info, train, val, test)
    ud = data.make_unlearn_data(ds, config.forget, seed=config.seed)
    for batch in data.batches(ud.retain_train, 64, seed=config.seed, epoch=0):
      x = data.normalize(data.augment(key, batch['image']), ds.info.mean, ds.info.std)

Images are float32 in [0,1] on the host; `normalize` is applied on device (SPEC §1.8).
"""

from jax_unlearn.data.augment import augment
from jax_unlearn.data.dataset import (DATASETS, DataInfo, Dataset, Split, dataset_info,
                                      load_dataset, train_val_split)
from jax_unlearn.data.normalize import normalize
from jax_unlearn.data.partition import MODES, UnlearnData, make_unlearn_data, validate_forget
from jax_unlearn.data.pipeline import batches, num_batches

__all__ = [
    "DATASETS", "MODES", "DataInfo", "Dataset", "Split", "UnlearnData", "augment", "batches",
    "dataset_info", "load_dataset", "make_unlearn_data", "normalize", "num_batches",
    "train_val_split", "validate_forget",
]
