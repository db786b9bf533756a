"""PF, PostFilter (ISPF §3.3, Eq. 8-9; the reference's 'PF'): no sample is removed; the teacher's forget
logits above tau are lowered to the row minimum and their excess spread evenly over the retained logits.
Shares `config.ispf` (see `distill.default_config`)."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["pf"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("pf")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
