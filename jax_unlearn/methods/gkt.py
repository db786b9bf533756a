"""GKT, gated knowledge transfer (Chundawat et al. 2023) as ISPF runs it (SPEC §1.5.1, §2.1): DFQ
distillation with the PreFilter, keeping a synthetic sample only if p^T_f < tau for every forget class.
Shares `config.ispf` (see `distill.default_config`)."""

from jax_unlearn.methods import base, distill

STRATEGY = distill.STRATEGIES["gkt"]
default_config = distill.default_config
CONFIG_KEY = "ispf"  # every data-free strategy reads the shared `config.ispf`


@base.register("gkt")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return distill.run_strategy(ctx, STRATEGY)
