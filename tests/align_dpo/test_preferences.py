"""Preference pairs from the three sources: a JSONL file (checked), the hub (a clear error offline;
the mapping of a binarized record), and on-policy pairs from the model's own wrong samples."""

from __future__ import annotations

import json

import pytest

from lmforge.align.preferences import hub_record_to_pair, main, on_policy_pairs, read_pairs
from lmforge.align.problems import arithmetic_problems
from lmforge.align.rewards import score


def test_on_policy_pairs_reject_the_models_wrong_answers(base_model_dir):
    problems = arithmetic_problems("train", limit=12, seed=0)
    pairs, stats = on_policy_pairs(base_model_dir, problems, samples=3, max_new_tokens=6, seed=0,
                                   pairs_per_problem=2)
    by_prompt = {p["prompt"]: p for p in problems}
    assert stats["problems"] == 12 and stats["samples"] == 36
    # An untrained model samples noise (a short number is sometimes right by chance): most
    # problems have wrong answers to reject, up to two distinct ones each.
    assert stats["sample_accuracy"] < 0.5 and stats["problems_all_right"] <= 3
    assert len(pairs) == stats["pairs"] and 9 <= len(pairs) <= 24
    assert len({p["prompt"] for p in pairs}) == 12 - stats["problems_all_right"]
    for pair in pairs:
        problem = by_prompt[pair["prompt"]]
        assert pair["chosen"] == problem["answer"] and score(problem, pair["chosen"]) == 1.0
        assert score(problem, pair["rejected"]) == 0.0 and pair["rejected"] != pair["chosen"]
        assert pair["source"] == "on_policy"
    # the same seed samples the same pairs
    again, _ = on_policy_pairs(base_model_dir, problems, samples=3, max_new_tokens=6, seed=0, pairs_per_problem=2)
    assert again == pairs


def test_preferences_command_writes_checked_pairs(tmp_path, base_model_dir, pairs_jsonl, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["--from-jsonl", str(pairs_jsonl), "--out", str(out)]) == 0
    assert read_pairs(out) == read_pairs(pairs_jsonl)
    capsys.readouterr()
    out2 = tmp_path / "on_policy.jsonl"
    assert main(["--on-policy", str(base_model_dir), "--problems", "arithmetic", "--limit", "4",
                 "--samples", "2", "--max-new-tokens", "4", "--out", str(out2)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["pairs"] == len(read_pairs(out2)) == 4 and report["problems"] == 4


def test_hub_is_a_clear_error_offline(tmp_path, capsys, monkeypatch):
    from lmforge.cli import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = run("preferences", main, ["--from-hub", "HuggingFaceH4/ultrafeedback_binarized", "--out",
                                     str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "offline" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.jsonl").exists()


def test_a_binarized_hub_record_becomes_a_pair():
    # the layout of HuggingFaceH4/ultrafeedback_binarized: conversations ending in the reply
    record = {"prompt": "Name a prime.", "prompt_id": "abc",
              "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
              "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}]}
    assert hub_record_to_pair(record) == {"prompt": "Name a prime.", "chosen": "7", "rejected": "8"}
    assert hub_record_to_pair({"prompt": "x", "chosen": "same", "rejected": "same"}) is None
    assert hub_record_to_pair({"chosen": [{"role": "user", "content": "q"}]}) is None
