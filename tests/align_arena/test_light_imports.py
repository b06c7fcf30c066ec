"""The arena's config and modules load light: the Dagster graph imports them to declare the
arena asset, so they must not import torch, transformers, PEFT, numpy, scipy or matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "numpy", "scipy", "matplotlib")

PROBE = f"""
import json, sys
import lmforge.align.arena, lmforge.align.judges, lmforge.align.ratings
from lmforge.align.arena import ArenaConfig, Contestant
ArenaConfig(contestants=[Contestant(name="a", model_dir="x"), Contestant(name="b", model_dir="y")])
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""


def test_arena_modules_import_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
