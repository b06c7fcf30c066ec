"""The training configs load light: the Dagster graph imports them (and the SFT-data and
adapter-task helpers) to declare its assets, in every step subprocess and every reload of the UI's
code server, so they must not import torch, transformers, DeepSpeed or PEFT; only the processes
that train do."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "deepspeed", "peft")

PROBE = f"""
import json, sys
import lmforge.train.pretrain, lmforge.train.sft, lmforge.train.lora, lmforge.train.sft_data
import lmforge.train.tasks, lmforge.train.config, lmforge.train.launch, lmforge.train.pydoc_chats
from lmforge.train.pretrain import PretrainConfig
from lmforge.train.sft import SFTConfig
from lmforge.train.lora import LoraConfig
PretrainConfig(); SFTConfig(); LoraConfig()  # building a config imports nothing heavy either
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""


def test_configs_and_data_helpers_import_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_the_training_modules_share_one_declaration_of_each_config():
    from lmforge.train import config, lora, pretrain, sft

    assert pretrain.PretrainConfig is config.PretrainConfig
    assert sft.SFTConfig is config.SFTConfig and lora.LoraConfig is config.LoraConfig
    assert issubclass(config.LoraConfig, config.SFTConfig)
    assert issubclass(config.SFTConfig, config.TrainConfig) and issubclass(config.PretrainConfig,
                                                                            config.TrainConfig)


GRAPH_PROBE = """
import json, sys
import pipelines.definitions
heavy = {"torch", "transformers", "deepspeed", "peft", "numpy", "scipy", "pyarrow", "matplotlib",
         "pandas", "warcio", "lm_eval", "datasets", "trl"}
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))
"""


def test_the_graph_loads_without_the_libraries_its_steps_use():
    """Every step subprocess and every UI reload imports the definitions: the libraries that do
    the work (tensors, arrays, Parquet, WARC, plots, evaluation) load where the work happens."""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", GRAPH_PROBE], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
