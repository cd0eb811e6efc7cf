"""What a recipe reports: values and curves from `trainer.state.log_history`, the Trainer's
<split>_results.json files (`save_metrics`) and other JSON files."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)


def logged(log_history: Iterable[dict[str, Any]], key: str, index: int = -1) -> Any:
    """The `index`-th value of `key` in `trainer.state.log_history` (default the last; e.g. "loss",
    "train_tokens_per_second": the Trainer's own speed counter), or None when it was never logged."""
    values = [entry[key] for entry in log_history if key in entry]
    return values[index] if values else None


def log_history_to_curves(log_history: Iterable[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """`trainer.state.log_history` as the series `plots.plot_losses` draws: `{name: {"step", "epoch",
    "tokens_seen" (None where not counted), "value"}: lists}`, one per logged number ("loss" renamed
    "train_loss"), skipping runtimes, speeds, counters, non-finite values and the final summary."""
    curves: dict[str, dict[str, list]] = {}
    for entry in log_history:
        if "total_flos" in entry:
            continue  # the end-of-training summary (average train_loss), not a point on a curve
        for key, value in entry.items():
            if key in ("step", "epoch", "num_input_tokens_seen") or key.endswith(("_runtime", "_per_second")):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            series = curves.setdefault("train_loss" if key == "loss" else key, {"step": [], "epoch": [], "tokens_seen": [], "value": []})
            series["step"].append(entry.get("step"))
            series["epoch"].append(entry.get("epoch"))
            series["tokens_seen"].append(entry.get("num_input_tokens_seen"))
            series["value"].append(float(value))
    return curves


def save_metrics(trainer, splits: dict[str, dict[str, Any]], train_result=None) -> dict[str, Any]:
    """run_clm's report: `trainer.log_metrics`, `save_metrics` of each split (<split>_results.json,
    all_results.json; main process), "train" after `train_result.metrics`, the last loss, tokens/second,
    steps, processes. None left out; NaN/Infinity saved, with a warning. Returns all values merged."""
    if train_result is not None:
        history = trainer.state.log_history
        splits["train"] = {**train_result.metrics, "train_loss_last": logged(history, "loss"),
                           "train_tokens_per_second": logged(history, "train_tokens_per_second"),
                           "train_steps": trainer.state.global_step, "world_size": trainer.args.world_size,
                           **splits.get("train", {})}
    merged: dict[str, Any] = {}
    for split, metrics in splits.items():
        metrics = {key: value for key, value in metrics.items() if value is not None}
        bad = [key for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad and trainer.is_world_process_zero():
            logger.warning("%s metrics: %s not finite (saved as NaN or Infinity)", split, ", ".join(bad))
        if metrics:  # (log_metrics aligns numbers and strings: lists and booleans as text)
            shown = {key: value if type(value) in (int, float) else str(value)
                     for key, value in metrics.items()}
            trainer.log_metrics(split, shown)
            trainer.save_metrics(split, metrics)
        merged.update(metrics)
    return merged


def save_plots(curves: dict[str, dict[str, list]], output_dir: str | os.PathLike, files: dict[str, str],
               title: str | None = None) -> None:
    """`plots.plot_losses` of `curves` for each `{metric: file name}` into output_dir; a metric never
    logged (e.g. fewer steps than logging_steps and no evaluation) is a warning, not an error."""
    from .plots import plot_losses  # (matplotlib: imported by the main process only)

    for metric, name in files.items():
        try:
            plot_losses(curves, Path(output_dir) / name, metric=metric, title=title)
        except ValueError as err:
            logger.warning("No %s plot: %s", metric, err)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented UTF-8 JSON at `path` (responses.json files: the book's `json.dump(..., indent=4)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False) + "\n")
