"""Recipe arguments: `HfArgumentParser` dataclasses with run_clm's flag names, `parse_recipe_args` (presets;
nonsense flags, a finished --output_dir and --hub_token refused before any work), `--config_overrides`
through `PretrainedConfig.update_from_string`, and run_clm's logging (only the main process writes)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
import yaml
from transformers import HfArgumentParser, PretrainedConfig
from transformers.hf_argparser import string_to_bool

from .data import DATA_ENV
from .faults import check_output_dir, refuse_hub_token


@dataclass
class ModelArguments:
    """Which model to train or load; the flags of transformers' `run_clm.py`."""

    model_name_or_path: str | None = field(default=None, metadata={"help": (
        "Checkpoint to start from: a folder or hub id (a stock GPT-2 is converted). Unset: from scratch.")})
    config_name: str | None = field(default=None, metadata={"help": (
        "Config (folder or hub id) of a model trained from scratch; default: GPTScratchConfig().")})
    config_overrides: str | None = field(default=None, metadata={"help": (
        "Config fields to set, e.g. 'n_layers=2,emb_dim=64' (a checkpoint's weights must still fit).")})
    tokenizer_name: str | None = field(default=None, metadata={"help": (
        "'gpt2' (offline GPT-2 BPE), a folder or a hub id; default: the checkpoint's own, else 'gpt2'.")})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with a checkpoint (only one you trust)."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention backend: 'eager', 'sdpa', ...; default: the model's."})
    init_weights: str = field(default="gpt2", metadata={"help": (
        "From scratch: 'gpt2' (normal std 0.02, residual projections scaled by 1/sqrt(2 n_layers)) or "
        "'torch' (PyTorch's defaults, the book's GPTModel's: embeddings N(0, 1), Linear +-1/sqrt(fan_in)).")})

    def __post_init__(self):
        if self.init_weights not in ("gpt2", "torch"):
            raise ValueError(f"--init_weights must be one of gpt2, torch, got {self.init_weights!r}.")


@dataclass
class DataArguments:
    """Data flags every recipe has (instruct and preference read only files; see `DatasetArguments`)."""

    data_dir: str | None = field(default=None, metadata={"help": (
        f"Folder with the book's data files (default: ${DATA_ENV}, else downloaded).")})
    train_file: str | None = field(default=None, metadata={"help": "Training data file (default: the book's)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training examples (for quick runs)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many validation examples (for quick runs)."})
    _files = ("train_file",)  # the file flags: each must exist (and `DatasetArguments`: not beside a dataset)

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}.")

    def __post_init__(self):
        if self.data_dir is not None:  # the book-data helpers (`hf_gpt_scratch.training.data`) read it
            os.environ[DATA_ENV] = str(Path(self.data_dir).expanduser().resolve())
        self._positive("max_train_samples", "max_eval_samples")
        for name in self._files:
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{name} {value}: no such file.")


@dataclass
class DatasetArguments(DataArguments):
    """run_clm's and run_glue's dataset flags (pretrain, classify)."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the hub, or a local one."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data file; default: hold out part of the training data."})
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Percent of the training data held out without a validation file."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."})
    _files = ("train_file", "validation_file")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )
        self._positive("preprocessing_num_workers")
        files = [f"--{name}" for name in self._files if getattr(self, name)]
        if self.dataset_name and files:
            raise ValueError(f"Pass either --dataset_name or data files ({', '.join(files)}), not both.")


@dataclass
class LoraArguments:
    """PEFT LoRA settings (`peft.LoraConfig`), shared by the recipes that train adapters."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (update = alpha / r * B A)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    # the Linear leaves of every block of GPTScratchModel: attention projections and both feed-forward layers
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2"],
        metadata={"help": "Linear layers to adapt (name suffixes, space- or comma-separated), or "
                  "'all-linear' (every Linear but the output head)."})
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full beside the adapters (modules_to_save)."})

    def __post_init__(self):
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r must be a positive integer, got {self.lora_r}.")
        if not self.lora_alpha > 0:
            raise ValueError(f"--lora_alpha must be positive, got {self.lora_alpha}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        self.target_modules()

    def target_modules(self) -> str | list[str]:
        """The names to adapt, or the string 'all-linear'. Raises ValueError when empty."""
        items = [self.lora_target_modules] if isinstance(self.lora_target_modules, str) else self.lora_target_modules
        names = [name.strip() for item in items for name in item.split(",") if name.strip()]
        if not names:
            raise ValueError("--lora_target_modules is empty.")
        return "all-linear" if names == ["all-linear"] else names

    def peft_config(self, **kwargs):
        """`peft.LoraConfig` with these settings; `kwargs` (task_type, target_modules, ...) add or replace."""
        from peft import LoraConfig

        values = dict(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                      target_modules=self.target_modules(), modules_to_save=self.lora_modules_to_save)
        return LoraConfig(**{**values, **kwargs})


@dataclass
class TrlLoraArguments(LoraArguments):
    """LoRA or full finetuning under TRL's trainers (instruct, preference): --use_lora and a checked config."""

    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (PEFT); false: finetune all weights."})

    def checked_peft_config(self, model):
        """`peft_config` for a TRL trainer, checked against `model`: each target names a module and not
        the output head (TRL computes the loss from its weight: an adapter there never trains), and a
        tied head is not trained in full (it would untie). Raises ValueError naming the flag."""
        names = [name for name, _ in model.named_modules() if name]
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        head_names = [name for name, module in model.named_modules() if module is head]

        def found(target, candidates):  # PEFT matches module names by suffix
            return any(name == target or name.endswith("." + target) for name in candidates)

        targets = self.target_modules()
        if targets != "all-linear":  # PEFT's all-linear leaves the output head out
            missing = [t for t in targets if not found(t, names)]
            if missing:
                leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
                raise ValueError(f"--lora_target_modules {','.join(missing)}: no such module (module names: {leaves}).")
            on_head = [t for t in targets if found(t, head_names)]
            if on_head:
                raise ValueError(f"--lora_target_modules {','.join(on_head)}: that is the output head, "
                                 "which TRL cannot train an adapter on; drop it, or use --use_lora false.")
        tied = head is not None and embedding is not None and head.weight is embedding.weight
        if tied and any(found(m, head_names) for m in self.lora_modules_to_save or []):
            raise ValueError("--lora_modules_to_save: the output head is tied to the token embedding; a trained copy "
                             "of it would untie them in the merged model. Leave it out, or use --use_lora false.")
        return self.peft_config(task_type="CAUSAL_LM")


def cpu_distributed_defaults() -> dict[str, Any]:
    """Parser defaults without CUDA (explicit flags still win): no pinned memory and, for several
    processes (WORLD_SIZE > 1: torchrun, accelerate launch), the CPU over gloo."""
    if torch.cuda.is_available():
        return {}
    defaults: dict[str, Any] = {"dataloader_pin_memory": False}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        defaults.update(ddp_backend="gloo", use_cpu=True)
    return defaults


def check_training_args(args: transformers.TrainingArguments) -> None:
    """Refuse values the Trainer would misread or crash on long after parsing (`--max_steps 0` runs
    one step, `--gradient_accumulation_steps 0` divides by zero, ...). Raises ValueError naming the flag."""
    seeds = {"seed": args.seed, "data_seed": args.data_seed}
    rules = [
        ("max_steps", args.max_steps > 0 or args.max_steps == -1, "a positive number of steps, or -1 (use --num_train_epochs)"),
        ("num_train_epochs", args.max_steps > 0 or 0 < args.num_train_epochs < math.inf,
         "a positive finite number of epochs (or give --max_steps)"),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps >= 1, "a positive integer"),
        ("per_device_train_batch_size", args.per_device_train_batch_size >= 1, "a positive integer"),
        ("per_device_eval_batch_size", args.per_device_eval_batch_size >= 1, "a positive integer"),
        ("learning_rate", 0 <= args.learning_rate < math.inf, "a finite number >= 0"),
        *((name, value is None or 0 <= value < 2**32, "an integer in [0, 2**32)") for name, value in seeds.items()),
    ]
    for name, ok, expected in rules:
        if not ok:
            raise ValueError(f"--{name} must be {expected}, got {getattr(args, name)!r}.")


# Flags of the recipes before they moved onto TRL, and what replaces them (named when an old one is given).
RENAMED_FLAGS = {"--mask_prompt": "--completion_only_loss true (TRL's SFTConfig)",
                 "--max_seq_length": "--max_length (TRL's SFTConfig / DPOConfig)"}


def parse_recipe_args(dataclass_types: Sequence[type], presets: str | os.PathLike | None = None,
                      defaults: dict[str, Any] | None = None, args: Sequence[str] | None = None,
                      description: str | None = None, check_output: bool = True) -> tuple[Any, ...]:
    """Parse a recipe's command line: one instance per dataclass type, then the preset's name or None.
    Precedence, lowest first: dataclass defaults, `defaults`, `cpu_distributed_defaults()`, a preset file
    (`<presets>/NAME.yaml` for `--preset NAME`, or a .yaml/.yml/.json file given first), the flags (whose
    --config_overrides add to the file's). TrainingArguments: `check_training_args`, `check_output_dir` (if
    `check_output`), `refuse_hub_token`. ValueError: a key or flag that is no argument."""
    argv = list(sys.argv[1:] if args is None else args)
    names = sorted(p.stem for p in Path(presets).glob("*.yaml")) if presets else []
    # "resolve": a flag several dataclasses declare (SFTConfig's and ModelArguments' --trust_remote_code) is
    # one flag, and its value fills each of them (HfArgumentParser's own split gives it to the first only)
    parser = HfArgumentParser(dataclass_types, description=description, conflict_handler="resolve")
    parser.add_argument("--preset", choices=names, help=f"Named preset file in {presets} (explicit flags still win).")
    if any(issubclass(t, transformers.TrainingArguments) for t in dataclass_types):
        parser.add_argument(
            "--overwrite_output_dir", type=string_to_bool, nargs="?", const=True, default=False,
            help="Train into an --output_dir holding a model, checkpoints or results (files are replaced as "
            "they are written). Without it (or --resume_from_checkpoint) a recipe refuses before any work.",
        )

    file = Path(argv.pop(0)) if argv and argv[0].endswith((".yaml", ".yml", ".json")) else None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    preset = pre.parse_known_args(argv)[0].preset
    if preset is not None and file is not None:
        raise ValueError(f"Give either --preset {preset} or the file {file}, not both.")
    if preset in names:  # an unknown name: argparse's error below lists the choices
        file = Path(presets) / f"{preset}.yaml"
    values = (yaml.safe_load(file.read_text()) or {}) if file else {}  # YAML reads JSON too
    unknown = sorted({*values, *(defaults or {})} - {a.dest for a in parser._actions if a.dest != "preset"})
    if unknown:
        raise ValueError(f"{file or 'recipe defaults'}: no such arguments: {', '.join(unknown)}")
    parser.set_defaults(**{**(defaults or {}), **cpu_distributed_defaults(), **values})
    namespace, unused = parser.parse_known_args(argv)
    if unused:  # as HfArgumentParser.parse_args_into_dataclasses says it, with the new name of an old flag
        hints = [f"{flag} is now {RENAMED_FLAGS[flag]}" for flag in (a.split("=")[0] for a in unused) if flag in RENAMED_FLAGS]
        raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: {unused}"
                         + (f" ({'; '.join(hints)})" if hints else "") + "; --help lists the flags.")
    namespace = vars(namespace)
    outputs = [t(**{f.name: namespace[f.name] for f in dataclasses.fields(t) if f.init}) for t in dataclass_types]

    for obj in outputs:
        given = getattr(obj, "config_overrides", None)
        if values.get("config_overrides") and given != values["config_overrides"]:
            obj.config_overrides = f"{values['config_overrides']},{given}"  # adds to the file's overrides
        if isinstance(obj, transformers.TrainingArguments):
            check_training_args(obj)
            obj.overwrite_output_dir = bool(namespace["overwrite_output_dir"])
            refuse_hub_token(obj)
            if check_output:
                check_output_dir(obj.output_dir, obj.overwrite_output_dir, obj.resume_from_checkpoint)
    return (*outputs, file.stem if file else None)


# Fields of every PretrainedConfig (dtype, label maps, ...): set by transformers or the recipe, not overrides.
_BASE_FIELDS = {f.name for f in dataclasses.fields(PretrainedConfig)}


def parse_config_overrides(overrides: str | None, config: PretrainedConfig) -> dict[str, Any]:
    """'n_layers=2,emb_dim=64' as typed values for `config` (`PretrainedConfig.update_from_string` on a
    copy), for `config.update`. Only the class's own fields and aliases (`hidden_size`, ...), not `dtype`,
    `model_type` and the other fields every PretrainedConfig has. Raises ValueError naming the item."""
    items = [item.strip() for item in (overrides or "").split(",") if item.strip()]
    if not items:
        return {}
    aliases = getattr(config, "attribute_map", {})
    own = {f.name for f in dataclasses.fields(config)} - _BASE_FIELDS
    keys = [aliases.get(key, key) for key in (item.split("=", 1)[0].strip() for item in items)]
    for item, key in zip(items, keys):
        if "=" not in item or key not in own:
            raise ValueError(f"--config_overrides {item!r}: expected key=value with a field of "
                             f"{type(config).__name__} ({', '.join(sorted(own))}).")
    trial = copy.deepcopy(config)
    try:  # the base method: GPTScratchConfig.update checks the rules across fields once applied
        PretrainedConfig.update_from_string(trial, ",".join(items))
    except (ValueError, TypeError) as err:
        raise ValueError(f"--config_overrides {overrides!r}: {err}") from None
    return {key: getattr(trial, key) for key in keys}


def parse_lora_recipe_args(dataclass_types, presets, defaults, args, learning_rates: tuple[float, float], description=None):
    """`parse_recipe_args` whose default learning rate follows --use_lora (flag, preset or file):
    `learning_rates` is (LoRA, full). A first parse, without checks, reads --use_lora."""
    probe = [a for a in (sys.argv[1:] if args is None else args) if a not in ("-h", "--help")]  # help: 2nd parse
    first = parse_recipe_args(dataclass_types, presets, defaults, probe, check_output=False)
    lora = next(obj for obj in first if isinstance(obj, TrlLoraArguments)).use_lora
    defaults = dict(defaults, learning_rate=learning_rates[0] if lora else learning_rates[1])
    return parse_recipe_args(dataclass_types, presets, defaults, args, description=description)


def setup_logging(training_args) -> None:
    """run_clm's logging: the main process logs at INFO (transformers too: the Trainer's "Running
    training" summary), the others only warnings, on the package's logger too."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:  # --log_level passive (the default) then means INFO, as in run_clm
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logging.getLogger(__package__).setLevel(level)
    logging.getLogger("__main__").setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
