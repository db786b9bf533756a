"""The per-example privacy audit (`launch.audit`, issue 20): populations of originals, one unlearning
method applied to every member, U-LiRA and the NeurIPS'23 forgetting score.

Protocol (random forgetting; every choice stated):
* **Candidates and masks.** With seed s' = config.seed + config.audit.seed_offset, a candidate set C
  of |C| = config.audit.candidates training examples (0: 2 x config.forget.num_samples) is drawn
  from the training split (`default_rng([s', 20])`); the other training examples R are in every
  model's training set (with config.audit.retain_size > 0, R is a seeded subset of that size,
  `default_rng([s', 23])`, and the rest of the training split is in no member).
  `keep = lira.membership_masks(N, |C|)` puts each candidate in exactly N/2 of the N members
  (LiRA's keep.npy).
* **Original population.** Member m trains on R + {c in C : keep[m, c]} (`train.population`, the
  recipe of config.train unless config.audit.epochs/milestones say otherwise, last epoch kept, no
  validation selection), key `phase_key('audit/original')`.
* **Unlearning.** Member m's forget set is F_m = its candidates (|F_m| = |C|/2 = num_samples on
  average), its retain set R. The method runs on every member from that member's own original
  (`methods.base.context`, per-member key, workdir and cache directory), so the spread of a
  deterministic method (SSD, LFSSD) comes from the originals' seeds and masks, never from one shared
  original (where it would be 0 and its forgetting score 0). `retrain` is a population trained on R
  alone with its own key (the same trainer as the originals); `original` applies nothing.
* **Reference retrain population.** N models on R with key `phase_key('audit/retrain_reference')`:
  the "retrained" side of the forgetting score (for method=retrain another population, so the two
  sides are independent draws of the same distribution).
* **U-LiRA** (Hayes et al. 2025, §4; `metrics.ulira.ulira`) on the unlearned population alone:
  phi = LiRA's logit-confidence (float64) of every candidate under every member; "forgotten" pairs
  (m, c) with keep[m, c] (trained on c, then unlearned it), "unseen" pairs with not keep[m, c]
  (never trained on c, unlearned other examples: the same pipeline); every member is a target in
  turn, the Gaussians fitted leave-one-out from the other members with as many in- as out-shadows
  (`balance_shadows`: without it half membership biases the test below chance); balanced set;
  accuracy, AUC and TPR at 1 % / 0.1 % FPR; 95 % intervals by a bootstrap over examples. Ideal:
  chance (0.5).
* **Forgetting score** (the challenge's `metric.py`, `metrics.forget_quality`): for candidate c, the
  N/2 members that forgot it (unlearned side) against the same members of the reference retrain
  population (retrained side), phi as the confidence; per-example epsilon at delta 1e-5, bucket
  points, F = their mean; 95 % interval by a bootstrap over examples. With N/2 models a side the
  largest certifiable epsilon is ceil(log(N/2 - 1)) (2 for N = 16: 4 buckets; the challenge used
  512). Final score = F x (RA_u / RA_r) x (TA_u / TA_r) with RA the accuracy on R and TA on the test
  split, averaged over the members.
Class forgetting is not audited here: its forget set is a whole class for every member, so there is
no per-example membership to vary.

Files: W/audit/<forget tag>_seed<s>/<population>-<fp>/ (resumable population checkpoints, the
methods' per-member caches) and W/runs/<forget tag>_seed<s>/<method>/audit.json, ulira_roc.png and
unlearned-<fp>/ (the stacked unlearned members' checkpoint, the method's per-member runs).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn import api, models
from jax_unlearn import config as config_lib
from jax_unlearn import data as data_lib
from jax_unlearn import methods as methods_lib
from jax_unlearn.configdict import merge
from jax_unlearn.errors import ConfigError, NumericalError
from jax_unlearn.io import atomic_write_json, workdir_lock
from jax_unlearn.metrics import forget_quality as fq
from jax_unlearn.metrics.lira import lira_score, membership_masks
from jax_unlearn.metrics.ulira import ulira
from jax_unlearn.report import privacy_plots
from jax_unlearn.train import fingerprint, population, supervised
from jax_unlearn.train.loop import all_finite, run_chunks

__all__ = ["Plan", "audit_config", "validate", "plan", "population_recipe", "member_data",
           "train_reference", "unlearn_population", "member_accuracies", "scores", "run", "REFERENCE_POINTS"]

FORMAT_VERSION = 1
REFERENCE_POINTS = ("original", "retrain")  # the two reference points: no unlearning, the gold standard
_CANDIDATE_STREAM = 20
_RETAIN_STREAM = 23  # the subset R of `config.audit.retain_size`


def audit_config(config):
  """`config.audit` merged over `population.default_config()`."""
  return merge(population.default_config(), config.get("audit", None), prefix="audit")


def validate(config, workdir: str | None = None):
  """Every check before any work: the config (and `config.method`'s sub-config), `config.audit`, the
  forget mode and the candidate count. Returns (Problem, merged audit config)."""
  method = str(config.method)
  methods_lib.spec(method)  # unknown names: one line naming the registered ones
  prob = config_lib.validate(config, workdir, () if method in REFERENCE_POINTS else (method,))
  acfg = audit_config(config)
  population.validate_config(acfg)
  if prob.forget_mode != "random":
    raise ConfigError(f"the audit varies each example's membership, which needs random forgetting; set "
                      f"--config.forget.mode=random (got {prob.forget_mode!r})")
  c = int(acfg.candidates) or 2 * int(config.forget.num_samples)
  if c < 2:
    raise ConfigError(f"the audit needs >= 2 candidate examples, got {c}; set --config.forget.num_samples "
                      "(or --config.audit.candidates)")
  return prob, acfg


class Plan:
  """Candidates, membership and the per-member training masks of one audit (module docstring)."""

  def __init__(self, num_train: int, num_models: int, num_candidates: int, seed: int,
               retain_size: int = 0):
    if num_candidates >= num_train:
      raise ConfigError(f"the audit needs fewer candidates ({num_candidates}) than training examples "
                        f"({num_train}); lower --config.audit.candidates or --config.forget.num_samples")
    if retain_size > num_train - num_candidates:
      raise ConfigError(f"config.audit.retain_size={retain_size} exceeds the {num_train - num_candidates} "
                        "training examples that are not candidates; lower it (0 = all of them)")
    rng = np.random.default_rng([int(seed), _CANDIDATE_STREAM])
    self.seed = int(seed)
    self.retain_size = int(retain_size)
    self.candidates = np.sort(rng.choice(num_train, size=num_candidates, replace=False))
    self.keep = membership_masks(num_models, num_candidates, rng)         # [N, |C|]
    self.retain_mask = np.ones(num_train, bool)
    self.retain_mask[self.candidates] = False                            # R: the other examples ...
    if self.retain_size:                                                 # ... or a subset of them
      others = np.flatnonzero(self.retain_mask)
      pick = np.random.default_rng([int(seed), _RETAIN_STREAM]).choice(len(others), self.retain_size,
                                                                        replace=False)
      self.retain_mask[:] = False
      self.retain_mask[others[pick]] = True
    self.train_masks = np.repeat(self.retain_mask[None], num_models, axis=0)
    self.train_masks[:, self.candidates] = self.keep                      # originals: R + own candidates

  @property
  def num_models(self) -> int:
    return self.keep.shape[0]

  def digest(self) -> str:
    subset = (np.flatnonzero(self.retain_mask),) if self.retain_size else ()  # old plans: same digest
    return fingerprint.array_digest(self.candidates, self.keep, *subset)


def plan(config, num_train: int, acfg=None) -> Plan:
  """The audit's `Plan` (candidates, membership, training masks) for `config.audit` and `num_train`."""
  acfg = acfg or audit_config(config)
  c = int(acfg.candidates) or 2 * int(config.forget.num_samples)
  return Plan(num_train, int(acfg.num_models), c, int(config.seed) + int(acfg.seed_offset),
              int(acfg.get("retain_size", 0)))


def population_recipe(config, acfg=None) -> dict:
  """config.train (and config.batch_size) with config.audit.epochs / milestones when set."""
  acfg = acfg or audit_config(config)
  r = supervised.recipe(config.train, config.batch_size).to_dict()
  if acfg.epochs is not None:
    r["epochs"] = int(acfg.epochs)
  if acfg.milestones is not None:
    r["milestones"] = tuple(int(m) for m in acfg.milestones)
  r["milestones"] = tuple(int(m) for m in r["milestones"])
  return r


def member_data(dataset, pl: Plan, m: int) -> data_lib.UnlearnData:
  """Member m's unlearning problem: its training set R + its candidates, forget set its candidates."""
  train = dataset.train.subset(pl.train_masks[m])
  forget = np.zeros(len(pl.train_masks[m]), bool)
  forget[pl.candidates[pl.keep[m]]] = True
  return data_lib.UnlearnData(dataset.info, train, dataset.val, dataset.test, forget[pl.train_masks[m]],
                              np.zeros(len(dataset.val), bool), np.zeros(len(dataset.test), bool),
                              mode="random", classes=())


def _audit_dir(config, workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "audit", f"{api.forget_tag(config)}_seed{int(config.seed)}")


def train_reference(config, workdir, setup_parts, pl: Plan, name: str, masks, acfg, log):
  """One population trained by `train.population` (original, retrain, retrain_reference), resumable
  and cached in W/audit/<tag>_seed<s>/<name>-<fp>/. Returns (Population, directory)."""
  dataset, model = setup_parts
  key = api.phase_key(config, f"audit/{name}")
  recipe = population_recipe(config, acfg)
  desc = population.describe_population(kind=f"audit/{name}", pool=dataset.train, masks=masks, recipe=recipe,
                                        model_cfg=api.model_config(config), key=key, seed=pl.seed,
                                        stream=population.STREAM_ORDER, augment=dataset.info.augment)
  directory = fingerprint.tagged(_audit_dir(config, workdir), name, desc)
  pop = population.train_population(
      model, dataset.train, masks, dataset.info, recipe, key, seed=pl.seed, layout=acfg.layout,
      conv=acfg.conv, ckpt_dir=os.path.join(directory, "ckpt"), fingerprint_desc=desc,
      every=int(acfg.checkpoint_every) or 1, phase=f"audit {name}", shard=bool(acfg.shard), log=log,
      fix="lower --config.train.lr (or set --config.audit.epochs) and run the same command again")
  return pop, directory


def _scalars(info: dict) -> dict:
  return {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str)) or v is None}


def unlearn_population(config, workdir, dataset, model, pl: Plan, method: str, original, original_dir,
                       acfg, log):
  """Applies `method` (registered, `methods.base.context`) to every member, one member per chunk of
  the resumable loop (the stacked unlearned variables are its state; a killed run resumes at the
  first member not saved, and that member's method resumes from its own checkpoints, kept in
  members/m<m>/ under the population's fingerprinted directory, so other inputs never reuse them).
  Returns (stacked variables, per-member records)."""
  spec = methods_lib.spec(method)
  mcfg = config_lib.method_config(config, method)
  key = api.phase_key(config, f"audit/method/{method}")
  desc = fingerprint.describe(kind="audit_method", version=FORMAT_VERSION, method=method,
                              cfg=None if mcfg is None else mcfg.to_dict(),
                              original=os.path.basename(original_dir),  # <name>-<its fingerprint>
                              plan=pl.digest(), key=fingerprint.array_digest(key),
                              train=supervised.recipe(config.train, config.batch_size).to_dict())
  rdir = api.run_dir(config, workdir, method)
  directory = fingerprint.tagged(rdir, "unlearned", desc)
  state = jax.tree.map(jnp.asarray, original)

  def chunk_fn(state, m):
    ctx = methods_lib.base.context(
        method, config, model=model, original=population.take(original, m), data=member_data(dataset, pl, m),
        key=jax.random.fold_in(key, m), workdir=os.path.join(directory, "members", f"m{m}"), log=log,
        forget_classes=(), num_classes=dataset.info.num_classes,
        cache_dir=os.path.join(original_dir, "members", f"m{m}"), model_cfg=api.model_config(config))
    os.makedirs(ctx.workdir, exist_ok=True)
    os.makedirs(ctx.cache_dir, exist_ok=True)
    t0 = time.time()
    result = spec.run(ctx)
    wall = time.time() - t0
    new = {k: result.variables[k] for k in state}
    if not all_finite(new):
      raise NumericalError(f"[audit {method}] member {m} came out with NaN/inf parameters; lower "
                           f"--config.{spec.config_key or method}.lr and run again")
    state = jax.tree.map(lambda a, v: a.at[m].set(jnp.asarray(v, a.dtype)), state, new)
    return state, {"member": m, "wall_s": wall, "info": _scalars(result.info)}

  n = pl.num_models
  state, history = run_chunks(
      chunk_fn, state, n, phase=f"audit {method}", ckpt_dir=os.path.join(directory, "ckpt"),
      fingerprint=desc, unit="member", log=log,
      fix=f"lower --config.{spec.config_key or method}.lr and run the same command again",
      progress=lambda i, r: f"[audit {method}] member {i + 1}/{n} unlearned in {r['wall_s']:.1f}s")
  return jax.device_get(state), history


def member_accuracies(model, stacked, images, labels, info, acfg) -> np.ndarray:
  """[N] accuracy (%) of every member on (images, labels)."""
  logits = population.stacked_logits(model, stacked, images, info, batch_size=int(acfg.eval_batch_size),
                                     layout=acfg.layout, conv=acfg.conv)
  return 100.0 * (logits.argmax(-1) == np.asarray(labels)[None]).mean(1)


def _bootstrap_mean(x: np.ndarray, rng, n: int = 1000, confidence: float = 0.95) -> tuple[float, float]:
  idx = rng.integers(0, len(x), size=(n, len(x)))
  a = 1.0 - confidence
  return tuple(float(v) for v in np.quantile(x[idx].mean(1), [a / 2, 1 - a / 2]))


def scores(phi_unlearned, phi_reference, keep, *, seed: int, n_bootstrap: int = 1000) -> dict:
  """U-LiRA and the forgetting score from the candidates' phi [N, |C|] under the unlearned and the
  reference retrain populations and the membership `keep` [N, |C|] (module docstring)."""
  keep = np.asarray(keep, bool)
  n = keep.shape[0]
  u = ulira(phi_unlearned, keep, ~keep, np.arange(n), rng=np.random.default_rng([seed, 1]),
            n_bootstrap=n_bootstrap, balance_shadows=True)
  # Per candidate, the N/2 members that forgot it, on both sides (paired members).
  rows = np.stack([np.flatnonzero(keep[:, j]) for j in range(keep.shape[1])], axis=1)  # [N/2, |C|]
  cols = np.arange(keep.shape[1])[None]
  pu, pr = np.asarray(phi_unlearned)[rows, cols], np.asarray(phi_reference)[rows, cols]
  eps = fq.per_example_epsilons(pu, pr)
  points = np.array([fq.forget_quality_from_epsilons(e[None], rows.shape[0]) for e in eps])
  f = fq.forget_quality_from_epsilons(eps, rows.shape[0])
  return {"ulira_acc": u["acc"], "ulira_auc": u["auc"], "ulira_balanced_accuracy": u["balanced_accuracy"],
          "ulira_tpr_at_1pct_fpr": u["tpr_at_1pct_fpr"], "ulira_tpr_at_01pct_fpr": u["tpr_at_01pct_fpr"],
          "ulira_acc_ci": list(u["acc_ci"]), "ulira_auc_ci": list(u["auc_ci"]),
          "ulira_acc_ci_binomial": list(u["acc_ci_binomial"]), "ulira_n_per_side": int(u["n_per_side"]),
          "ulira_acc_within_chance": bool(u["acc_within_chance"]),
          "ulira_auc_within_chance": bool(u["auc_within_chance"]),
          "forget_quality": f,
          "forget_quality_ci": list(_bootstrap_mean(points, np.random.default_rng([seed, 2]), n_bootstrap)),
          "forget_quality_models_per_side": int(rows.shape[0]),
          "epsilon_median": float(np.median(eps)), "epsilon_max": float(np.max(eps)),
          "_roc": (u["fpr"], u["tpr"])}


def run(config, workdir: str, log: Callable[[str], None] = print, summary: bool = True) -> dict:
  """`launch.audit`: trains/reuses the original and reference retrain populations, applies
  `config.method` to every member, writes audit.json (module docstring); returns its content.
  `summary`: also write it as W/metrics.json (the launcher's summary; `launch.experiment`, which
  runs one audit per method for the population metrics, does not)."""
  method = str(config.method)
  _, acfg = validate(config, workdir)  # every check before any training
  t_start = time.time()
  dataset = data_lib.load_dataset(config.dataset, int(config.seed))
  model = models.create_classifier(config.model, dataset.info.num_classes)
  pl = plan(config, len(dataset.train), acfg)
  n, info = pl.num_models, dataset.info
  with workdir_lock(workdir):
    orig, orig_dir = train_reference(config, workdir, (dataset, model), pl, "original", pl.train_masks,
                                     acfg, log)
    ref, _ = train_reference(config, workdir, (dataset, model), pl, "retrain_reference",
                             np.repeat(pl.retain_mask[None], n, 0), acfg, log)
    t0 = time.time()
    if method == "original":
      unlearned, per_member, unlearn_s = orig.variables, [], 0.0
    elif method == "retrain":
      rp, _ = train_reference(config, workdir, (dataset, model), pl, "retrain",
                              np.repeat(pl.retain_mask[None], n, 0), acfg, log)
      unlearned, per_member, unlearn_s = rp.variables, [], rp.train_s
    else:
      unlearned, per_member = unlearn_population(config, workdir, dataset, model, pl, method, orig.variables,
                                                 orig_dir, acfg, log)
      unlearn_s = float(sum(r["wall_s"] for r in per_member))
    t_unlearn = time.time() - t0
    cand = dataset.train.subset(pl.candidates)
    eval_kw = dict(batch_size=int(acfg.eval_batch_size), layout=acfg.layout, conv=acfg.conv)
    logits_u = population.stacked_logits(model, unlearned, cand.images, info, **eval_kw)
    phi_u = lira_score(logits_u, cand.labels)
    phi_r = lira_score(population.stacked_logits(model, ref.variables, cand.images, info, **eval_kw),
                       cand.labels)
    out = scores(phi_u, phi_r, pl.keep, seed=pl.seed)
    fpr, tpr = out.pop("_roc")
    retain = dataset.train.subset(pl.retain_mask)
    acc = {name: {"retain": member_accuracies(model, v, retain.images, retain.labels, info, acfg),
                  "test": member_accuracies(model, v, dataset.test.images, dataset.test.labels, info, acfg)}
           for name, v in (("unlearned", unlearned), ("reference", ref.variables))}
    forget_acc = 100.0 * (logits_u.argmax(-1) == cand.labels[None])
    out["final_score"] = fq.final_score(out["forget_quality"], acc["unlearned"]["retain"],
                                        acc["reference"]["retain"], acc["unlearned"]["test"],
                                        acc["reference"]["test"])
    rdir = api.run_dir(config, workdir, method)
    os.makedirs(rdir, exist_ok=True)
    roc = privacy_plots.plot_roc(os.path.join(rdir, "ulira_roc.png"), {f"U-LiRA ({method})": (fpr, tpr)},
                                 f"U-LiRA, {info.name} {api.forget_tag(config)}, N={n}")
    result = {
        "method": method, "dataset": info.name, "model": config.model.name, "forget_mode": "random",
        "num_models": n, "num_candidates": int(len(pl.candidates)),
        "forget_set_size_mean": float(pl.keep.sum(1).mean()), "seed": int(config.seed),
        "audit_seed": pl.seed, **out,
        "acc_retain": float(acc["unlearned"]["retain"].mean()),
        "acc_test": float(acc["unlearned"]["test"].mean()),
        "acc_forget": float(forget_acc[pl.keep].mean()),
        "acc_retain_reference": float(acc["reference"]["retain"].mean()),
        "acc_test_reference": float(acc["reference"]["test"].mean()),
        "original_population_train_s": orig.train_s, "reference_population_train_s": ref.train_s,
        "unlearn_population_s": unlearn_s, "unlearn_phase_wall_s": t_unlearn,
        "population_layout": f"{acfg.layout} ({orig.chunk} per group)",
        "steps_per_epoch": orig.steps_per_epoch, "per_member": per_member,
        "wall_s": time.time() - t_start, "roc_png": roc}
    atomic_write_json(os.path.join(rdir, "audit.json"), result)
    if summary:
      atomic_write_json(os.path.join(os.path.abspath(workdir), "metrics.json"), result)
  lo, hi = out["ulira_auc_ci"]
  log(f"[audit {method}] U-LiRA AUC {out['ulira_auc']:.3f} [{lo:.3f}, {hi:.3f}], acc {out['ulira_acc']:.3f}; "
      f"forgetting score {out['forget_quality']:.3f}, final {out['final_score']:.3f} (N={n})")
  return result
