"""Plain data-free knowledge distillation (DFQ as reproduced by CMI and ISPF): the reference's 'None'
strategy, no filter, the teacher's full output as target (SPEC §1.1, §1.3, §3). Not an unlearning method;
the upper bound that every filter is compared with. Shares `config.ispf` (see `distill.default_config`)."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["dfkd"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("dfkd")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
