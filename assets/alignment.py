"""Past SFT: preference pairs, a reward model, DPO, GRPO with verifiable rewards, and the arena.

The chain is Tulu-3-shaped: the SFT model answers training problems with a verifiable answer;
its wrong answers against the reference make preference pairs; DPO trains on the pairs and a
Bradley-Terry reward model learns from them; GRPO then trains on the same kind of problems with
the verifiable reward (from the DPO model by default: a policy that is right some of the time,
so groups have reward variance to learn from). The arena pits every model of the graph against
the others on held-out problems and rates them by Bradley-Terry. Training stages run in their own
process through the TrainingLauncher (Dagster Pipes), as pretraining and SFT do.
"""

from pathlib import Path
from typing import Literal

import math

import dagster as dg
from pydantic import Field

from assets.training import model_dir
from lmforge.align.arena import ArenaConfig, Contestant
from lmforge.align.config import DPOConfig, RewardModelConfig
from lmforge.align.grpo import GRPOConfig
from lmforge.io import read_json
from lmforge.train.tasks import task_names
from resources import ArtifactStore, TrainingLauncher, dagster_config, engine_config

DPOModelConfig = dagster_config(DPOConfig, "DPOModelConfig", exclude={"base", "data", "out_dir"})
RewardModelRunConfig = dagster_config(RewardModelConfig, "RewardModelRunConfig",
                                      exclude={"base", "data", "out_dir"})
GRPOModelConfig = dagster_config(GRPOConfig, "GRPOModelConfig", exclude={"base", "out_dir"})
ArenaRatingsConfig = dagster_config(
    ArenaConfig, "ArenaRatingsConfig",
    exclude={"contestants", "out_dir", "battles_path", "reward_model_dir"})


class PreferencePairsConfig(dg.Config):
    source: Literal["on_policy", "jsonl", "hub"] = Field(
        default="on_policy", description="on_policy: the SFT model's wrong answers to training "
        "problems against the reference answer; jsonl: a file of {prompt, chosen, rejected}; hub: "
        "a binarized preference set from the Hugging Face hub (needs the network)")
    path: str = Field(default="", description="source=jsonl: the pairs file")
    hub_name: str = Field(default="HuggingFaceH4/ultrafeedback_binarized",
                          description="source=hub: the data set")
    hub_split: str = Field(default="train_prefs", description="source=hub: the split")
    problems: str = Field(default="arithmetic", description="source=on_policy: `arithmetic` (GSM8K's "
                          "calculator annotations, train split) or a problems JSONL file")
    limit: int = Field(default=400, ge=1, description="problems sampled (on_policy) or pairs kept")
    samples: int = Field(default=4, ge=1, description="on_policy: answers sampled per problem")
    pairs_per_problem: int = Field(default=1, ge=1, description="on_policy: distinct wrong answers "
                                   "kept per problem")
    max_new_tokens: int = Field(default=16, ge=1, description="on_policy: tokens per answer")
    temperature: float = Field(default=1.0, gt=0, description="on_policy: sampling temperature")
    seed: int = Field(default=0, description="problem order and sampling seed")


def pairs_path(store: ArtifactStore) -> Path:
    return store.path("preference_pairs", "pairs.jsonl")


def _pairs_table(pairs: list[dict], n: int = 5) -> str:
    def cell(text: str) -> str:
        text = " ".join(str(text).split())
        return (text[:60] + "...").replace("|", "\\|") if len(text) > 60 else text.replace("|", "\\|")

    rows = ["| prompt | chosen | rejected |", "| --- | --- | --- |"]
    rows += [f"| {cell(p['prompt'])} | {cell(p['chosen'])} | {cell(p['rejected'])} |" for p in pairs[:n]]
    return "\n".join(rows)


@dg.asset(code_version="pairs-1", group_name="alignment", kinds={"jsonl"}, deps=["sft_model"])
def preference_pairs(context: dg.AssetExecutionContext, config: PreferencePairsConfig,
                     store: ArtifactStore) -> dg.MaterializeResult:
    """Preference pairs `{prompt, chosen, rejected}`: by default the SFT model's own wrong answers
    to training problems with a verifiable answer (rejected) against the reference (chosen)."""
    from lmforge.align.preferences import (load_problems, on_policy_pairs, pairs_from_hub, read_pairs,
                                           write_pairs)

    stats: dict = {}
    if config.source == "jsonl":
        if not config.path:
            raise dg.Failure(description="source=jsonl needs `path`, the pairs file")
        pairs = read_pairs(config.path)[:config.limit]
    elif config.source == "hub":
        pairs = pairs_from_hub(config.hub_name, config.hub_split, limit=config.limit)
    else:
        problems = load_problems(config.problems, config.limit, config.seed)
        pairs, stats = on_policy_pairs(
            model_dir(store, "sft_model"), problems, samples=config.samples,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed,
            pairs_per_problem=config.pairs_per_problem)
    if not pairs:
        raise dg.Failure(description=f"no preference pairs from source {config.source!r}: {stats}")
    out = write_pairs(pairs, pairs_path(store))
    context.log.info("%d pairs from %s", len(pairs), config.source)
    return dg.MaterializeResult(metadata={
        "pairs_path": str(out), "pairs": len(pairs), "source": config.source,
        **{f"on_policy_{k}": v for k, v in stats.items()},
        "preview": dg.MetadataValue.md(_pairs_table(pairs))})


@dg.asset(code_version="reward-model-1", group_name="alignment", kinds={"pytorch"},
          deps=["sft_model", preference_pairs], pool="gpu")
def reward_model(context: dg.AssetExecutionContext, config: RewardModelRunConfig,
                 store: ArtifactStore, launcher: TrainingLauncher) -> dg.MaterializeResult:
    """A Bradley-Terry reward model: a scalar head on the SFT model, trained on the pairs. The
    arena's judge where a prompt has no verifiable answer."""
    cfg = engine_config(RewardModelConfig, config, base=str(model_dir(store, "sft_model")),
                        data=str(pairs_path(store)), out_dir=str(store.path("reward_model", "run")))
    return launcher.run(context, "lmforge.align.reward_model", cfg.model_dump(mode="json"),
                        store.path("reward_model", "config.json"))


@dg.asset(code_version="dpo-1", group_name="alignment", kinds={"pytorch"},
          deps=["sft_model", preference_pairs], pool="gpu")
def dpo_model(context: dg.AssetExecutionContext, config: DPOModelConfig, store: ArtifactStore,
              launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The SFT model trained by DPO on the pairs (full weights, or a LoRA adapter with `lora`)."""
    cfg = engine_config(DPOConfig, config, base=str(model_dir(store, "sft_model")),
                        data=str(pairs_path(store)), out_dir=str(store.path("dpo_model", "run")))
    return launcher.run(context, "lmforge.align.dpo", cfg.model_dump(mode="json"),
                        store.path("dpo_model", "config.json"))


def trained_policy(store: ArtifactStore, asset_name: str) -> tuple[str, str | None] | None:
    """(model dir, adapter dir or None) of a DPO or GRPO run: full weights in `run/model`, an
    adapter in `run/adapter` over the model its summary names; None when it has not run."""
    version = store.latest(asset_name)
    if version is None:
        return None
    run = version / "run"
    if (run / "model" / "config.json").exists():
        return str(run / "model"), None
    if (run / "adapter" / "adapter_config.json").exists():
        base = read_json(run / "adapter" / "adapter_config.json").get("base_model_name_or_path")
        return str(base), str(run / "adapter")
    return None


@dg.asset(code_version="grpo-1", group_name="alignment", kinds={"pytorch"},
          deps=[dpo_model], pool="gpu")
def grpo_model(context: dg.AssetExecutionContext, config: GRPOModelConfig, store: ArtifactStore,
               launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The DPO model trained by GRPO with verifiable rewards (GSM8K's calculator problems by
    default); its summary holds the mean reward on held-out problems before and after."""
    policy = trained_policy(store, "dpo_model")
    if policy is None or policy[1] is not None:
        raise dg.Failure(description="GRPO starts from the DPO model's full weights: materialize "
                         "dpo_model (without `lora`) first")
    cfg = engine_config(GRPOConfig, config, base=policy[0],
                        out_dir=str(store.path("grpo_model", "run")))
    return launcher.run(context, "lmforge.align.grpo", cfg.model_dump(mode="json"),
                        store.path("grpo_model", "config.json"))


def contestants(store: ArtifactStore) -> list[Contestant]:
    """Every model of the graph that exists in the store: base, SFT, each adapter, DPO, GRPO."""
    def model(asset: str) -> Path | None:
        version = store.latest(asset)
        path = version / "run" / "model" if version is not None else None
        return path if path is not None and (path / "config.json").exists() else None

    found = [Contestant(name=name, model_dir=str(model(asset)))
             for name, asset in (("base", "pretrained_model"), ("sft", "sft_model"))
             if model(asset) is not None]
    sft = model("sft_model")
    for task in task_names() if sft is not None else []:
        version = store.latest("lora_adapter", partition=task)
        if version is not None and (version / "adapter" / "adapter_config.json").exists():
            found.append(Contestant(name=f"lora:{task}", model_dir=str(sft),
                                    adapter_dir=str(version / "adapter")))
    for name, asset in (("dpo", "dpo_model"), ("grpo", "grpo_model")):
        policy = trained_policy(store, asset)
        if policy is not None:
            found.append(Contestant(name=name, model_dir=policy[0], adapter_dir=policy[1]))
    return found


@dg.asset(code_version="arena-1", group_name="alignment", kinds={"pytorch"},
          deps=["pretrained_model", "sft_model", "lora_adapter", dpo_model, grpo_model, reward_model])
def arena_ratings(context: dg.AssetExecutionContext, config: ArenaRatingsConfig,
                  store: ArtifactStore) -> dg.MaterializeResult:
    """The graph's models answer held-out problems and meet pairwise; a judge (the verifiable
    reward where a problem has one, else the reward model) decides each battle, and
    Bradley-Terry maximum likelihood rates them, with bootstrap intervals."""
    from lmforge.align.arena import plots_markdown, run_arena

    models = contestants(store)
    if len(models) < 2:
        raise dg.Failure(description=f"the arena needs two models; found {[m.name for m in models]}")
    rm_version = store.latest("reward_model")
    rm = rm_version / "run" / "model" if rm_version is not None else None
    cfg = engine_config(ArenaConfig, config, contestants=models,
                        out_dir=str(store.path("arena_ratings", "arena")),
                        reward_model_dir=str(rm) if rm and (rm / "config.json").exists() else None)
    context.log.info("arena: %s", ", ".join(m.name for m in models))
    summary = run_arena(cfg)
    meta = summary.to_metadata()
    return dg.MaterializeResult(metadata={
        **{k: v for k, v in meta.items() if k not in ("leaderboard", "win_rates", "ratings", "path")},
        "contestants": [m.name for m in models],
        "judges_used": dg.MetadataValue.json(summary.judges_used),
        "leaderboard": leaderboard_table(summary.ratings),
        "win_rates": dg.MetadataValue.md(meta["win_rates"]),
        "ratings": dg.MetadataValue.json(meta["ratings"]),
        "mean_reward": dg.MetadataValue.json({k: round(v, 4) for k, v in summary.mean_reward.items()}),
        **{k: dg.MetadataValue.md(v) for k, v in plots_markdown(cfg.out_dir).items()}})


def leaderboard_table(ratings) -> dg.TableMetadataValue:
    """The leaderboard as table metadata (sortable in the UI), ratings rounded to the Elo point."""
    columns = [dg.TableColumn("rank", "int"), dg.TableColumn("model", "string"),
               dg.TableColumn("rating", "float"), dg.TableColumn("ci_low", "float"),
               dg.TableColumn("ci_high", "float"), dg.TableColumn("wins", "int"),
               dg.TableColumn("losses", "int"), dg.TableColumn("ties", "int")]
    rows = [dg.TableRecord({"rank": r.rank, "model": r.model, "rating": round(r.rating, 1),
                            "ci_low": round(r.ci_low, 1), "ci_high": round(r.ci_high, 1),
                            "wins": r.wins, "losses": r.losses, "ties": r.ties})
            for r in ratings.leaderboard]
    return dg.MetadataValue.table(rows, schema=dg.TableSchema(columns))


def _summary(store: ArtifactStore, asset_name: str) -> dict | None:
    version = store.latest(asset_name)
    path = version / "run" / "summary.json" if version is not None else None
    return read_json(path) if path is not None and path.exists() else None


def _figure(summary: dict | None, key: str) -> float | None:
    value = (summary or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dg.asset_check(asset=reward_model, blocking=True)
def reward_model_beats_chance(store: ArtifactStore) -> dg.AssetCheckResult:
    """On held-out pairs the reward model scores `chosen` above `rejected` more often than not:
    a reward model at chance would judge the arena by noise."""
    summary = _summary(store, "reward_model")
    accuracy = _figure(summary, "val_accuracy_after")
    if accuracy is None:
        return dg.AssetCheckResult(passed=False, description="no held-out accuracy in the summary "
                                   "(no held-out pairs? raise val_fraction)")
    return dg.AssetCheckResult(
        passed=accuracy > 0.5, description=None if accuracy > 0.5 else
        f"held-out pair accuracy {accuracy:.3f} is not above chance",
        metadata={"val_accuracy": accuracy, "val_accuracy_before": _figure(summary, "val_accuracy_before")})


@dg.asset_check(asset=dpo_model, blocking=True)
def dpo_prefers_chosen(store: ArtifactStore) -> dg.AssetCheckResult:
    """The loss is finite, and on held-out pairs the trained policy gives `chosen` a higher
    implicit reward than `rejected` more often than not."""
    summary = _summary(store, "dpo_model")
    loss, accuracy = _figure(summary, "final_loss"), _figure(summary, "val_accuracy_after")
    if loss is None:
        return dg.AssetCheckResult(passed=False, description="the loss is missing or not finite")
    if accuracy is None:
        return dg.AssetCheckResult(passed=False, description="no held-out preference accuracy")
    return dg.AssetCheckResult(
        passed=accuracy > 0.5, description=None if accuracy > 0.5 else
        f"held-out preference accuracy {accuracy:.3f} is not above chance",
        metadata={"final_loss": loss, "val_accuracy": accuracy,
                  "val_margin": _figure(summary, "val_margin_after")})


@dg.asset_check(asset=grpo_model)
def grpo_reward_rose(store: ArtifactStore) -> dg.AssetCheckResult:
    """The mean reward GRPO trains on (`reward`, or each problem's own) is higher after GRPO than
    before on held-out problems, with greedy answers. Not blocking: the arena still rates the
    model when it did not improve."""
    summary = _summary(store, "grpo_model")
    before, after = _figure(summary, "heldout_reward_before"), _figure(summary, "heldout_reward_after")
    if before is None or after is None:
        return dg.AssetCheckResult(passed=False, description="no held-out reward before and after")
    return dg.AssetCheckResult(
        passed=after > before, description=None if after > before else
        f"held-out reward did not rise: {before:.3f} -> {after:.3f}",
        metadata={"heldout_reward_before": before, "heldout_reward_after": after,
                  "reward": str(summary.get("reward")),
                  "heldout_exact_before": _figure(summary, "heldout_exact_before"),
                  "heldout_exact_after": _figure(summary, "heldout_exact_after")})


@dg.asset_check(asset=arena_ratings)
def arena_rates_every_model(store: ArtifactStore) -> dg.AssetCheckResult:
    """Every contestant has a finite rating and a finite interval."""
    version = store.latest("arena_ratings")
    path = version / "arena" / "ratings.json" if version is not None else Path("ratings.json")
    if not path.exists():
        return dg.AssetCheckResult(passed=False, description=f"no ratings at {path}")
    board = read_json(path)["ratings"]["leaderboard"]
    bad = [r["model"] for r in board
           if not all(math.isfinite(r[k]) for k in ("rating", "ci_low", "ci_high"))]
    return dg.AssetCheckResult(passed=not bad, description=f"bad ratings: {bad}" if bad else None,
                               metadata={"models": len(board)})
