"""The evaluation harness end to end on a tiny trained model: suites, scores, skips, adapters, CLI."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from lmforge.evaluate.harness import EvalConfig, EvalSummary, evaluate, load_suite, main


def _suite(tmp_path: Path, *names: str, **overrides) -> str:
    """A suite file with some of the smoke suite's tasks (optionally changed)."""
    smoke = yaml.safe_load(Path(load_suite.__globals__["suites_dir"](), "smoke.yaml").read_text())
    smoke["tasks"] = [{**t, **overrides.get(t["name"], {})} for t in smoke["tasks"] if t["name"] in names]
    path = tmp_path / f"suite-{'-'.join(names)}.yaml"
    path.write_text(yaml.safe_dump(smoke))
    return str(path)


def test_suites_parse():
    smoke, standard = load_suite("smoke"), load_suite("standard")
    assert [t.name for t in smoke.tasks] == [t.name for t in standard.tasks] == \
        ["mmlu", "gsm8k", "humaneval", "heldout_bpb"]
    std = {t.name: t for t in standard.tasks}
    assert (std["mmlu"].num_fewshot, std["gsm8k"].num_fewshot) == (5, 8)
    assert std["mmlu"].hub_task == "mmlu" and std["mmlu"].local_task == "lmforge_mmlu"
    assert std["humaneval"].metric == "pass@1,create_test"
    assert all(t.limit is not None for t in smoke.tasks)
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="unknown suite"):
        load_suite("no-such-suite")


def test_smoke_suite_end_to_end(tiny_model_dir, heldout_parquet, tmp_path):
    out = tmp_path / "eval"
    t0 = time.perf_counter()
    summary = evaluate(EvalConfig(model_dir=str(tiny_model_dir), suite="smoke", heldout_path=str(heldout_parquet),
                                  out_dir=str(out), cache_dir=str(tmp_path / "cache")))
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"smoke suite took {elapsed:.0f}s"
    by_name = {t.name: t for t in summary.tasks}
    assert list(by_name) == ["mmlu", "gsm8k", "humaneval", "heldout_bpb"]
    assert summary.skipped == {}
    for t in summary.tasks:
        assert t.status == "ok" and isinstance(t.score, float) and math.isfinite(t.score), t
        assert t.passed is True
    assert by_name["mmlu"].n_samples == 57 and 0.0 <= by_name["mmlu"].score <= 1.0
    assert by_name["gsm8k"].n_samples == 4 and by_name["humaneval"].n_samples == 4
    assert "exact_match,flexible-extract" in by_name["gsm8k"].scores
    # The trained model knows something about GSM8K-style text: well under 8 bits per byte.
    assert 0.5 < by_name["heldout_bpb"].score < 4.0
    assert by_name["heldout_bpb"].higher_is_better is False

    results = json.loads((out / "results.json").read_text())
    assert {"lmforge_mmlu", "lmforge_gsm8k", "lmforge_humaneval", "lmforge_heldout_bpb"} <= set(results["results"])
    assert results["n-shot"]["lmforge_gsm8k"] == 8 and results["n-shot"]["lmforge_mmlu_anatomy"] == 5
    assert results["results"]["lmforge_mmlu"]["acc,none"] == pytest.approx(by_name["mmlu"].score)
    again = EvalSummary.model_validate_json((out / "summary.json").read_text())
    assert again.scores == summary.scores
    meta = summary.to_metadata()
    json.dumps(meta)
    assert meta["thresholds_passed"] is True and meta["mmlu/acc"] == by_name["mmlu"].score
    md = summary.to_markdown()
    assert md.count("\n") == 5 and "| heldout_bpb | bits_per_byte,none |" in md
    # Every prompt and response is kept for inspection.
    he = [json.loads(line) for line in (out / "samples" / "lmforge_humaneval.jsonl").read_text().splitlines()]
    assert len(he) == 4 and he[0]["doc"]["task_id"] == "HumanEval/0"


def _bpb_per_doc_by_hand(model_dir: Path, texts: list[str]) -> list[tuple[float, int]]:
    """Each document's log-likelihood with plain transformers: BOS, then the document's tokens
    predicted in disjoint chunks of the model's context, each with as much preceding context as
    fits (lm-eval's rolling windows)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = model.config.max_position_embeddings
    out = []
    for text in texts:
        full = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        total = 0.0
        for start in range(0, len(full) - 1, width):  # targets full[start + 1 : end + 1]
            end = min(start + width, len(full) - 1)
            lo = max(0, end + 1 - width - 1)
            window = torch.tensor([full[lo:end]])
            with torch.no_grad():
                logp = torch.log_softmax(model(window).logits[0].double(), -1)
            for j in range(start + 1, end + 1):
                total += float(logp[j - 1 - lo, full[j]])
        out.append((total, len(text.encode())))
    return out


def test_bits_per_byte_is_computed_as_by_hand(tiny_model_dir, heldout_parquet, tmp_path):
    """bpb = -sum(log p) / (bytes * ln 2) over all documents; the trained model beats the
    untrained one (and the untrained one is near log2(vocab) bits per token)."""
    from lmforge.io import read_parquet_rows

    suite = _suite(tmp_path, "heldout_bpb")
    texts = [r["text"] for r in read_parquet_rows(heldout_parquet)]
    scores = {}
    for name, model_dir in (("trained", tiny_model_dir), ("untrained", tiny_model_dir / "untrained")):
        s = evaluate(EvalConfig(model_dir=str(model_dir), suite=suite, heldout_path=str(heldout_parquet),
                                out_dir=str(tmp_path / name), log_samples=False))
        scores[name] = s.tasks[0].score
        by_hand = _bpb_per_doc_by_hand(model_dir, texts)
        expected = -sum(ll for ll, _ in by_hand) / (sum(n for _, n in by_hand) * math.log(2))
        assert scores[name] == pytest.approx(expected, rel=1e-4), name
    assert scores["trained"] < scores["untrained"] - 0.3
    from transformers import AutoTokenizer

    n_tokens = [len(AutoTokenizer.from_pretrained(tiny_model_dir)(t)["input_ids"]) for t in texts]
    assert sum(n > 256 for n in n_tokens) >= 8  # most documents span several context windows


def test_unavailable_data_is_skipped_with_reason(tiny_model_dir, tmp_path):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    suite = _suite(tmp_path, "mmlu", "gsm8k", "humaneval", "heldout_bpb", humaneval={"limit": 1})
    summary = evaluate(EvalConfig(model_dir=str(tiny_model_dir), suite=suite, benchmarks_dir=str(empty_mirror),
                                  out_dir=str(tmp_path / "eval"), cache_dir=str(tmp_path / "cache")))
    assert set(summary.skipped) == {"mmlu", "gsm8k", "heldout_bpb"}
    assert "no mmlu/ folder" in summary.skipped["mmlu"] and "no gsm8k/ folder" in summary.skipped["gsm8k"]
    assert "no held-out documents" in summary.skipped["heldout_bpb"]
    he = summary.tasks[2]
    assert he.status == "ok" and he.score is not None and he.n_samples == 1
    assert all(t.score is None and t.passed is None for t in summary.tasks if t.status == "skipped")
    assert "skipped: no held-out documents" in summary.to_markdown()
    assert summary.to_metadata()["skipped"] == summary.skipped


def test_lora_adapter_is_applied(tiny_model_dir, heldout_parquet, tmp_path):
    """A LoRA adapter with non-zero weights changes the scores; evaluation reads it through PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    suite = _suite(tmp_path, "heldout_bpb")
    cfg = dict(model_dir=str(tiny_model_dir), suite=suite, heldout_path=str(heldout_parquet), log_samples=False)
    plain = evaluate(EvalConfig(**cfg, out_dir=str(tmp_path / "plain")))
    adapted = evaluate(EvalConfig(**cfg, adapter_dir=str(adapter), out_dir=str(tmp_path / "lora")))
    assert adapted.adapter_dir == str(adapter)
    assert adapted.tasks[0].score != pytest.approx(plain.tasks[0].score, rel=1e-6)


def test_cli(tiny_model_dir, heldout_parquet, tmp_path, capsys):
    suite = _suite(tmp_path, "heldout_bpb")
    rc = main(["--model", str(tiny_model_dir), "--suite", suite, "--heldout", str(heldout_parquet),
               "--out", str(tmp_path / "cli"), "--limit", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| heldout_bpb | bits_per_byte,none |" in printed and "| 4 |" in printed
    assert (tmp_path / "cli" / "results.json").is_file()
    assert main(["--model", str(tmp_path / "nope"), "--suite", suite]) == 2
    assert main(["--model", str(tiny_model_dir), "--suite", "no-such-suite"]) == 2


def test_offline_hub_task_is_skipped_with_reason(tiny_model_dir, tmp_path, monkeypatch):
    """source: hub with no way to reach the hub: skipped, with the loader's reason, not faked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = _suite(tmp_path, "gsm8k", gsm8k={"source": "hub"})
    summary = evaluate(EvalConfig(model_dir=str(tiny_model_dir), suite=suite, out_dir=str(tmp_path / "eval")))
    (task,) = summary.tasks
    assert (task.status, task.source, task.lm_eval_task) == ("skipped", "hub", "gsm8k")
    assert task.reason.startswith("hub data unavailable")
    assert not (tmp_path / "eval" / "results.json").exists() and (tmp_path / "eval" / "summary.json").exists()


def test_bad_inputs_are_one_line_errors_before_any_work(tiny_model_dir, tmp_path, capsys):
    """Each bad input is one line on stderr and exit status 2, found before the model loads, and
    nothing is written."""
    import shutil

    from lmforge.cli import run

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, no_weights / f.name)
    good = _suite(tmp_path, "heldout_bpb")
    suites = {
        "malformed.yaml": "name: x\ntasks: [unclosed\n",
        "list.yaml": "- a\n- b\n",
        "typo-key.yaml": "name: x\ntasks:\n  - {name: t, local_task: lmforge_gsm8k, metirc: 'acc,none'}\n",
        "typo-task.yaml": "name: x\ntasks:\n  - {name: t, source: local, local_task: lmforge_gsm8kk, metric: 'acc,none'}\n",
        "no-tasks.yaml": "name: x\n",
    }
    for name, text in suites.items():
        (tmp_path / name).write_text(text)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    model = ["--model", str(tiny_model_dir)]
    cases = {
        "model without weights": ["--model", str(no_weights), "--suite", good],
        "model missing": ["--model", str(tmp_path / "nope"), "--suite", good],
        "model is a file": ["--model", str(a_file), "--suite", good],
        **{f"suite {n}": [*model, "--suite", str(tmp_path / n)] for n in suites},
        "unknown suite": [*model, "--suite", "no-such-suite"],
        "out is a foreign directory": [*model, "--suite", good, "--out", str(foreign)],
        "out is a file": [*model, "--suite", good, "--out", str(a_file)],
        "out under a file": [*model, "--suite", good, "--out", str(a_file / "eval")],
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, argv in cases.items():
        argv = argv if "--out" in argv else [*argv, "--out", str(tmp_path / "eval-out")]
        assert run("eval", main, argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("lmforge eval: error: ")]
        assert len(errors) == 1 and "Traceback" not in "\n".join(err), (name, err)
        assert not any(line.startswith("[eval] loading") for line in err), name  # nothing loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (foreign / "keep.txt").read_text() == "mine" and a_file.read_text() == "mine"


def test_output_directory_is_replaced_whole(tiny_model_dir, heldout_parquet, tmp_path):
    """A re-run replaces its own earlier output (marked as lmforge's) in one step."""
    from lmforge.io import is_lmforge_output

    suite = _suite(tmp_path, "heldout_bpb")
    out = tmp_path / "eval"
    cfg = dict(model_dir=str(tiny_model_dir), suite=suite, heldout_path=str(heldout_parquet),
               out_dir=str(out), limit=2)
    evaluate(EvalConfig(**cfg))
    assert is_lmforge_output(out) and (out / "summary.json").is_file()
    (out / "stale.txt").write_text("from the first run")
    evaluate(EvalConfig(**cfg, log_samples=False))
    assert not (out / "stale.txt").exists() and not (out / "samples").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]
