"""Data-free unlearning by distillation (ISPF, Zhang et al. AAAI'25): the eight registered methods.

dfkd (plain DFQ distillation), blockf, gkt (PreFilter), is (Inhibited Synthesis, Eq. 7, with the
PreFilter), pf (PostFilter, Eq. 8–9), ispf (IS + PF), pd and pd_is (App. I) are one engine
(`methods.distill`) with a different `distill.Strategy`; they all read `config.ispf`. Each run:

    engine, state = build(cfg, teacher_model, info, strategy, forget_classes, key)
    # then `distill.run_epoch` once per epoch, through the resumable loop (`train.loop.run_chunks`):
    # an orbax checkpoint every `checkpoint_every` epochs, fingerprinted by everything the run depends
    # on, so a killed run resumes exactly and a changed config never resumes a stale one.

Data-free: the engine uses only the teacher (`ctx.original`, `ctx.model`) and `ctx.data.info` (image
shape, mean/std). Real images are read only for the parity-only `selection='best_retain_test'` and for
optional evaluation logging (`eval_every > 0`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import numpy as np

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import base
from jax_unlearn.methods.distill import (
  STRATEGIES,
  DistillState,
  Engine,
  Strategy,
  default_config,
  epoch_diagnostics,
  init_state,
  make_engine,
  make_knobs,
  run_epoch,
  sample_images,
  student_variables,
)
from jax_unlearn.models import create_generator
from jax_unlearn.train import fingerprint
from jax_unlearn.train.evaluate import accuracy
from jax_unlearn.train.loop import all_finite, run_chunks

__all__ = ["build", "student_model_for", "validate_config", "run_strategy", "FORMAT_VERSION"]

# Version of the checkpointed run state; part of the checkpoint's fingerprint.
FORMAT_VERSION = 2
# config.ispf fields that do not change the unlearned model (kept out of the fingerprint).
_NOT_RESULT_FIELDS = ("plots", "checkpoint_every")


def validate_config(cfg: Any, problem: base.Problem | None = None, strategy: Strategy | None = None) -> None:
  """ConfigError (naming `--config.ispf.<field>`) for an invalid `config.ispf`; with a `problem`
  (`methods.base.Problem`) and a `strategy`, also what the forget request and data must allow."""
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"config.ispf.{field}={cfg[field]!r} {msg}; set --config.ispf.{field}")
  need(cfg.generator in ("dfq", "zskt"), "generator", "is not 'dfq' or 'zskt'")
  need(cfg.selection in ("final", "best_retain_test"), "selection", "is not 'final' or 'best_retain_test'")
  for k in ("batch_size", "kd_steps", "loops_per_epoch", "nz", "ngf"):
    need(int(cfg[k]) >= 1, k, "must be >= 1")
  for k in ("epochs", "warmup", "g_steps", "eval_every", "checkpoint_every"):
    need(int(cfg[k]) >= 0, k, "must be >= 0")
  need(0.0 <= float(cfg.tau) <= 1.0, "tau", "must be in [0, 1] (e.g. 0.01)")
  need(float(cfg.lr) > 0, "lr", "must be > 0")
  need(float(cfg.lr_g) > 0, "lr_g", "must be > 0")
  need(float(cfg.t_max) > 0, "t_max", "must be > 0 (the reference uses 200)")
  need(cfg.student_width is None or float(cfg.student_width) > 0, "student_width", "must be > 0 or unset")
  if problem is None:
    return
  name = strategy.name if strategy is not None else "ispf"
  forget = tuple(int(c) for c in problem.forget_classes)
  if problem.forget_mode != "class" and name != "dfkd":
    raise ConfigError(f"method {name!r} unlearns whole classes, but --config.forget.mode="
                      f"{problem.forget_mode!r}; use --config.forget.mode=class (or method 'dfkd')")
  num_classes = problem.num_classes
  if name != "dfkd" and not forget:
    raise ConfigError(f"method {name!r} unlearns whole classes but no forget class is set; use "
                      "--config.forget.mode=class --config.forget.classes=3 (or method 'dfkd')")
  if any(c < 0 or c >= num_classes for c in forget) or len(set(forget)) >= num_classes:
    raise ConfigError(f"forget classes {forget} must be distinct classes in [0, {num_classes}) that leave "
                      "at least one retained class; fix --config.forget.classes")
  h, w, _ = tuple(problem.info.image_shape)
  if h != w or h % 4:
    raise ConfigError(f"the generator makes square images with side divisible by 4, got "
                      f"{tuple(problem.info.image_shape)}; use a dataset with such images")


def student_model_for(teacher_model: Any, cfg: Any) -> Any:
  """The student architecture: the teacher's, or the same family at `cfg.student_width`."""
  if not hasattr(teacher_model, "init"):  # a `models.as_model` teacher: no architecture to copy
    raise ConfigError(f"the student cannot copy the teacher's architecture ({teacher_model.name}); pass "
                      "student_model= (a linen classifier, e.g. models.AllCNN(num_classes=K, width=0.25))")
  if cfg.student_width is None:
    return teacher_model
  if not hasattr(teacher_model, "width"):
    raise ConfigError(f"config.ispf.student_width is set but {type(teacher_model).__name__} has no width; "
                      "unset --config.ispf.student_width")
  return teacher_model.clone(width=float(cfg.student_width))


def build(cfg: Any, teacher_model: Any, info: Any, strategy: Strategy, forget_classes: Sequence[int],
          key: jax.Array, *, student_model: Any = None) -> tuple[Engine, DistillState]:
  """(engine, initial `DistillState`) of one run: the generator of `cfg.generator`, the engine, the
  strategy's knobs for `forget_classes`, and `distill.init_state` from `key` (random student and
  generator). Used by `run_strategy`, `jax_unlearn.sweep` and the bench.

  `cfg` is a `config.ispf` (`distill.default_config()` with overrides); `info` gives the image shape,
  class count and normalisation (`data.DataInfo`, or any object with those fields)."""
  h, _, c = tuple(info.image_shape)
  generator = create_generator(cfg.generator, h, c, nz=int(cfg.nz), ngf=int(cfg.ngf))
  student = student_model if student_model is not None else student_model_for(teacher_model, cfg)
  engine = make_engine(teacher_model, student, generator, cfg, num_classes=int(info.num_classes),
                       mean=info.mean, std=info.std)
  knobs = make_knobs(strategy, cfg, forget_classes=forget_classes, num_classes=int(info.num_classes))
  state = init_state(engine, knobs, key, lr_g=cfg.lr_g, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay)
  return engine, state


def _evaluate(ctx, model, variables) -> dict:
  d = ctx.data
  r = accuracy(model, variables, d.retain_test, d.info)
  f = accuracy(model, variables, d.forget_test, d.info)
  n_r, n_f = len(d.retain_test.labels), len(d.forget_test.labels)
  return {"retain_test_acc": r, "forget_test_acc": f,
          "test_acc": (r * n_r + (f * n_f if n_f else 0.0)) / max(n_r + n_f, 1)}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _RunState:
  """What the resumable loop carries: the engine state and, for `best_retain_test`, the best student."""
  run: DistillState
  best: dict
  best_acc: jax.Array


def run_strategy(ctx: base.UnlearnContext, strategy: Strategy) -> base.UnlearnResult:
  """Runs one data-free strategy end to end. Reads `ctx.cfg` (`config.ispf`), the teacher
  (`ctx.model`, `ctx.original`) and `ctx.data.info` only. Returns the final student (or, with
  selection='best_retain_test', the post-warm-up epoch with the best retain *test* accuracy, the
  reference's parity-only selection); `artifacts` holds the per-epoch diagnostics and sample images
  (`report.method_plots` draws them)."""
  cfg = ctx.cfg
  info = ctx.data.info
  forget = tuple(int(c) for c in ctx.forget_classes)
  needs_data = cfg.selection == "best_retain_test" or int(cfg.eval_every) > 0
  if needs_data and (getattr(ctx.data, "retain_test", None) is None):
    raise ConfigError("config.ispf.selection='best_retain_test' / eval_every need the test split, which "
                      "this context lacks; use --config.ispf.selection=final --config.ispf.eval_every=0")
  key_init, key_vis = jax.random.split(ctx.key)
  engine, state = build(cfg, ctx.model, info, strategy, forget, key_init)
  teacher = {k: v for k, v in ctx.original.items() if k in ("params", "batch_stats")}
  total_epochs = int(cfg.warmup) + int(cfg.epochs)
  selecting = cfg.selection == "best_retain_test"
  desc = fingerprint.describe(
      kind="data_free", version=FORMAT_VERSION, strategy=dataclasses.asdict(strategy),
      cfg={k: v for k, v in cfg.to_dict().items() if k not in _NOT_RESULT_FIELDS},
      teacher=fingerprint.tree_digest(teacher), model=ctx.model_cfg, forget=list(forget),
      info=[list(info.image_shape), list(info.mean), list(info.std), int(info.num_classes)],
      key=fingerprint.array_digest(ctx.key),
      test=fingerprint.split_digest(ctx.data.retain_test, ctx.data.forget_test) if needs_data else None)

  def epoch_fn(rs: _RunState, epoch: int):
    t0 = time.time()
    run = run_epoch(engine, teacher, rs.run)
    rec = epoch_diagnostics(engine, run)
    rec["time_s"] = time.time() - t0
    best, best_acc = rs.best, float(rs.best_acc)
    distilled = epoch >= int(cfg.warmup) and not bool(run.last_skipped)
    evaluate = int(cfg.eval_every) > 0 and distilled and (epoch + 1) % int(cfg.eval_every) == 0
    if (evaluate or (selecting and distilled)) and all_finite((run.s_params, run.g_params)):
      rec.update(_evaluate(ctx, engine.student, jax.device_get(student_variables(run))))
      # The reference selects on retain accuracy, and on overall accuracy for its 'None' strategy.
      sel = rec["test_acc"] if strategy.clear_forget_in_generator else rec["retain_test_acc"]
      if selecting and sel > best_acc:
        best, best_acc = jax.device_get(student_variables(run)), sel
    return _RunState(run=run, best=best, best_acc=np.asarray(best_acc, np.float64)), rec

  def guard(rs, rec):
    if not (math.isfinite(rec["gen_loss"] or 0.0) and math.isfinite(rec["student_loss"] or 0.0)
            and all_finite((rs.run.s_params, rs.run.g_params))):
      return "a loss or parameter became NaN/inf (distillation loop)"
    return None

  start = _RunState(run=state, best=jax.device_get(student_variables(state)) if selecting else {},
                    best_acc=np.asarray(-1.0, np.float64))
  t_run = time.time()
  rs, records = run_chunks(
      epoch_fn, start, total_epochs, phase=strategy.name,
      ckpt_dir=fingerprint.tagged(ctx.workdir, "ckpt", desc), every=int(cfg.checkpoint_every),
      fingerprint=desc, guard=guard, fix="lower --config.ispf.lr or --config.ispf.lr_g and run the same "
      "command again", progress=lambda i, r: _progress(strategy.name, r, total_epochs), log=ctx.log)
  variables = jax.device_get(student_variables(rs.run))
  if selecting and float(rs.best_acc) >= 0:
    variables = rs.best
  artifacts = {"diagnostics": records, "forget_classes": forget}
  if cfg.plots and records:
    artifacts["samples"] = np.asarray(sample_images(engine, rs.run, key_vis, 64))
  return base.UnlearnResult(
      variables=variables, info=_summary(strategy, records, time.time() - t_run, cfg, float(rs.best_acc)),
      artifacts=artifacts)


def _progress(name, rec, total):
  parts = [f"[{name}] epoch {rec['epoch']}/{total} ({rec['phase']})",
           f"gen {rec['gen_loss']:.3f}" if rec["gen_loss"] is not None else "",
           f"forget-synth {100 * rec['forget_synthesis_rate']:.1f}%"]
  if rec["student_loss"] is not None:
    parts += [f"student {rec['student_loss']:.4f}", f"kept {rec['kept_mean']:.1f}",
              f"H_R {rec['retain_entropy']:.1f}"]
  if "retain_test_acc" in rec:
    parts += [f"retain {rec['retain_test_acc']:.1f}%", f"forget {rec['forget_test_acc']:.1f}%"]
  return " ".join(p for p in parts if p)


def _summary(strategy, records, elapsed, cfg, best_acc) -> dict:
  dist = [r for r in records if r["phase"] == "distill" and r["student_steps"] > 0]
  mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs else None  # noqa: E731
  out = {
      "strategy": dataclasses.asdict(strategy),
      "epochs_run": len(records),
      # over the distillation epochs, as the reference logs generated labels only after warm-up
      "mean_forget_synthesis_rate": mean(dist, "forget_synthesis_rate"),
      "final_forget_synthesis_rate": records[-1]["forget_synthesis_rate"] if records else None,
      "mean_kept": mean(dist, "kept_mean"),
      "mean_kept_fraction": mean(dist, "kept_fraction"),
      "mean_retain_entropy": mean(dist, "retain_entropy"),
      "mean_teacher_forget_prob": mean(dist, "teacher_forget_prob"),
      "mean_student_forget_prob": mean(dist, "student_forget_prob"),
      "student_steps": int(sum(r["student_steps"] for r in records)),
      "skipped_loops": int(sum(r["skipped_loops"] for r in records)),
      "selection": cfg.selection,
      "elapsed_s": elapsed,
  }
  if cfg.selection == "best_retain_test":
    out["best_retain_test_acc"] = best_acc  # of `selection_metric`
    out["selection_metric"] = "test_acc" if strategy.clear_forget_in_generator else "retain_test_acc"
  return out


# Table order and data of the eight strategies (ISPF Table 1 order, then App. I).
_ORDER = {"dfkd": 70, "blockf": 80, "gkt": 90, "is": 100, "pf": 110, "ispf": 120, "pd": 130, "pd_is": 135}

for _name, _strategy in STRATEGIES.items():
  base.register(
      _name, config_key="ispf", default_config=default_config,
      validate_config=functools.partial(validate_config, strategy=_strategy), order=_ORDER[_name],
      in_default_table=_name != "pd_is",  # App. I's PD+IS variant: on request (--config.methods)
      data="data-free (teacher and image shape only)")(
          functools.partial(run_strategy, strategy=_strategy))
