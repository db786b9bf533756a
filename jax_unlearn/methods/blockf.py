"""BlockF (ISPF baseline, SPEC §1.5.2): DFKD whose student never sees synthetic samples the teacher
classifies as a forget class (argmax in F). Shares `config.ispf` (see `distill.default_config`)."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["blockf"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("blockf")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
