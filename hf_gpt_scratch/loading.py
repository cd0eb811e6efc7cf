"""Tokenizers and models for the recipes: from a checkpoint or from scratch, loaded strictly, and
saved without pickles.

- `load_tokenizer_for`, `tokenizer_source`: the checkpoint's own tokenizer, else `--tokenizer_name`,
  else the offline GPT-2 BPE.
- `load_causal_lm`: ours, any causal LM, a stock GPT-2 folder converted on the fly, or a new
  `GPTScratchConfig` plus overrides (`--init_weights gpt2|torch`: transformers' or the book's
  initialisation, `torch_default_init`).
- `from_pretrained_strict`, `check_loading_info`: missing, unused or mis-shaped weights are a
  `CheckpointMismatchError`, not a warning.
- `save_final_model` (safetensors, no pickle, full weights under FSDP), `weights_are_sharded`,
  `unsharded_loading` (full evaluation copies under DeepSpeed ZeRO-3), `count_parameters`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
)

from .arguments import ModelArguments, apply_config_overrides, parse_config_overrides
from .configuration_gpt_scratch import GPTScratchConfig
from .faults import replace_pickled_training_args

logger = logging.getLogger(__name__)


# Files that mark a folder as holding a tokenizer (not only a model).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


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
    return model


def count_parameters(model) -> int:
    """Distinct parameters (a tied head counts once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += getattr(p, "ds_numel", None) or p.numel()  # DeepSpeed ZeRO-3 partitions p at creation
    return total


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


__all__ = [
    "tokenizer_source",
    "load_tokenizer_for",
    "CheckpointMismatchError",
    "check_loading_info",
    "from_pretrained_strict",
    "torch_default_init",
    "load_causal_lm",
    "count_parameters",
    "weights_are_sharded",
    "save_final_model",
    "unsharded_loading",
]
