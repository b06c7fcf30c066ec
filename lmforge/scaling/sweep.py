"""A scaling sweep: at each FLOP budget, models of several sizes, each trained on D = C / 6N tokens.

    lmforge scaling-sweep sweeps/tiny.yaml --data TOKENS_DIR --tokenizer TOKENIZER_DIR --out SWEEP_DIR
    lmforge scaling-fit SWEEP_DIR/runs.jsonl --budget 1e13

The sweep file (YAML or JSON) names the budgets, the model shapes and the training settings they
share (see :class:`SweepConfig`; ``sweeps/tiny.yaml`` is a CPU sweep of a few minutes,
``sweeps/gpu.yaml`` one for a GPU). One run is a (size, budget) pair, named ``SIZE@BUDGET``
(``d64x2@1e11``). A run is one call of the pretraining engine (``lmforge.train.pretrain``) with
the size's shape, ``max_steps`` = D / tokens-per-step (D = C / 6N, N counted from the shape and
the tokenizer's vocabulary), warmup a fixed fraction of the run and the cosine decay over the
whole run (Chinchilla's finding: a schedule longer than the run overestimates its loss), and the
validation loss measured once, at the end, on the same held-out windows for every run.

``SWEEP_DIR/RUN/run`` is the run's directory (checkpoints a few times per run: a killed sweep
resumes the run it was in); ``SWEEP_DIR/RUN/result.json`` is its result, written last; a run whose
result exists (for the same settings) is skipped. ``SWEEP_DIR/runs.jsonl`` holds one line per
finished run (``params``, ``tokens``, ``loss``, ``budget``, ...): the input of ``scaling-fit``.

The runs are single-process (``cpu_threads`` 1 on CPU: micro models run fastest that way);
``--only`` runs some of them, so several processes (or Dagster, one partition per run) can share
the sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, model_validator

from lmforge.errors import InputError, LmforgeError
from lmforge.train.config import ModelPreset, PretrainConfig

_SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")


def swiglu_width(d_model: int, multiple: int = 8) -> int:
    """SwiGLU's hidden width for the parameters of a 4x MLP: 8/3 d, rounded up to ``multiple``."""
    return -(-(8 * d_model) // (3 * multiple)) * multiple


class SweepSize(BaseModel):
    """One model shape of the sweep (Llama blocks, tied embeddings)."""

    d_model: int = Field(..., ge=8, description="model width")
    n_layers: int = Field(..., ge=1, description="transformer blocks")
    n_heads: int = Field(..., ge=1, description="attention heads; must divide d_model")
    n_kv_heads: int | None = Field(None, ge=1, description="key/value heads (None: n_heads)")
    d_ff: int | None = Field(None, ge=8, description="SwiGLU hidden width (None: 8/3 d_model, "
                             "rounded up to a multiple of 8)")
    lr: float | None = Field(None, gt=0, description="peak learning rate of this size (None: the "
                             "sweep's)")

    @model_validator(mode="after")
    def _heads(self):
        kv = self.n_kv_heads or self.n_heads
        if self.d_model % self.n_heads or self.n_heads % kv:
            raise ValueError(f"bad head layout: d_model {self.d_model}, n_heads {self.n_heads}, "
                             f"n_kv_heads {kv} (heads must divide d_model, kv heads the heads)")
        return self

    def shape(self, seq_len: int) -> ModelPreset:
        return ModelPreset(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                           n_kv_heads=self.n_kv_heads or self.n_heads,
                           d_ff=self.d_ff or swiglu_width(self.d_model), seq_len=seq_len,
                           tie_embeddings=True)


class SweepConfig(BaseModel):
    """A sweep file: FLOP budgets x model sizes, and the training settings every run shares."""

    name: str = Field("", description="the sweep's name (default: the file's stem)")
    budgets: list[float] = Field(..., min_length=1, description="FLOP budgets C (6 N D)")
    sizes: dict[str, SweepSize] = Field(..., min_length=1, description="model shapes by name; "
                                        "names are letters, digits, '_' and '-'")
    vocab_size: int | None = Field(None, ge=260, description="the sweep's own byte-level BPE "
                                   "vocabulary, trained on the curated corpus by the Dagster "
                                   "assets (micro models with the pipeline's vocabulary would be "
                                   "mostly embedding); None: the pipeline's tokenizer and shards")
    seq_len: int = Field(64, ge=8, description="context length of every run")
    micro_batch: int = Field(16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (a size may set its own)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak "
                                "(Chinchilla decays 10x)")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of each run's steps spent "
                                   "in linear warmup (at least one step)")
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="lr decay over the run's "
                                               "whole length")
    eval_batches: int = Field(16, ge=1, description="micro-batches of validation windows for the "
                              "final val loss (the same windows for every run)")
    exclude: list[str] = Field(default_factory=list, description="runs (SIZE@BUDGET) left out: "
                               "the sizes far from a budget's optimum, whose runs cost the most")
    checkpoints: int = Field(4, ge=1, description="checkpoints per run (resume points)")
    seed: int = Field(1337, description="seed of the initialisation and the data order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the runs train")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="other PretrainConfig "
                                     "fields for every run (precision, compile, loss_chunk, ...)")

    @model_validator(mode="after")
    def _check(self):
        import re

        for name in self.sizes:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"size name {name!r}: use letters, digits, '_' and '-'")
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise ValueError("budgets must be positive FLOP counts")
        if len(set(map(budget_label, self.budgets))) != len(self.budgets):
            raise ValueError("budgets repeat")
        every = {f"{size}@{budget_label(c)}" for c in self.budgets for size in self.sizes}
        unknown = sorted(set(self.exclude) - every)
        if unknown:
            raise ValueError(f"exclude: no run {', '.join(unknown)} in this sweep")
        reserved = {"data_dir", "tokenizer_dir", "out_dir", "max_steps", *_SHAPE_FIELDS, "seq_len"}
        bad = sorted(set(self.pretrain) & reserved | (set(self.pretrain) - set(PretrainConfig.model_fields)))
        if bad:
            raise ValueError(f"pretrain: {', '.join(bad)} cannot be set here (unknown, or decided "
                             "by the sweep)")
        return self


def budget_label(flops: float) -> str:
    """``1e11``, ``3e11``, ``2.5e12``: a budget as it appears in a run's name."""
    mantissa, exponent = f"{flops:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def load_sweep(path: str | Path) -> SweepConfig:
    """The sweep file at ``path``; a problem with it is one line naming the file."""
    from lmforge.config import read_data_file, validation_message

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no sweep file at {path}")
    data = read_data_file(path, str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path}: a sweep file is a mapping (budgets, sizes, ...)")
    data.setdefault("name", path.stem)
    import pydantic

    try:
        return SweepConfig.model_validate(data)
    except pydantic.ValidationError as e:
        raise InputError(f"{path}: {validation_message(e)}") from None


def run_ids(sweep: SweepConfig) -> list[str]:
    """Every run of the sweep, ``SIZE@BUDGET``, by budget then size (less ``exclude``)."""
    every = [f"{size}@{budget_label(c)}" for c in sweep.budgets for size in sweep.sizes]
    return [r for r in every if r not in sweep.exclude]


def parse_run_id(sweep: SweepConfig, run_id: str) -> tuple[str, float]:
    for c in sweep.budgets:
        for size in sweep.sizes:
            if run_id == f"{size}@{budget_label(c)}" and run_id not in sweep.exclude:
                return size, c
    raise InputError(f"sweep {sweep.name!r} has no run {run_id!r}; its runs: "
                     f"{', '.join(run_ids(sweep))}")


def count_params(shape: ModelPreset, vocab_size: int) -> int:
    """Parameters of the engine's Llama model of this shape (counted as the engine counts them:
    a tied embedding once), without building it."""
    d, f = shape.d_model, shape.d_ff
    kv = shape.n_kv_heads * (d // shape.n_heads)
    layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # q, o; k, v; gate, up, down; 2 RMSNorms
    embeddings = vocab_size * d * (1 if shape.tie_embeddings else 2)
    return embeddings + shape.n_layers * layer + d  # + the final norm


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    """The vocabulary the engine gives the model (``len(tokenizer)``), read with ``tokenizers``
    (no transformers, no torch)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise LmforgeError(f"no tokenizer.json in {tokenizer_dir}")
    return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)


def checked_vocab_size(sweep: SweepConfig, tokenizer_dir: str | Path) -> int:
    """The tokenizer's vocabulary, which must be the sweep's ``vocab_size`` where it names one."""
    vocab = tokenizer_vocab_size(tokenizer_dir)
    if sweep.vocab_size is not None and vocab != sweep.vocab_size:
        raise InputError(f"sweep {sweep.name!r} is for a {sweep.vocab_size}-token vocabulary, but "
                         f"{tokenizer_dir} has {vocab} tokens (lmforge train-tokenizer "
                         f"--vocab-size {sweep.vocab_size})")
    return vocab


def plan_run(sweep: SweepConfig, run_id: str, vocab_size: int) -> dict[str, Any]:
    """What one run trains: its size, N, D = C / 6N rounded to whole steps, the schedule."""
    size_name, budget = parse_run_id(sweep, run_id)
    size = sweep.sizes[size_name]
    params = count_params(size.shape(sweep.seq_len), vocab_size)
    tokens_per_step = sweep.micro_batch * sweep.grad_accum * sweep.seq_len
    steps = max(1, round(budget / (6 * params) / tokens_per_step))
    warmup = max(1, round(sweep.warmup_fraction * steps)) if sweep.warmup_fraction else 0
    tokens = steps * tokens_per_step
    return {"run": run_id, "sweep": sweep.name, "size": size_name, "budget": budget,
            "params": params, "tokens": tokens, "flops": 6.0 * params * tokens, "steps": steps,
            "warmup_steps": min(warmup, steps), "tokens_per_step": tokens_per_step,
            "lr": size.lr or sweep.lr}


def pretrain_config(sweep: SweepConfig, run_id: str, vocab_size: int, data_dir: str | Path,
                    tokenizer_dir: str | Path, out_dir: str | Path) -> PretrainConfig:
    """The engine config of one run."""
    plan = plan_run(sweep, run_id, vocab_size)
    shape = sweep.sizes[plan["size"]].shape(sweep.seq_len)
    steps = plan["steps"]
    values = {
        **sweep.pretrain,
        **{k: getattr(shape, k) for k in _SHAPE_FIELDS}, "seq_len": sweep.seq_len,
        "max_steps": steps, "warmup_steps": plan["warmup_steps"], "lr": plan["lr"],
        "min_lr_ratio": sweep.min_lr_ratio, "schedule": sweep.schedule,
        "micro_batch": sweep.micro_batch, "grad_accum": sweep.grad_accum,
        "eval_every": 0, "eval_batches": sweep.eval_batches, "log_every": max(1, steps // 10),
        "save_every": max(1, -(-steps // sweep.checkpoints)), "keep_checkpoints": 1,
        "seed": sweep.seed, "device": sweep.device, "cpu_threads": 1,
        "data_dir": str(data_dir), "tokenizer_dir": str(tokenizer_dir), "out_dir": str(out_dir),
    }
    return PretrainConfig(**values)


def _settings(cfg: PretrainConfig) -> dict:
    """What decides a run's result (not where its files are)."""
    return cfg.model_dump(mode="json", exclude={"data_dir", "tokenizer_dir", "out_dir"})


def prepare_data(docs_path: str | Path, out_dir: str | Path, vocab_size: int) -> tuple[Path, Path]:
    """``(tokenizer_dir, shards_dir)``: a BPE tokenizer of ``vocab_size`` trained on
    ``docs_path`` and its token shards, under ``out_dir/v<vocab_size>``; made once (under a lock,
    so runs started together wait for the first), reused after."""
    import fcntl

    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
    from lmforge.tokenize.shards import ShardConfig, tokenize_documents

    root = Path(out_dir) / f"v{vocab_size}"
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir, shards_dir = root / "tokenizer", root / "shards"
    with open(root.parent / f".v{vocab_size}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tokenizer_dir / "tokenizer.json").is_file():
            train_tokenizer(docs_path, tokenizer_dir, TokenizerConfig(vocab_size=vocab_size))
        if not (shards_dir / "val.json").is_file():
            tokenize_documents(docs_path, tokenizer_dir, shards_dir, ShardConfig())
    return tokenizer_dir, shards_dir


def run_dir(out_root: str | Path, run_id: str) -> Path:
    return Path(out_root) / run_id / "run"


def result_path(out_root: str | Path, run_id: str) -> Path:
    return Path(out_root) / run_id / "result.json"


def done_result(out_root: str | Path, run_id: str, cfg: PretrainConfig | None = None) -> dict | None:
    """The run's result if it finished (with the same settings as ``cfg``, when given)."""
    path = result_path(out_root, run_id)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if cfg is not None and result.get("settings") != _settings(cfg):
        return None
    return result


def record_result(plan: dict, cfg: PretrainConfig, out_root: str | Path) -> dict:
    """Read the finished run's ``summary.json`` and write its ``result.json`` (atomically)."""
    from lmforge.io import atomic_path

    summary_path = Path(cfg.out_dir) / "summary.json"
    if not summary_path.is_file():
        raise LmforgeError(f"run {plan['run']}: no summary at {summary_path}")
    summary = json.loads(summary_path.read_text())
    loss = summary.get("val_loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise LmforgeError(f"run {plan['run']}: no finite val_loss in {summary_path} (the shards "
                           "need a val split)")
    params, steps = int(summary["params"]), int(summary["steps"])
    tokens = steps * plan["tokens_per_step"]
    result = {**plan, "params": params, "planned_params": plan["params"], "tokens": tokens,
              "flops": 6.0 * params * tokens, "loss": float(loss),
              "train_loss": summary.get("final_loss"), "wall_s": summary.get("wall_s"),
              "tokens_per_s": summary.get("tokens_per_s"), "device": summary.get("device"),
              "settings": _settings(cfg)}
    path = result_path(out_root, plan["run"])
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_results(out_root: str | Path, sweep: SweepConfig) -> tuple[list[dict], list[str]]:
    """``(results, missing)``: the finished runs of the sweep, and the ids of the others."""
    results, missing = [], []
    for run_id in run_ids(sweep):
        result = done_result(out_root, run_id)
        (results.append(result) if result else missing.append(run_id))
    return results, missing


def write_runs_jsonl(out_root: str | Path, results: list[dict]) -> Path:
    from lmforge.io import atomic_path

    path = Path(out_root) / "runs.jsonl"
    keep = ("run", "size", "budget", "params", "tokens", "flops", "loss", "steps", "train_loss",
            "wall_s")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(json.dumps({k: r.get(k) for k in keep}) + "\n" for r in results))
    return path


def run_sweep(sweep: SweepConfig, data_dir: str | Path, tokenizer_dir: str | Path,
              out_root: str | Path, only: list[str] | None = None,
              log: Callable[[str], None] = lambda m: print(f"[scaling-sweep] {m}", file=sys.stderr,
                                                           flush=True)) -> list[dict]:
    """Train every run of the sweep (or ``only`` these) that has no result yet, in this process;
    returns the results of every finished run of the sweep."""
    from lmforge.io import claim_output_dir
    from lmforge.train.pretrain import pretrain

    from lmforge.io import check_output

    ids = run_ids(sweep)
    for run_id in only or []:
        parse_run_id(sweep, run_id)
    # Everything that can be wrong with the inputs, before the sweep directory is made.
    vocab = checked_vocab_size(sweep, tokenizer_dir)
    for split in ("train", "val"):
        if not Path(data_dir, f"{split}.json").is_file():
            raise InputError(f"no {split}.json in {data_dir}: the sweep needs token shards with a "
                             "val split (its loss is what the fit reads)")
    check_output(out_root, "dir")
    out_root = claim_output_dir(out_root)
    todo = [r for r in ids if not only or r in only]
    for i, run_id in enumerate(todo, 1):
        plan = plan_run(sweep, run_id, vocab)
        cfg = pretrain_config(sweep, run_id, vocab, data_dir, tokenizer_dir, run_dir(out_root, run_id))
        if done_result(out_root, run_id, cfg):
            log(f"{i}/{len(todo)} {run_id}: done already, skipped")
            continue
        log(f"{i}/{len(todo)} {run_id}: N {plan['params']:,}, D {plan['tokens']:,} "
            f"({plan['steps']} steps), {plan['flops']:.3g} FLOPs")
        run_dir(out_root, run_id).parent.mkdir(parents=True, exist_ok=True)
        pretrain(cfg)
        result = record_result(plan, cfg, out_root)
        log(f"{i}/{len(todo)} {run_id}: val loss {result['loss']:.4f} in {result['wall_s']:.1f}s")
    results, _ = load_results(out_root, sweep)
    write_runs_jsonl(out_root, results)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge scaling-sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("sweep", help="sweep file (YAML or JSON): budgets, sizes, training settings")
    p.add_argument("--data", required=True, help="token shards: train.bin/.json, val.bin/.json")
    p.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory")
    p.add_argument("--out", default=None, help="sweep directory (resumes; required unless --plan)")
    p.add_argument("--only", default=None, metavar="RUN,RUN", help="run only these runs")
    p.add_argument("--plan", action="store_true", help="print every run's N, D, steps and FLOPs "
                   "as JSON lines, and train nothing")
    p.add_argument("--fit", action="store_true", help="fit the finished runs afterwards "
                   "(lmforge scaling-fit on SWEEP_DIR/runs.jsonl, JSON to SWEEP_DIR/fit.json)")
    args = p.parse_args(argv)
    sweep = load_sweep(args.sweep)
    if args.plan:
        vocab = checked_vocab_size(sweep, args.tokenizer)
        for run_id in run_ids(sweep):
            print(json.dumps(plan_run(sweep, run_id, vocab)))
        return 0
    if not args.out:
        raise InputError("--out is required (the sweep directory)")
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    results = run_sweep(sweep, args.data, args.tokenizer, args.out, only=only)
    summary = {"sweep": sweep.name, "finished": len(results), "runs": len(run_ids(sweep)),
               "runs_jsonl": str(Path(args.out) / "runs.jsonl")}
    if args.fit:
        from lmforge.scaling.fit import ScalingFitConfig, fit_runs

        report = fit_runs(results, ScalingFitConfig(plots=str(Path(args.out) / "plots")))
        from lmforge.io import atomic_path

        with atomic_path(Path(args.out) / "fit.json") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        summary["fit"] = {k: report[k] for k in ("E", "A", "B", "alpha", "beta", "budget",
                                                 "params", "tokens", "tokens_per_param")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run

    sys.exit(run("scaling-sweep", main, sys.argv[1:]))
