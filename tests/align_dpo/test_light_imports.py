"""The preference stages' configs load light: the Dagster graph imports them to declare its
assets, so importing them (and building one) must not import torch, transformers, DeepSpeed or
PEFT; the modules that train import those inside their functions."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "deepspeed", "peft", "trl", "datasets")

PROBE = f"""
import json, sys
import lmforge.align.config, lmforge.align.dpo, lmforge.align.reward_model, lmforge.align.preferences
from lmforge.align.config import DPOConfig, RewardModelConfig
DPOConfig(); RewardModelConfig()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""


def test_preference_configs_and_modules_import_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_every_config_field_is_described_and_the_stages_share_the_training_settings():
    from lmforge.align.config import DPOConfig, RewardModelConfig
    from lmforge.align.dpo import DPOConfig as FromDPO
    from lmforge.align.reward_model import RewardModelConfig as FromRM
    from lmforge.train.config import TrainConfig

    assert FromDPO is DPOConfig and FromRM is RewardModelConfig
    for cls in (DPOConfig, RewardModelConfig):
        assert issubclass(cls, TrainConfig)
        missing = [n for n, f in cls.model_fields.items() if not f.description]
        assert not missing, f"{cls.__name__}: {missing}"
