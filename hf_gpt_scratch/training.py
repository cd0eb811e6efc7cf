"""Shared logic of the training recipes (`recipes/*.py`): arguments, model loading, callbacks,
results and sampling.

The recipes stay thin: they declare their own data arguments, build datasets, hand everything to
`transformers.Trainer` and report through the helpers here. Everything works under plain
`python`, `torchrun --nproc_per_node N` and `accelerate launch --multi_gpu --num_processes N`,
on GPUs or (over gloo) on CPUs; only the main process writes files and prints reports.

Main pieces:

- `ModelArguments`, `DataArguments`: `HfArgumentParser` dataclasses with the flag names of
  transformers' example scripts (`--model_name_or_path`, `--config_overrides`, `--block_size`, ...).
- `parse_recipe_args`: parses them with a `--preset NAME` whose values become defaults (explicit
  flags still win), a JSON file instead of flags, and automatic CPU multi-process defaults.
- `load_tokenizer_for`, `load_causal_lm`: tokenizer and model from a checkpoint (ours, any causal
  LM, a stock GPT-2 folder converted on the fly) or from scratch (`GPTScratchConfig` plus overrides,
  `--init_weights gpt2|torch`: transformers' or the book's initialisation, `torch_default_init`).
- `from_pretrained_strict`, `check_loading_info`: checkpoints load strictly (missing, unused or
  mis-shaped weights are a `CheckpointMismatchError`, not a warning).
- `TokensSeenCallback`, `default_callbacks`: tokens seen and step times for the loss curves, and the
  `faults.NonFiniteLossGuard` that stops at a NaN/inf loss before a broken checkpoint is written.
- `resolve_resume_checkpoint` (the newest complete checkpoint), `save_final_model` (safetensors,
  no pickle, full weights under FSDP), `weights_are_sharded`, `unsharded_loading` (full evaluation
  copies under ZeRO-3), `report_truncated_texts`,
  `check_instruction_lengths`; `parse_recipe_args` refuses to overwrite a finished --output_dir
  (see `hf_gpt_scratch.faults`).
- `log_history_to_curves`, `final_metric`, `write_results`, `print_table`, `perplexity`.
- `generate_samples`: the book's sampling (temperature 0 = greedy, top-k) for reports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    HfArgumentParser,
    TrainerCallback,
)

from .configuration_gpt_scratch import GPTScratchConfig
from .faults import (
    NonFiniteLossGuard,
    check_sequence_lengths,
    check_output_dir,
    is_complete_checkpoint,
    last_complete_checkpoint,
    refuse_hub_token,
    replace_pickled_training_args,
)

logger = logging.getLogger(__name__)

DATA_ENV = "HF_GPT_SCRATCH_DATA"

# Files that mark a folder as holding a tokenizer (not only a model).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


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


@dataclass
class SamplingArguments:
    """How a recipe samples text for its report (the book's `generate`: temperature 0 is greedy)."""

    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "Prompts to continue after training (default: the recipe's)."}
    )
    max_new_tokens: int = field(default=50, metadata={"help": "Tokens to generate per prompt."})
    temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature; 0 = greedy decoding (the book's default)."}
    )
    top_k: int | None = field(default=None, metadata={"help": "Sample only among the k most likely tokens."})

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}.")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"--top_k must be positive, got {self.top_k}.")

    def generation_kwargs(self) -> dict[str, Any]:
        return generation_kwargs(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k)


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


# --------------------------------------------------------------------------------------------
# Config overrides, tokenizer, model
# --------------------------------------------------------------------------------------------

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


def tokenizer_source(model_args: ModelArguments) -> str | None:
    """What to load the tokenizer from: --tokenizer_name, else the checkpoint folder when it has a
    tokenizer, else None (the offline GPT-2 BPE)."""
    if model_args.tokenizer_name:
        return model_args.tokenizer_name
    path = model_args.model_name_or_path
    if path:
        folder = Path(path)
        if folder.is_dir():
            if any((folder / name).exists() for name in _TOKENIZER_FILES):
                return str(folder)
            return None
        return path  # a hub id: its repository usually has the tokenizer
    return None


def load_tokenizer_for(model_args: ModelArguments):
    """The recipe's tokenizer (always with a pad token), chosen by `tokenizer_source`."""
    from .tokenization import load_tokenizer

    return load_tokenizer(tokenizer_source(model_args))


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not match the model its config describes."""


def _key_groups(keys: Iterable[str], limit: int = 12) -> str:
    """'model.trf_blocks.2.* (12 keys), model.final_norm.weight': keys of one numbered block
    collapse into one entry."""
    import re

    groups: dict[str, int] = {}
    for key in sorted(keys):
        match = re.match(r"^(.*?\.\d+)\.", key)
        name = f"{match.group(1)}.*" if match else key
        groups[name] = groups.get(name, 0) + 1
    items = [f"{name} ({n} keys)" if n > 1 else name for name, n in groups.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_loading_info(
    info: dict,
    source: str,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    config=None,
) -> None:
    """Raise `CheckpointMismatchError` when `from_pretrained(..., output_loading_info=True)`
    reported weights missing from the checkpoint (they would be randomly initialised), weights in
    the checkpoint the model does not use, or weights of the wrong shape. Keys starting with a
    prefix in `allow_missing` (e.g. a new head, "score.") may be missing or of another shape; keys
    starting with one in `allow_unexpected` (e.g. "out_head." when a classifier is built from a
    causal LM) may be unused."""

    def allowed(key: str, prefixes: Sequence[str]) -> bool:
        return any(key.startswith(prefix) for prefix in prefixes)

    missing = [k for k in info.get("missing_keys", ()) if not allowed(k, allow_missing)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not allowed(k, allow_unexpected)]
    mismatched = []
    for item in info.get("mismatched_keys", ()):
        key = item[0] if isinstance(item, (tuple, list)) else item
        if not allowed(str(key), allow_missing):
            shapes = f" (checkpoint {tuple(item[1])}, model {tuple(item[2])})" if isinstance(item, (tuple, list)) and len(item) >= 3 else ""
            mismatched.append(f"{key}{shapes}")
    errors = [str(e) for e in info.get("error_msgs", ()) if e]
    if not (missing or unexpected or mismatched or errors):
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint (they would be randomly initialised): {_key_groups(missing)}")
    if unexpected:
        parts.append(f"in the checkpoint but not in the model: {_key_groups(unexpected)}")
    if mismatched:
        parts.append(f"of the wrong shape: {', '.join(mismatched[:12])}")
    if errors:
        parts.append("errors: " + "; ".join(errors[:5]))
    described = ""
    if config is not None:
        fields = [f"{k}={getattr(config, k)}" for k in ("n_layers", "emb_dim", "n_heads", "vocab_size", "context_length",
                                                       "num_hidden_layers", "hidden_size") if hasattr(config, k)]
        described = f" (config: {', '.join(dict.fromkeys(fields))})"
    raise CheckpointMismatchError(
        f"{source}: the weights do not match the model its config.json describes{described}. Weights "
        + "; ".join(parts)
        + ". Fix config.json or the weight files (or choose the right checkpoint); nothing was trained."
    )


def from_pretrained_strict(
    model_class,
    path: str,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
    **kwargs,
):
    """`model_class.from_pretrained(path, **kwargs)` that fails instead of warning.

    transformers 5 only logs a load report when weights are missing (and initialises them
    randomly) or unused; here any such key, or a weight of the wrong shape, raises
    `CheckpointMismatchError` naming the folder and the keys (see `check_loading_info`), unless it
    starts with a prefix in `allow_missing` / `allow_unexpected`."""
    kwargs.pop("output_loading_info", None)
    # Shape mismatches are reported (and judged) here rather than raised as a bare RuntimeError.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    check_loading_info(info, str(path), allow_missing, allow_unexpected, config=getattr(model, "config", None))
    return model


def _load_stock_gpt2(path: str, model_args: ModelArguments):
    from transformers import GPT2LMHeadModel

    from .convert import gpt2_to_scratch

    gpt2 = from_pretrained_strict(GPT2LMHeadModel, path)
    model = gpt2_to_scratch(gpt2)
    del gpt2
    return model


def _rebuild_with_overrides(model, overrides: dict[str, Any], model_args: ModelArguments):
    """A copy of `model` built from its config plus `overrides`, with the same weights."""
    config = apply_config_overrides(model.config.__class__.from_dict(model.config.to_dict()), overrides)
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    new = type(model)._from_config(config, **kwargs) if hasattr(type(model), "_from_config") else type(model)(config)
    try:
        new.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"--config_overrides {overrides} do not fit the checkpoint's weights: {err}") from None
    return new


def torch_default_init(model) -> None:
    """Re-initialise every Linear, Embedding and LayerNorm with PyTorch's own defaults
    (`reset_parameters`), as the book's `GPTModel` is initialised: embeddings N(0, 1), Linear
    weights and biases uniform in +-1/sqrt(fan_in), norms 1 and 0. Tied weights stay tied (the
    output head is reset last, so a tied embedding gets the Linear init)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
            module.reset_parameters()


def load_causal_lm(model_args: ModelArguments, tokenizer=None):
    """The causal LM the recipe trains.

    - `--model_name_or_path`: any AutoModelForCausalLM checkpoint; a stock GPT-2 checkpoint
      (model_type "gpt2") is converted to `GPTScratchForCausalLM` with
      `hf_gpt_scratch.convert.gpt2_to_scratch`. `--config_overrides` are applied on top (they
      must keep the weights' shapes, e.g. drop_rate=0.0).
    - otherwise from scratch: `--config_name` (default `GPTScratchConfig()`, the book's 124M) plus
      `--config_overrides`, with vocab_size = len(tokenizer) and pad/bos/eos ids from the tokenizer.

    Checkpoints load strictly (`from_pretrained_strict`): weights missing from the checkpoint,
    unused or of the wrong shape raise `CheckpointMismatchError` instead of a warning and a randomly
    initialised layer. Remote code only runs with `--trust_remote_code`. When the tokenizer has more
    tokens than the checkpoint's embedding, the embedding is resized (as run_clm does); pad/eos ids missing from
    the model's config are taken from the tokenizer.
    """
    trust = bool(model_args.trust_remote_code)
    attn_kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}

    if model_args.model_name_or_path:
        if model_args.init_weights != "gpt2":
            raise ValueError(
                f"--init_weights {model_args.init_weights} only applies to a model trained from scratch, not to "
                f"--model_name_or_path {model_args.model_name_or_path} (its weights are loaded)."
            )
        path = model_args.model_name_or_path
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        if config.model_type == "gpt2":
            model = _load_stock_gpt2(path, model_args)
            # the overrides name GPTScratchConfig fields (drop_rate, ...), not GPT-2's
            overrides = parse_config_overrides(model_args.config_overrides, model.config)
            if overrides or attn_kwargs:
                model = _rebuild_with_overrides(model, overrides, model_args)
        else:
            apply_config_overrides(config, parse_config_overrides(model_args.config_overrides, config))
            # Strict: a weight missing from the checkpoint, unused or of the wrong shape is an error.
            model = from_pretrained_strict(AutoModelForCausalLM, path, config=config, trust_remote_code=trust, **attn_kwargs)
    else:
        if model_args.config_name:
            config = AutoConfig.from_pretrained(model_args.config_name, trust_remote_code=trust)
        else:
            config = GPTScratchConfig()
        overrides = parse_config_overrides(model_args.config_overrides, config)
        if tokenizer is not None:
            if "vocab_size" in overrides and overrides["vocab_size"] < len(tokenizer):
                raise ValueError(
                    f"config override vocab_size={overrides['vocab_size']} is smaller than the tokenizer ({len(tokenizer)} tokens)."
                )
            config.vocab_size = overrides.pop("vocab_size", len(tokenizer))
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if name not in overrides:
                    setattr(config, name, getattr(tokenizer, name, None))
        apply_config_overrides(config, overrides)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust, **attn_kwargs)
        if model_args.init_weights == "torch":
            torch_default_init(model)

    if tokenizer is not None:
        embedding = model.get_input_embeddings()
        # Under DeepSpeed ZeRO-3 the weight is partitioned at creation: its full shape is ds_shape.
        rows = getattr(embedding.weight, "ds_shape", embedding.weight.shape)[0] if embedding is not None else None
        if rows is not None and len(tokenizer) > rows:
            logger.warning(
                "Tokenizer has %d tokens but the model's embedding %d rows: resizing the embedding.", len(tokenizer), rows
            )
            model.resize_token_embeddings(len(tokenizer))
        for name in ("pad_token_id", "eos_token_id"):
            if getattr(model.config, name, None) is None and getattr(tokenizer, name, None) is not None:
                setattr(model.config, name, getattr(tokenizer, name))
                if getattr(model, "generation_config", None) is not None:
                    setattr(model.generation_config, name, getattr(tokenizer, name))
    _register_zero3_head(model)
    return model


def _register_zero3_head(model) -> None:
    """Under DeepSpeed ZeRO-3 (weights partitioned at creation), tell DeepSpeed that the causal
    LM's forward reads `out_head.weight` itself: while training, GPTScratchForCausalLM computes the
    head and the loss in one fused pass (`loss_gpt_scratch.linear_cross_entropy`) that uses the
    weight outside `out_head`'s own forward, where ZeRO-3 would not gather it."""
    head = getattr(model, "out_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or not hasattr(weight, "ds_id"):
        return
    from deepspeed.runtime.zero import register_external_parameter  # deepspeed.zero is an attribute, not a module

    register_external_parameter(model, weight)


def report_truncated_texts(splits, tokenizer, limit: int, source: str, column: str = "text") -> dict[str, int]:
    """Classification texts longer than `limit` tokens are truncated (the book's choice, kept by
    recipes/classify.py: a message's class is usually clear from its start, and refusing would make
    a data set with a few long texts unusable); this counts them per split of `splits` (a
    DatasetDict with a `column` of texts) and logs one warning per split naming the count, the
    first row and the longest length (`faults.check_sequence_lengths`). Returns {split: count}."""
    counts = {}
    for split, ds in splits.items():
        ids = tokenizer(list(ds[column]), add_special_tokens=False, verbose=False)["input_ids"]
        counts[split] = check_sequence_lengths(
            (len(row) for row in ids), limit, source=f"{source} ({split} split)", what="text",
            hint="Raise --max_seq_length (up to the model's context) to keep more of them.",
        )
    return counts


def check_instruction_lengths(splits: dict, max_length: int, source: str) -> dict[str, int]:
    """Instruction examples (features of `data.tokenize_instruction`: `input_ids` without the
    end-of-text token the collator appends, `prompt_length`) against the `max_length` the
    collator truncates to.

    - An example whose prompt alone fills `max_length` is refused (`faults.ExampleTooLongError`
      naming the split and entry): no response token would be left to learn from, and with
      --mask_prompt a batch of them has no target at all (a 0/0 loss).
    - Longer examples are truncated, as the book's collator does (`allowed_max_length`): the end
      of the response and its end-of-text token are cut. One warning per split gives the count.

    `splits` maps split names to datasets (None entries are skipped). Returns {split: truncated}."""
    counts = {}
    for split, ds in splits.items():
        if ds is None:
            continue
        where = f"{source} ({split} split)"
        counts[split] = check_sequence_lengths(
            (len(ids) + 1 for ids in ds["input_ids"]), max_length, source=where, what="entry",
            hint="The end of their responses is cut; raise --max_seq_length (up to the model's context) to keep it.",
        )
        check_sequence_lengths(
            ds["prompt_length"], max_length - 1, source=where, policy="refuse", what="prompt",
            hint="Each needs room for at least one response token: shorten those entries, drop them, or raise "
            "--max_seq_length (up to the model's context).",
        )
    return counts


def count_parameters(model) -> int:
    """Distinct parameters (a tied head counts once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += getattr(p, "ds_numel", None) or p.numel()  # DeepSpeed ZeRO-3 partitions p at creation
    return total


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def process_rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that writes files and prints reports."""
    return process_rank() == 0


def setup_logging(training_args) -> None:
    """run_clm-style logging: the main process logs at INFO, the others only warnings."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    ours = logging.INFO if is_main_process() and training_args.log_level == "passive" else level
    logger.setLevel(ours)
    logging.getLogger("__main__").setLevel(ours)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def resolve_resume_checkpoint(value: str | None, output_dir: str | None) -> str | bool | None:
    """--resume_from_checkpoint: a path, or 'true'/'last'/'latest' for the newest *complete*
    checkpoint in output_dir (error if there is none). A checkpoint-N folder left half-written by
    a killed run (no trainer_state.json, the Trainer's last write) is skipped with a warning."""
    if value is None or value == "":
        return None
    if value.lower() in {"true", "last", "latest"}:
        last = last_complete_checkpoint(output_dir) if output_dir and Path(output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder with a trainer_state.json (a complete checkpoint) in {output_dir}."
            )
        return last
    if value.lower() in _FALSE:
        return None
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder.")
    if not is_complete_checkpoint(value):
        logger.warning("--resume_from_checkpoint %s has no trainer_state.json: only its weights can be used.", value)
    return value


def resume_checkpoint_for(training_args) -> str | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)` (see
    `resolve_resume_checkpoint`). When resuming, `eval_on_start` is turned off: the curves
    already hold the evaluation before training, and the resumed step would be evaluated twice."""
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume:
        training_args.eval_on_start = False
    return resume


# --------------------------------------------------------------------------------------------
# Callbacks and curves
# --------------------------------------------------------------------------------------------


class TokensSeenCallback(TrainerCallback):
    """Counts the tokens seen so the loss can be plotted against them (the book's x axis), and
    measures throughput.

    Turns on the Trainer's own counter (`include_num_input_tokens_seen="all"`, summed over all
    processes) unless the recipe chose "non_padding"; every log entry then carries
    `num_input_tokens_seen`. After training, for this run only (a resumed checkpoint's tokens are
    not counted):

    - `session_tokens`, `session_steps`, `session_seconds` (wall clock, evaluations included);
    - `step_seconds`: time inside optimizer steps (forward, backward, update; no evaluation);
    - `seconds_per_step` = step_seconds / session_steps and `tokens_per_second` =
      session_tokens / step_seconds: the training speed, evaluations left out.
    """

    def __init__(self):
        self.start_tokens = 0
        self.start_step = 0
        self.start_time: float | None = None
        self.session_tokens = 0
        self.session_steps = 0
        self.session_seconds = 0.0
        self.step_seconds = 0.0
        self._step_start: float | None = None

    def on_init_end(self, args, state, control, **kwargs):
        if getattr(args, "include_num_input_tokens_seen", "no") in ("no", False, None):
            args.include_num_input_tokens_seen = "all"

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_tokens = state.num_input_tokens_seen
        self.start_step = state.global_step
        self.start_time = time.perf_counter()
        self.step_seconds = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None:
            self.step_seconds += time.perf_counter() - self._step_start
            self._step_start = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.start_time is not None:
            self.session_seconds = time.perf_counter() - self.start_time
        self.session_tokens = state.num_input_tokens_seen - self.start_tokens
        self.session_steps = state.global_step - self.start_step

    @property
    def tokens_per_second(self) -> float:
        return self.session_tokens / self.step_seconds if self.step_seconds > 0 else float("nan")

    @property
    def seconds_per_step(self) -> float:
        return self.step_seconds / self.session_steps if self.session_steps > 0 else float("nan")


def default_callbacks() -> list[TrainerCallback]:
    """Callbacks every recipe adds to its Trainer: the `TokensSeenCallback` (tokens seen, speed)
    and the `faults.NonFiniteLossGuard`, which stops training with an error naming the step at the
    first NaN/infinite loss or weight, before a checkpoint of that step is written (it also turns off
    the Trainer's `logging_nan_inf_filter`, which would hide the NaN in the logged loss)."""
    return [TokensSeenCallback(), NonFiniteLossGuard()]


def weights_are_sharded(trainer) -> bool:
    """True when each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3): every
    process must then take part in each forward pass, e.g. when sampling after training."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        from transformers.integrations import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled())
    return False


def save_final_model(trainer, output_dir: str | None = None) -> None:
    """`trainer.save_model(output_dir)` (weights as safetensors, config, tokenizer), then, on the
    main process, the Trainer's pickled training_args.bin is replaced by training_args.json (tokens
    redacted), so the final model folder holds no pickle. Call it on every process.

    Under FSDP with sharded checkpoints (`fsdp_state_dict_type: SHARDED_STATE_DICT`, as in
    recipes/accelerate/fsdp2.yaml) the Trainer's `save_model` would write no weights at all: the
    plugin is switched to FULL_STATE_DICT first, so the full weights are gathered and saved as
    safetensors that `from_pretrained` loads (checkpoints written before stay sharded)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(output_dir)
    if trainer.args.should_save:
        replace_pickled_training_args(output_dir or trainer.args.output_dir, trainer.args)


@contextlib.contextmanager
def unsharded_loading(training_args):
    """A context in which `from_pretrained` builds a full model even under DeepSpeed ZeRO-3 (while
    a ZeRO-3 config is registered with transformers, every model it builds is partitioned over the
    processes): for evaluation copies that each process runs on its own, outside the Trainer. A
    no-op otherwise (FSDP shards only the model the Trainer prepares)."""
    from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config

    plugin = getattr(training_args, "deepspeed_plugin", None)
    candidates = (getattr(plugin, "dschf", None), getattr(training_args, "hf_deepspeed_config", None))
    active = next((c for c in candidates if c is not None and c.is_zero3()), None)
    if not is_deepspeed_zero3_enabled() or active is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(active)


def find_callback(trainer, cls):
    """The instance of callback class `cls` registered on `trainer`, or None."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, cls):
            return callback
    return None


def evaluate_once(trainer) -> dict[str, float]:
    """Final evaluation metrics without evaluating twice: when the Trainer already evaluated at the
    last step (it does when that step is an evaluation step), those logged metrics are returned;
    otherwise `trainer.evaluate()` runs. Call it on every process."""
    step = trainer.state.global_step
    logged: dict[str, float] = {}
    for entry in trainer.state.log_history:
        if entry.get("step") == step:
            logged.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    eval_dataset = trainer.eval_dataset
    names = [f"eval_{name}_loss" for name in eval_dataset] if isinstance(eval_dataset, dict) else ["eval_loss"]
    if step > 0 and all(name in logged for name in names):
        return logged
    return trainer.evaluate()


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


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def generation_kwargs(
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    do_sample: bool | None = None,
) -> dict[str, Any]:
    """`generate` keyword arguments with the book's convention: temperature 0 means greedy
    decoding, a positive temperature samples (optionally restricted to the top_k tokens)."""
    if do_sample is None:
        do_sample = temperature is not None and temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": bool(do_sample)}
    if do_sample:
        kwargs["temperature"] = temperature if temperature and temperature > 0 else 1.0
        kwargs["top_k"] = top_k if top_k else 0  # 0 disables top-k filtering (generate's default is 50)
        if top_p is not None:
            kwargs["top_p"] = top_p
    if repetition_penalty is not None:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


def context_length_of(model) -> int | None:
    """The longest sequence the model takes (context_length, max_position_embeddings or n_positions)."""
    config = model.config
    for name in ("context_length", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, streamer=None, seed: int | None = None, **gen_kwargs) -> str:
    """Continue `prompt`; returns the new text only.

    Prompt and new tokens must fit the model's context (the book's `generate` slides a window
    instead): a prompt that fills the context keeps its last half, then max_new_tokens shrinks to
    what is left, with a warning."""
    gen_kwargs = dict(gen_kwargs)
    max_new = int(gen_kwargs.get("max_new_tokens", 50))
    context = context_length_of(model)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[bos]])
    if context is not None:
        if ids.shape[1] >= context:
            keep = max(1, context // 2)  # room left to generate
            logger.warning("Prompt is %d tokens: keeping the last %d (the context is %d).", ids.shape[1], keep, context)
            ids = ids[:, -keep:]
        if ids.shape[1] + max_new > context:
            max_new = context - ids.shape[1]
            logger.warning("Generating %d tokens only: the prompt and the new tokens must fit the context of %d.",
                           max_new, context)
            gen_kwargs["max_new_tokens"] = max_new
    device = next(model.parameters()).device
    ids = ids.to(device)
    if seed is not None:
        transformers.set_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
            **gen_kwargs,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def generate_samples(model, tokenizer, prompts: Sequence[str], seed: int | None = None, **gen_kwargs) -> list[dict[str, str]]:
    """`[{"prompt": p, "completion": text}]` for each prompt (see `generate_text`)."""
    samples = []
    for i, prompt in enumerate(prompts):
        text = generate_text(model, tokenizer, prompt, seed=None if seed is None else seed + i, **gen_kwargs)
        samples.append({"prompt": prompt, "completion": text})
    return samples


__all__ = [
    "DATA_ENV",
    "ModelArguments",
    "DataArguments",
    "SamplingArguments",
    "cpu_distributed_defaults",
    "parse_recipe_args",
    "parse_config_overrides",
    "apply_config_overrides",
    "tokenizer_source",
    "load_tokenizer_for",
    "load_causal_lm",
    "count_parameters",
    "report_truncated_texts",
    "check_instruction_lengths",
    "process_rank",
    "is_main_process",
    "setup_logging",
    "resolve_resume_checkpoint",
    "resume_checkpoint_for",
    "CheckpointMismatchError",
    "check_loading_info",
    "from_pretrained_strict",
    "TokensSeenCallback",
    "default_callbacks",
    "save_final_model",
    "unsharded_loading",
    "torch_default_init",
    "weights_are_sharded",
    "find_callback",
    "evaluate_once",
    "log_history_to_curves",
    "final_metric",
    "first_metric",
    "perplexity",
    "write_results",
    "print_table",
    "generation_kwargs",
    "context_length_of",
    "generate_text",
    "generate_samples",
]
