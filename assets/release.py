"""The release: the model version that passed every gate of its evaluation.

``released_model`` is what serving and evaluation "of the release" read: a complete Hugging Face
model directory (weights and tokenizer) in its own version of the store, hard-linked from the
candidate (no copy of the weights on one file system), with ``release.json`` beside it naming the
candidate version, the suite and the scores it was released on. It moves only when the candidate
(the latest `sft_model`) has been evaluated on the deployment's suite and passes the gate
(``lmforge.evaluate.gate``: the suite's bounds, no regression against the current release). A
failed gate fails the run with the reasons in one line and leaves the release where it was; the
comparison, metric by metric, is recorded as an observation on the asset and in the report.
"""


import os
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from lmforge.evaluate.gate import release_gate
from lmforge.evaluate.harness import EvalSummary, load_suite
from lmforge.io import atomic_path, read_json, write_json
from lmforge.versions import RELEASE_FILE
from resources import ArtifactStore


class ReleasedModelConfig(dg.Config):
    suite: str = Field(default="smoke", description="the evaluation suite the candidate must pass "
                       "(each deployment sets its own)")


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a directory, hard-linking files where the file system allows it."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link)


def comparison_table(rows: list[dict]) -> dg.TableMetadataValue:
    columns = [dg.TableColumn("task", "string"), dg.TableColumn("candidate", "float"),
               dg.TableColumn("release", "float"), dg.TableColumn("bound", "string"),
               dg.TableColumn("verdict", "string")]
    records = [dg.TableRecord({"task": r["task"],
                               "candidate": None if r["candidate"] is None else round(r["candidate"], 4),
                               "release": None if r["release"] is None else round(r["release"], 4),
                               "bound": r["bound"] or "", "verdict": r["verdict"]}) for r in rows]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns))


def current_release(store: ArtifactStore) -> dict | None:
    """The current release's ``release.json`` (with ``path``), or None."""
    version = store.latest("released_model")
    if version is None or not (version / RELEASE_FILE).is_file():
        return None
    return {**read_json(version / RELEASE_FILE), "path": str(version)}


@dg.asset(code_version="release-1", group_name="release", kinds={"huggingface"},
          deps=["sft_model", "sft_model_eval"])
def released_model(context: dg.AssetExecutionContext, config: ReleasedModelConfig,
                   store: ArtifactStore) -> dg.MaterializeResult:
    """The SFT model version that passed its evaluation's gate: thresholds of the suite, and no
    regression against the current release."""
    candidate = store.latest("sft_model")
    if candidate is None:
        raise dg.Failure(description="no sft_model to release: materialize it first")
    evaluation = store.latest("sft_model_eval", partition=config.suite)
    meta = store.latest_metadata("sft_model_eval", partition=config.suite)
    evaluated = Path(str(getattr(meta.get("model_dir"), "value", meta.get("model_dir", ""))))
    if evaluation is None or candidate not in evaluated.parents:
        raise dg.Failure(description=f"sft_model {candidate.name} has not been evaluated on suite "
                         f"{config.suite!r} yet: materialize sft_model_eval[{config.suite}] first")
    summary = EvalSummary.model_validate(read_json(evaluation / "results" / "summary.json"))
    release = current_release(store)
    gate = release_gate(summary, load_suite(config.suite), release["scores"] if release else None)
    table = comparison_table(gate.rows)
    if not gate.passed:
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={
            "gate": "failed", "candidate": str(candidate), "comparison": table,
            "release": release["path"] if release else "none", "reasons": gate.reasons}))
        stays = Path(release["source"]).name if release else "none"
        raise dg.Failure(description=f"release gate failed: {'; '.join(gate.reasons)}; the "
                         f"release stays at {stays}")
    out = store.path("released_model", "model")
    if not (out / "config.json").exists():
        with atomic_path(out, "dir") as tmp:
            _link_tree(candidate / "run" / "model", tmp)
    scores = {r["task"]: r["candidate"] for r in gate.rows if r["candidate"] is not None}
    write_json(out.parent / RELEASE_FILE, {
        "source": str(candidate), "model_version": candidate.name, "suite": config.suite,
        "scores": scores, "evaluation": str(evaluation), "previous": release["path"] if release else None,
        "released_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    context.log.info("released sft_model %s (%s)", candidate.name, ", ".join(
        f"{k}={v:.4g}" for k, v in scores.items()))
    return dg.MaterializeResult(metadata={
        "released_version": candidate.name, "source": str(candidate), "model_dir": str(out),
        "suite": config.suite, "comparison": table,
        "previous_release": Path(release["source"]).name if release else "none",
        **{f"{k}": round(v, 4) for k, v in scores.items()}})
