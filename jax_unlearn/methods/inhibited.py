"""IS, Inhibited Synthesis (ISPF §3.2, Eq. 7; the reference's 'IS_GKT'): the generator's adversarial
term is flipped on the forget classes, and the PreFilter removes forget samples as in GKT.
Registered as "is" (a Python keyword, hence the module name). Shares `config.ispf`."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["is"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("is")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
