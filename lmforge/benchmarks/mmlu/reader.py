"""MMLU (Hendrycks et al. 2021): 57 subjects of four-choice questions.

Data: ``<mirror>/mmlu/{test,dev}/<subject>_<split>.csv``, one row per question: the question, the
four choices, the answer. Three layouts are read alike (the one CSV parser, :func:`parse_csv`):

- the original release: no header, answer a letter ``A``-``D``;
- this project's mirror: header ``question,choice0,choice1,choice2,choice3,answer``, answer an
  index ``0``-``3``;
- other mirrors: header ``question,A,B,C,D,answer``, answer a letter or an index.

Items have ``cais/mmlu``'s columns (question, subject, choices, answer as an index), so our lm-eval
tasks' prompts are those of lm-eval's stock ``mmlu``. The test split is evaluated (and protected
by decontamination); dev holds the 5 few-shot examples of each subject.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lmforge.benchmarks import Benchmark, BenchmarkDataError, DataUnavailable

# MMLU subjects and their lm-eval category (the stock `mmlu` group's four sub-groups).
MMLU_SUBJECTS: dict[str, str] = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem",
    "business_ethics": "other", "clinical_knowledge": "other", "college_biology": "stem",
    "college_chemistry": "stem", "college_computer_science": "stem", "college_mathematics": "stem",
    "college_medicine": "other", "college_physics": "stem", "computer_security": "stem",
    "conceptual_physics": "stem", "econometrics": "social_sciences",
    "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences", "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences", "high_school_physics": "stem",
    "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities",
    "human_aging": "other", "human_sexuality": "social_sciences", "international_law": "humanities",
    "jurisprudence": "humanities", "logical_fallacies": "humanities", "machine_learning": "stem",
    "management": "other", "marketing": "other", "medical_genetics": "other",
    "miscellaneous": "other", "moral_disputes": "humanities", "moral_scenarios": "humanities",
    "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities",
    "professional_medicine": "other", "professional_psychology": "social_sciences",
    "public_relations": "social_sciences", "security_studies": "social_sciences",
    "sociology": "social_sciences", "us_foreign_policy": "social_sciences", "virology": "other",
    "world_religions": "humanities",
}

SPLITS = ("test", "dev")
_ANSWERS = {"A": 0, "B": 1, "C": 2, "D": 3, "0": 0, "1": 1, "2": 2, "3": 3}


def _is_header(row: list[str]) -> bool:
    """``question,<four choice names>,answer`` (any choice names: choice0..3, A..D): a data row
    never ends in the word "answer", since its last field is A-D or 0-3."""
    cells = [c.strip().lower() for c in row]
    return len(cells) == 6 and cells[0] == "question" and cells[5] == "answer"


def parse_csv(path: str | os.PathLike, subject: str) -> list[dict[str, Any]]:
    """The rows of one MMLU CSV, any of the three layouts, as
    ``{"question", "subject", "choices": [4], "answer": 0-3}``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    out = []
    for line, row in enumerate(rows, 1):
        if not row or (line == 1 and _is_header(row)):
            continue
        if len(row) != 6:
            raise BenchmarkDataError(f"{path}:{line}: not an MMLU row: {len(row)} fields, "
                                     "expected 6 (question, 4 choices, answer)")
        answer = row[5].strip().upper()
        if answer not in _ANSWERS:
            raise BenchmarkDataError(f"{path}:{line}: answer {row[5]!r}, expected A-D or 0-3")
        out.append({"question": row[0], "subject": subject, "choices": row[1:5],
                    "answer": _ANSWERS[answer]})
    return out


def subject_file(root: Path, split: str, subject: str) -> Path:
    return root / split / f"{subject}_{split}.csv"


def read_subject(root: Path, split: str, subject: str) -> list[dict[str, Any]]:
    path = subject_file(root, split, subject)
    if not path.is_file():
        raise DataUnavailable(f"MMLU mirror is incomplete: no {split} CSV for {subject} ({path})")
    return parse_csv(path, subject)


def read(split: str, root: Path) -> list[dict[str, Any]]:
    """Every CSV of the split (all subjects present, known or not), in file-name order."""
    files = sorted((root / split).glob("*.csv"))
    if not files:
        raise DataUnavailable(f"no MMLU {split} CSVs in {root / split}")
    suffix = f"_{split}"
    return [item for path in files
            for item in parse_csv(path, path.stem.removesuffix(suffix))]


def contamination(item: dict[str, Any]) -> list[str]:
    """The question, and each choice on its own: a copy usually labels them "A.", "B.", so a word
    sequence running from one choice into the next would not be reproduced."""
    return [item["question"], *item["choices"]]


BENCHMARK = Benchmark(
    name="mmlu",
    description="MMLU, 57 subjects: 5-shot multiple choice, accuracy",
    splits=SPLITS,
    read=read,
    contamination=contamination,
    contamination_split="test",
)


def load(subject, benchmarks_dir=None, **_: Any):
    """lm-eval ``custom_dataset`` hook: DatasetDict(test, dev) for one subject."""
    import datasets

    if subject not in MMLU_SUBJECTS:
        raise ValueError(f"unknown MMLU subject {subject!r}")
    root = BENCHMARK.data_path(benchmarks_dir)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(read_subject(root, split, subject))
                                 for split in SPLITS})
