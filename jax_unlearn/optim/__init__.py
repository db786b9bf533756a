"""Optimisers that optax does not ship: Bayesian Gradient Descent (SPEC §5.1)."""

from jax_unlearn.optim.bgd import (BGDExpectations, BGDState, bgd, bgd_expectations, bgd_sample,
                                   bgd_std_update, bgd_train_step, find_bgd_state)

__all__ = ["BGDExpectations", "BGDState", "bgd", "bgd_expectations", "bgd_sample", "bgd_std_update",
           "bgd_train_step", "find_bgd_state"]
