"""What a recipe reports: loss curves from the Trainer's log history, results.json, printed tables.

- `log_history_to_curves`, `final_metric`, `first_metric`, `perplexity`.
- `write_results`: strict JSON (non-finite numbers left out with a warning), main process only.
- `print_table`: aligned two-column tables on the main process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from .arguments import is_main_process

logger = logging.getLogger(__name__)


_NOT_SERIES = {"step", "epoch", "num_input_tokens_seen", "total_flos"}


def _is_series_key(key: str) -> bool:
    if key in _NOT_SERIES:
        return False
    return not (key.endswith("_runtime") or key.endswith("_per_second"))


def log_history_to_curves(log_history: Iterable[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """Turn `trainer.state.log_history` into plottable series.

    Returns `{name: {"step": [...], "epoch": [...], "tokens_seen": [...], "value": [...]}}`, one
    entry per logged quantity: "train_loss" (the Trainer's running training loss, logged as
    "loss"), "eval_loss", "eval_<set>_loss" for several evaluation sets, "learning_rate",
    "grad_norm", metrics such as "eval_accuracy". Non-numeric and non-finite values, runtimes and
    speeds are skipped; the end-of-training summary entry is not a point. `tokens_seen` holds None where the
    Trainer did not count tokens.
    """
    curves: dict[str, dict[str, list]] = {}
    for entry in log_history:
        if "train_steps_per_second" in entry or "total_flos" in entry:
            continue  # the end-of-training summary (average train_loss), not a point on a curve
        step = entry.get("step")
        epoch = entry.get("epoch")
        tokens = entry.get("num_input_tokens_seen")
        for key, value in entry.items():
            if not _is_series_key(key) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            name = "train_loss" if key == "loss" else key
            series = curves.setdefault(name, {"step": [], "epoch": [], "tokens_seen": [], "value": []})
            series["step"].append(step)
            series["epoch"].append(epoch)
            series["tokens_seen"].append(tokens)
            series["value"].append(float(value))
    return curves


def final_metric(curves: dict[str, dict[str, list]], name: str, default: float = float("nan")) -> float:
    """Last value of series `name` in `curves` (or `default`)."""
    series = curves.get(name)
    return series["value"][-1] if series and series["value"] else default


def first_metric(curves: dict[str, dict[str, list]], name: str, default: float = float("nan")) -> float:
    """First value of series `name` in `curves` (or `default`), e.g. the loss before training."""
    series = curves.get(name)
    return series["value"][0] if series and series["value"] else default


def perplexity(loss: float | None) -> float:
    """exp(loss); inf on overflow, nan for a missing or non-finite loss."""
    if loss is None or not math.isfinite(loss):
        return float("nan")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _finite_only(value: Any, path: str, dropped: list[str]) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            dropped.append(path)
            return _DROP
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _finite_only(value.item(), path, dropped)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():  # numpy scalar
        return _finite_only(value.item(), path, dropped)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _finite_only(v, f"{path}.{k}" if path else str(k), dropped)
            if v is not _DROP:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            v = _finite_only(v, f"{path}[{i}]", dropped)
            if v is not _DROP:
                out.append(v)
        return out
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"results[{path!r}]: cannot write a {type(value).__name__} to JSON.")


_DROP = object()


def write_results(output_dir: str | os.PathLike, results: dict[str, Any], filename: str = "results.json") -> Path | None:
    """Write `results` as JSON to output_dir/results.json, on the main process only.

    Non-finite numbers (nan, inf) are left out, with a warning naming them, so the file is strict
    JSON; strings, lists and nested dicts are kept. Returns the path (None on other ranks).
    """
    if not is_main_process():
        return None
    dropped: list[str] = []
    clean = _finite_only(dict(results), "", dropped)
    if dropped:
        logger.warning("results: left out non-finite values of %s", ", ".join(dropped))
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} items]"
    return str(value)


def print_table(values: dict[str, Any], title: str | None = None, main_only: bool = True, file=None) -> str:
    """Print `values` as an aligned two-column table (numbers with thousands separators, floats
    to 4 decimals); strings that span lines are indented under their key. Prints only on the
    main process unless main_only=False. Returns the text."""
    rows = [(str(k), _format_value(v)) for k, v in values.items()]
    width = max((len(k) for k, _ in rows), default=0)
    lines = []
    if title:
        lines.append(f"== {title} ==")
    for key, text in rows:
        text = text.replace("\n", "\n" + " " * (width + 2))
        lines.append(f"{key:<{width}}  {text}")
    out = "\n".join(lines)
    if not main_only or is_main_process():
        print(out, file=file or sys.stdout, flush=True)
    return out


__all__ = [
    "log_history_to_curves",
    "final_metric",
    "first_metric",
    "perplexity",
    "write_results",
    "print_table",
]
