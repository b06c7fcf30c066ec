"""A training run's loss curve: a PNG in the run directory, and metadata that shows it in Dagster.

The curve is drawn from ``metrics.jsonl`` (train loss at every logged step, val loss at every
evaluation), so it is the same whether the run went straight through or was resumed. Under Dagster
Pipes the picture travels inside the materialization's metadata as Markdown with the PNG embedded
as a base64 data URI (the way Dagster's own tutorials show a plot): the UI renders it on the
asset's page without access to the run directory.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from lmforge.io import atomic_path


def read_losses(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(train, val)``: (step, loss) points from a ``metrics.jsonl``; torn lines are skipped."""
    train, val = [], []
    for line in Path(metrics_path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "step" not in record:
            continue
        if record.get("loss") is not None:
            train.append((int(record["step"]), float(record["loss"])))
        if record.get("val_loss") is not None:
            val.append((int(record["step"]), float(record["val_loss"])))
    return train, val


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "loss") -> Path | None:
    """Write train (and val) loss against step to ``out_png`` (atomically); None if
    ``metrics_path`` holds no loss yet."""
    metrics_path, out_png = Path(metrics_path), Path(out_png)
    if not metrics_path.exists():
        return None
    train, val = read_losses(metrics_path)
    if not train and not val:
        return None
    # The object API with the Agg canvas, not pyplot: no global backend switch, no figure
    # registry, safe in a training process that never opens a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot([s for s, _ in train], [x for _, x in train], label="train")
    if val:
        ax.plot([s for s, _ in val], [x for _, x in val], "o-", label="val")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return out_png


def loss_curve_metadata(run_dir: str | Path, title: str = "loss") -> dict:
    """Draw ``run_dir/loss_curve.png`` from ``run_dir/metrics.jsonl`` and return the metadata
    entries that show it: ``loss_curve`` (Markdown with the PNG inline) and ``loss_curve_path``.

    The values are Pipes' typed metadata (``{"raw_value": ..., "type": "md" | "path"}``), which
    ``dagster_pipes`` passes through as they are and Dagster turns into ``MetadataValue.md`` /
    ``MetadataValue.path``; plain values would be inferred as text. Empty when there is no loss
    to draw.
    """
    png = plot_loss_curve(Path(run_dir) / "metrics.jsonl", Path(run_dir) / "loss_curve.png", title)
    if png is None:
        return {}
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return {"loss_curve": {"raw_value": f"![{title}](data:image/png;base64,{data})", "type": "md"},
            "loss_curve_path": {"raw_value": str(png), "type": "path"}}
