"""Our lm-eval task definitions: local data loading, and the same prompts and scores as the stock
lm-eval 0.4.13 tasks when both read the same files with the same model."""

from __future__ import annotations

import csv
from pathlib import Path

import lm_eval
import pytest

from lmforge.evaluate import tasks as T
from lmforge.evaluate.harness import TASKS_DIR

STOCK = Path(lm_eval.__file__).parent / "tasks"


def test_mmlu_csv_variants_parse_the_same(tmp_path, mirror):
    """The mirror's variant (header, index answer) and the original (no header, letter answer)."""
    src = mirror / "mmlu" / "test" / "anatomy_test.csv"
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    original = tmp_path / "anatomy_test.csv"
    with open(original, "w", newline="") as f:
        csv.writer(f).writerows(r[:5] + ["ABCD"[int(r[5])]] for r in rows[1:])
    a, b = T.parse_mmlu_csv(src, "anatomy"), T.parse_mmlu_csv(original, "anatomy")
    assert a == b and len(a) == len(rows) - 1 == 135
    assert a[0]["choices"] == rows[1][1:5] and a[0]["answer"] == int(rows[1][5])
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match="expected A-D or 0-3"):
        T.parse_mmlu_csv(bad, "anatomy")


def test_missing_data_is_reported_not_faked(tmp_path):
    with pytest.raises(T.DataUnavailable, match="no mmlu/ folder"):
        T.load_mmlu("anatomy", benchmarks_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(T.DataUnavailable, match="no benchmark mirror"):
        T.load_gsm8k(benchmarks_dir=None)
    with pytest.raises(T.DataUnavailable, match="no held-out documents"):
        T.load_heldout(None)
    with pytest.raises(T.DataUnavailable, match="not found"):
        T.load_heldout(tmp_path / "val.parquet")


def test_normalized_mmlu_is_cached_and_complete(tmp_path, mirror):
    out = T.normalize_mmlu(mirror, tmp_path)
    assert T.normalize_mmlu(mirror, tmp_path) == out  # second call hits the cache
    ds = T.load_mmlu("abstract_algebra", benchmarks_dir=mirror, cache_dir=tmp_path)
    assert len(ds["test"]) == 100 and len(ds["dev"]) == 5
    assert set(ds["test"].column_names) == {"question", "subject", "choices", "answer"}
    total = sum(len(T._read_jsonl(p)) for p in (out / "test").glob("*.jsonl"))
    assert total == 14042


# ----------------------------------------------------------------------------------------------
# Equivalence with the stock tasks

@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=8)


def _stock_config(path: Path, dataset_files: dict[str, str]) -> dict:
    """A stock task YAML, as lm-eval resolves it, with the hub dataset swapped for local files."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(path, resolve_func=True, recursive=True))
    cfg.pop("dataset_name", None)
    cfg.pop("tag", None)
    cfg["dataset_path"] = "json"
    cfg["dataset_kwargs"] = {"data_files": dataset_files}
    return cfg


def _run(lm, task, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # A task manager of our own: the default one indexes all of lm-eval's YAMLs (seconds).
    tm = TaskManager(include_defaults=False)
    res = simple_evaluate(model=lm, tasks=[task], task_manager=tm, bootstrap_iters=0, log_samples=True, **kw)
    name = next(iter(res["samples"]))
    per_doc = [(s["doc_id"], s["arguments"], s["filtered_resps"]) for s in res["samples"][name]]
    return res["results"][name], per_doc


def _ours(mirror, cache, name):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                     metadata={"benchmarks_dir": str(mirror), "cache_dir": str(cache)})
    return tm.load([name])["tasks"][name]


def _stock(cfg):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load([cfg])["tasks"][cfg["task"]]


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_us_history"])
def test_mmlu_matches_stock_task(lm, mirror, tmp_path, subject):
    norm = T.normalize_mmlu(mirror, tmp_path)
    stock = _stock(_stock_config(STOCK / "mmlu" / "default" / f"mmlu_{subject}.yaml",
                                 {"test": str(norm / "test" / f"{subject}.jsonl"),
                                  "dev": str(norm / "dev" / f"{subject}.jsonl")}))
    ours = _ours(mirror, tmp_path, f"lmforge_mmlu_{subject}")
    stock_scores, stock_docs = _run(lm, stock, num_fewshot=5, limit=6)
    our_scores, our_docs = _run(lm, ours, num_fewshot=5, limit=6)
    assert our_docs == stock_docs  # same prompts, same choices, same log-likelihoods
    assert our_scores["acc,none"] == stock_scores["acc,none"]
    assert "The following are multiple choice questions" in our_docs[0][1][0][0]


def test_gsm8k_matches_stock_task(lm, mirror, tmp_path):
    stock = _stock(_stock_config(STOCK / "gsm8k" / "gsm8k.yaml",
                                 {"train": str(mirror / "gsm8k" / "train.jsonl"),
                                  "test": str(mirror / "gsm8k" / "test.jsonl")}))
    ours = _ours(mirror, tmp_path, "lmforge_gsm8k")
    kw = dict(num_fewshot=8, limit=3, gen_kwargs={"max_gen_toks": 16})
    stock_scores, stock_docs = _run(lm, stock, **kw)
    our_scores, our_docs = _run(lm, ours, **kw)
    assert our_docs == stock_docs  # same 8 few-shot examples, prompts and generations
    for metric in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert our_scores[metric] == stock_scores[metric]
    assert our_docs[0][1][0][0].count("Question:") == 9


def test_humaneval_prompts_match_stock_yaml():
    """The stock humaneval task cannot be built offline (it loads `code_eval` from the hub at
    import), so compare the YAML fields that make the prompts and the scoring instead."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    stock = yaml.load((STOCK / "humaneval" / "humaneval.yaml").read_text(), Loader=Loader)
    ours = yaml.load((TASKS_DIR / "humaneval" / "lmforge_humaneval.yaml").read_text(), Loader=Loader)
    for key in ("output_type", "doc_to_text", "doc_to_target", "generation_kwargs", "num_fewshot",
                "repeats", "filter_list", "metric_list", "test_split"):
        assert ours[key] == stock[key], key
