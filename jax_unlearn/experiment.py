"""The main job: every method in `config.methods`, every metric, one comparison table.

`run(config, workdir)` trains (or reuses) the original and retrain models, runs each method,
evaluates all metrics with one `MetricSuite` per (seed, forget set) and writes results.json/md/csv
and results.png. Everything is cached in the workdir: the unlearned model of each method and its
metrics row (keyed by a fingerprint of the config), so a rerun only computes what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable

from jax_unlearn import api
from jax_unlearn import config as config_lib
from jax_unlearn.io import atomic_write_json
from jax_unlearn.report import table
from jax_unlearn.train import checkpoint

_NOT_FINGERPRINTED = ("method", "methods", "seeds", "seed")


def _model_dict(config) -> dict:
  d = config.model.to_dict()
  if not d.get("fast_cpu_kernels"):  # off: the same hashes as before the field existed
    d.pop("fast_cpu_kernels", None)
  if d.get("bn_running_var") == "biased":  # the rule before the field existed: the same hashes
    d.pop("bn_running_var")
  return d


def fingerprint(config) -> str:
  d = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
  if not d.get("xla_cpu_flags"):  # no flags: the same fingerprint as before the field existed
    d.pop("xla_cpu_flags", None)
  d["model"] = _model_dict(config)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# config.metrics fields the shadows depend on (besides every `shadow_*` field): count, pools, seed.
_SHADOW_METRIC_FIELDS = ("num_shadow", "mia_ii_max_eval", "seed_offset")


def shadow_dir(config, workdir: str) -> str:
  """W/shadows/<forget tag>_seed<s>_<hash>: the MIA-II shadow models' checkpoint (resume and reuse).

  The hash covers exactly what `train_shadow_models` depends on: the data (dataset fields except
  where it is read from), the model, the forget set, the seed and the shadow fields of the resolved
  metric config (defaults included), so changing e.g. the AIN settings or `metrics.names` reuses them."""
  from jax_unlearn import metrics  # noqa: PLC0415 (heavy import, only when the suite is built)
  mcfg, mseed = metrics.resolve_config(config)
  dataset = {k: v for k, v in config.dataset.to_dict().items() if k not in ("data_dir", "download")}
  shadow_fields = {k: mcfg[k] for k in mcfg if k.startswith("shadow_") or k in _SHADOW_METRIC_FIELDS}
  d = {"dataset": dataset, "model": _model_dict(config), "forget": config.forget.to_dict(),
       "seed": int(config.seed), "metric_seed": mseed, "metrics": shadow_fields}
  h = hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]
  return os.path.join(os.path.abspath(workdir), "shadows",
                      f"{api.forget_tag(config)}_seed{int(config.seed)}_{h}")


def _load_row(path: str, fp: str):
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      row = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return row if row.get("fingerprint") == fp else None


def run(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  methods = config_lib.parse_methods(config.methods)
  if not methods:
    from jax_unlearn.errors import ConfigError
    raise ConfigError("config.methods is empty; pass e.g. --config.methods=original,retrain,ispf")
  seeds = tuple(int(s) for s in config.seeds) or (int(config.seed),)
  config_lib.validate(config, workdir, methods)  # everything checked before any work starts
  workdir = os.path.abspath(workdir)
  fp = fingerprint(config)
  rows = []
  t_start = time.time()
  for seed in seeds:
    cfg = config.copy_and_resolve_references()
    cfg.seed = seed
    setup = api.load_setup(cfg, workdir, methods)
    log(f"[experiment] seed {seed}: original model")
    setup, original, _ = api.train_original(cfg, workdir, log, setup)
    log("[experiment] retrain model (gold standard)")
    retrain, retrain_wall = api.run_method(setup, workdir, "retrain", original, log)
    suite = None
    for i, method in enumerate(methods):
      rdir = api.run_dir(cfg, workdir, method)
      row = _load_row(os.path.join(rdir, "row.json"), fp)
      if row is not None:
        log(f"[experiment] {i + 1}/{len(methods)} {method}: cached")
        rows.append(row)
        continue
      log(f"[experiment] {i + 1}/{len(methods)} {method}: running "
          f"(elapsed {time.time() - t_start:.0f}s)")
      if method == "retrain":
        result, wall = retrain, retrain.info.get("train_s", retrain_wall)
      else:
        final = os.path.join(rdir, "final")
        result, wall = api.run_method(setup, workdir, method, original, log)
        checkpoint.save_variables(final, result.variables, api.model_meta(cfg, setup.info))
      if suite is None:
        from jax_unlearn import metrics
        log("[experiment] building the metric suite (shadow models, retrain relearn time)")
        suite = metrics.MetricSuite(setup.model, setup.data, original_vars=original,
                                    retrain_vars=retrain.variables, config=cfg, log=log,
                                    shadow_dir=shadow_dir(cfg, workdir))
      m = suite(result.variables)
      row = {"method": method, "forget_classes": [int(c) for c in cfg.forget.classes]
             if cfg.forget.mode != "random" else [], "seed": seed,
             **{k: m.get(k) for k in table.METRIC_KEYS}, "wall_s": wall,
             "ain_reached": None if m.get("relearn_reached") is None else bool(m["relearn_reached"]),
             "fingerprint": fp, "info": result.info}
      atomic_write_json(os.path.join(rdir, "row.json"), row)
      rows.append(row)
      log(f"[experiment] {method}: acc_forget {row['acc_forget']:.2f}% acc_retain "
          f"{row['acc_retain']:.2f}% ({wall:.1f}s)")
  title = (f"{config.dataset.name} / {config.model.name}, forget {config.forget.mode} "
           f"{tuple(config.forget.classes) if config.forget.mode != 'random' else config.forget.num_samples}")
  results = table.write_results(workdir, config.to_dict(), rows, title)
  log(f"[experiment] done in {time.time() - t_start:.0f}s: {workdir}/results.md")
  return results
