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
  _quiet_abandoned_async_reads()
  try:
    fn()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


class _DropAbandonedTasks:
  """A logging filter for asyncio's 'Task exception was never retrieved' records."""

  def filter(self, record) -> bool:
    return "never retrieved" not in record.getMessage()


def _quiet_abandoned_async_reads() -> None:
  """When orbax fails to read a corrupted checkpoint it abandons its other asyncio read tasks; they
  log full tracebacks when collected and warn 'coroutine ... was never awaited' at exit. The failure
  itself is reported as a CheckpointError line, so that noise only buries it."""
  import logging as py_logging
  import warnings
  py_logging.getLogger("asyncio").addFilter(_DropAbandonedTasks())
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def run_app(main: Callable[[list], object]) -> None:
  """`absl.app.run(main)`, except that an exception raised while the flags are parsed becomes one
  `error:` line and exit code 2.

  `DEFINE_config_file` executes the config file during flag parsing: a missing file is deferred to
  `config_value`, but a syntax error or an exception inside `get_config` would otherwise end the
  launcher with a traceback before `main` (and `run_main`) is reached. A flag value absl rejects
  (`--config.train.lr=abc`, an unknown `--config.x`) is one line and exit 2 too, instead of absl's
  'FATAL Flags parsing error' and exit 1. Exceptions from `main` itself propagate unchanged."""
  from absl import app, flags
  started = []

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      msg = " ".join(str(e).split())[:300]
      print(f"error: {msg}; fix that flag: config overrides take the type of the field in the config "
            "file (e.g. --config.train.lr=0.05), and --helpfull lists every flag", file=sys.stderr,
            flush=True)
      sys.exit(2)
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that is not there
      bad = [a for a in argv[1:] if a.startswith("--config.") and str(e).strip("'\"") in a]
      if not bad:
        raise
      print(f"error: {bad[0].split('=')[0]} names no field of the config ({type(e).__name__}: {e}); fix that "
            "flag: check the spelling against the config file, e.g. configs/digits.py",
            file=sys.stderr, flush=True)
      sys.exit(2)

  def wrapped(argv):
    started.append(True)
    return main(argv)

  try:
    app.run(wrapped, flags_parser=parse)
  except Exception as e:  # noqa: BLE001
    if started:
      raise
    first = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    print(f"error: the command line or the config file could not be parsed ({first}); fix the config "
          "file or pass an existing one, e.g. --config=configs/digits.py", file=sys.stderr, flush=True)
    sys.exit(2)


def setup(holder) -> None:
  """`compile_cache.setup` with the launcher's config (its XLA flags), before any JAX work; a config
  that cannot be loaded, or bad flags, give one `error:` line and exit code 2."""
  from jax_unlearn import compile_cache  # noqa: PLC0415
  run_main(lambda: compile_cache.setup(config_value(holder)))


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
