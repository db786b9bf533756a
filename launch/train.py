"""Trains the original model: python -m launch.train --config=configs/digits.py --workdir=W"""

from absl import app, flags
from ml_collections import config_flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics.json).")


def main(argv):
  del argv
  from jax_unlearn import cli
  cli.setup(_CONFIG)  # before any JAX work: XLA flags, multi-host start, compile cache
  from jax_unlearn import api

  def go():
    m = api.train(cli.config_value(_CONFIG), _WORKDIR.value, cli.progress_logger())
    print(f"acc_test {m['acc_test']:.2f}%  (metrics in {_WORKDIR.value}/metrics.json)")
  cli.run_main(go)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  from jax_unlearn import cli
  cli.run_app(main)
