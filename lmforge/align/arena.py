"""The arena: the graph's models answer held-out prompts, a judge decides every pair, and
Bradley-Terry ratings with bootstrap intervals rank them.

    lmforge arena --model base=runs/pretrain/model --model sft=runs/sft/model \\
                  --model math=runs/sft/model:runs/lora-math/adapter --out runs/arena
    lmforge arena --battles runs/arena/battles.jsonl --out runs/arena-rerated

Each contestant (``NAME=MODEL_DIR[:ADAPTER_DIR]``) answers every prompt once (batched generation
with the KV cache, greedy by default, or sampled with a seed); every pair of contestants then
battles on every prompt, and the judge (:mod:`lmforge.align.judges`: the prompt's verifiable
reward by default, or a reward model, or a judge model asked with the answers in both orders)
names the winner. The battles are rated with :func:`lmforge.align.ratings.rate`. The prompts are
a problems JSONL (:mod:`lmforge.align.problems`), or by default the held-out arithmetic problems
(GSM8K's test split, none of them in train). With ``--battles`` the models are skipped and an
existing battles file is rated again.

The output directory (written whole, atomically) holds ``battles.jsonl`` (one judged battle per
line: both answers, the judge's value, the winner), ``completions.jsonl`` (every answer),
``ratings.json`` (the leaderboard: rating, interval, wins/losses/ties, the win-rate matrix),
``leaderboard.md``, ``leaderboard.png`` (ratings with their intervals) and ``win_rates.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from lmforge.align.ratings import DEFAULT_PRIOR, Ratings, rate, read_battles, winner_from_score
from lmforge.config import add_config_arguments, config_from_args
from lmforge.errors import InputError, MissingInputError
from lmforge.io import atomic_path, check_output


class Contestant(BaseModel):
    """One model in the arena."""

    name: str = Field(min_length=1, description="the name on the leaderboard (e.g. sft, dpo, math)")
    model_dir: str = Field(min_length=1, description="Hugging Face model directory with tokenizer files")
    adapter_dir: str | None = Field(None, description="PEFT adapter directory applied on top of "
                                    "model_dir, or none")


class ArenaConfig(BaseModel):
    """Battles between models on held-out prompts, and their Bradley-Terry ratings."""

    contestants: list[Contestant] = Field(
        default_factory=list, description="the models: [{name, model_dir, adapter_dir}]; on the "
        "command line --model NAME=DIR[:ADAPTER] (repeated) or --models FILE")
    out_dir: str = Field("", description="output directory (written whole, atomically)")
    battles_path: str | None = Field(None, description="rate this battles JSONL instead of running "
                                     "models ({model_a, model_b, winner} per line)")
    problems: str | None = Field(None, description="held-out prompts JSONL: problems {id, prompt, "
                                 "answer, reward} or open-ended {id, prompt}; default: the held-out "
                                 "arithmetic problems (GSM8K test)")
    num_prompts: int = Field(64, ge=1, description="prompts to battle on (the first N problems)")
    problems_seed: int = Field(0, description="shuffle seed of the default arithmetic problems")
    max_value: int = Field(20, ge=1, description="default arithmetic problems: the largest operand "
                           "or result (GSM8K's test split has few held-out ones at 20, more at 50+)")
    judge: str = Field("auto", description="judge name in lmforge.align.judges: auto (the verifiable "
                       "reward where the problem has one, else the reward model or judge model "
                       "given), reward, reward_model, judge_model")
    reward_model_dir: str | None = Field(None, description="reward model directory for the "
                                         "reward_model judge (lmforge reward-model)")
    judge_model_dir: str | None = Field(None, description="Hugging Face causal LM directory for the "
                                        "judge_model judge")
    judge_orders: Literal["both", "first"] = Field(
        "both", description="judge_model: ask with the answers in both orders and average "
        "(cancels position bias), or only a-first")
    tie_margin: float = Field(0.0, ge=0, lt=0.5, description="a judge value within this of 0.5 "
                              "is a tie")
    max_new_tokens: int = Field(32, ge=1, description="tokens each answer may have")
    greedy: bool = Field(True, description="greedy answers; --no-greedy samples at temperature "
                         "with seed")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (with --no-greedy)")
    top_k: int = Field(0, ge=0, description="sample from the top k tokens (0 = all; with --no-greedy)")
    seed: int = Field(0, description="seed of sampling, of the battle sides and of the bootstrap")
    batch_size: int = Field(32, ge=1, description="prompts per generation batch (and judge batch)")
    device: str = Field("cpu", description="torch device for the contestants and the judge")
    cpu_threads: int = Field(1, ge=1, description="torch threads on CPU: tiny models run several "
                             "times faster on one thread than with OpenMP across busy cores")
    rounds: int = Field(1000, ge=1, description="bootstrap rounds behind the intervals")
    ci: float = Field(0.95, gt=0, lt=1, description="coverage of the intervals")
    prior: float = Field(DEFAULT_PRIOR, ge=0, description="L2 prior on the strengths (keeps ratings "
                         "finite when a model never lost; 0 = pure maximum likelihood)")
    anchor: str | None = Field(None, description="model pinned at 1000 (default: the mean is 1000)")


class ArenaSummary(BaseModel):
    """What one arena run measured (``ratings.json`` holds it)."""

    ratings: Ratings = Field(description="leaderboard, win rates, intervals")
    contestants: list[Contestant] = Field(default_factory=list, description="the models that answered")
    judge: str = Field(description="the judge that decided the battles")
    judges_used: dict[str, int] = Field(default_factory=dict, description="battles per judge "
                                        "(auto mixes the reward and a model judge)")
    num_prompts: int = Field(0, description="prompts answered by every contestant")
    mean_reward: dict[str, float] = Field(default_factory=dict, description="each model's mean "
                                          "verifiable reward over the prompts that have one")
    generation_seconds: dict[str, float] = Field(default_factory=dict, description="time to "
                                                 "answer every prompt, per model")
    judge_seconds: float = Field(0.0, description="time to judge every battle")
    out_dir: str = Field("", description="the output directory")

    def to_markdown(self) -> str:
        parts = [self.ratings.to_markdown()]
        if self.mean_reward:
            parts.append("mean verifiable reward: " + ", ".join(
                f"{m} {v:.3f}" for m, v in self.mean_reward.items()))
        parts.append(f"{self.ratings.num_battles} battles on {self.num_prompts or '?'} prompts, "
                     f"judge: {self.judge}; intervals: {self.ratings.ci:.0%} bootstrap "
                     f"({self.ratings.bootstrap_rounds} rounds)")
        parts += [f"warning: {w}" for w in self.ratings.warnings]
        return "\n\n".join(parts)

    def to_metadata(self) -> dict[str, Any]:
        """Plain JSON values for an asset's metadata (wrap ``leaderboard``/``win_rates`` with
        ``MetadataValue.md`` and ``ratings`` with ``MetadataValue.json``)."""
        top = self.ratings.leaderboard[0]
        return {
            "path": self.out_dir, "judge": self.judge, "num_battles": self.ratings.num_battles,
            "num_prompts": self.num_prompts, "top_model": top.model,
            "top_rating": round(top.rating, 1), "separated": self.ratings.separated,
            "leaderboard": self.to_markdown(), "win_rates": self.ratings.win_rate_markdown(),
            "ratings": {r.model: {"rating": round(r.rating, 1), "ci_low": round(r.ci_low, 1),
                                  "ci_high": round(r.ci_high, 1)}
                        for r in self.ratings.leaderboard},
            **{f"rating/{r.model}": round(r.rating, 1) for r in self.ratings.leaderboard},
        }


# ----------------------------------------------------------------------------------------------
# contestants and prompts


def parse_contestant(spec: str) -> Contestant:
    """``NAME=MODEL_DIR[:ADAPTER_DIR]`` -> Contestant."""
    name, eq, rest = spec.partition("=")
    if not eq or not name.strip() or not rest.strip():
        raise InputError(f"--model {spec!r}: expected NAME=MODEL_DIR[:ADAPTER_DIR]")
    model_dir, _, adapter = rest.partition(":")
    return Contestant(name=name.strip(), model_dir=model_dir, adapter_dir=adapter or None)


def read_contestants(path: str | Path) -> list[Contestant]:
    """Contestants from a JSON or YAML file: a list of {name, model_dir, adapter_dir}, or a
    mapping name -> model_dir (or -> {model_dir, adapter_dir})."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--models: no file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - json and yaml errors alike: one line
        raise InputError(f"--models {path}: not valid JSON/YAML ({' '.join(str(e).split())[:200]})") from None
    if isinstance(data, dict):
        data = [{"name": k, **(v if isinstance(v, dict) else {"model_dir": v})} for k, v in data.items()]
    if not isinstance(data, list):
        raise InputError(f"--models {path}: expected a list of {{name, model_dir, adapter_dir}}")
    return [_contestant(c, f"--models {path}") for c in data]


def _contestant(value: Any, where: str) -> Contestant:
    import pydantic

    from lmforge.config import validation_message

    try:
        return Contestant.model_validate(value)
    except pydantic.ValidationError as e:
        raise InputError(f"{where}: bad contestant {str(value)[:80]}: {validation_message(e)}") from None


def check_contestants(contestants: list[Contestant]) -> None:
    if len(contestants) < 2:
        raise InputError(f"the arena needs at least 2 models, got {len(contestants)} "
                         "(--model NAME=DIR[:ADAPTER], repeated)")
    names = [c.name for c in contestants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"contestant names must be unique: {', '.join(dup)} given twice")
    for c in contestants:
        if not (Path(c.model_dir) / "config.json").is_file():
            raise MissingInputError(f"model {c.name!r}: {c.model_dir} is not a model directory "
                                    "(no config.json)")
        if c.adapter_dir and not (Path(c.adapter_dir) / "adapter_config.json").is_file():
            raise MissingInputError(f"model {c.name!r}: {c.adapter_dir} is not a PEFT adapter "
                                    "(no adapter_config.json)")


def read_prompts(path: str | Path) -> list[dict]:
    """Held-out prompts from JSONL: each line a problem (``{id, prompt, answer, reward}``, see
    :mod:`lmforge.align.problems`) or an open-ended prompt (``{id, prompt}``: no verifiable answer,
    for a reward model or judge model to decide). ``id`` defaults to the line number."""
    from lmforge.align.rewards import REWARDS
    from lmforge.io import iter_jsonl

    if not Path(path).is_file():
        raise MissingInputError(f"--problems: no file at {path}")
    prompts = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise InputError(f"{where}: a prompt record needs a non-empty string 'prompt'")
        if "reward" in row:
            if row["reward"] not in REWARDS:
                raise InputError(f"{where}: unknown reward {row['reward']!r}; known: "
                                 f"{', '.join(sorted(REWARDS))}")
            if not isinstance(row.get("answer"), str):
                raise InputError(f"{where}: a problem with a reward needs a string 'answer'")
        prompts.append({**row, "id": str(row.get("id", lineno))})
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


def load_prompts(cfg: ArenaConfig) -> list[dict]:
    from lmforge.align.problems import arithmetic_problems

    if cfg.problems:
        problems = read_prompts(cfg.problems)[:cfg.num_prompts]
    else:
        problems = arithmetic_problems("test", limit=cfg.num_prompts, seed=cfg.problems_seed,
                                       max_value=cfg.max_value)
    if not problems:
        raise InputError("no held-out problems to battle on")
    return problems


# ----------------------------------------------------------------------------------------------
# the run


def answer(contestant: Contestant, prompts: list[str], cfg: ArenaConfig) -> list[str]:
    """The contestant's answer to every prompt (its own chat template, batched, KV cache)."""
    import gc

    from lmforge.align.generate import generate, load_policy

    model, tok = load_policy(contestant.model_dir, contestant.adapter_dir, device=cfg.device)
    try:
        out = generate(model, tok, prompts, n=1, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_k=cfg.top_k, greedy=cfg.greedy,
                       seed=cfg.seed, batch_size=cfg.batch_size, chat=True)
    finally:
        del model
        gc.collect()
    return [texts[0] for texts in out]


def battles_for(problems: list[dict], answers: dict[str, list[str]], judge, cfg: ArenaConfig) -> list[dict]:
    """Every pair of contestants on every prompt, sides drawn at random (seeded) so that neither
    name is always ``model_a``; judged in one batch."""
    import random

    from lmforge.align.judges import judge_all

    rng = random.Random(cfg.seed)
    names = list(answers)
    pairs = []
    for k, problem in enumerate(problems):
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                a, b = (names[i], names[j]) if rng.random() < 0.5 else (names[j], names[i])
                pairs.append((k, a, b))
    items = [(problems[k], answers[a][k], answers[b][k]) for k, a, b in pairs]
    values = judge_all(judge, items)
    which = getattr(judge, "judge_for", None)
    out = []
    for (k, a, b), (problem, ca, cb), v in zip(pairs, items, values):
        out.append({"prompt_id": problem.get("id", str(k)), "prompt": problem["prompt"],
                    "model_a": a, "model_b": b, "completion_a": ca, "completion_b": cb,
                    "judge": which(problem) if which else judge.name, "score": v,
                    "winner": winner_from_score(v, cfg.tie_margin)})
    return out


def _judge_options(cfg: ArenaConfig) -> dict[str, Any]:
    for flag, d in (("--reward-model-dir", cfg.reward_model_dir), ("--judge-model-dir", cfg.judge_model_dir)):
        if d and not Path(d).is_dir():
            raise MissingInputError(f"{flag}: no directory at {d}")
    return {"reward_model_dir": cfg.reward_model_dir, "judge_model_dir": cfg.judge_model_dir,
            "device": cfg.device, "batch_size": cfg.batch_size, "judge_orders": cfg.judge_orders}


def run_arena(cfg: ArenaConfig) -> ArenaSummary:
    """Answer, judge, rate, write. Every input is checked before any model runs."""
    from lmforge.align.judges import JUDGES, get_judge

    if not cfg.out_dir:
        raise InputError("--out is required (the output directory)")
    out = check_output(cfg.out_dir, "dir")
    if cfg.battles_path:
        battles = read_battles(cfg.battles_path)
        ratings = _rate(battles, cfg, models=None)
        summary = ArenaSummary(ratings=ratings, judge="(from battles file)",
                               judges_used=_count(b.get("judge", "?") for b in battles),
                               num_prompts=len({b.get("prompt_id") for b in battles
                                                if b.get("prompt_id") is not None}),
                               out_dir=str(out))
        _write(out, summary, battles, completions=None)
        return summary

    check_contestants(cfg.contestants)
    if cfg.judge not in JUDGES:
        raise InputError(f"unknown judge {cfg.judge!r}; known: {', '.join(sorted(JUDGES))}")
    if cfg.anchor is not None and cfg.anchor not in {c.name for c in cfg.contestants}:
        raise InputError(f"--anchor {cfg.anchor!r} is not one of the contestants")
    options = _judge_options(cfg)
    problems = load_prompts(cfg)
    with _torch_threads(cfg):
        judge = get_judge(cfg.judge, **options)
        if hasattr(judge, "check"):
            judge.check(problems)
        return _run_models(cfg, out, problems, judge)


@contextlib.contextmanager
def _torch_threads(cfg: ArenaConfig):
    import torch

    before = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_models(cfg: ArenaConfig, out: Path, problems: list[dict], judge) -> ArenaSummary:
    """Each contestant answers (one model in memory at a time), the judge decides, then rate."""
    prompts = [p["prompt"] for p in problems]
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for c in cfg.contestants:
        t0 = time.perf_counter()
        answers[c.name] = answer(c, prompts, cfg)
        seconds[c.name] = round(time.perf_counter() - t0, 2)
        print(f"arena: {c.name} answered {len(prompts)} prompts in {seconds[c.name]:.1f}s",
              file=sys.stderr)

    t0 = time.perf_counter()
    battles = battles_for(problems, answers, judge, cfg)
    judge_seconds = time.perf_counter() - t0
    ratings = _rate(battles, cfg, models=[c.name for c in cfg.contestants])
    summary = ArenaSummary(
        ratings=ratings, contestants=cfg.contestants, judge=cfg.judge,
        judges_used=_count(b["judge"] for b in battles), num_prompts=len(problems),
        mean_reward=_mean_rewards(problems, answers), generation_seconds=seconds,
        judge_seconds=round(judge_seconds, 2), out_dir=str(out))
    completions = [{"model": name, "prompt_id": p.get("id", str(k)), "prompt": p["prompt"],
                    "completion": texts[k]}
                   for name, texts in answers.items() for k, p in enumerate(problems)]
    _write(out, summary, battles, completions)
    return summary


def _rate(battles: list[dict], cfg: ArenaConfig, models: list[str] | None) -> Ratings:
    return rate(battles, models=models, rounds=cfg.rounds, ci=cfg.ci, prior=cfg.prior,
                anchor=cfg.anchor, seed=cfg.seed)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _mean_rewards(problems: list[dict], answers: dict[str, list[str]]) -> dict[str, float]:
    from lmforge.align.rewards import REWARDS, score

    scored = [k for k, p in enumerate(problems) if p.get("reward") in REWARDS]
    if not scored:
        return {}
    return {name: round(sum(score(problems[k], texts[k]) for k in scored) / len(scored), 4)
            for name, texts in answers.items()}


# ----------------------------------------------------------------------------------------------
# outputs


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _write(out: Path, summary: ArenaSummary, battles: list[dict], completions: list[dict] | None) -> None:
    with atomic_path(out, "dir") as tmp:
        tmp.mkdir()
        _jsonl(tmp / "battles.jsonl", battles)
        if completions is not None:
            _jsonl(tmp / "completions.jsonl", completions)
        (tmp / "ratings.json").write_text(summary.model_dump_json(indent=2) + "\n")
        (tmp / "leaderboard.md").write_text(
            summary.to_markdown() + "\n\nwin rate (row vs column):\n\n"
            + summary.ratings.win_rate_markdown() + "\n")
        plot_leaderboard(summary.ratings, tmp / "leaderboard.png")
        plot_win_rates(summary.ratings, tmp / "win_rates.png")


def _figure(size):
    # The object API with the Agg canvas (as lmforge.train.plots): no pyplot state, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_leaderboard(ratings: Ratings, png: Path) -> Path:
    """Ratings with their bootstrap intervals, best at the top."""
    rows = ratings.leaderboard
    fig = _figure((6, 1.2 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    x = [r.rating for r in rows]
    err = [[r.rating - r.ci_low for r in rows], [r.ci_high - r.rating for r in rows]]
    ax.errorbar(x, ys, xerr=err, fmt="o", capsize=4)
    ax.set_yticks(ys, [r.model for r in rows])
    ax.axvline(1000, color="grey", lw=0.5, ls=":")  # the mean (or the anchor)
    ax.set_xlabel(f"Bradley-Terry rating (Elo scale), {ratings.ci:.0%} bootstrap interval")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(png, format="png", dpi=80)
    return png


def plot_win_rates(ratings: Ratings, png: Path) -> Path:
    """The observed win-rate matrix (row's points per battle against the column)."""
    import numpy as np

    n = len(ratings.models)
    m = np.array([[np.nan if v is None else v for v in row] for row in ratings.win_rate], dtype=float)
    fig = _figure((1.5 + 0.7 * n, 1.0 + 0.6 * n))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=0, vmax=1, cmap="RdBu")
    ax.set_xticks(range(n), ratings.models, rotation=45, ha="right")
    ax.set_yticks(range(n), ratings.models)
    for i in range(n):
        for j in range(n):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("win rate (row vs column)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png, format="png", dpi=80)
    return png


def plots_markdown(out_dir: str | Path) -> dict[str, str]:
    """The two plots as Markdown with the PNG inline (a base64 data URI), for asset metadata
    that the Dagster UI shows without access to the output directory."""
    out = {}
    for key, name, title in (("leaderboard_plot", "leaderboard.png", "arena ratings"),
                             ("win_rates_plot", "win_rates.png", "win rates")):
        png = Path(out_dir) / name
        if png.is_file():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            out[key] = f"![{title}](data:image/png;base64,{data})"
    return out


def report_section(out_dir: str | Path) -> str:
    """The arena's section of a Markdown report: the leaderboard and the plots (linked)."""
    out = Path(out_dir)
    summary = ArenaSummary.model_validate_json((out / "ratings.json").read_text())
    return "\n\n".join([
        "## Arena", summary.to_markdown(), "win rate (row vs column):",
        summary.ratings.win_rate_markdown(),
        f"![arena ratings]({out / 'leaderboard.png'})", f"![win rates]({out / 'win_rates.png'})"])


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmforge arena", description=__doc__.split("\n\n")[0])
    add_config_arguments(ap, ArenaConfig)  # --contestants takes a JSON list
    ap.add_argument("--model", dest="model_specs", action="append", default=None,
                    metavar="NAME=DIR[:ADAPTER]", help="a contestant (repeat for each model)")
    ap.add_argument("--models", dest="models_file", default=None, metavar="FILE",
                    help="contestants from a JSON/YAML file: [{name, model_dir, adapter_dir}] or "
                    "{name: model_dir}")
    ap.add_argument("--out", dest="out_dir", default=None, help="same as --out-dir")
    ap.add_argument("--battles", dest="battles_path", default=None, help="same as --battles-path")
    args = ap.parse_args(argv)
    fixed: dict[str, Any] = {}
    contestants: list[Contestant] = []
    if args.models_file:
        contestants += read_contestants(args.models_file)
    for spec in args.model_specs or []:
        contestants.append(parse_contestant(spec))
    if contestants:  # else from --config, if it has them
        fixed["contestants"] = contestants
    summary = run_arena(config_from_args(ArenaConfig, args, **fixed))
    print(summary.to_markdown())
    print(f"\nwrote {summary.out_dir}/ (battles.jsonl, ratings.json, leaderboard.png, win_rates.png)")
    return 0


if __name__ == "__main__":
    from lmforge.cli import run

    sys.exit(run("arena", main, sys.argv[1:]))
