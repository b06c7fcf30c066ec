"""`make demo` (`python -m pipelines.demo`): materialize the whole graph once and print what it made.

The run goes into the project-local Dagster instance (``DAGSTER_HOME``, ``.dagster/`` at the
repository root by default), so ``make ui`` shows its materializations, metadata and lineage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lmforge.paths import REPO_ROOT


DEPLOYMENT = "tiny"  # the deployment whose assets the summary reads (set by main)


def _metadata(instance, key: str, partition: str | None = None) -> dict:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey([DEPLOYMENT, key]),
                              asset_partitions=[partition] if partition else None),
        limit=1).records
    event = records[0].event_log_entry if records else None
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scores(meta: dict) -> str:
    scores = {k: v for k, v in meta.items()
              if k.split("/")[0] in ("mmlu", "gsm8k", "humaneval", "heldout_bpb")}
    shown = ", ".join(f"{k}={_num(v)}" for k, v in scores.items()) or "no scores"
    skipped = meta.get("skipped") or {}
    if skipped:
        shown += f" (skipped: {', '.join(skipped)})"
    return shown


def summary_lines(instance, artifacts: Path | str, suite: str, tasks: list[str],
                  store=None) -> list[str]:
    """What a person wants to see after the run: counts, sizes, losses, scores, where things are."""
    from assets.data import STAGES
    from assets.partitions import adapter_eval_key
    from lmforge.curate.stages import stage_names

    lines = ["", "lmforge demo: summary", "=" * 21]
    docs = [(k, _metadata(instance, k)) for k in stage_names(STAGES)]
    crawl = _metadata(instance, "crawled_pages")
    lines.append(f"{'crawled pages:':<36}{crawl.get('pages_fetched', '?')}")
    for key, meta in docs:
        lines.append(f"{key + ':':<36}{meta.get('kept_documents', meta.get('documents', '?'))}")
    tok = _metadata(instance, "tokenizer")
    lines.append(f"{'tokenizer vocabulary:':<36}{tok.get('vocab_size', '?')} "
                 f"({tok.get('bytes_per_token', '?')} bytes/token)")
    trainings = [("pretrained_model", "pretrained_model", None), ("sft_model", "sft_model", None)]
    trainings += [(f"lora_adapter[{t}]", "lora_adapter", t) for t in tasks]
    for label, key, partition in trainings:
        meta = _metadata(instance, key, partition)
        lines.append(f"{label + ' loss:':<36}{_num(meta.get('first_loss', '?'))} -> "
                     f"{_num(meta.get('final_loss', '?'))}")
    evals = [(f"{k}[{suite}]", k, suite) for k in ("base_model_eval", "sft_model_eval")]
    evals += [(f"lora_model_eval[{t}|{suite}]", "lora_model_eval", str(adapter_eval_key(t, suite)))
              for t in tasks]
    for label, key, partition in evals:
        lines.append(f"{label + ':':<36}{_scores(_metadata(instance, key, partition))}")
    release = _metadata(instance, "released_model")
    if release:
        lines.append(f"{'released model:':<36}{release.get('released_version', '?')} "
                     f"(previous: {release.get('previous_release', '?')})")
    lines += alignment_lines(instance, store)
    report = _metadata(instance, "pipeline_report")
    lines += ["", f"artifacts:   {artifacts}/<asset>/[<partition>/]<version>/ "
              "(`python -m pipelines.versions list` lists them)",
              *([f"cache:       {store.root_dir() / DEPLOYMENT} (this machine's copy)"]
                if store is not None and store.mirror() is not None else []),
              f"release:     {release.get('model_dir', '(none yet)')}",
              f"report:      {report.get('report', '(none yet)')}",
              f"dagster:     {os.environ['DAGSTER_HOME']}",
              "open the UI: make ui   (then http://127.0.0.1:3000)"]
    return lines


def alignment_lines(instance, store=None) -> list[str]:
    """Past SFT: the pairs, each stage's held-out figure before -> after, the arena's order.
    ``store`` resolves the arena's version (on a remote root, from its cache)."""
    pairs = _metadata(instance, "preference_pairs")
    if not pairs:
        return []
    lines = [f"{'preference pairs:':<36}{pairs.get('pairs', '?')} ({pairs.get('source', '?')}"
             + (f", SFT sample accuracy {_num(pairs['on_policy_sample_accuracy'])}"
                if "on_policy_sample_accuracy" in pairs else "") + ")"]
    figures = [("reward_model", "reward model held-out accuracy", "val_accuracy"),
               ("dpo_model", "dpo held-out preference accuracy", "val_accuracy"),
               ("grpo_model", "grpo held-out mean reward", "heldout_reward")]
    for key, label, name in figures:
        meta = _metadata(instance, key)
        if meta:
            lines.append(f"{label + ':':<36}{_num(meta.get(name + '_before', '?'))} -> "
                         f"{_num(meta.get(name + '_after', '?'))}")
    grpo = _metadata(instance, "grpo_model")
    if grpo.get("heldout_exact_before") is not None:
        lines[-1] += (f" ({grpo.get('reward')}; exact answers {_num(grpo['heldout_exact_before'])}"
                      f" -> {_num(grpo.get('heldout_exact_after', '?'))})")
    arena = _metadata(instance, "arena_ratings")
    version = (store.latest("arena_ratings", instance=instance) if store is not None
               else Path(arena["path"]) if arena else None)
    if arena and version is not None:
        import json

        ratings = json.loads((version / "arena" / "ratings.json").read_text())["ratings"]
        board = ", ".join(f"{r['model']} {r['rating']:.0f}" for r in ratings.get("leaderboard", []))
        lines.append(f"{'arena (Bradley-Terry):':<36}{board}")
    return lines


INSTANCE_YAML = """\
# The project-local Dagster instance of `make demo` / `make ui` (SQLite storage in this folder).
telemetry:
  enabled: false
"""


def prepare_instance_dir() -> Path:
    """Create DAGSTER_HOME (default: .dagster/ at the repository root) with its dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return home


def _parent_partition(graph, parent_key, node, partition: str | None) -> str | None:
    """The parent's partition a child's partition reads (``math|smoke`` reads ``math`` of the
    adapters, ``smoke`` of a suite-partitioned parent); None: any (the latest of all)."""
    parent = graph.get(parent_key)
    if not parent.is_partitioned or not node.is_partitioned or partition is None:
        return None
    keys = set(parent.partitions_def.get_partition_keys())
    if partition in keys:
        return partition
    parts = [p for p in str(partition).split("|") if p in keys]
    return parts[0] if len(parts) == 1 else None


def pending_assets(defs, instance, keys, partition: str | None, frozen=frozenset()) -> list:
    """Of ``keys``, those to materialize (``make``'s rule): never materialized (for
    ``partition``, when partitioned), materialized by other code (its ``code_version`` changed),
    or older than the latest materialization of an input, or with an input that is pending.
    A key in ``frozen`` (the tokenizer, unless the preset retrains it) only when missing or its
    code changed."""
    import dagster as dg

    graph = defs.resolve_asset_graph()

    def latest(key, part=None):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[part] if part else None),
            limit=1).records
        return records[0] if records else None

    pending: set = set()
    changed = True
    while changed:
        changed = False
        for key in keys:
            if key in pending:
                continue
            node = graph.get(key)
            if node.is_partitioned and partition not in node.partitions_def.get_partition_keys():
                continue
            record = latest(key, partition if node.is_partitioned else None)
            stale = record is None
            if not stale:
                tags = record.event_log_entry.dagster_event.event_specific_data.materialization.tags or {}
                stale = bool(node.code_version) and tags.get("dagster/code_version") != node.code_version
            for parent in node.parent_keys if not stale and key not in frozen else ():
                if parent in pending:
                    stale = True
                    break
                parent_record = latest(parent, _parent_partition(graph, parent, node, partition))
                if parent_record is not None and parent_record.storage_id > record.storage_id:
                    stale = True
                    break
            if stale:
                pending.add(key)
                changed = True
    return [k for k in keys if k in pending]


def main(argv: list[str] | None = None) -> int:
    from pipelines.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Materialize every asset of a deployment (default: tiny, a few minutes on a "
        "laptop CPU, offline) into the project's Dagster instance. Run again, it materializes only "
        "what is missing or stale (code or inputs changed): with nothing changed it does nothing.")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--day", default=None,
                        help="crawl partition, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--suite", default=None,
                        help="evaluation suite (default: the preset's; tiny: smoke)")
    parser.add_argument("--artifacts", default=None,
                        help="artifact directory or URL, e.g. s3://bucket/prefix (default: "
                        "LMFORGE_ARTIFACTS or ./artifacts)")
    parser.add_argument("--force", action="store_true",
                        help="materialize every asset again, fresh or not (a changed setting "
                        "that is not code gives new versions this way)")
    args = parser.parse_args(argv)

    prepare_instance_dir()
    if args.artifacts:
        os.environ["LMFORGE_ARTIFACTS"] = args.artifacts
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import dagster as dg

    from assets.partitions import DAILY, adapter_eval_key
    from assets.training import adapter_task_data
    from pipelines.definitions import JOB_ASSETS, asset_key, defs
    from pipelines.presets import PRESETS, deployment_name, job_name
    from resources import ArtifactStore

    global DEPLOYMENT
    DEPLOYMENT = deployment_name(args.preset)
    instance = dg.DagsterInstance.get()
    started = time.time()
    day = args.day or DAILY.get_last_partition_key()
    suite = args.suite or PRESETS[args.preset].suite
    store = ArtifactStore(deployment=DEPLOYMENT)
    results, failed = [], False

    def run(kind: str, partition: str | None) -> bool:
        keys = [asset_key(args.preset, n) for n in sorted(JOB_ASSETS[kind])]
        frozen = set() if PRESETS[args.preset].retrain_tokenizer else {asset_key(args.preset, "tokenizer")}
        todo = keys if args.force else pending_assets(defs, instance, keys, partition, frozen)
        if not todo:
            print(f"lmforge demo: {job_name(kind, args.preset)} [{partition}]: up to date",
                  file=sys.stderr)
            return True
        print(f"lmforge demo: {job_name(kind, args.preset)} [{partition}]: "
              f"{', '.join(k.path[-1] for k in todo)}", file=sys.stderr)
        job = defs.resolve_job_def(job_name(kind, args.preset))
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        partition_key=partition, asset_selection=todo)
        results.append(result)
        return result.success

    # The order the automation follows after the nightly curation.
    tasks: list[str] = []
    if run("curation", day) and run("training", suite):
        tasks, skipped = adapter_task_data(store, instance)
        for task, reason in skipped.items():
            print(f"lmforge demo: adapter task {task} skipped: {reason}", file=sys.stderr)
        for task in tasks:
            if not (run("adapters", task) and run("adapter_evaluation", adapter_eval_key(task, suite))):
                failed = True
                break
        else:
            failed = not run("alignment", None)
    else:
        failed = True
    elapsed = time.time() - started
    artifacts = f"{store.root_url()}/{DEPLOYMENT}"
    for line in summary_lines(instance, artifacts, suite, tasks, store):
        print(line)
    success = not failed and all(r.success for r in results)
    print(f"{len(results)} runs {'succeeded' if success else 'FAILED'} in {elapsed:.0f} s"
          + (": " + ", ".join(r.run_id[:8] for r in results) if results else " (all up to date)"))
    for result in results:
        for event in result.all_events:
            if event.is_failure:
                print(f"  failed: {event.step_key}: {event.message}", file=sys.stderr)
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
