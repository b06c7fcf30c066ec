"""Cut the benchmark sample the tests ship from a full mirror (see README.md beside this file).

    python tests/data/make_benchmark_sample.py ../shared/benchmarks tests/data/benchmarks

Deterministic: the first rows of every file, so the sample only changes when the mirror does.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROWS = {"gsm8k/train.jsonl": 1000, "gsm8k/test.jsonl": 300}
MMLU_ROWS = {"dev": 5, "test": 3}  # per subject: the 5 few-shot examples, 3 questions


def head(src: Path, dst: Path, n: int, header: bool = False) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = lines[: n + 1] if header else lines[:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(keep), encoding="utf-8")


def main(mirror: str, out: str) -> None:
    mirror_dir, out_dir = Path(mirror), Path(out)
    for rel, n in ROWS.items():
        head(mirror_dir / rel, out_dir / rel, n)
    for split, n in MMLU_ROWS.items():
        for src in sorted((mirror_dir / "mmlu" / split).glob("*.csv")):
            # MMLU questions can span lines inside quotes: cut by parsed rows, not lines.
            with open(src, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            has_header = bool(rows) and rows[0][0] == "question"
            keep = rows[: n + 1] if has_header else rows[:n]
            dst = out_dir / "mmlu" / split / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(dst, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(keep)


if __name__ == "__main__":
    main(*sys.argv[1:3])
