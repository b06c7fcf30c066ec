"""Scaling laws: a sweep of pretraining runs at fixed FLOP budgets, and the Chinchilla fits.

Each sweep file ``sweeps/<name>.yaml`` (budgets x model sizes, see ``lmforge.scaling.sweep``)
gives two assets:

- ``scaling_runs_<name>``: one partition per run (``SIZE@BUDGET``, read from the file when the
  definitions load); a partition trains one model on D = C / 6N tokens through the training
  launcher (the pretraining engine, in its own process) and records its final validation loss.
  The runs read the pipeline's tokenizer and token shards, or, when the sweep file names a
  ``vocab_size``, a tokenizer of that size trained on the curated corpus for the sweep (once).
  A run whose result exists for the same settings is not trained again; a killed run resumes
  from its checkpoint.
- ``scaling_fit_<name>``: approaches 2 and 3 of Hoffmann et al. on every finished run, with
  bootstrap intervals; the compute-optimal N* and D* for a budget, the IsoFLOP curves and the
  frontier as pictures. It materializes once every run of the sweep has a result (a run of the
  job that finishes the last run fits; the others skip it). Each fit is a new version directory;
  ``scaling_fit/latest.json`` points at the newest, which presets that name a FLOP budget read.

The jobs (``scaling_jobs``): ``scaling`` for the tiny CPU sweep (minutes on two cores; not part
of ``make demo``), ``scaling_<name>`` for the others. Backfill all partitions of one to run the
sweep.
"""


import json
import math
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.data import CURATED, curated_corpus
from assets.tokenizer import token_shards_data
from lmforge.paths import REPO_ROOT
from lmforge.scaling import sweep as sw
from lmforge.scaling.budget import LATEST
from lmforge.scaling.fit import ScalingFitConfig
from resources import ArtifactStore, TrainingLauncher, dagster_config

SWEEPS_DIR = REPO_ROOT / "sweeps"
# Exponents outside this band mean the runs did not pin the law down (too few sizes, budgets too
# close, or every run on one side of the optimum); Chinchilla's are 0.34 and 0.28.
EXPONENT_RANGE = (0.05, 1.5)

ScalingFitRunConfig = dagster_config(ScalingFitConfig, "ScalingFitRunConfig", exclude={"plots"})


class ScalingRunsConfig(dg.Config):
    rerun: bool = Field(default=False, description="Train the run again even if its result "
                        "exists for the same settings.")


def sweep_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SWEEPS_DIR.glob("*.yaml"))}


def runs_asset_name(sweep: str) -> str:
    return f"scaling_runs_{sweep}"


def fit_asset_name(sweep: str) -> str:
    return f"scaling_fit_{sweep}"


def latest_fit_path(store: ArtifactStore, sweep: str) -> Path:
    return store.fixed_path(fit_asset_name(sweep), "latest.json")


def _read_latest(store: ArtifactStore, sweep: str) -> dict | None:
    pointer = latest_fit_path(store, sweep)
    if not pointer.exists():
        return None
    return json.loads(Path(json.loads(pointer.read_text())["path"]).read_text())


def _write_pointer(path: Path, target: Path, sweep: str) -> None:
    from lmforge.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"path": str(target), "sweep": sweep}) + "\n")


def _sweep_assets(name: str, path: Path) -> dict:
    sweep = sw.load_sweep(path)
    partitions = dg.StaticPartitionsDefinition(sw.run_ids(sweep))
    runs_name, fit_name = runs_asset_name(name), fit_asset_name(name)

    @dg.asset(name=runs_name, code_version="scaling-runs-1", group_name="scaling",
              kinds={"pytorch"}, partitions_def=partitions,
              deps=([dg.AssetDep(CURATED, partition_mapping=dg.AllPartitionMapping())]
                    if sweep.vocab_size else ["token_shards", "tokenizer"]),
              pool="gpu", description=f"One run of the `{name}` sweep ({path.name}): the "
              "partition's size trained on C / 6N tokens for the partition's budget C; its final "
              "validation loss.")
    def _runs(context: dg.AssetExecutionContext, config: ScalingRunsConfig, store: ArtifactStore,
              launcher: TrainingLauncher) -> dg.MaterializeResult:
        current = sw.load_sweep(path)  # the file as it is now, not as it was when loaded
        run_id = context.partition_key
        out_root = store.asset_dir(runs_name)
        if current.vocab_size:  # the sweep's own vocabulary, trained once on the curated corpus
            tokenizer, data = sw.prepare_data(curated_corpus(store), out_root / "data",
                                              current.vocab_size)
        else:
            data, tokenizer = token_shards_data(store), store.path("tokenizer", "tokenizer")
        vocab = sw.checked_vocab_size(current, tokenizer)
        plan = sw.plan_run(current, run_id, vocab)
        cfg = sw.pretrain_config(current, run_id, vocab, data, tokenizer, sw.run_dir(out_root, run_id))
        done = None if config.rerun else sw.done_result(out_root, run_id, cfg)
        if done is not None:
            context.log.info("%s: done already (val loss %.4f), not trained again", run_id, done["loss"])
            return dg.MaterializeResult(metadata={**_run_metadata(done), "skipped": True})
        if config.rerun:
            sw.result_path(out_root, run_id).unlink(missing_ok=True)
        sw.run_dir(out_root, run_id).parent.mkdir(parents=True, exist_ok=True)
        launched = launcher.run(context, "lmforge.train.pretrain", cfg.model_dump(mode="json"),
                                out_root / run_id / "config.json")
        result = sw.record_result(plan, cfg, out_root)
        return dg.MaterializeResult(metadata={**(launched.metadata or {}), **_run_metadata(result),
                                              "skipped": False})

    @dg.asset(name=fit_name, code_version="scaling-fit-1", group_name="scaling",
              kinds={"scipy"}, deps=[runs_name], output_required=False,
              description=f"Chinchilla approaches 2 and 3 fitted to every run of the `{name}` "
              "sweep, with bootstrap intervals; the compute-optimal N* and D* for the budget.")
    def _fit(context: dg.AssetExecutionContext, config: ScalingFitRunConfig,
             store: ArtifactStore):
        from lmforge.io import atomic_path
        from lmforge.scaling.fit import fit_runs
        from lmforge.scaling.plots import markdown_image

        current = sw.load_sweep(path)
        results, missing = sw.load_results(store.asset_dir(runs_name), current)
        if missing:
            context.log.info("%d of %d runs of the %s sweep have no result yet (%s): not fitted",
                             len(missing), len(results) + len(missing), name, ", ".join(missing[:8]))
            return
        version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{context.run.run_id[:8]}"
        final = store.fixed_path(fit_name, version)
        with atomic_path(final, "dir") as tmp:
            tmp.mkdir()
            fit_cfg = ScalingFitConfig(**config.model_dump(), plots=str(tmp))
            report = fit_runs(results, fit_cfg)
            report["plots"] = {k: str(final / Path(v).name) for k, v in report["plots"].items()}
            report["sweep"] = name
            sw.write_runs_jsonl(tmp, results)
            (tmp / "fit.json").write_text(json.dumps(report, indent=2) + "\n")
        _write_pointer(latest_fit_path(store, name), final / "fit.json", name)
        _write_pointer(store.base().joinpath(*LATEST), final / "fit.json", name)
        iso = report.get("approach2") or {}
        yield dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(final)),
            **{k: float(report[k]) for k in ("E", "A", "B", "alpha", "beta")},
            "budget": float(report["budget"]), "params_opt": float(report["params"]),
            "tokens_opt": float(report["tokens"]), "tokens_per_param": float(report["tokens_per_param"]),
            "loss_at_optimum": float(report["loss_at_optimum"]), "runs": len(results),
            "approach2_a": iso.get("a"), "approach2_params_opt": iso.get("params"),
            "intervals": dg.MetadataValue.json(report.get("intervals") or {}),
            "isoflops": dg.MetadataValue.md(markdown_image(final / "isoflops.png", "IsoFLOP curves")),
            "frontier": dg.MetadataValue.md(markdown_image(final / "frontier.png", "frontier")),
        })

    @dg.asset_check(asset=fit_name, name="fit_converged", blocking=True)
    def _converged(store: ArtifactStore) -> dg.AssetCheckResult:
        """The parametric fit reached a law (positive exponents) that several starts agree on."""
        report = _read_latest(store, name)
        if report is None:
            return dg.AssetCheckResult(passed=False, description="no fit yet")
        a3 = report["approach3"]
        ok = bool(a3["converged"]) and a3["agreeing_starts"] >= 2
        return dg.AssetCheckResult(passed=ok, metadata={"objective": a3["objective"],
                                                         "agreeing_starts": a3["agreeing_starts"]},
                                   description=None if ok else "the optimum is not a law several "
                                   "starts agree on")

    @dg.asset_check(asset=fit_name, name="exponents_in_range")
    def _exponents(store: ArtifactStore) -> dg.AssetCheckResult:
        """alpha and beta lie in a plausible band (Chinchilla: 0.34 and 0.28)."""
        report = _read_latest(store, name)
        if report is None:
            return dg.AssetCheckResult(passed=False, description="no fit yet")
        lo, hi = EXPONENT_RANGE
        ok = all(lo <= report[k] <= hi for k in ("alpha", "beta"))
        return dg.AssetCheckResult(passed=ok, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"alpha": report["alpha"], "beta": report["beta"],
                                             "range": list(EXPONENT_RANGE)})

    @dg.asset_check(asset=fit_name, name="loss_falls_with_compute")
    def _falls(store: ArtifactStore) -> dg.AssetCheckResult:
        """The best loss at each budget is lower than at every smaller budget."""
        report = _read_latest(store, name)
        if report is None:
            return dg.AssetCheckResult(passed=False, description="no fit yet")
        best = best_loss_by_budget(sw.load_results(store.asset_dir(runs_name), current_sweep(path))[0])
        losses = [best[c] for c in sorted(best)]
        ok = len(losses) >= 2 and all(b < a for a, b in zip(losses, losses[1:]))
        return dg.AssetCheckResult(passed=ok, metadata={
            "best_loss_by_budget": dg.MetadataValue.json({f"{c:.3g}": v for c, v in sorted(best.items())})})

    return {runs_name: _runs, fit_name: _fit, f"{fit_name}_converged": _converged,
            f"{fit_name}_exponents_in_range": _exponents, f"{fit_name}_loss_falls": _falls}


def current_sweep(path: Path) -> sw.SweepConfig:
    return sw.load_sweep(path)


def best_loss_by_budget(results: list[dict]) -> dict[float, float]:
    best: dict[float, float] = {}
    for r in results:
        best[r["budget"]] = min(best.get(r["budget"], math.inf), r["loss"])
    return best


def _run_metadata(result: dict) -> dict:
    keys = ("size", "budget", "params", "tokens", "flops", "steps", "loss", "train_loss", "wall_s")
    return {k: result[k] for k in keys if result.get(k) is not None}


# The module's attributes are what load_assets_from_modules / load_asset_checks_from_modules find.
for _name, _path in sweep_files().items():
    globals().update(_sweep_assets(_name, _path))

def scaling_jobs(deployment: str | None = None, job_name=lambda kind: kind) -> list:
    """One job per sweep for one deployment: its runs (partitioned) and its fit. ``scaling`` is
    the tiny CPU sweep; ``job_name(kind)`` names the deployment's job of that kind."""
    return [dg.define_asset_job(job_name("scaling" if name == "tiny" else f"scaling_{name}"),
                                selection=[dg.AssetKey([deployment, a] if deployment else a)
                                           for a in (runs_asset_name(name), fit_asset_name(name))],
                                tags={"preset": deployment} if deployment else {},
                                description=f"The `{name}` scaling sweep ({path.name}): one run "
                                "per partition (backfill them all), then the Chinchilla fit once "
                                "every run has a result.")
            for name, path in sweep_files().items()]
