"""PD and PD+IS (ISPF Appendix I, SPEC §1.5.4): instead of the PostFilter, the teacher's forget-class
probabilities are set to 0 and the rest renormalised (ungated by default); "pd_is" adds Inhibited
Synthesis. Not in the reference code: a reconstruction. Shares `config.ispf`."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["pd"]
STRATEGY_IS = distill.STRATEGIES["pd_is"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("pd")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)


@base.register("pd_is")
def run_is(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY_IS)
