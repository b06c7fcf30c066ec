"""Our lm-eval task definitions: local data loading, and the same prompts and scores as the stock
lm-eval 0.4.13 tasks when both read the same files with the same model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lm_eval
import pytest

from lmforge.benchmarks import BenchmarkDataError, get, read_jsonl
from lmforge.benchmarks.mmlu.reader import parse_csv
from lmforge.evaluate import tasks as T
from lmforge.evaluate.harness import TASKS_DIR

STOCK = Path(lm_eval.__file__).parent / "tasks"


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_mmlu_csv_layouts_parse_the_same(tmp_path, mirror):
    """The mirror's layout (header choice0..3, index answer), the original (no header, letter
    answer) and other mirrors' (header A..D, letter or index answer) give the same items."""
    src = mirror / "mmlu" / "test" / "anatomy_test.csv"
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    data = rows[1:]
    letters = [r[:5] + ["ABCD"[int(r[5])]] for r in data]
    variants = {
        "mirror": src,
        "original": _write(tmp_path / "original.csv", letters),
        "abcd_letters": _write(tmp_path / "abcd_l.csv", [["question", "A", "B", "C", "D", "answer"]] + letters),
        "abcd_index": _write(tmp_path / "abcd_i.csv", [["question", "A", "B", "C", "D", "answer"]] + data),
    }
    parsed = {k: parse_csv(p, "anatomy") for k, p in variants.items()}
    assert all(v == parsed["mirror"] for v in parsed.values())
    assert len(parsed["mirror"]) == len(data) >= 3
    assert parsed["mirror"][0]["choices"] == data[0][1:5] and parsed["mirror"][0]["answer"] == int(data[0][5])
    bad = _write(tmp_path / "bad.csv", [["q", "a", "b", "c", "d", "E"]])
    with pytest.raises(ValueError, match="bad.csv:1: answer 'E', expected A-D or 0-3"):
        parse_csv(bad, "anatomy")


@pytest.mark.parametrize("layout", ["mirror", "original", "abcd"])
def test_mmlu_task_loads_every_layout(tmp_path, mirror, layout):
    """Evaluation's loader (the task's custom_dataset hook) reads a mirror in each layout."""
    for split in ("test", "dev"):
        with open(mirror / "mmlu" / split / f"anatomy_{split}.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        (tmp_path / "mmlu" / split).mkdir(parents=True)
        out = {"mirror": [["question", "choice0", "choice1", "choice2", "choice3", "answer"]] + rows,
               "original": [r[:5] + ["ABCD"[int(r[5])]] for r in rows],
               "abcd": [["question", "A", "B", "C", "D", "answer"]]
               + [r[:5] + ["ABCD"[int(r[5])]] for r in rows]}[layout]
        _write(tmp_path / "mmlu" / split / f"anatomy_{split}.csv", out)
    ours = T.load_mmlu("anatomy", benchmarks_dir=tmp_path)
    ref = T.load_mmlu("anatomy", benchmarks_dir=mirror)
    assert ours["test"].to_list() == ref["test"].to_list() and len(ref["dev"]) == 5
    assert set(ref["test"].column_names) == {"question", "subject", "choices", "answer"}


def test_missing_data_is_reported_not_faked(tmp_path):
    with pytest.raises(T.DataUnavailable, match="no mmlu/ folder"):
        T.load_mmlu("anatomy", benchmarks_dir=tmp_path)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(T.DataUnavailable, match="no test CSV for anatomy"):
        T.load_mmlu("anatomy", benchmarks_dir=tmp_path)
    with pytest.raises(T.DataUnavailable, match="no gsm8k/ folder"):
        T.load_gsm8k(benchmarks_dir=tmp_path)
    with pytest.raises(T.DataUnavailable, match="no held-out documents"):
        T.load_heldout(None)
    with pytest.raises(T.DataUnavailable, match="not found"):
        T.load_heldout(tmp_path / "val.parquet")
    with pytest.raises(T.DataUnavailable, match="humaneval: no data at .*none.jsonl.gz"):
        T.load_humaneval(tmp_path / "none.jsonl.gz")
    # Data that is there but malformed is a one-line error naming the file and line.
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": 1}\n')
    (tmp_path / "gsm8k" / "train.jsonl").write_text("")
    with pytest.raises(BenchmarkDataError, match="test.jsonl: row 2 has no string question, answer"):
        T.load_gsm8k(benchmarks_dir=tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "a"}\nnot json\n')
    with pytest.raises(BenchmarkDataError, match="test.jsonl:2: not JSON"):
        T.load_gsm8k(benchmarks_dir=tmp_path)


def test_gsm8k_loader_reads_the_mirror(mirror):
    ds = T.load_gsm8k(benchmarks_dir=mirror)
    assert len(ds["test"]) == len(read_jsonl(mirror / "gsm8k" / "test.jsonl"))
    assert set(ds["train"].column_names) == {"question", "answer"}
    assert all("#### " in a for a in ds["test"]["answer"])


def test_suite_naming_a_missing_local_task_fails_in_one_line(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.evaluate.harness import load_suite

    for name in ("smoke", "standard"):
        T.check_local_tasks(load_suite(name), name)  # the shipped suites name real tasks
    suite_file = tmp_path / "typo.yaml"
    suite_file.write_text("name: typo\ntasks:\n  - name: gsm8k\n    source: local\n"
                          "    local_task: lmforge_gsm8\n    metric: exact_match,strict-match\n")
    with pytest.raises(LmforgeError) as e:
        T.check_local_tasks(load_suite(suite_file), suite_file)
    msg = str(e.value)
    assert "\n" not in msg and str(suite_file) in msg and "tasks[0] (gsm8k).local_task" in msg
    assert "'lmforge_gsm8'" in msg and "lmforge_gsm8k" in msg


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

    tm = TaskManager(include_path=T.task_include_paths(), include_defaults=False,
                     metadata={"benchmarks_dir": str(mirror), "cache_dir": str(cache)})
    return tm.load([name])["tasks"][name]


def _stock(cfg):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load([cfg])["tasks"][cfg["task"]]


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_us_history"])
def test_mmlu_matches_stock_task(lm, mirror, tmp_path, subject):
    files = {}
    for split in ("test", "dev"):  # the stock task reads cais/mmlu's columns from JSON files
        files[split] = str(tmp_path / f"{subject}_{split}.jsonl")
        Path(files[split]).write_text("".join(
            json.dumps(r) + "\n" for r in get("mmlu").read(split, mirror / "mmlu") if r["subject"] == subject))
    stock = _stock(_stock_config(STOCK / "mmlu" / "default" / f"mmlu_{subject}.yaml", files))
    ours = _ours(mirror, tmp_path, f"lmforge_mmlu_{subject}")
    stock_scores, stock_docs = _run(lm, stock, num_fewshot=5, limit=3)
    our_scores, our_docs = _run(lm, ours, num_fewshot=5, limit=3)
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

    # The hooks' module differs (theirs utils.py, ours the benchmark's reader.py): compare names.
    Loader.add_constructor("!function", lambda loader, node:
                           f"!function {loader.construct_scalar(node).rsplit('.', 1)[-1]}")
    stock = yaml.load((STOCK / "humaneval" / "humaneval.yaml").read_text(), Loader=Loader)
    ours = yaml.load((TASKS_DIR / "humaneval" / "lmforge_humaneval.yaml").read_text(), Loader=Loader)
    for key in ("output_type", "doc_to_text", "doc_to_target", "generation_kwargs", "num_fewshot",
                "repeats", "filter_list", "metric_list", "test_split"):
        assert ours[key] == stock[key], key
