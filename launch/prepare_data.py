"""Prepares a tfds dataset for `tfds.data_source` (array_record files), once, with TensorFlow.

  pip install -e ".[prepare]" && python -m launch.prepare_data --dataset=cifar10 --data_dir=/data/tfds

Reading the prepared data later needs no TensorFlow. digits is bundled with scikit-learn.
"""

import importlib.util
import sys

from absl import app, flags

_DATASET = flags.DEFINE_string("dataset", None, "One of jax_unlearn.data.DATASETS (e.g. cifar10).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir ('' = $TFDS_DATA_DIR or "
                                "~/tensorflow_datasets); pass the same as --config.dataset.data_dir.")


def have_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def prepare(dataset: str, data_dir: str = "") -> int:
  """Download and prepare `dataset`; returns the process exit code."""
  from jax_unlearn.data import DATASETS, tfds_data
  if dataset not in DATASETS:
    print(f"error: unknown dataset {dataset!r}; pass --dataset= one of: {', '.join(DATASETS)}",
          file=sys.stderr)
    return 2
  if dataset == "digits":
    print("digits is bundled with scikit-learn: nothing to prepare.")
    return 0
  if not have_tensorflow():
    print('error: preparing a tfds dataset needs TensorFlow; install it with pip install -e ".[prepare]"',
          file=sys.stderr)
    return 2
  import tensorflow_datasets as tfds
  name = tfds_data.tfds_name(dataset)
  # array_record: the random-access format `tfds.data_source` reads (tfds' default is TFRecord).
  builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  builder.download_and_prepare()
  sizes = {s: builder.info.splits[s].num_examples for s in ("train", "test")}
  print(f"prepared {dataset} (tfds {name}) in {builder.data_dir}: {sizes}")
  return 0


def main(argv):
  del argv
  sys.exit(prepare(_DATASET.value, _DATA_DIR.value))


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  from jax_unlearn import cli
  cli.run_app(main)
