"""The per-example privacy audit of one unlearning method (U-LiRA and the NeurIPS'23 forgetting score):
python -m launch.audit --config=configs/digits_audit.py --config.method=ssd --workdir=W
(--config.audit.num_models=N; --config.method=original / retrain give the two reference points)"""

from absl import app, flags
from ml_collections import config_flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits_audit.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (populations, audit.json).")


def main(argv):
  del argv
  from jax_unlearn import cli
  cli.setup(_CONFIG)  # before any JAX work: XLA flags, multi-host start, compile cache
  from jax_unlearn import audit
  cli.run_main(lambda: audit.run(cli.config_value(_CONFIG), _WORKDIR.value, cli.progress_logger()))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  from jax_unlearn import cli
  cli.run_app(main)
