"""The pictures of a scaling fit: the IsoFLOP curves and the compute-optimal frontier.

``isoflops.png``: the loss of every run against its parameters, one colour per FLOP budget, with
approach 2's parabola and approach 3's curve L(N, C/6N), and each curve's minimum marked.
``frontier.png``: N* and D* against compute: approach 2's minima and power law, approach 3's
closed form, and the budget asked for. Drawn with matplotlib's object API on the Agg canvas (no
pyplot, no display), as ``lmforge.train.plots`` draws the loss curve.
"""

from __future__ import annotations

import base64
from pathlib import Path

from lmforge.io import atomic_path


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def draw_isoflops(runs: list[dict], report: dict, path: str | Path) -> Path:
    import numpy as np

    from lmforge.scaling.fit import isoflop_groups, law_from_report

    law = law_from_report(report)
    profiles = {p["budget"]: p for p in (report.get("approach2") or {}).get("profiles", [])}
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    groups = isoflop_groups(runs)
    from matplotlib import colormaps

    colors = [colormaps["viridis"](0.85 * i / max(1, len(groups) - 1)) for i in range(len(groups))]
    for (budget, group), color in zip(groups, colors):
        ns = np.array([r["params"] for r in group])
        ax.scatter(ns, [r["loss"] for r in group], color=color, s=18, zorder=3,
                   label=f"{budget:.1e} FLOPs")
        grid = np.geomspace(ns.min() / 1.5, ns.max() * 1.5, 200)
        ax.plot(grid, law.loss(grid, budget / 6 / grid), "--", color=color, lw=1, alpha=0.8)
        p = profiles.get(budget)
        if p and "parabola" in p:
            c2, c1, c0 = p["parabola"]
            x = np.log(grid)
            ax.plot(grid, c0 + c1 * x + c2 * x * x, "-", color=color, lw=1, alpha=0.5)
            ax.scatter([p["params_opt"]], [p["loss_min"]], marker="*", s=90, color=color,
                       edgecolor="black", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("IsoFLOP curves: runs, parabolas (approach 2, * = minimum), "
                 "L(N, C/6N) (approach 3, dashed)", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def draw_frontier(report: dict, path: str | Path) -> Path:
    import numpy as np

    from lmforge.scaling.fit import law_from_report

    law = law_from_report(report)
    iso = report.get("approach2") or {}
    points = [p for p in iso.get("profiles", []) if "params_opt" in p]
    budgets = [p["budget"] for p in points] + [report["budget"]]
    cs = np.geomspace(min(budgets) / 3, max(budgets) * 3, 100)
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    n3, d3 = law.optimal(cs)
    ax.plot(cs, n3, "-", color="C0", label=f"N* approach 3 (∝ C^{report['n_exponent']:.2f})")
    ax.plot(cs, d3, "-", color="C1", label=f"D* approach 3 (∝ C^{report['d_exponent']:.2f})")
    if points:
        ax.scatter([p["budget"] for p in points], [p["params_opt"] for p in points], color="C0",
                   marker="o", label="N_opt of each IsoFLOP parabola")
        ax.scatter([p["budget"] for p in points], [p["tokens_opt"] for p in points], color="C1",
                   marker="o", label="D_opt of each IsoFLOP parabola")
        if "a" in iso:
            ax.plot(cs, iso["n_coef"] * cs ** iso["a"], ":", color="C0",
                    label=f"approach 2 (N ∝ C^{iso['a']:.2f})")
            ax.plot(cs, iso["d_coef"] * cs ** iso["b"], ":", color="C1",
                    label=f"approach 2 (D ∝ C^{iso['b']:.2f})")
    ax.scatter([report["budget"]], [report["params"]], marker="*", s=140, color="C0",
               edgecolor="black", zorder=4)
    ax.scatter([report["budget"]], [report["tokens"]], marker="*", s=140, color="C1",
               edgecolor="black", zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs, 6·N·D)")
    ax.set_ylabel("parameters / tokens")
    ax.set_title(f"compute-optimal frontier; * = {report['budget']:.2e} FLOPs: "
                 f"N* {report['params']:.3g}, D* {report['tokens']:.3g} "
                 f"({report['tokens_per_param']:.1f} tokens/param)", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def draw_fit(runs: list[dict], report: dict, out_dir: str | Path) -> dict[str, Path]:
    """``{"isoflops": path, "frontier": path}``, drawn into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"isoflops": draw_isoflops(runs, report, out / "isoflops.png"),
            "frontier": draw_frontier(report, out / "frontier.png")}


def markdown_image(path: str | Path, title: str) -> str:
    """Markdown with the PNG inline (a base64 data URI): Dagster's UI shows it without access to
    the artifact store, as the loss curve's metadata does."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{title}](data:image/png;base64,{data})"
