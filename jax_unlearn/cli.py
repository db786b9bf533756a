"""What every launcher shares: user errors become one line on stderr and exit code 2; Ctrl-C and a
full disk become one line too; `--help` lists the methods, metrics, data sets and config fields."""

from __future__ import annotations

import errno
import sys
import time
from typing import Callable

from jax_unlearn.errors import UserError

_LAST = [""]  # the last progress line (where an interrupted run stopped)


def progress_logger(prefix: str = "") -> Callable[[str], None]:
  t0 = time.time()

  def log(msg: str) -> None:
    _LAST[0] = msg
    print(f"{prefix}[{time.time() - t0:7.1f}s] {msg}", flush=True)
  return log


def _fail(message: str, code: int = 2) -> None:
  from jax_unlearn import compile_cache
  compile_cache.quiet()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _disk_full(e: BaseException) -> bool:
  """Whether `e` (or an exception in its chain) is an out-of-space failure: errno ENOSPC, or the
  RESOURCE_EXHAUSTED / 'No space left' text tensorstore and orbax wrap it in."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(e)
    if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
      return True
    e = e.__cause__ or e.__context__
  return False


def run_main(fn: Callable[[], object]) -> None:
  """Calls `fn`; a `UserError` prints `error: <message>` (no traceback) and exits with code 2. Ctrl-C
  prints where it stopped and exits with 130; running out of disk space is one line and exit 2 (what
  was already written stays: the run resumes once there is space)."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  _quiet_abandoned_async_reads()
  try:
    fn()
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    where = f" during: {_LAST[0]}" if _LAST[0] else ""
    _fail(f"interrupted{where}; finished checkpoints are kept: run the same command again to resume",
          code=130)
  except Exception as e:  # noqa: BLE001
    if not _disk_full(e):
      raise
    _fail("no space left on the device while writing results or checkpoints; free some space (or pass "
          "another --workdir) and run the same command again: it resumes from the last checkpoint")


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
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in sys.argv[1:]):
    print(usage(sys.argv))
    sys.exit(0)

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


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out.extend(_flatten(v, f"{prefix}{k}."))
    else:
      out.append((f"{prefix}{k}", v))
  return out


def usage(argv: list[str]) -> str:
  """The `--help` text: the launcher's docstring, the registered methods, metrics and data sets, and
  every `--config.*` field with its value in the chosen config file (default configs/digits.py)."""
  import importlib
  import importlib.util
  import os
  main = sys.modules.get("__main__")
  doc = (getattr(main, "__doc__", None) or "").strip()
  lines = [doc, ""] if doc else []
  try:
    from jax_unlearn import data, metrics
    from jax_unlearn.methods import base
    lines.append("Methods (--config.method / --config.methods):")
    lines.extend(f"  {s.name:<12} {s.data}" for s in base.specs())
    lines.append(f"Metrics (--config.metrics.names): {', '.join(metrics.names())}")
    lines.append(f"Data sets (--config.dataset.name): {', '.join(data.DATASETS)}")
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "configs/digits.py")
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_help_config", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    lines.append(f"Config fields (--config.<field>=<value>; values of {path}):")
    lines.extend(f"  --config.{k}={v!r}" for k, v in _flatten(config.to_dict()))
  except Exception as e:  # noqa: BLE001 (help must print even with a broken config)
    lines.append(f"(the config could not be listed: {type(e).__name__}: {str(e)[:200]})")
  lines.append("Launcher flags: --workdir, --compile_cache, --distributed; --helpfull lists all flags.")
  return "\n".join(lines)


def setup(holder) -> None:
  """`compile_cache.setup` with the launcher's config (its XLA flags), before any JAX work; a config
  that cannot be loaded, or bad flags, give one `error:` line and exit code 2."""
  from jax_unlearn import compile_cache
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
