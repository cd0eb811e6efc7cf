"""Recipe arguments and run setup, shared by `recipes/*.py`.

- `ModelArguments`, `DataArguments`: `HfArgumentParser` dataclasses with the flag names of
  transformers' example scripts (`--model_name_or_path`, `--config_overrides`, `--block_size`, ...).
- `parse_recipe_args`: parses them with a `--preset NAME` whose values become defaults (explicit
  flags still win), a JSON file instead of flags, and automatic CPU multi-process defaults
  (`cpu_distributed_defaults`); it refuses to overwrite a finished --output_dir and refuses a
  --hub_token (see `hf_gpt_scratch.faults`).
- `parse_config_overrides`, `apply_config_overrides`: `--config_overrides "n_layers=2,emb_dim=64"`.
- `process_rank`, `is_main_process`, `setup_logging`: every recipe runs unchanged under `python`,
  `torchrun --nproc_per_node N` and `accelerate launch`, on GPUs or (over gloo) on CPUs; only the
  main process writes files and prints reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from transformers import HfArgumentParser

from .data import DATA_ENV
from .faults import check_output_dir, refuse_hub_token

logger = logging.getLogger(__name__)


INIT_SCHEMES = ("gpt2", "torch")


@dataclass
class ModelArguments:
    """Which model to train or load; the flags of transformers' `run_clm.py`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to start from: a folder or hub id of any causal LM (ours, a stock GPT-2 "
            "folder, which is converted to GPTScratchForCausalLM). Leave unset to train from scratch."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config (folder, file's folder or hub id) for a model trained from scratch; "
                  "default: GPTScratchConfig() (the book's GPT-2 124M)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config fields to override, e.g. 'n_layers=2,emb_dim=64,drop_rate=0.0'. "
            "With --model_name_or_path the weights must still fit (use it for drop_rate and the like)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer: 'gpt2' (offline GPT-2 BPE), a folder or a hub id. Default: the checkpoint's own "
            "tokenizer if --model_name_or_path has one, else 'gpt2'."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow code shipped with a checkpoint to run (only pass it for checkpoints you trust)."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention backend: 'eager', 'sdpa', ... Default: the model's (sdpa)."},
    )
    init_weights: str = field(
        default="gpt2",
        metadata={
            "help": "Initialisation of a model trained from scratch: 'gpt2' (transformers' convention: normal "
            "std 0.02, residual projections scaled by 1/sqrt(2 n_layers)) or 'torch' (PyTorch's defaults, what "
            "the book's GPTModel gets: embeddings N(0, 1), Linear layers uniform +-1/sqrt(fan_in))."
        },
    )

    def __post_init__(self):
        if self.init_weights not in INIT_SCHEMES:
            raise ValueError(f"--init_weights must be one of {', '.join(INIT_SCHEMES)}, got {self.init_weights!r}.")


@dataclass
class DataArguments:
    """Data flags shared by the recipes (each recipe subclasses this and adds its own)."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder with the book's data files (default: ${DATA_ENV}, else downloaded)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the hub (or a local dataset script/folder)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Training data file (txt, json or jsonl)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data file; default: hold out part of the training data."}
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training sequence; default: the model's context_length."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training examples (for quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many validation examples (for quick runs)."}
    )
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Percent of the training data held out for validation when there is no validation file."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )

    def __post_init__(self):
        if self.data_dir is not None:
            # The book-data helpers (`hf_gpt_scratch.data`) read this variable.
            os.environ[DATA_ENV] = str(Path(self.data_dir).expanduser().resolve())
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )
        for name in ("block_size", "max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}.")
        for name in ("train_file", "validation_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{name} {value}: no such file.")


def cpu_distributed_defaults() -> dict[str, Any]:
    """TrainingArguments defaults that make multi-process runs work without a GPU.

    Several processes (torchrun / accelerate launch set WORLD_SIZE) on a machine without CUDA
    need the gloo backend; pinned memory only makes sense with CUDA. Returned as parser defaults,
    so explicit flags still win.
    """
    defaults: dict[str, Any] = {}
    if not torch.cuda.is_available():
        defaults["dataloader_pin_memory"] = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            defaults["ddp_backend"] = "gloo"
            defaults["use_cpu"] = True
    return defaults


OVERWRITE_HELP = (
    "Train into a non-empty --output_dir that holds a model, checkpoints or results (files are replaced as "
    "they are written). Without it a recipe refuses before any work, unless --resume_from_checkpoint is given."
)


def parse_recipe_args(
    dataclass_types: Sequence[type],
    presets: dict[str, dict[str, Any]] | None = None,
    defaults: dict[str, Any] | None = None,
    args: Sequence[str] | None = None,
    description: str | None = None,
    check_output: bool = True,
) -> tuple[Any, ...]:
    """Parse a recipe's command line into its dataclasses.

    Precedence, lowest first: the dataclass defaults, `defaults` (the recipe's own, e.g. logging
    every 10 steps), `cpu_distributed_defaults()`, the values of `--preset NAME`, then the flags
    given on the command line. A single `.json` argument is read as a file of flag values (on top
    of the preset when it names one with "preset"). An explicit `--config_overrides` is appended
    to the preset's (later keys win), so `--preset X --config_overrides n_layers=2` keeps the rest
    of the preset's architecture.

    With a `TrainingArguments` among the types, two safety rules apply before anything else runs:
    `--overwrite_output_dir` (ours: transformers 5 removed it) is added, and with `check_output`
    an --output_dir holding a model, checkpoints or results is refused unless that flag or
    `--resume_from_checkpoint` is given (`faults.check_output_dir`); the value is kept as
    `training_args.overwrite_output_dir`. A `--hub_token` is refused (it would be pickled into
    training_args.bin; `faults.refuse_hub_token`): tokens come from `hf auth login` or HF_TOKEN.

    Returns one instance per dataclass type, then the preset name (or None).
    """
    presets = presets or {}
    argv = list(sys.argv[1:] if args is None else args)

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, argv_rest = pre.parse_known_args(argv)
    preset = known.preset
    json_values: dict[str, Any] | None = None
    if len(argv_rest) == 1 and argv_rest[0].endswith(".json") and Path(argv_rest[0]).is_file():
        json_values = json.loads(Path(argv_rest[0]).read_text())
        preset = json_values.pop("preset", preset)
    if preset is not None and preset not in presets:
        choices = ", ".join(sorted(presets)) or "none"
        raise SystemExit(f"error: unknown --preset {preset!r} (choices: {choices})")

    parser = HfArgumentParser(dataclass_types, description=description)
    if presets:
        parser.add_argument(
            "--preset",
            default=None,
            choices=sorted(presets),
            help="Named set of defaults (explicit flags still win): "
            + "; ".join(f"{name}: " + " ".join(f"{k}={v}" for k, v in values.items()) for name, values in presets.items()),
        )
    has_training_args = any(isinstance(t, type) and issubclass(t, transformers.TrainingArguments) for t in dataclass_types)
    add_overwrite = has_training_args and "overwrite_output_dir" not in {a.dest for a in parser._actions}
    if add_overwrite:
        from transformers.hf_argparser import string_to_bool

        parser.add_argument(
            "--overwrite_output_dir", type=string_to_bool, nargs="?", const=True, default=False, help=OVERWRITE_HELP
        )
    merged: dict[str, Any] = dict(defaults or {})
    merged.update(cpu_distributed_defaults())
    if preset is not None:
        merged.update(presets[preset])
    known_dests = {action.dest for action in parser._actions}
    unknown = sorted(set(merged) - known_dests)
    if unknown:
        raise ValueError(f"Preset/default values for unknown arguments: {', '.join(unknown)}")

    overwrite = False
    if json_values is not None:
        values = {**merged, **json_values}
        if add_overwrite:
            overwrite = bool(values.pop("overwrite_output_dir", False))
        outputs = parser.parse_dict(values, allow_extra_keys=False)
    else:
        parser.set_defaults(**merged)
        outputs = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
        # Attributes that belong to no dataclass (--preset, --overwrite_output_dir) come back as a
        # trailing namespace.
        extra = outputs[len(dataclass_types)] if len(outputs) > len(dataclass_types) else None
        overwrite = bool(getattr(extra, "overwrite_output_dir", False))
        outputs = outputs[: len(dataclass_types)]
    for obj in outputs:
        if isinstance(obj, transformers.TrainingArguments):
            if add_overwrite:
                obj.overwrite_output_dir = overwrite
            refuse_hub_token(obj)
            if check_output:
                check_output_dir(
                    obj.output_dir,
                    overwrite=bool(getattr(obj, "overwrite_output_dir", False)),
                    resume=obj.resume_from_checkpoint,
                )
    preset_overrides = presets[preset].get("config_overrides") if preset is not None else None
    if preset_overrides:
        # --config_overrides adds to the preset's overrides instead of replacing them.
        for obj in outputs:
            given = getattr(obj, "config_overrides", None)
            if given and given != preset_overrides:
                obj.config_overrides = f"{preset_overrides},{given}"
    return (*outputs, preset)


_TRUE = {"true", "1", "yes", "y", "on"}


_FALSE = {"false", "0", "no", "n", "off"}


_NONE = {"none", "null"}


def _convert_override(key: str, raw: str, current: Any) -> Any:
    text = raw.strip()
    low = text.lower()
    try:
        if isinstance(current, bool):
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if low in _NONE:
            return None
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        # None or another type: infer from the text.
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text
    except ValueError:
        kind = type(current).__name__
        raise ValueError(f"config override {key}={raw!r}: expected a {kind} value like the current {current!r}.") from None


def parse_config_overrides(overrides: str | None, config: transformers.PretrainedConfig) -> dict[str, Any]:
    """Parse 'n_layers=2,emb_dim=64,drop_rate=0.0' into typed values for `config`.

    Each value takes the type of the field's current value (bool accepts true/false/1/0/yes/no;
    'none' gives None). Standard aliases (`hidden_size`, `num_hidden_layers`, ...) map onto the
    config's own names. An unknown key or an unparsable value raises ValueError naming it.
    """
    if not overrides or not overrides.strip():
        return {}
    known = set(config.to_dict())
    if dataclasses.is_dataclass(config):
        known |= {f.name for f in dataclasses.fields(config)}
    aliases = dict(getattr(config, "attribute_map", {}) or {})
    result: dict[str, Any] = {}
    for item in overrides.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form key=value (in {overrides!r}).")
        key, raw = (part.strip() for part in item.split("=", 1))
        key = aliases.get(key, key)
        if key not in known:
            fields = sorted(k for k in known if not k.startswith("_"))
            raise ValueError(
                f"config override {key!r}: {type(config).__name__} has no such field. Known fields: {', '.join(fields)}"
            )
        result[key] = _convert_override(key, raw, getattr(config, key, None))
    return result


def apply_config_overrides(config: transformers.PretrainedConfig, overrides: dict[str, Any]) -> transformers.PretrainedConfig:
    """Set `overrides` on `config` and re-run its validation (GPTScratchConfig checks its architecture)."""
    for key, value in overrides.items():
        setattr(config, key, value)
    validate = getattr(config, "validate_architecture", None)
    if callable(validate):
        validate()
    return config


def process_rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that writes files and prints reports."""
    return process_rank() == 0


def setup_logging(training_args) -> None:
    """run_clm-style logging: the main process logs at INFO, the others only warnings. The level is
    set on the package's logger, so every module of hf_gpt_scratch (loading, hub, ...) follows it."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    ours = logging.INFO if is_main_process() and training_args.log_level == "passive" else level
    logging.getLogger(__package__).setLevel(ours)
    logging.getLogger("__main__").setLevel(ours)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


__all__ = [
    "INIT_SCHEMES",
    "ModelArguments",
    "DataArguments",
    "cpu_distributed_defaults",
    "OVERWRITE_HELP",
    "parse_recipe_args",
    "parse_config_overrides",
    "apply_config_overrides",
    "process_rank",
    "is_main_process",
    "setup_logging",
]
