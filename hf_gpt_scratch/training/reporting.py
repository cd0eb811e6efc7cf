"""What a recipe reports: values and curves from `trainer.state.log_history`, results.json and other
JSON files, printed tables; files are written and tables printed on the main process only."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from .arguments import is_main_process

logger = logging.getLogger(__name__)


def logged(log_history: Iterable[dict[str, Any]], key: str) -> list:
    """The values of `key` in `trainer.state.log_history`, in order (e.g. "loss", "eval_loss",
    "train_tokens_per_second": the Trainer's own speed counter)."""
    return [entry[key] for entry in log_history if key in entry]


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


def write_results(output_dir: str | os.PathLike, results: dict[str, Any]) -> Path | None:
    """Write `results` to output_dir/results.json on the main process; returns the path (None on
    other ranks). Top-level non-finite numbers (nan, inf) are left out with a warning naming them;
    any other value JSON cannot hold raises TypeError or ValueError."""
    if not is_main_process():
        return None
    dropped = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if dropped:
        logger.warning("results: left out non-finite values of %s", ", ".join(dropped))
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({k: v for k, v in results.items() if k not in dropped}, indent=2, allow_nan=False)
    path.with_suffix(".tmp").write_text(text + "\n")
    path.with_suffix(".tmp").replace(path)
    return path


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented UTF-8 JSON at `path` (responses.json files: the book's `json.dump(..., indent=4)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False) + "\n")


def print_table(values: dict[str, Any], title: str | None = None) -> str:
    """Print `values` as an aligned two-column table (integers with thousands separators, floats to
    4 decimals, lists as their length) on the main process. Returns the text."""

    def shown(value):
        if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
            return str(value).replace("\n", "\n" + " " * (width + 2))
        if isinstance(value, (list, tuple)):
            return f"[{len(value)} items]"
        if isinstance(value, float) and (value == 0 or 1e-3 <= abs(value) < 1e6):
            return f"{value:,.4f}".rstrip("0").rstrip(".")
        return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"

    width = max((len(str(k)) for k in values), default=0)
    text = "\n".join([f"== {title} =="] * bool(title) + [f"{k!s:<{width}}  {shown(v)}" for k, v in values.items()])
    if is_main_process():
        print(text, flush=True)
    return text

