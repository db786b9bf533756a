"""The original model itself: the reference point of every table (no unlearning)."""

from jax_unlearn.methods import base


@base.register("original", order=10, data="none")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  return base.UnlearnResult(variables=ctx.original)
