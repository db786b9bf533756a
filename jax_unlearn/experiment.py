"""The main job: every method in `config.methods`, every metric, one comparison table.

`run(config, workdir)` validates everything first (every method's and metric's config, before any
model is trained), trains (or reuses) the original and retrain models, runs each method, evaluates all
metrics with one `MetricSuite` per (seed, forget set) and writes results.json/md/csv and results.png.
Everything is cached in the workdir: the unlearned model of each method and its metrics row (keyed by
a fingerprint of the config and of the original model), so a rerun only computes what is missing, and
the table also shows the rows of earlier runs of other methods under the same fingerprint.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Callable

from jax_unlearn import api, audit, metrics
from jax_unlearn import config as config_lib
from jax_unlearn import methods as methods_lib
from jax_unlearn.errors import CheckpointError, ConfigError
from jax_unlearn.io import atomic_write_json, read_json, workdir_lock
from jax_unlearn.report import table
from jax_unlearn.train import checkpoint, fingerprint

__all__ = ["run", "fingerprint_of", "shadow_dir"]

# config.audit only drives launch.audit, so it never changes the table's cached rows.
_NOT_FINGERPRINTED = ("method", "methods", "seeds", "seed", "audit")


def fingerprint_of(config) -> str:
  """The rows' fingerprint: the whole config except which methods/seeds are run."""
  d = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
  return fingerprint.digest(fingerprint.describe(**d), length=16)


# config.metrics fields the shadows depend on (besides every `shadow_*` field): count, pools, seed.
_SHADOW_METRIC_FIELDS = ("num_shadow", "mia_ii_max_eval", "seed_offset")


def shadow_dir(config, workdir: str) -> str:
  """W/shadows/<forget tag>_seed<s>_<hash>: the MIA-II shadow models' checkpoint (resume and reuse).

  The hash covers exactly what `train_shadow_models` depends on: the data (dataset fields except
  where it is read from), the model, the forget set, the seed and the shadow fields of the resolved
  metric config (defaults included), so changing e.g. the AIN settings or `metrics.names` reuses them."""
  mcfg, mseed = metrics.resolve_config(config)
  dataset = {k: v for k, v in config.dataset.to_dict().items() if k not in ("data_dir", "download")}
  shadow_fields = {k: mcfg[k] for k in mcfg if k.startswith("shadow_") or k in _SHADOW_METRIC_FIELDS}
  d = fingerprint.describe(dataset=dataset, model=config.model.to_dict(), forget=config.forget.to_dict(),
                           seed=int(config.seed), metric_seed=mseed, metrics=shadow_fields, version=2)
  return os.path.join(os.path.abspath(workdir), "shadows",
                      f"{api.forget_tag(config)}_seed{int(config.seed)}_{fingerprint.digest(d)}")


def _load_row(path: str, fp: str):
  row = read_json(path)
  return row if isinstance(row, dict) and row.get("fingerprint") == fp else None


def _earlier_rows(workdir: str, cfg, fp: str, methods: tuple[str, ...]) -> list[dict]:
  """Rows of other methods computed earlier in this workdir under the same fingerprint (so a later
  run with fewer methods keeps them in the table)."""
  group = os.path.dirname(api.run_dir(cfg, workdir, "x"))
  rows = []
  for path in sorted(glob.glob(os.path.join(group, "*", "row.json"))):
    row = _load_row(path, fp)
    if row is not None and row.get("method") not in methods:
      rows.append(row)
  return rows


def _missing_columns(row: dict) -> list[str]:
  """Metric columns registered after `row` was computed (a row holds every registered key, None for
  metrics not asked for)."""
  return [k for k in table.metric_keys() if k not in row]


def _with_method(config, method: str):
  """A copy of `config` with `config.method = method` (the audit runs one method)."""
  c = config.copy_and_resolve_references()
  c.method = method
  return c


def _population_columns(config, workdir: str, method: str, names: tuple[str, ...], log) -> dict:
  """The columns of the population metrics `names` (`metrics.base.register_population`) for `method`,
  from its per-example audit (`jax_unlearn.audit.run`: trains or reuses the populations in W/audit/,
  resumable; writes W/runs/<forget tag>_seed<s>/<method>/audit.json). {} when `names` is empty."""
  if not names:
    return {}
  result = audit.run(_with_method(config, method), workdir, log, summary=False)
  return {k: result.get(k) for n in names for k in metrics.spec(n).keys}


def _add_columns(row: dict, rdir: str, fp: str, original, get_suite, config, log, workdir) -> dict | None:
  """A cached row that predates a newly registered metric column: the metrics owning the missing
  columns (and configured in `config.metrics.names`) are evaluated on the method's saved model
  (`rdir/final`); every other field, the wall time and info are kept. None (run the method again)
  when that model is missing or was saved for another fingerprint or architecture."""
  final = os.path.join(rdir, "final")
  if not checkpoint.has_variables(final):
    return None
  try:
    variables = checkpoint.load_variables(final, original, expect_meta={"fingerprint": fp})
  except CheckpointError:
    return None
  missing = _missing_columns(row)
  configured = set(metrics.resolve_config(config)[0].names)
  owners = tuple(s.name for s in metrics.specs() if s.name in configured and set(s.keys) & set(missing))
  log(f"[experiment] {row['method']}: cached row lacks {', '.join(missing)}; evaluating "
      f"{', '.join(owners) or 'nothing (not configured)'} on its saved model")
  m = get_suite(owners)(variables) if owners else {}
  m.update(_population_columns(config, workdir, row["method"], metrics.population_names(owners), log))
  row = {**row, **{k: m.get(k) for k in missing}}
  atomic_write_json(os.path.join(rdir, "row.json"), row)
  return row


def run(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """`launch.experiment`: every method of `config.methods` (and seed of `config.seeds`), one table."""
  methods = config_lib.parse_methods(config.methods)
  if not methods:
    raise ConfigError("config.methods is empty; pass e.g. --config.methods=original,retrain,ispf")
  seeds = tuple(int(s) for s in config.seeds) or (int(config.seed),)
  # Everything is checked before any work starts: every method's and metric's settings.
  config_lib.validate(config, workdir, tuple(dict.fromkeys(methods + ("retrain",))), with_metrics=True)
  if metrics.population_names(metrics.resolve_config(config)[0].names):
    for method in methods:  # the audit's own checks (config.audit), before any training
      audit.validate(_with_method(config, method), workdir)
  workdir = os.path.abspath(workdir)
  order = {n: i for i, n in enumerate(methods_lib.names())}
  rows = []
  t_start = time.time()
  with workdir_lock(workdir):
    for seed in seeds:
      cfg = config.copy_and_resolve_references()
      cfg.seed = seed
      setup = api.load_setup(cfg, workdir)
      log(f"[experiment] seed {seed}: original model")
      setup, original, orig_metrics = api.train_original(cfg, workdir, log, setup)
      fp = fingerprint.digest({"config": fingerprint_of(cfg), "original": orig_metrics.get("fingerprint")},
                              length=16)
      log("[experiment] retrain model (gold standard)")
      retrain, retrain_wall = api.run_method(setup, workdir, "retrain", original, log)
      suites = {}
      population = metrics.population_names(metrics.resolve_config(cfg)[0].names)

      def get_suite(names=None):
        """The metric suite (built once), or one restricted to `names` (new columns of cached rows)."""
        if names not in suites:
          c = cfg
          if names is None:
            log("[experiment] building the metric suite (shadow models, retrain relearn time)")
          else:
            c = cfg.copy_and_resolve_references()
            c.metrics.names = tuple(names)
          suites[names] = metrics.MetricSuite(setup.model, setup.data, original_vars=original,
                                              retrain_vars=retrain.variables, config=c, log=log,
                                              cache_dir=shadow_dir(cfg, workdir))
        return suites[names]

      for i, method in enumerate(methods):
        rdir = api.run_dir(cfg, workdir, method)
        row = _load_row(os.path.join(rdir, "row.json"), fp)
        if row is not None and _missing_columns(row):
          row = _add_columns(row, rdir, fp, original, get_suite, cfg, log, workdir)
        if row is not None:
          log(f"[experiment] {i + 1}/{len(methods)} {method}: cached")
          rows.append(row)
          continue
        log(f"[experiment] {i + 1}/{len(methods)} {method}: running "
            f"(elapsed {time.time() - t_start:.0f}s)")
        if method == "retrain":
          result, wall = retrain, retrain.info.get("train_s", retrain_wall)
        else:
          result, wall = api.run_method(setup, workdir, method, original, log)
        # Every row's model, Retrain's too: a later metric column is evaluated on it (`_add_columns`).
        checkpoint.save_variables(os.path.join(rdir, "final"), result.variables,
                                  {"method": method, "fingerprint": fp, "model": api.model_config(cfg)})
        m = get_suite()(result.variables)
        m.update(_population_columns(cfg, workdir, method, population, log))
        row = {"method": method, "forget_classes": [int(c) for c in cfg.forget.classes]
               if cfg.forget.mode != "random" else [], "seed": seed,
               **{k: m.get(k) for k in table.metric_keys()}, "wall_s": wall,
               "ain_reached": None if m.get("relearn_reached") is None else bool(m["relearn_reached"]),
               "fingerprint": fp, "info": result.info}
        atomic_write_json(os.path.join(rdir, "row.json"), row)
        rows.append(row)
        log(f"[experiment] {method}: acc_forget {row['acc_forget']:.2f}% acc_retain "
            f"{row['acc_retain']:.2f}% ({wall:.1f}s)")
      rows.extend(_earlier_rows(workdir, cfg, fp, methods))
    rows.sort(key=lambda r: (order.get(r["method"], len(order)), r["seed"]))
    what = (", ".join(map(str, config.forget.classes)) if config.forget.mode != "random"
            else f"{config.forget.num_samples} samples")
    title = f"{config.dataset.name} / {config.model.name}, forget {config.forget.mode} {what}"
    results = table.write_results(workdir, config.to_dict(), rows, title)
  log(f"[experiment] done in {time.time() - t_start:.0f}s: {workdir}/results.md")
  return results
