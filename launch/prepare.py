"""DiStruction preparation (paper §3.1): learn σ of p = N(θ_o, σ²) with BGD on the training data,
the mean frozen at the original weights, and store it beside the original checkpoint (W/original/seed<s>/):
python -m launch.prepare --config=configs/digits.py --workdir=W
Run it before the training data is discarded; `launch.unlearn --config.method=distruction` then reuses
the stored posterior and reads forget data only. Trains the original model first if W has none."""

from absl import app, flags
from ml_collections import config_flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (original checkpoint, posterior).")


def main(argv):
  del argv
  from jax_unlearn import cli
  cli.setup(_CONFIG)  # before any JAX work: XLA flags, multi-host start, compile cache
  from jax_unlearn import api
  cli.run_main(lambda: api.prepare(cli.config_value(_CONFIG), _WORKDIR.value, cli.progress_logger()))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  from jax_unlearn import cli
  cli.run_app(main)
