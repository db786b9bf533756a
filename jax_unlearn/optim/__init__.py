"""Optimisers that optax does not ship: Bayesian Gradient Descent (Zeno et al.; `igolan/bgd`).

`bgd(...)` is an optax transformation. DiStruction's fast path passes E[g] and `e_grad_eps=E[gε]`
(`bgd_expectations`); `bgd(..., num_samples=K, key=seed)` also honours the standard
`update(grads, state, params)` contract with the K sampled gradients stacked (`bgd_sample_params`),
so it goes into `optax.chain` and flax's `TrainState.apply_gradients` (recipe in `optim.bgd`).
"""

from jax_unlearn.optim.bgd import (
                                   BGDExpectations,
                                   BGDSampledState,
                                   BGDState,
                                   bgd,
                                   bgd_expectations,
                                   bgd_sample,
                                   bgd_sample_params,
                                   bgd_std_update,
                                   bgd_train_step,
                                   find_bgd_state,
                                   per_sample,
)

__all__ = ["BGDExpectations", "BGDSampledState", "BGDState", "bgd", "bgd_expectations", "bgd_sample",
           "bgd_sample_params", "bgd_std_update", "bgd_train_step", "find_bgd_state", "per_sample"]
