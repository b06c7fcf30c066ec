"""Where lmforge finds things it does not ship: benchmark mirrors and packaged models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def benchmarks_dir() -> Path | None:
    """The local benchmark mirror (MMLU CSVs, GSM8K JSONL), or None when there is none.

    ``LMFORGE_BENCHMARKS_DIR`` wins; otherwise ``../shared/benchmarks`` beside the checkout.
    """
    env = os.environ.get("LMFORGE_BENCHMARKS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "benchmarks")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc, *parts)
        if p.exists():
            return p
    return None
