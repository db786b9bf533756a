"""XLA flags a config asks for (`config.xla_cpu_flags`), applied before JAX starts its backend.

XLA reads `$XLA_FLAGS` once, when the first computation initialises the backend; a flag added later is
silently ignored. `apply()` therefore refuses to run after that point. Launchers call it through
`compile_cache.setup(config)`; code importing the library calls it itself before any JAX work:

    from jax_unlearn import xla_flags
    xla_flags.apply(xla_flags.FAST_CPU_CONVS)

`FAST_CPU_CONVS` keeps XLA:CPU's YNNPACK fusions for matmuls only, so convolutions and their gradients
go to XLA's own (Eigen) kernels. Measured on this 2-core AVX-512 CPU at AllCNN width 1, 32x32x3, batch
256 (BUILD_NOTES "Performance (issue 7)"): the forward conv of the 96-channel 32x32 layer 264 ms
instead of 407 ms, its XLA weight gradient 359 ms instead of ~1.5 s, the whole SGD step ~4.5 s instead
of ~7 s. The paper configs set it. The digits configs do not: it changes float rounding, so every
recorded digits number would move. The flags only concern the CPU backend; GPU and TPU runs ignore them.
"""

from __future__ import annotations

import os
import shlex

from jax_unlearn.errors import ConfigError

FAST_CPU_CONVS = "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT"


def _name(flag: str) -> str:
  return flag.split("=", 1)[0]


def backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # noqa: PLC0415
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # another JAX: assume not started (the flags may be ignored)
    return False


def apply(flags: str | None) -> list[str]:
  """Appends each flag of `flags` (a space-separated string of `--name=value`) to `$XLA_FLAGS`, except
  flags `$XLA_FLAGS` already names (the user's setting wins). Returns the flags added.

  Raises ConfigError for a malformed flag, or if the JAX backend is already running (too late)."""
  wanted = shlex.split(flags or "")
  for f in wanted:
    if not f.startswith("--xla_") or "=" not in f:
      raise ConfigError(f"config.xla_cpu_flags: {f!r} is not an XLA flag of the form --xla_name=value; "
                        f"e.g. --config.xla_cpu_flags='{FAST_CPU_CONVS}', or '' for none")
  current = os.environ.get("XLA_FLAGS", "")
  names = {_name(f) for f in shlex.split(current)}
  added = [f for f in wanted if _name(f) not in names]
  if not added:
    return []
  if backend_started():
    raise ConfigError(f"XLA flags {added} must be set before the first JAX computation; call "
                      "jax_unlearn.xla_flags.apply() first, or put them in $XLA_FLAGS")
  os.environ["XLA_FLAGS"] = " ".join([current.strip()] + added).strip()  # the user's text kept as is
  return added
