"""Loss-Free Selective Synaptic Dampening (LFSSD; Foster, Schoepf & Brintrup, ICLR'24 Tiny Paper).

Paper: "Loss-Free Machine Unlearning", arXiv 2402.19308. Reference code: the LFSSD snippet of
`if-loops/selective-synaptic-dampening README.md` over that repository's `src/ssd.py: ParameterPerturber`.

LFSSD is SSD (`ssd.py`) with a label-free importance: the Fisher diagonal is replaced by the sensitivity of
the squared L2 norm of the model output (MAS-style), so neither D nor D_f needs labels:

  'reference' (the SSD repository's README snippet):
      I = (1/n_B) sum_B | grad_theta (1/|B|) sum_{i in B} ||f(x_i)||_2^2 |,   f = logits, eval mode.
  'per_sample':
      I = (1/N) sum_i | grad_theta ||f(x_i)||_2^2 |.

Dampening is SSD's (`ssd.dampen`, the reference's `modify_weight`). Because I_D needs no labels and
does not depend on the forget request, it is computed once and cached next to the original model
(`cache_full_importance`). No function here ever looks up a 'label' entry of a batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import ml_collections

from jax_unlearn.methods import base, ssd


def default_config() -> ml_collections.ConfigDict:
  """`config.lfssd` defaults. Fields as in `ssd.default_config` (see there).

  alpha: 'auto' by default (chosen on the validation split among `alpha_grid`, `ssd.select_alpha`). The
  LFSSD paper's values (its Table 1 settings) are 10 (CIFAR-100 full class, sub-class), 5 (CIFAR-20
  full class) and 3.5 (random forgetting); lam = 1 throughout. The digits config fixes alpha = 6, chosen
  once on its validation split; the paper configs use the paper's values.
  """
  c = ssd.default_config()
  c.lam = 1.0
  # LFSSD's I_D is label-free and request-independent: precompute it once beside the original model.
  c.cache_full_importance = True
  return c


output_norm_sq = ssd.output_norm_sq  # re-exported: LFSSD's per-example loss


def lfssd_importance(apply_fn: Callable, variables: Any, batches: Iterable[dict], mode: str = "reference", *,
                     preprocess: Callable | None = None, per_sample_chunk: int = 16) -> Any:
  """LFSSD importance of every entry of `variables['params']` (BN scale/bias included), the README snippet.

  Args:
    apply_fn: `model.apply`, run as `apply_fn(variables, preprocess(x), train=False)` (running BN stats).
    variables: `{'params': ..., 'batch_stats': ...}`.
    batches: iterable of dicts with 'image' [B, H, W, C]; any 'label' entry is never read. A last partial
      batch is padded and masked, so its batch-mean is exact.
    mode: 'reference' (abs of the batch-mean gradient, averaged over batches) or 'per_sample' (mean over
      examples of the abs per-example gradient; independent of batch size and order).
    preprocess: on-device, hashable map applied to the images (None: images are already normalised;
      `ssd.Normalize(mean, std)` for raw [0,1] images).
    per_sample_chunk: examples per vmapped chunk in 'per_sample' mode (memory only).
  Returns:
    float32 pytree shaped like `variables['params']`.
  """
  return ssd.accumulate_importance(apply_fn, variables, batches, loss_fn=output_norm_sq, reduce="abs",
                                   uses_labels=False, mode=mode, preprocess=preprocess,
                                   per_sample_chunk=per_sample_chunk)


ssd.IMPORTANCES["lfssd"] = (lfssd_importance, False)


@base.register("lfssd", default_config=default_config,
               validate_config=functools.partial(ssd.validate_config, name="lfssd"), order=150,
               data="D_r, D_f (labels unused)")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """LFSSD on `ctx`: label-free importances on D (cached) and D_f, then `ssd.dampen` (`ctx.config.lfssd`).

  info: importance_full_s, importance_forget_s, importance_s, dampen_s, total_s, full_importance_cached,
  n_selected, frac_selected, n_selected_norm, alpha, lam, mode, batch sizes.
  """
  return ssd.run_dampening(ctx, "lfssd", lfssd_importance, uses_labels=False)


def importance(apply_fn: Callable, params: Any, x: jax.Array, *, mode: str = "reference",
               mask: jax.Array | None = None, chunk: int | None = None) -> Any:
  """LFSSD importance on ONE batch: `ssd.importance(apply_fn, params, x, loss='output_norm', ...)`
  (pure, jittable with `apply_fn` static, vmappable; no labels)."""
  return ssd.importance(apply_fn, params, x, None, loss="output_norm", mode=mode, mask=mask, chunk=chunk)


def unlearn(model: Any, variables: Any, full: Any, forget: Any, config: Any = None, *,
            preprocess: Callable | None = None, **hparams: Any) -> base.UnlearnResult:
  """LFSSD on your own model and unlabelled arrays, without an `UnlearnContext`: `ssd.unlearn` with the
  label-free importance. `full` / `forget` are `x` arrays (or `(x, y)`, whose y is never read) or
  iterables of batches; `config` / `hparams` are `config.lfssd` fields (e.g. `alpha=6.0`)."""
  return ssd.unlearn_dampening("lfssd", lfssd_importance, False, model, variables, full, forget, config,
                               preprocess=preprocess, **hparams)


dampen = ssd.dampen  # re-exported: LFSSD's dampening is SSD's

__all__ = ["default_config", "output_norm_sq", "lfssd_importance", "importance", "dampen", "run", "unlearn"]
