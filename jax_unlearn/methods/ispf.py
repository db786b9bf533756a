"""ISPF, Inhibited Synthesis + PostFilter (Eq. 7-9 of ISPF; the reference's 'IS_PF'), the paper's method.
Shares `config.ispf` (see `distill.default_config`)."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["ispf"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("ispf")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
