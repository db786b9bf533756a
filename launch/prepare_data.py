"""Prepares a tfds dataset for `tfds.data_source` (array_record files), once, with TensorFlow.

  pip install -e ".[prepare]" && python -m launch.prepare_data --dataset=cifar10 --data_dir=/data/tfds

Any TFDS image-classification dataset works as `--dataset=tfds:<name>` (e.g. tfds:mnist), read
later with the same `--config.dataset.name`. Reading the prepared data needs no TensorFlow. The
other sources (digits, fashion_mnist, idx, arrays) have nothing to prepare.
"""

import importlib.util
import sys

from absl import app, flags

_DATASET = flags.DEFINE_string("dataset", None, "A tfds-backed dataset name (e.g. cifar10; see "
                               "jax_unlearn.data.names()) or tfds:<tfds name> (e.g. tfds:mnist).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir ('' = $TFDS_DATA_DIR or "
                                "~/tensorflow_datasets); pass the same as --config.dataset.data_dir.")


def have_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def prepare(dataset: str, data_dir: str = "") -> int:
  """Download and prepare `dataset`; returns the process exit code."""
  from jax_unlearn.data import registry, tfds_data
  source = registry.lookup(dataset)
  if source is None:
    # The names this command prepares, from the registry: every source read through tfds.
    tfds_backed = [s.name + ("<name>" if s.prefix else "") for s in registry.sources()
                   if s.kind == "tfds"]
    print(f"error: unknown dataset {dataset!r}; pass --dataset= one of: {', '.join(tfds_backed)}",
          file=sys.stderr)
    return 2
  if source.kind != "tfds":
    print(f"{dataset} is not read through tfds ({source.summary}): nothing to prepare.")
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
  sizes = {s: split.num_examples for s, split in builder.info.splits.items()}
  print(f"prepared {dataset} (tfds {name}) in {builder.data_dir}: {sizes}")
  return 0


def main(argv):
  del argv
  sys.exit(prepare(_DATASET.value, _DATA_DIR.value))


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  from jax_unlearn import cli
  cli.run_app(main)
