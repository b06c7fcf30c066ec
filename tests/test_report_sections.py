"""The report's sections past SFT: alignment figures before/after, the arena, the scaling fit."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.report.report import ReportInputs, write_report


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_alignment_and_scaling_sections(tmp_path):
    root = tmp_path / "artifacts"
    _write(root / "dpo_model" / "run" / "summary.json",
           {"steps": 10, "first_loss": 0.6931, "final_loss": 0.2, "val_accuracy_before": 0.5,
            "val_accuracy_after": 0.875, "val_margin_before": 0.0, "val_margin_after": 1.25})
    _write(root / "grpo_model" / "run" / "summary.json",
           {"steps": 5, "first_loss": 0.01, "final_loss": 0.02, "heldout_reward_before": 0.1,
            "heldout_reward_after": 0.25})
    fit = root / "scaling_fit_tiny" / "v1" / "fit.json"
    _write(fit, {"sweep": "tiny", "runs": 10, "E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34,
                 "beta": 0.28, "budget": 1e21, "params": 4.2e10, "tokens": 4.0e12,
                 "tokens_per_param": 95.2, "plots": {}})
    _write(root / "scaling_fit" / "latest.json", {"path": str(fit), "sweep": "tiny"})

    stats = write_report(ReportInputs.from_artifacts(root, stages=[]), tmp_path / "report")
    text = stats.path.read_text()
    assert "## Alignment" in text
    assert "| dpo | held-out preference accuracy | 0.5 | 0.875 |" in text
    assert "| grpo | held-out mean reward (greedy) | 0.1 | 0.25 |" in text
    assert "reward model" not in text.split("## Alignment")[1].split("##")[0]  # it did not run
    assert "## Scaling laws" in text and "alpha = 0.34" in text and "95.2 tokens per parameter" in text
    # the runs that ran are in the training table too
    assert "| dpo | 10 |" in text and "| grpo | 5 |" in text


def test_no_alignment_or_scaling_no_sections(tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    text = write_report(ReportInputs.from_artifacts(root, stages=[]), tmp_path / "r").path.read_text()
    assert "## Alignment" not in text and "## Scaling laws" not in text and "## Arena" not in text


def test_release_section_shows_the_candidate_against_the_release(tmp_path):
    inputs = ReportInputs(
        release={"model_version": "aaa111", "suite": "smoke", "released_at": "2026-12-01T02:00:00Z"},
        candidate={"version": "bbb222", "passed": False, "rows": [
            {"task": "mmlu", "candidate": 0.24, "release": 0.26, "bound": ">= 2",
             "verdict": "below 2"},
            {"task": "gsm8k", "candidate": None, "release": None, "bound": "",
             "verdict": "skipped: no mirror"}]})
    text = write_report(inputs, tmp_path / "r").path.read_text()
    section = text.split("## Release")[1].split("\n## ")[0]
    assert "Released: `aaa111` on suite `smoke`" in section
    assert "Candidate `bbb222` does not pass the gate" in section
    assert "| mmlu | 0.24 | 0.26 | >= 2 | below 2 |" in section
    assert "| gsm8k | – | – | – | skipped: no mirror |" in section
