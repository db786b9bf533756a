"""The main job: every method, every metric, the comparison table.

python -m launch.experiment --config=configs/digits.py --workdir=W
(--config.methods=original,retrain,ispf to choose methods; --config.seeds=0,1,2 for mean ± std)"""

from absl import app, flags
from ml_collections import config_flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (models, results.*).")


def main(argv):
  del argv
  from jax_unlearn import cli
  cli.setup(_CONFIG)  # before any JAX work: XLA flags, multi-host start, compile cache
  from jax_unlearn import experiment
  cli.run_main(lambda: experiment.run(cli.config_value(_CONFIG), _WORKDIR.value, cli.progress_logger()))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  from jax_unlearn import cli
  cli.run_app(main)
