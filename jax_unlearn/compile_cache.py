"""Launcher runtime set-up: persistent XLA compilation cache, compile-time accounting, multi-host start.

Every launcher calls `setup()` first thing in `main` (before any JAX computation):

* `--compile_cache=DIR` (default `$JAX_UNLEARN_CACHE_DIR` or `~/.cache/jax_unlearn/xla`; `none` turns
  it off) enables JAX's persistent compilation cache with the size/time thresholds lowered to 0, so even
  the many small programs of a run (evaluation, BN statistics, sampling) are cached. A second identical
  run then loads its executables instead of compiling them (measured in BUILD_NOTES "Performance").
* Compile accounting: `jax.monitoring` listeners sum the backend compile time (cache retrieval included),
  cache hits and misses; `--compile_stats` prints one line at exit and `stats()` returns them.
* `--distributed` calls `jax.distributed.initialize()` (multi-host GPU clusters and TPU pods; the
  coordinator address, process count and id come from the cluster environment — SLURM, Open MPI, TPU
  metadata, or `--coordinator_address/--num_processes/--process_id`), see README "Multi-host".
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from absl import flags

from jax_unlearn import xla_flags

_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent XLA compilation cache directory ('none' disables; default "
    "$JAX_UNLEARN_CACHE_DIR or ~/.cache/jax_unlearn/xla).")
_STATS = flags.DEFINE_bool("compile_stats", True, "Print compile time / cache hits at exit.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host GPU / TPU pod runs).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed; "
                             "auto-detected on SLURM/MPI/TPU when unset).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed; auto-detected "
                              "when unset).")
_PID = flags.DEFINE_integer("process_id", None, "This process's id (--distributed; auto-detected when "
                            "unset).")

_lock = threading.Lock()
_stats = {"backend_compile_s": 0.0, "compiles": 0, "cache_hits": 0, "cache_misses": 0,
          "compile_time_saved_s": 0.0}
_listening = False


def default_dir() -> str:
  return os.environ.get("JAX_UNLEARN_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "jax_unlearn", "xla")


def enable(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache in `directory` (created) with thresholds at 0."""
  import jax  # noqa: PLC0415
  directory = os.path.abspath(directory or default_dir())
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Defaults skip programs compiled in < 1 s; a run compiles dozens of 0.1–1 s programs.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return directory


def _on_duration(event: str, duration: float, **_):
  with _lock:
    if event == "/jax/core/compile/backend_compile_duration":
      _stats["backend_compile_s"] += duration
      _stats["compiles"] += 1
    elif event == "/jax/compilation_cache/compile_time_saved_sec":
      _stats["compile_time_saved_s"] += duration


def _on_event(event: str, **_):
  with _lock:
    if event == "/jax/compilation_cache/cache_hits":
      _stats["cache_hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
      _stats["cache_misses"] += 1


def track() -> None:
  """Starts summing compile events (idempotent)."""
  global _listening
  import jax  # noqa: PLC0415
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _listening = True


def stats() -> dict:
  """{'backend_compile_s' (cache retrieval included), 'compiles', 'cache_hits', 'cache_misses',
  'compile_time_saved_s'} since `track()`."""
  with _lock:
    return dict(_stats)


def format_stats(s: dict | None = None) -> str:
  s = s or stats()
  return (f"compile: {s['backend_compile_s']:.1f} s in {s['compiles']} programs; persistent cache "
          f"{s['cache_hits']} hits, {s['cache_misses']} misses ({s['compile_time_saved_s']:.1f} s saved)")


def initialize_distributed() -> None:
  """`jax.distributed.initialize` with the flags' values (None: auto-detected from the cluster)."""
  import jax
  kw = {k: v for k, v in (("coordinator_address", _COORD.value), ("num_processes", _NPROC.value),
                          ("process_id", _PID.value)) if v is not None}
  jax.distributed.initialize(**kw)


_QUIET = []


def quiet() -> None:
  """No compile-statistics line at exit (after an `error:` line it would only add noise)."""
  _QUIET.append(True)


def _print_stats() -> None:
  if not _QUIET:
    print(format_stats(), file=sys.stderr, flush=True)


def setup(config=None) -> None:
  """What every launcher does first: the config's XLA flags (`config.xla_cpu_flags`, see
  `jax_unlearn.xla_flags`), distributed start-up, compilation cache, compile accounting."""
  if config is not None and config.get("xla_cpu_flags"):
    xla_flags.apply(config.xla_cpu_flags)
  if _DISTRIBUTED.value:
    initialize_distributed()
  cache = _CACHE.value
  if cache is None or cache.lower() != "none":
    enable(cache)
  track()
  if _STATS.value:
    atexit.register(_print_stats)
