"""The worked examples of the README, as the tests run them: a block is the fenced code after a
line ``<!-- example: NAME -->``, so the README cannot show code the tests do not run."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    if m is None:
        raise LookupError(f"README.md has no example block {name!r}")
    return m.group(1)
