"""Training: pretraining, supervised fine-tuning and LoRA adapters, each in its own process.

The assets write the engine's config to the artifact store and start the engine's module through
the TrainingLauncher (Dagster Pipes): the process streams loss and tokens/s into the run's logs
and reports its final figures as the materialization's metadata. A run directory that already
holds a checkpoint is resumed, so materializing again after a crash continues where it stopped.
"""


import math
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets.data import CURATED, curated_corpus
from assets.partitions import ADAPTER_TASKS
from assets.tokenizer import token_shards_data
from lmforge.io import read_json
from lmforge.train.lora import LoraConfig
from lmforge.train.pretrain import PretrainConfig
from lmforge.train.sft import SFTConfig
from lmforge.train.sft_data import DOCUMENT_KINDS, sft_data_from_documents
from lmforge.train.tasks import TaskDataUnavailable, build_task_data, load_task, task_names
from resources import ArtifactStore, TrainingLauncher, dagster_config, engine_config

class PretrainedModelConfig(dagster_config(PretrainConfig, "PretrainRunConfig",
                                           exclude={"data_dir", "tokenizer_dir", "out_dir", "init_from"})):
    continue_from: Literal["release", "scratch"] = Field(
        default="release", description="release: start from the weights of the pretrained model "
        "the current release was made from (continued pretraining on the new data, fresh "
        "optimizer and warmup), when its tokenizer and shape are this run's; else, and with "
        "scratch: random initialisation")
SFTModelConfig = dagster_config(SFTConfig, "SFTModelConfig", exclude={"base", "data", "out_dir"})
LoraAdapterConfig = dagster_config(LoraConfig, "LoraAdapterConfig",
                                   exclude={"base", "data", "out_dir"})


class SFTConversationsConfig(dg.Config):
    max_document_examples: int = Field(
        default=600, description="Instruction examples derived from the crawled documents, for SFT.")
    document_kinds: list[str] = Field(
        default_factory=lambda: [k for k in DOCUMENT_KINDS if k != "signature"],
        description=f"Which kinds of document questions train the SFT model (of "
        f"{', '.join(DOCUMENT_KINDS)}); the `signatures` adapter task trains on `signature`.")
    seed: int = 0


def task_data_path(store: ArtifactStore, task: str) -> Path:
    return store.path("sft_conversations", "tasks", f"{task}.jsonl")


def adapter_task_data(store: ArtifactStore,
                      instance: dg.DagsterInstance | None = None) -> tuple[list[str], dict[str, str]]:
    """The adapter tasks the latest `sft_conversations` built, and why it skipped the others."""
    meta = store.latest_metadata("sft_conversations", instance=instance)
    built = list(meta["tasks"].value) if "tasks" in meta else []
    skipped = {key[len("task_"):-len("_skipped")]: value.value for key, value in meta.items()
               if key.startswith("task_") and key.endswith("_skipped")}
    return built, skipped


@dg.asset(code_version="sft-data-2", group_name="training", kinds={"jsonl"},
          deps=[CURATED])
def sft_conversations(context: dg.AssetExecutionContext, config: SFTConversationsConfig,
                      store: ArtifactStore) -> dg.MaterializeResult:
    """Chat-format instruction data: `documents.jsonl` derived from the crawled corpus (for SFT),
    and `tasks/<task>.jsonl` for each adapter task (`adapter_tasks/<task>.yaml`). A task whose
    source is not on this machine (no benchmark mirror, offline) is skipped, with the reason."""
    docs = curated_corpus(store)
    out_docs = store.path("sft_conversations", "documents.jsonl")
    stats = sft_data_from_documents(docs, out_docs, max_examples=config.max_document_examples,
                                    seed=config.seed, kinds=config.document_kinds)
    metadata = {"documents_path": str(out_docs),
                **{f"documents_{k}": v for k, v in stats.to_metadata().items()}}
    built = []
    for task in task_names():
        out = task_data_path(store, task)
        try:
            task_stats = build_task_data(load_task(task), out, documents=docs)
        except TaskDataUnavailable as e:
            out.unlink(missing_ok=True)
            context.log.warning("adapter task %s skipped: %s", task, e)
            metadata[f"task_{task}_skipped"] = str(e)
            continue
        built.append(task)
        metadata[f"task_{task}_examples"] = task_stats.examples
        metadata[f"task_{task}_source"] = task_stats.source
    metadata["tasks"] = dg.MetadataValue.json(built)
    return dg.MaterializeResult(metadata=metadata)


def model_dir(store: ArtifactStore, asset_name: str) -> Path:
    return store.path(asset_name, "run", "model")


@dg.asset(code_version="pretrain-1", group_name="training", kinds={"pytorch", "deepspeed"},
          deps=["token_shards", "tokenizer"], pool="gpu")
def pretrained_model(context: dg.AssetExecutionContext, config: PretrainedModelConfig,
                     store: ArtifactStore, launcher: TrainingLauncher) -> dg.MaterializeResult:
    """A Llama-style decoder pretrained on the token shards (DeepSpeed ZeRO): from the release's
    pretrained ancestor when it has this run's tokenizer and shape, else from scratch."""
    values = config.model_dump()
    continue_from = values.pop("continue_from")
    init_from, why = "", "continue_from=scratch"
    if continue_from == "release":
        init_from, why = release_ancestor(store, PretrainConfig(**values))
    context.log.info("pretraining %s", f"from {init_from}" if init_from else f"from scratch ({why})")
    shards = token_shards_data(store)
    cfg = PretrainConfig(**values, data_dir=str(shards), init_from=init_from,
                         tokenizer_dir=str(store.path("tokenizer", "tokenizer")),
                         out_dir=str(store.path("pretrained_model", "run")))
    train_tokens = store.latest_metadata("token_shards").get("train_tokens")
    context.add_output_metadata({
        "data_train_tokens": int(getattr(train_tokens, "value", train_tokens) or 0),
        "initialised_from": init_from or f"scratch ({why})"})
    return launcher.run(context, "lmforge.train.pretrain", cfg.model_dump(mode="json"),
                        store.path("pretrained_model", "config.json"))


_SHAPE_FIELDS = ("preset", "seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")


def release_ancestor(store: ArtifactStore, cfg: PretrainConfig) -> tuple[str, str]:
    """``(model dir, "")`` of the pretrained model the current release descends from, when its
    tokenizer is the current one and its shape is ``cfg``'s; else ``("", why not)``."""
    from lmforge.versions import RELEASE_FILE, VERSION_FILE

    release = store.latest("released_model")
    if release is None or not (release / RELEASE_FILE).is_file():
        return "", "no release yet"
    try:
        sft = Path(read_json(release / RELEASE_FILE)["source"])
        upstream = read_json(sft / VERSION_FILE)["inputs"]["upstream"]
        key = store.asset_key("pretrained_model").to_user_string()
        base = store.asset_dir("pretrained_model") / str(upstream[key])
        made = read_json(base / VERSION_FILE)["inputs"]
    except (OSError, KeyError, ValueError) as e:
        return "", f"the release's lineage cannot be read ({e})"
    if not (base / "run" / "model" / "config.json").is_file():
        return "", f"the release's pretrained model {base.name} is gone (pruned?)"
    tokenizer_key = store.asset_key("tokenizer").to_user_string()
    current_tokenizer = store.latest_metadata("tokenizer").get("version")
    if str(made["upstream"].get(tokenizer_key)) != str(getattr(current_tokenizer, "value", current_tokenizer)):
        return "", "the tokenizer changed since the release"
    before = {k: made["config"].get(k) for k in _SHAPE_FIELDS}
    now = {k: getattr(cfg, k) for k in _SHAPE_FIELDS}
    if before != now:
        return "", "the model shape changed since the release"
    return str(base / "run" / "model"), ""


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


def adapter_dir(store: ArtifactStore, task: str) -> Path:
    return store.path("lora_adapter", "adapter", partition=task)


@dg.asset(code_version="lora-2", group_name="adapters", kinds={"peft"},
          deps=[sft_model, sft_conversations], pool="gpu", partitions_def=ADAPTER_TASKS)
def lora_adapter(context: dg.AssetExecutionContext, config: LoraAdapterConfig,
                 store: ArtifactStore, launcher: TrainingLauncher) -> dg.MaterializeResult:
    """One LoRA adapter per task (the partition) over the SFT model: swapping the adapter swaps
    the task. Written to `lora_adapter/<task>/adapter`, a PEFT adapter directory."""
    task = context.partition_key
    data = task_data_path(store, task)
    if not data.exists():
        why = adapter_task_data(store)[1].get(task, "materialize sft_conversations first")
        raise dg.Failure(description=f"no conversations for adapter task {task!r} at {data}: {why}")
    cfg = engine_config(LoraConfig, config, base=str(model_dir(store, "sft_model")),
                        data=str(data), out_dir=str(adapter_dir(store, task)))
    return launcher.run(context, "lmforge.train.lora", cfg.model_dump(mode="json"),
                        store.path("lora_adapter", "config.json", partition=task))


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
    """A warning when the training shards hold fewer tokens than the compute-optimal budget for
    the model's size: the D at which its N is compute-optimal under the latest scaling fit in the
    store (`scaling_fit_*`), else about 20 tokens per parameter (Hoffmann et al. 2022). Below
    it, the model will repeat its data."""
    from lmforge.scaling.budget import latest_fit
    from lmforge.scaling.fit import law_from_report

    summary_path = store.path("pretrained_model", "run", "summary.json")
    header = store.path("token_shards", "shards", "train.json")
    if not summary_path.exists() or not header.exists():
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no training summary or shard header")
    summary = read_json(summary_path)
    fit = latest_fit(store.base())
    if fit is not None and summary.get("params"):
        budget = int(law_from_report(fit).optimal_tokens(float(summary["params"])))
        source = fit["path"]
    else:
        budget, source = int(summary.get("chinchilla_tokens", 0)), "20 tokens per parameter"
    available = int(read_json(header)["num_tokens"])
    ratio = budget / summary["params"] if summary.get("params") else 0.0
    return dg.AssetCheckResult(
        passed=available >= budget, severity=dg.AssetCheckSeverity.WARN,
        description=None if available >= budget else
        f"{available:,} training tokens for a budget of {budget:,}: crawl more, or a smaller preset",
        metadata={"train_tokens": available, "chinchilla_tokens": budget,
                  "tokens_per_param": ratio, "budget_from": source,
                  "coverage": available / budget if budget else 0.0})


@dg.asset_check(asset=sft_model, blocking=True)
def sft_loss_fell(store: ArtifactStore) -> dg.AssetCheckResult:
    return _loss_check(store.path("sft_model", "run", "summary.json"), must_fall=True)


@dg.asset_check(asset=lora_adapter, blocking=True, partitions_def=ADAPTER_TASKS)
def lora_loss_finite(context: dg.AssetCheckExecutionContext,
                     store: ArtifactStore) -> dg.AssetCheckResult:
    return _loss_check(adapter_dir(store, context.partition_key) / "summary.json", must_fall=False)
