"""The report of a pipeline run: data funnel, training curves and evaluation table, in markdown.

Inputs are the files the stages already write (Parquet documents, ``metrics.jsonl``,
``summary.json`` of each training and evaluation), so the report can be rebuilt at any time
from a deployment's artifact directory: ``lmforge report --artifacts artifacts/tiny --out report``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.errors import MissingInputError
from lmforge.io import read_jsonl, atomic_path, check_output, count_rows


@dataclass
class ReportInputs:
    """Everything the report shows; any part may be missing (it is then said so)."""

    funnel: list[tuple[str, Path]] = field(default_factory=list)  # (stage, documents Parquet)
    tokenizer_dir: Path | None = None
    trainings: dict[str, Path] = field(default_factory=dict)  # name -> run dir (metrics.jsonl, summary.json)
    evaluations: dict[str, Path] = field(default_factory=dict)  # "model (suite)" -> dir with summary.json
    # Past SFT (lmforge.align): run directories with summary.json, and the arena's output.
    alignment: dict[str, Path] = field(default_factory=dict)  # "dpo" / "reward model" / "grpo" -> run dir
    arena_dir: Path | None = None
    scaling_fit: Path | None = None  # the pointer to the latest scaling fit (scaling_fit/latest.json)
    # The release (``released_model``): its release.json, and the candidate's evaluation summary
    # on the release's suite with the gate's verdicts (``lmforge.evaluate.gate``).
    release: dict | None = None
    candidate: dict | None = None  # {"version", "rows": [{task, candidate, release, bound, verdict}], "passed"}

    @classmethod
    def from_artifacts(cls, root: Path, stages: list[str] | None = None) -> "ReportInputs":
        """The layout the Dagster assets write under one deployment's directory (``root``:
        ``artifacts/tiny``): one directory per asset, in it (per partition) one directory per
        version, of which the newest is read; the funnel follows the curation chain
        (``lmforge.curate.stages``) unless ``stages`` names the document assets."""
        from lmforge.curate.stages import stage_names

        root = Path(root)
        stages = stage_names() if stages is None else stages
        adapters = {}
        for d in sorted(p for p in (root / "lora_adapter").glob("*") if p.is_dir()):
            version = newest_version(d)
            if (version / "adapter").is_dir():
                adapters[d.name] = version / "adapter"
        evaluations = {}
        for model in ("base", "sft"):
            for d in sorted(p for p in (root / f"{model}_model_eval").glob("*") if p.is_dir()):
                results = _results_dir(newest_version(d))
                if results is not None:
                    evaluations[f"{model} ({d.name})"] = results
        for d in sorted(p for p in (root / "lora_model_eval").glob("*") if p.is_dir()):
            if "__" not in d.name:
                continue
            results = _results_dir(newest_version(d))
            if results is not None:
                task, suite = d.name.split("__", 1)
                evaluations[f"lora:{task} ({suite})"] = results
        alignment = {name: newest_version(root / asset) / "run" for name, asset in ALIGNMENT_RUNS.items()}
        return cls(
            funnel=[(s, root / s / "documents") for s in stages],  # every day's Parquet
            tokenizer_dir=newest_version(root / "tokenizer") / "tokenizer",
            trainings={"pretrain": newest_version(root / "pretrained_model") / "run",
                       "sft": newest_version(root / "sft_model") / "run",
                       **{f"lora:{t}": p for t, p in adapters.items()},
                       **{name: run for name, run in alignment.items()
                          if (run / "summary.json").exists()}},
            evaluations=evaluations,
            alignment=alignment,
            arena_dir=newest_version(root / "arena_ratings") / "arena",
            scaling_fit=root / "scaling_fit" / "latest.json",
        )


def newest_version(asset_dir: Path) -> Path:
    """The newest version directory (``version.json``'s ``created``) under ``asset_dir``, or
    ``asset_dir`` itself when it holds no versions."""
    best, best_created = Path(asset_dir), ""
    for record in Path(asset_dir).glob("*/version.json"):
        try:
            created = str(json.loads(record.read_text()).get("created", ""))
        except (OSError, ValueError):
            continue
        if created >= best_created:
            best, best_created = record.parent, created
    return best


def _results_dir(version: Path) -> Path | None:
    for candidate in (version / "results", version):
        if (candidate / "summary.json").exists():
            return candidate
    return None


# The alignment stages' names in the report -> their assets' directories.
ALIGNMENT_RUNS = {"dpo": "dpo_model", "reward model": "reward_model", "grpo": "grpo_model"}

# What each alignment run's summary.json says about held-out data, before and after training.
_ALIGNMENT_FIGURES = {
    "dpo": [("held-out preference accuracy", "val_accuracy_before", "val_accuracy_after"),
            ("held-out reward margin", "val_margin_before", "val_margin_after")],
    "reward model": [("held-out pair accuracy", "val_accuracy_before", "val_accuracy_after")],
    "grpo": [("held-out mean reward (greedy)", "heldout_reward_before", "heldout_reward_after"),
             ("held-out mean reward (sampled)", "heldout_sampled_reward_before",
              "heldout_sampled_reward_after")],
}


def release_lines(inputs: "ReportInputs") -> list[str]:
    """The release section: which version is released, and the latest candidate against it,
    metric by metric, with the gate's verdict on each."""
    if inputs.release is None and inputs.candidate is None:
        return []
    lines = ["## Release", ""]
    if inputs.release is not None:
        lines.append(f"Released: `{inputs.release.get('model_version', '?')}` on suite "
                     f"`{inputs.release.get('suite', '?')}` at {inputs.release.get('released_at', '?')}.")
    else:
        lines.append("Nothing released yet.")
    if inputs.candidate is not None:
        verdict = "passes the gate" if inputs.candidate.get("passed") else "does not pass the gate"
        lines += ["", f"Candidate `{inputs.candidate.get('version', '?')}` {verdict}:", "",
                  "| task | candidate | release | bound | verdict |", "| --- | ---: | ---: | --- | --- |"]
        for r in inputs.candidate.get("rows", []):
            lines.append(f"| {r['task']} | {_fmt(r['candidate']) if r['candidate'] is not None else '–'} | "
                         f"{_fmt(r['release']) if r['release'] is not None else '–'} | "
                         f"{r['bound'] or '–'} | {r['verdict']} |")
    return lines + [""]


def alignment_lines(inputs: "ReportInputs") -> list[str]:
    """The alignment section: each stage's held-out figures before and after, and the arena's
    leaderboard; empty when none of them ran."""
    rows = []
    for name, run_dir in inputs.alignment.items():
        summary = _read_summary(Path(run_dir) / "summary.json")
        for label, before, after in _ALIGNMENT_FIGURES.get(name, []):
            if summary.get(before) is not None or summary.get(after) is not None:
                rows.append(f"| {name} | {label} | {_fmt(summary.get(before, ''))} | "
                            f"{_fmt(summary.get(after, ''))} |")
    lines = []
    if rows:
        lines += ["## Alignment", "", "| stage | measure | before | after |",
                  "| --- | --- | ---: | ---: |", *rows, ""]
    if inputs.arena_dir is not None and (Path(inputs.arena_dir) / "ratings.json").exists():
        from lmforge.align.arena import report_section

        lines += [report_section(inputs.arena_dir), ""]
    return lines


def scaling_lines(inputs: "ReportInputs") -> list[str]:
    """The latest scaling fit: the law, the compute-optimal point and the pictures; empty when
    no sweep has been fitted."""
    pointer = inputs.scaling_fit
    if pointer is None or not Path(pointer).exists():
        return []
    where = Path(_read_summary(Path(pointer)).get("path", ""))
    fit = _read_summary(where) if where.is_file() else {}
    if not fit:
        return []
    law = ", ".join(f"{k} = {_fmt(fit.get(k))}" for k in ("E", "A", "B", "alpha", "beta"))
    lines = ["## Scaling laws", "",
             f"Sweep `{fit.get('sweep', '?')}`, {fit.get('runs', '?')} runs; L(N, D) = E + A/N^alpha + "
             f"B/D^beta with {law} (Chinchilla approach 3).", "",
             f"At {_fmt(fit.get('budget'))} FLOPs the compute-optimal model has "
             f"{_fmt(fit.get('params'))} parameters trained on {_fmt(fit.get('tokens'))} tokens "
             f"({_fmt(fit.get('tokens_per_param'))} tokens per parameter).", ""]
    for key, title in (("isoflops", "IsoFLOP curves"), ("frontier", "compute-optimal frontier")):
        png = (fit.get("plots") or {}).get(key)
        if png and Path(png).is_file():
            lines += [f"![{title}]({png})", ""]
    return lines


@dataclass
class ReportStats:
    path: Path
    funnel: dict[str, int]
    final_losses: dict[str, float]
    eval_scores: dict[str, dict[str, float]]

    def to_metadata(self) -> dict:
        return {"report": str(self.path), "documents": self.funnel,
                "final_losses": self.final_losses, "eval_scores": self.eval_scores}


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _read_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        summary = json.loads(_read_text(path))
    except ValueError as e:
        raise LmforgeError(f"{path}: not JSON ({e})") from None
    if not isinstance(summary, dict):
        raise LmforgeError(f"{path}: expected a JSON object")
    return summary


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise LmforgeError(f"{path} is a directory; expected a file") from None
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: not UTF-8 text") from None


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def _plot_losses(curves: dict[str, list[dict]], out_png: Path) -> bool:
    curves = {k: v for k, v in curves.items() if any("loss" in r for r in v)}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display; the report is written to files
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="train")
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            ax.plot([p[0] for p in val], [p[1] for p in val], "o-", label="val")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return True


def write_report(inputs: ReportInputs, out_dir: Path) -> ReportStats:
    """Write ``report.md`` and ``loss_curves.png`` into ``out_dir`` (atomically, as one directory)."""
    out_dir = check_output(out_dir, "dir")  # refused before anything is read
    lines = ["# lmforge run report", ""]

    lines += ["## Data funnel", "", "| stage | documents | kept of previous |", "| --- | ---: | ---: |"]
    funnel: dict[str, int] = {}
    previous = None
    for stage, path in inputs.funnel:
        if not Path(path).exists():
            lines.append(f"| {stage} | missing | |")
            continue
        try:
            n = count_rows(path)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise LmforgeError(f"{path}: not readable Parquet documents "
                               f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        funnel[stage] = n
        share = f"{n / previous:.1%}" if previous else ""
        lines.append(f"| {stage} | {n} | {share} |")
        previous = n
    lines.append("")

    if inputs.tokenizer_dir and (Path(inputs.tokenizer_dir) / "tokenizer.json").exists():
        tok_file = Path(inputs.tokenizer_dir) / "tokenizer.json"
        try:
            vocab = json.loads(_read_text(tok_file))["model"]["vocab"]
        except (ValueError, KeyError, TypeError):
            raise LmforgeError(f"{tok_file}: not a tokenizer file (no model.vocab)") from None
        lines += ["## Tokenizer", "", f"Byte-level BPE with a vocabulary of {len(vocab)} tokens "
                  "(special tokens included).", ""]

    lines += ["## Training", "", "| run | steps | first loss | final loss | val loss | tokens/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    curves, final_losses = {}, {}
    for name, run_dir in inputs.trainings.items():
        run_dir = Path(run_dir)
        summary = _read_summary(run_dir / "summary.json")
        curves[name] = _read_jsonl(run_dir / "metrics.jsonl")
        if not summary:
            lines.append(f"| {name} | not run | | | | |")
            continue
        final_losses[name] = summary.get("final_loss")
        lines.append("| " + " | ".join(_fmt(x) for x in (
            name, summary.get("steps", ""), summary.get("first_loss", ""),
            summary.get("final_loss", ""), summary.get("val_loss", ""),
            summary.get("tokens_per_s", ""))) + " |")
    lines.append("")

    eval_scores: dict[str, dict[str, float]] = {}
    lines += ["## Evaluation", ""]
    tasks: list[str] = []
    summaries = {}
    for name, d in inputs.evaluations.items():
        raw = _read_summary(Path(d) / "summary.json")
        s = {"scores": {}, "skipped": {}}
        for t in raw.get("tasks", []):  # lmforge.evaluate.harness.EvalSummary
            if t.get("score") is not None:
                s["scores"][t["name"]] = t["score"]
            elif t.get("status") == "skipped":
                s["skipped"][t["name"]] = t.get("reason") or ""
        summaries[name] = s
        eval_scores[name] = s["scores"]
        for t in list(s["scores"]) + list(s["skipped"]):
            if t not in tasks:
                tasks.append(t)
    if tasks:
        lines += ["| model | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
        for name, s in summaries.items():
            cells = []
            for t in tasks:
                if t in s.get("scores", {}):
                    cells.append(_fmt(s["scores"][t]))
                elif t in s.get("skipped", {}):
                    cells.append("skipped")
                else:
                    cells.append("")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        skipped = {(t, r) for s in summaries.values() for t, r in s.get("skipped", {}).items()}
        if skipped:
            lines += ["", "Skipped:"] + [f"- {t}: {r}" for t, r in sorted(skipped)]
    else:
        lines.append("No evaluation results.")
    lines.append("")
    lines += release_lines(inputs)
    lines += alignment_lines(inputs)
    lines += scaling_lines(inputs)

    with atomic_path(out_dir, "dir") as tmp:
        tmp.mkdir(parents=True)
        if _plot_losses(curves, tmp / "loss_curves.png"):
            lines[lines.index("## Training") + 1:lines.index("## Training") + 1] = [
                "", "![loss curves](loss_curves.png)"]
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
    return ReportStats(out_dir / "report.md", funnel, final_losses, eval_scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lmforge report",
        description="Write the markdown report (data funnel, loss curves, evaluation table) of "
        "the artifacts of a pipeline run.")
    parser.add_argument("--artifacts", default="artifacts/tiny",
                        help="a deployment's directory in the artifact store; the newest version "
                        "of each asset is read (default: artifacts/tiny)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: ARTIFACTS/pipeline_report)")
    args = parser.parse_args(argv)
    root = Path(args.artifacts)
    if not root.is_dir():
        raise MissingInputError(f"no artifact directory at {root}")
    stats = write_report(ReportInputs.from_artifacts(root),
                         Path(args.out) if args.out else root / "pipeline_report")
    print(stats.path)
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('report', main, sys.argv[1:]))
