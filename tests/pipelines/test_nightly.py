"""The nightly model factory, run for real: the production instance (deploy/dagster.yaml:
PostgreSQL, the queued run coordinator, the `gpu` pool of 1, run retries, run monitoring) and a
real `dagster-daemon` with the default run launcher, on the real graph's `tiny` deployment
(tests/pipelines/nightly_location.py: smaller sizes, a schedule that ticks every minute).

A scheduled tick starts curation; the automation conditions start everything else (tokenizer,
shards, pretraining, SFT, the evaluations, the release through its gate, the adapters and their
evaluation, the alignment chain, the report); GPU steps never overlap. Then, on the same
instance: the UI in a real browser (test_ui_browser.py's checks), the models and adapters, new
settings give a new version beside the old one, and a candidate failing its gate leaves the
release where it was.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from services import (DaemonProcess, _env, clean_environ, dagster_daemon, dagster_instance_dir, describe_run,
                      postgres_server, step_intervals, workspace_file)

import browser
import nightly_location

driver = browser.driver  # the fixture: headless Chromium

pytestmark = pytest.mark.slow
_ = postgres_server  # a fixture, used by name below

LOCATION = Path(nightly_location.__file__)
GPU_ASSETS = {"pretrained_model", "sft_model", "lora_adapter", "reward_model", "dpo_model", "grpo_model"}
CHAIN_TIMEOUT = 1500  # seconds; the chain takes about 6 minutes on two idle cores


@dataclass
class Nightly:
    instance: dg.DagsterInstance
    daemon: DaemonProcess
    workspace: Path
    home: Path
    artifacts: Path
    env: dict


def _active(instance) -> list:
    return instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]))


def _done(instance) -> bool:
    """The chain's last assets are materialized: the release, both adapters' evaluation, the arena."""
    key = lambda name: dg.AssetKey(["tiny", name])  # noqa: E731
    if instance.get_latest_materialization_event(key("arena_ratings")) is None:
        return False
    if instance.get_latest_materialization_event(key("released_model")) is None:
        return False
    evaluated = {str(p) for p in instance.get_materialized_partitions(key("lora_model_eval"))}
    if not {"math|smoke", "signatures|smoke"} <= evaluated:
        return False
    report = instance.get_latest_materialization_event(key("pipeline_report"))
    arena = instance.get_latest_materialization_event(key("arena_ratings"))
    return report is not None and report.timestamp > arena.timestamp


@pytest.fixture(scope="module")
def nightly(postgres_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly")
    home = dagster_instance_dir(tmp)
    workspace = workspace_file(tmp, LOCATION, "lmforge_nightly")
    env = {**postgres_server.env(), "LMFORGE_ARTIFACTS": str(tmp / "artifacts"), "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp, \
            dagster_daemon(home, workspace, env=env,
                           ready=("QUEUED_RUN_COORDINATOR", "SCHEDULER", "SENSOR")) as daemon:
        for name in set(os.environ) - set(clean_environ()):
            mp.delenv(name)  # the in-process runs below evaluate too (see services.clean_environ)
        with _env(daemon.env), dg.DagsterInstance.get() as instance:
            started = time.monotonic()
            deadline = started + CHAIN_TIMEOUT
            quiet_since = None
            while True:
                daemon.check_alive()
                if time.monotonic() - started > 150 and not instance.get_runs(limit=1):
                    raise AssertionError("the schedule started no run in 150 s; daemon log:\n"
                                         + daemon.log_tail())
                failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
                if failed:
                    raise AssertionError("\n".join(describe_run(instance, r.run_id, 30) for r in failed)
                                         + f"\ndaemon log:\n{daemon.log_tail()}")
                if _done(instance) and not _active(instance):
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 15:  # the report's last run has started
                        break
                else:
                    quiet_since = None
                if time.monotonic() > deadline:
                    runs = instance.get_runs(limit=8)
                    raise AssertionError(f"the chain did not finish in {CHAIN_TIMEOUT}s:\n"
                                         + "\n".join(describe_run(instance, r.run_id) for r in runs)
                                         + f"\ndaemon log:\n{daemon.log_tail()}")
                time.sleep(2)
            yield Nightly(instance, daemon, workspace, home, tmp / "artifacts", daemon.env)


def _runs(instance) -> list:
    runs = instance.get_runs()
    return sorted(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def test_a_scheduled_tick_and_automation_run_the_whole_chain(nightly):
    instance = nightly.instance
    runs = _runs(instance)
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    first = runs[0]
    assert first.job_name == "curation" and first.tags.get("dagster/schedule_name") == "curation_every_minute"
    # Everything after curation was started by the deployment's automation sensor.
    for run in runs[1:]:
        assert run.tags.get("dagster/sensor_name") == "tiny_automation", (run.job_name, dict(run.tags))
    graph = nightly_location.defs.resolve_asset_graph()
    day = str(instance.get_materialized_partitions(dg.AssetKey(["tiny", "crawled_pages"])).pop())
    for key in graph.get_all_asset_keys():
        name = key.path[-1]
        if name.startswith("scaling_"):
            continue  # their own job, run by hand
        if graph.get(key).is_partitioned:
            parts = {str(p) for p in instance.get_materialized_partitions(key)}
            want = {"lora_adapter": {"math", "signatures"},
                    "lora_model_eval": {"math|smoke", "signatures|smoke"},
                    "base_model_eval": {"smoke"}, "sft_model_eval": {"smoke"}}.get(name, {day})
            assert parts == want, f"{key}: {parts}"
        else:
            assert instance.get_latest_materialization_event(key) is not None, f"{key} not materialized"
    # The tokenizer was trained once; pretraining ran once (no new tokens since).
    for name in ("tokenizer", "pretrained_model"):
        records = instance.fetch_materializations(dg.AssetKey(["tiny", name]), limit=10).records
        assert len(records) == 1, f"{name} materialized {len(records)} times"

    # With a `gpu` pool of 1, no two GPU steps ran at once, across every run (the two adapters'
    # runs were started on the same tick).
    intervals = []
    for run in runs:
        for step, (start, end) in step_intervals(instance, run.run_id).items():
            if step.split("__", 1)[-1] in GPU_ASSETS:
                intervals.append((start, end, step, run.run_id[:8]))
    intervals.sort()
    assert len([i for i in intervals if i[2].endswith("lora_adapter")]) == 2
    for before, after in zip(intervals, intervals[1:]):
        assert before[1] <= after[0], f"{before} overlaps {after}"

    # The release moved to the SFT model that was evaluated, and is a complete model.
    from resources import ArtifactStore

    store = ArtifactStore(deployment="tiny", root=str(nightly.artifacts))
    release = store.latest("released_model", instance=instance)
    meta = json.loads((release / "release.json").read_text())
    assert meta["source"] == str(store.latest("sft_model", instance=instance))
    assert (release / "model" / "config.json").is_file() and (release / "model" / "tokenizer.json").is_file()


UI_DAY = "2026-03-02"  # crawled from the launchpad
UI_MAX_PAGES = 6  # the crawl's size, set in the launchpad's config editor


@pytest.mark.skipif(browser.browser_skip_reason() is not None,
                    reason=browser.browser_skip_reason() or "")
def test_the_ui_in_a_real_browser(nightly, driver):
    """As the first user works: the lineage of the curation job, a day's crawl materialized from
    the launchpad (config edited there) and its run's success, then the pages of the chain the
    daemon made: the model's loss curve and figures, the evaluation's score table, the checks'
    results, the release's version. Screenshots in $LMFORGE_TEST_OUTPUT or test-output/."""
    from browser import (dagster_ui, failure_lines, first_visit, label_shows, launch_from_launchpad,
                         lineage_labels, metadata_text, screenshot, wait_run)
    from ui_pages import (KEYS, assert_checks_page, assert_evaluation_page, assert_model_page,
                          assert_version_page)

    instance = nightly.instance
    # The webserver alone: the test's daemon is the one that dequeues the UI's run.
    with dagster_ui(nightly.home, workspace=nightly.workspace, env=nightly.env, daemon=False) as ui:
        first_visit(driver, ui)
        screenshot(driver, "01-front-page")
        job = nightly_location.defs.resolve_job_def("curation")
        job_assets = {k.path[-1] for k in job.asset_layer.executable_asset_keys}
        labels = lineage_labels(driver, 'job:"curation"', shot="02-curation-lineage")
        missing = [a for a in job_assets if not any(label_shows(label, a) for label in labels)]
        assert not missing and len(labels) == len(job_assets), \
            f"the lineage draws {labels}, not each of {sorted(job_assets)}"

        run_id = launch_from_launchpad(driver, KEYS["crawled_pages"], partition=UI_DAY,
                                       config={"max_pages": UI_MAX_PAGES}, shot="03-launchpad")
        status = wait_run(driver, run_id, timeout=240, shot="04-run")
        assert status == "Success", f"run {run_id} ended {status}: {failure_lines(driver)}"
        run = instance.get_run_by_id(run_id)
        assert run.tags.get("dagster/partition") == UI_DAY
        op_config = next(iter(run.run_config["ops"].values()))["config"]
        assert op_config["max_pages"] == UI_MAX_PAGES, "the launchpad's config did not reach the run"
        path = metadata_text(driver, KEYS["crawled_pages"], "path")
        assert UI_DAY in path and Path(path).is_dir(), path
        assert_checks_page(driver, "crawled_pages", {"crawl_fetched_pages": "Succeeded"},
                           shot="05-crawl-checks")

        assert_model_page(driver, "pretrained_model")
        assert_checks_page(driver, "pretrained_model", {"pretrain_loss_fell": "Succeeded"})
        rows = assert_evaluation_page(driver, "sft_model_eval")
        assert rows[0][:3] == ["task", "metric", "score"], rows
        assert {r[0] for r in rows[1:]} >= {"mmlu", "heldout_bpb"}, rows
        assert_checks_page(driver, "sft_model_eval", {"eval_results_present": "Succeeded"})
        version = assert_version_page(driver, "released_model")
        assert metadata_text(driver, KEYS["released_model"], "released_version") == \
            Path(json.loads((Path(metadata_text(driver, KEYS["released_model"], "path"))
                             / "release.json").read_text())["source"]).name
        assert version


def test_the_models_adapters_report_and_arena(nightly):
    """The models load with HF, the adapters with PEFT, and swapping adapters swaps tasks."""
    instance = nightly.instance
    from resources import ArtifactStore

    store = ArtifactStore(deployment="tiny", root=str(nightly.artifacts))
    instance_dirs = nightly.artifacts.parent

    def latest(name, *parts, partition=None):
        version = store.latest(name, partition=partition, instance=instance)
        assert version is not None, f"{name} has no version"
        return version.joinpath(*parts)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for model_dir in (latest("pretrained_model", "run", "model"), latest("sft_model", "run", "model"),
                      latest("released_model", "model")):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = tok("def main():", return_tensors="pt").input_ids
        assert model(ids).logits.shape[-1] >= len(tok) - 8
    tok = AutoTokenizer.from_pretrained(latest("tokenizer", "tokenizer"))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

    # One base model, two adapters: held-out questions of each task are answered better (lower
    # assistant-token loss) with that task's adapter than with the other task's.
    from lmforge.paths import benchmarks_dir
    from lmforge.train.sft_data import read_conversations, sft_data_from_documents, sft_data_from_qa

    held_math = instance_dirs / "math_test.jsonl"
    sft_data_from_qa(benchmarks_dir() / "gsm8k" / "test.jsonl", held_math, limit=40)
    all_signatures = instance_dirs / "signatures_all.jsonl"
    sft_data_from_documents(store.fixed_path("decontaminated_documents", "documents"), all_signatures,
                            max_examples=10_000, kinds=["signature"])
    trained = {json.dumps(c) for c in
               read_conversations(latest("sft_conversations", "tasks", "signatures.jsonl"))}
    held_signatures = [c for c in read_conversations(all_signatures) if json.dumps(c) not in trained]
    assert len(held_signatures) >= 20
    held = {"math": list(read_conversations(held_math)), "signatures": held_signatures[:40]}

    base = AutoModelForCausalLM.from_pretrained(latest("sft_model", "run", "model"))
    math_adapter = latest("lora_adapter", "adapter", partition="math")
    tok = AutoTokenizer.from_pretrained(math_adapter)
    model = PeftModel.from_pretrained(base, math_adapter, adapter_name="math")
    model.load_adapter(latest("lora_adapter", "adapter", partition="signatures"), adapter_name="signatures")
    model.eval()
    nll = {}
    for adapter in ("math", "signatures"):
        model.set_adapter(adapter)
        nll[adapter] = {task: _assistant_nll(model, tok, convs) for task, convs in held.items()}
    assert nll["math"]["math"] < nll["signatures"]["math"], nll
    assert nll["signatures"]["signatures"] < nll["math"]["signatures"], nll

    report = latest("pipeline_report", "report", "report.md").read_text()
    assert "Data funnel" in report and "lora:math" in report and "lora:signatures (smoke)" in report
    assert "## Alignment" in report and "## Arena" in report and "## Release" in report
    ratings = json.loads(latest("arena_ratings", "arena", "ratings.json").read_text())
    assert set(ratings["ratings"]["models"]) == {"base", "sft", "lora:math", "lora:signatures",
                                                 "dpo", "grpo"}
    pairs = [json.loads(line) for line in
             latest("preference_pairs", "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"prompt", "chosen", "rejected"} <= set(p) for p in pairs)
    dpo = json.loads(latest("dpo_model", "run", "summary.json").read_text())
    assert abs(dpo["first_loss"] - 0.6931) < 1e-3  # policy = reference at the first step
    from lmforge.align.reward_model import load_reward_model

    rm = load_reward_model(latest("reward_model", "run", "model"))
    scores = rm.score([p["prompt"] for p in pairs[:8]] * 2,
                      [p["chosen"] for p in pairs[:8]] + [p["rejected"] for p in pairs[:8]])
    assert len(scores) == 16 and all(math.isfinite(x) for x in scores)
    assert AutoModelForCausalLM.from_pretrained(latest("grpo_model", "run", "model"))
    summary = json.loads(latest("base_model_eval", "results", "summary.json", partition="smoke").read_text())
    assert any(t.get("score") is not None for t in summary["tasks"]), "no evaluation score"
    adapter_summary = json.loads(latest("lora_model_eval", "results", "summary.json",
                                        partition="signatures|smoke").read_text())
    assert any(t.get("score") is not None for t in adapter_summary["tasks"])



def _assistant_nll(model, tokenizer, conversations) -> float:
    """Mean NLL of the assistant tokens of ``conversations``, the way SFT trains them."""
    import torch

    from lmforge.train.sft import tokenize_conversation

    total, n = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            ex = tokenize_conversation(tokenizer, messages, max_len=256)
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum"))
            n += int((labels[:, 1:] != -100).sum())
    return total / n



def test_new_settings_a_new_version_and_a_failed_gate_keeps_the_release(nightly):
    """New settings: a new version beside the old one (both kept); a candidate evaluated on a
    suite with an impossible threshold fails the release gate and leaves the release on the
    earlier version; `pipelines.versions` lists and prunes, never a release."""
    import os
    import shutil

    from assets.training import release_ancestor
    from lmforge.evaluate.harness import suites_dir
    from lmforge.train.config import PretrainConfig
    from pipelines import versions
    from resources import ArtifactStore

    nightly.daemon.stop()  # nothing may start behind the test's back from here on
    instance = nightly.instance
    store = ArtifactStore(deployment="tiny", root=str(nightly.artifacts))
    defs = nightly_location.defs

    def latest(name, *parts, partition=None):
        version = store.latest(name, partition=partition, instance=instance)
        assert version is not None, f"{name} has no version"
        return version.joinpath(*parts)

    def run(selection, overrides):
        return defs.resolve_job_def("training").execute_in_process(
            run_config=run_config("tiny", overrides, assets=set(selection)), instance=instance,
            raise_on_error=False, partition_key="smoke",
            asset_selection=[dg.AssetKey(["tiny", n]) for n in selection])

    first = latest("pretrained_model")
    released = latest("released_model")
    release_source = Path(json.loads((released / "release.json").read_text())["source"])
    # Continued pretraining starts from the release's pretrained ancestor, unless the shape changed.
    defaults = defs.resolve_assets_def(dg.AssetKey(["tiny", "pretrained_model"])).node_def \
        .config_schema.as_field().default_value
    shape = PretrainConfig(**{k: v for k, v in defaults.items() if k in PretrainConfig.model_fields})
    assert release_ancestor(store, shape) == (str(first / "run" / "model"), "")
    bigger = shape.model_copy(update={"d_model": 64})
    assert release_ancestor(store, bigger)[1] == "the model shape changed since the release"

    # New settings: a new version beside the old one; the same settings again: the same version.
    new_settings = {"pretrained_model": {"max_steps": 8, "continue_from": "scratch"}}
    assert run(["pretrained_model"], new_settings).success
    second = latest("pretrained_model")
    assert second != first and (first / "run" / "model" / "config.json").is_file()
    assert store.latest_metadata("pretrained_model", instance=instance)["path"].value == str(second)
    assert run(["pretrained_model"], new_settings).success
    assert latest("pretrained_model") == second
    assert len([d for d in second.parent.iterdir() if d.is_dir()]) == 2

    # An impossible threshold in the suite YAML: the new candidate fails the gate, and the
    # release stays on the version it was.
    suites = nightly.artifacts.parent / "suites"
    shutil.copytree(suites_dir(), suites)
    smoke = (suites / "smoke.yaml").read_text().replace("min_score: 0.0", "min_score: 2.0", 1)
    (suites / "smoke.yaml").write_text(smoke)
    os.environ["LMFORGE_EVAL_SUITES_DIR"] = str(suites)
    try:
        result = run(["sft_model", "sft_model_eval", "released_model"], {})
    finally:
        del os.environ["LMFORGE_EVAL_SUITES_DIR"]
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and "released_model" in e.step_key)
    data = failure.step_failure_data
    said = (data.user_failure_data.description if data.user_failure_data else "") or data.error.message
    assert "release gate failed: mmlu below 2" in said, said
    assert latest("released_model") == released
    assert Path(json.loads((released / "release.json").read_text())["source"]) == release_source
    assert latest("sft_model") != release_source
    observation = instance.fetch_observations(dg.AssetKey(["tiny", "released_model"]), limit=1).records
    assert observation and "comparison" in observation[0].event_log_entry.asset_observation.metadata

    # Listing and pruning: the release, what it was made from and the latest versions stay.
    root = str(nightly.artifacts)
    assert versions.main(["--artifacts", root, "list"]) == 0
    assert versions.main(["--artifacts", root, "prune", "--keep", "1"]) == 0
    assert not first.exists() and second.is_dir() and released.is_dir() and release_source.is_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(released / "model")
    assert AutoTokenizer.from_pretrained(released / "model")


def run_config(*args, **kwargs):
    from pipelines.presets import run_config as preset_run_config

    return preset_run_config(*args, **kwargs)
