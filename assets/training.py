"""Training: pretraining, supervised fine-tuning and a LoRA adapter, each in its own process.

The assets write the engine's config to the artifact store and start the engine's module through
the TrainingLauncher (Dagster Pipes): the process streams loss and tokens/s into the run's logs
and reports its final figures as the materialization's metadata. A run directory that already
holds a checkpoint is resumed, so materializing again after a crash continues where it stopped.
"""


import math
from pathlib import Path

import dagster as dg
from pydantic import Field

from lmforge.io import read_json
from lmforge.paths import benchmarks_dir
from lmforge.train.lora import LoraConfig
from lmforge.train.pretrain import PretrainConfig
from lmforge.train.sft import SFTConfig
from lmforge.train.sft_data import sft_data_from_documents, sft_data_from_qa
from resources import ArtifactStore, TrainingLauncher, dagster_config, engine_config

PretrainedModelConfig = dagster_config(PretrainConfig, "PretrainedModelConfig",
                                       exclude={"data_dir", "tokenizer_dir", "out_dir"})
SFTModelConfig = dagster_config(SFTConfig, "SFTModelConfig", exclude={"base", "data", "out_dir"})
LoraAdapterConfig = dagster_config(LoraConfig, "LoraAdapterConfig",
                                   exclude={"base", "data", "out_dir"})


class SFTConversationsConfig(dg.Config):
    max_document_examples: int = Field(
        default=600, description="Instruction examples derived from the crawled documents.")
    gsm8k_examples: int = Field(
        default=300, description="GSM8K train questions turned into chats for the math adapter, "
        "when the benchmark mirror is present (LMFORGE_BENCHMARKS_DIR); 0 turns them off.")
    seed: int = 0


@dg.asset(code_version="sft-data-1", group_name="training", kinds={"jsonl"},
          deps=["decontaminated_documents"])
def sft_conversations(context: dg.AssetExecutionContext, config: SFTConversationsConfig,
                      store: ArtifactStore) -> dg.MaterializeResult:
    """Chat-format instruction data: `documents.jsonl` derived from the crawled corpus (for SFT),
    and `math.jsonl` from GSM8K's train split (for the LoRA adapter) when the mirror is present."""
    docs = store.path("decontaminated_documents", "documents")
    out_docs = store.path("sft_conversations", "documents.jsonl")
    stats = sft_data_from_documents(docs, out_docs, max_examples=config.max_document_examples,
                                    seed=config.seed)
    metadata = {"documents_path": str(out_docs),
                **{f"documents_{k}": v for k, v in stats.to_metadata().items()}}
    out_math = store.path("sft_conversations", "math.jsonl")
    mirror = benchmarks_dir()
    gsm8k = mirror / "gsm8k" / "train.jsonl" if mirror else None
    if config.gsm8k_examples and gsm8k and gsm8k.exists():
        math_stats = sft_data_from_qa(gsm8k, out_math, limit=config.gsm8k_examples)
        metadata.update({"math_path": str(out_math),
                         **{f"math_{k}": v for k, v in math_stats.to_metadata().items()}})
    else:
        out_math.unlink(missing_ok=True)
        reason = "turned off" if not config.gsm8k_examples else "no GSM8K mirror found"
        context.log.warning("math conversations skipped: %s; the adapter trains on the "
                            "document conversations instead", reason)
        metadata["math_skipped"] = reason
    return dg.MaterializeResult(metadata=metadata)


def model_dir(store: ArtifactStore, asset_name: str) -> Path:
    return store.path(asset_name, "run", "model")


@dg.asset(code_version="pretrain-1", group_name="training", kinds={"pytorch", "deepspeed"},
          deps=["token_shards", "tokenizer"], pool="gpu")
def pretrained_model(context: dg.AssetExecutionContext, config: PretrainedModelConfig,
                     store: ArtifactStore, launcher: TrainingLauncher) -> dg.MaterializeResult:
    """A Llama-style decoder pretrained from scratch on the token shards (DeepSpeed ZeRO)."""
    cfg = engine_config(PretrainConfig, config,
                        data_dir=str(store.path("token_shards", "shards")),
                        tokenizer_dir=str(store.path("tokenizer", "tokenizer")),
                        out_dir=str(store.path("pretrained_model", "run")))
    return launcher.run(context, "lmforge.train.pretrain", cfg.model_dump(mode="json"),
                        store.path("pretrained_model", "config.json"))


@dg.asset(code_version="sft-1", group_name="training", kinds={"pytorch"},
          deps=[pretrained_model, sft_conversations], pool="gpu")
def sft_model(context: dg.AssetExecutionContext, config: SFTModelConfig, store: ArtifactStore,
              launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The pretrained model fine-tuned on chats, loss on assistant tokens only."""
    cfg = engine_config(SFTConfig, config, base=str(model_dir(store, "pretrained_model")),
                        data=str(store.path("sft_conversations", "documents.jsonl")),
                        out_dir=str(store.path("sft_model", "run")))
    return launcher.run(context, "lmforge.train.sft", cfg.model_dump(mode="json"),
                        store.path("sft_model", "config.json"))


@dg.asset(code_version="lora-1", group_name="training", kinds={"peft"},
          deps=[sft_model, sft_conversations], pool="gpu")
def lora_adapter(context: dg.AssetExecutionContext, config: LoraAdapterConfig,
                 store: ArtifactStore, launcher: TrainingLauncher) -> dg.MaterializeResult:
    """A LoRA adapter over the SFT model, for the math task (GSM8K chats) when available."""
    data = store.path("sft_conversations", "math.jsonl")
    if not data.exists():
        data = store.path("sft_conversations", "documents.jsonl")
    cfg = engine_config(LoraConfig, config, base=str(model_dir(store, "sft_model")),
                        data=str(data), out_dir=str(store.path("lora_adapter", "adapter")))
    return launcher.run(context, "lmforge.train.lora", cfg.model_dump(mode="json"),
                        store.path("lora_adapter", "config.json"))


def _loss_check(summary_path: Path, must_fall: bool) -> dg.AssetCheckResult:
    if not summary_path.exists():
        return dg.AssetCheckResult(passed=False, description=f"no summary at {summary_path}")
    summary = read_json(summary_path)
    first, final = summary.get("first_loss"), summary.get("final_loss")
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (first, final))
    fell = finite and final < first
    passed = finite and (fell or not must_fall)
    if not finite:
        why = "the loss is not finite"
    elif must_fall and not fell:
        why = "the loss did not fall"
    else:
        why = None
    return dg.AssetCheckResult(passed=passed, description=why,
                               metadata={"first_loss": first, "final_loss": final})


@dg.asset_check(asset=pretrained_model, blocking=True)
def pretrain_loss_fell(store: ArtifactStore) -> dg.AssetCheckResult:
    """The loss is finite and ended lower than it started."""
    return _loss_check(store.path("pretrained_model", "run", "summary.json"), must_fall=True)


@dg.asset_check(asset=pretrained_model)
def pretrain_data_covers_chinchilla_budget(store: ArtifactStore) -> dg.AssetCheckResult:
    """A warning when the training shards hold fewer tokens than the compute-optimal budget
    (about 20 tokens per parameter, Hoffmann et al. 2022): the model will repeat its data."""
    summary_path = store.path("pretrained_model", "run", "summary.json")
    header = store.path("token_shards", "shards", "train.json")
    if not summary_path.exists() or not header.exists():
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no training summary or shard header")
    budget = int(read_json(summary_path).get("chinchilla_tokens", 0))
    available = int(read_json(header)["num_tokens"])
    return dg.AssetCheckResult(
        passed=available >= budget, severity=dg.AssetCheckSeverity.WARN,
        description=None if available >= budget else
        f"{available:,} training tokens for a budget of {budget:,}: crawl more, or a smaller preset",
        metadata={"train_tokens": available, "chinchilla_tokens": budget,
                  "coverage": available / budget if budget else 0.0})


@dg.asset_check(asset=sft_model, blocking=True)
def sft_loss_fell(store: ArtifactStore) -> dg.AssetCheckResult:
    return _loss_check(store.path("sft_model", "run", "summary.json"), must_fall=True)


@dg.asset_check(asset=lora_adapter, blocking=True)
def lora_loss_finite(store: ArtifactStore) -> dg.AssetCheckResult:
    return _loss_check(store.path("lora_adapter", "adapter", "summary.json"), must_fall=False)
