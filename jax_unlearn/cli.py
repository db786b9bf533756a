"""What every launcher shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import time
from typing import Callable

from jax_unlearn.errors import UserError


def progress_logger(prefix: str = "") -> Callable[[str], None]:
  t0 = time.time()

  def log(msg: str) -> None:
    print(f"{prefix}[{time.time() - t0:7.1f}s] {msg}", flush=True)
  return log


def run_main(fn: Callable[[], object]) -> None:
  """Calls `fn`; a `UserError` prints `error: <message>` (no traceback) and exits with code 2."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    fn()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def config_value(holder):
  """The config behind a `config_flags.DEFINE_config_file` holder, or a ConfigError naming the fix.

  The file is loaded lazily on first access, so a missing or broken file surfaces here (inside
  `run_main`) as one line instead of a traceback."""
  from jax_unlearn.errors import ConfigError
  try:
    config = holder.value
    config.keys()  # a file that failed to load gives a proxy that raises on first use
    return config
  except Exception as e:  # noqa: BLE001  (OSError for a missing file; anything the file raises)
    first = " ".join(str(e).split())[:300]
    raise ConfigError(f"the config file could not be loaded ({first}); pass an existing config, "
                      "e.g. --config=configs/digits.py") from e
