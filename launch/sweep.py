"""Runs one data-free method for several forget classes and/or seeds as ONE vmapped program:
python -m launch.sweep --config=configs/digits.py --config.method=ispf --classes=0,1,2,3,4,5,6,7,8,9 \
    --workdir=W
[--seeds=0,1] [--novmap]
(each run's metrics.json lands where `launch.unlearn` puts it; W/sweep_metrics.json has them all)."""

from absl import app, flags
from ml_collections import config_flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (original model, runs/, metrics).")
_CLASSES = flags.DEFINE_list("classes", None, "Forget classes, one run each (config.sweep.classes).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds, one run each per class (config.sweep.seeds).")
_VMAP = flags.DEFINE_bool("vmap", None, "False: the same runs one after another (config.sweep.vmap).")


def main(argv):
  del argv
  from jax_unlearn import cli
  cli.setup(_CONFIG)  # before any JAX work: XLA flags, multi-host start, compile cache
  from jax_unlearn import sweep

  def go():
    config = cli.config_value(_CONFIG)
    if _CLASSES.value is not None:
      config.sweep.classes = sweep.parse_ints(_CLASSES.value, "--classes")
    if _SEEDS.value is not None:
      config.sweep.seeds = sweep.parse_ints(_SEEDS.value, "--seeds")
    if _VMAP.value is not None:
      config.sweep.vmap = _VMAP.value
    sweep.run(config, _WORKDIR.value, cli.progress_logger())
  cli.run_main(go)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  from jax_unlearn import cli
  cli.run_app(main)
