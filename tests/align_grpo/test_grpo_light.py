"""The GRPO config, problems and rewards load light (the Dagster graph imports them), and the
config's every field is described."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "deepspeed", "peft")

PROBE = f"""
import json, sys
import lmforge.align.grpo, lmforge.align.problems, lmforge.align.rewards, lmforge.align.generate
from lmforge.align.grpo import GRPOConfig
GRPOConfig()
lmforge.align.problems.arithmetic_problems("train", limit=3)
lmforge.align.rewards.score({{"answer": "4", "reward": "final_answer"}}, "4")
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""


def test_grpo_modules_import_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_every_field_is_described():
    from lmforge.align.grpo import GRPOConfig

    assert all(f.description for f in GRPOConfig.model_fields.values())


def test_cli_help_and_bad_input(tmp_path, capsys):
    from lmforge.align.grpo import main
    from lmforge.cli import run

    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "--group-size" in out and "--kl-beta" in out and "--lora" in out
    rc = run("grpo", main, ["--base", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2


def test_a_reward_override_trains_on_it_and_keeps_the_problems_own_for_the_report():
    import pytest

    from lmforge.align.grpo import GRPOConfig, load_problems
    from lmforge.errors import LmforgeError

    train, heldout = load_problems(GRPOConfig(reward="numeric_closeness", arithmetic_max_value=50))
    assert train and heldout
    assert {p["reward"] for p in train + heldout} == {"numeric_closeness"}
    assert {p["own_reward"] for p in heldout} == {"final_answer"}
    plain_train, plain_heldout = load_problems(GRPOConfig(arithmetic_max_value=50))
    assert [p["prompt"] for p in plain_heldout] == [p["prompt"] for p in heldout]
    assert all("own_reward" not in p for p in plain_heldout)
    with pytest.raises(LmforgeError, match="no_such_reward"):
        load_problems(GRPOConfig(reward="no_such_reward"))
