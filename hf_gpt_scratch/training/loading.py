"""Tokenizers and models for the recipes, loaded strictly with an explicit `trust_remote_code`
(unset, transformers asks "run the custom code? [y/N]" in a terminal); `train_model` from a
checked checkpoint; `save_final_model`. Ours because transformers only logs a report for missing,
unused or mis-shaped weights (initialised randomly) and its Trainer resumes non-strictly."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from .arguments import ModelArguments, parse_config_overrides
from ..configuration_gpt_scratch import GPTScratchConfig
from .faults import STAGE, remove_previous_run, replace_pickled_training_args, resolve_resume_checkpoint, staged_save
from ..tokenization import GPT2_EOS_ID, TOKENIZER_FILES, has_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

# ---- Tokenizers (the loader itself is core: `tokenization.load_tokenizer`)


def tokenizer_source(model_args: ModelArguments) -> str | None:
    """--tokenizer_name, else --model_name_or_path when it has a tokenizer, else None (GPT-2's
    BPE): for a checkpoint folder only when its config has GPT-2's 50,257 tokens, with a warning
    (ValueError otherwise: its embedding would grow by rows of random weights)."""
    path = model_args.model_name_or_path
    if model_args.tokenizer_name or has_tokenizer(path) or not path:
        return model_args.tokenizer_name or path or None
    config = Path(path) / "config.json"
    vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    if vocab != GPT2_EOS_ID + 1:
        raise ValueError(
            f"--model_name_or_path {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}) and its config says "
            f"{vocab} tokens, not GPT-2's {GPT2_EOS_ID + 1}: pass the tokenizer it was trained with as --tokenizer_name."
        )
    logger.warning("%s has no tokenizer files: using OpenAI's GPT-2 BPE (same vocabulary size); "
                   "pass --tokenizer_name to choose another.", path)
    return None


def load_tokenizer_for(model_args: ModelArguments):
    """The recipe's tokenizer (`tokenizer_source`), with pad = eos when it has no pad token."""
    tokenizer = load_tokenizer(tokenizer_source(model_args), bool(model_args.trust_remote_code))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---- Strict loading


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not match the model its config describes."""


def _key_groups(keys: Iterable[str], limit: int = 12) -> str:
    """'model.trf_blocks.2.* (12 keys), model.final_norm.weight': a numbered block's keys collapse."""
    groups: dict[str, int] = {}
    for key in sorted(keys):
        match = re.match(r"^(.*?\.\d+)\.", key)
        name = f"{match.group(1)}.*" if match else key
        groups[name] = groups.get(name, 0) + 1
    items = [f"{name} ({n} keys)" if n > 1 else name for name, n in groups.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_loading_info(info: dict, source: str, allow_missing: Sequence[str] = (),
                       allow_unexpected: Sequence[str] = (), config=None) -> None:
    """Raise `CheckpointMismatchError` when `info` (from `from_pretrained(...,
    output_loading_info=True)`, or `check_checkpoint_fits`) lists weights missing from the
    checkpoint, unused by the model, or of the wrong shape (`(key, checkpoint shape, model
    shape)`). Keys starting with a prefix in `allow_missing` (a new head, "score.") may be missing
    or reshaped; keys starting with one in `allow_unexpected` ("out_head.") may be unused."""
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.startswith(tuple(allow_unexpected))]
    mismatched = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in sorted(info.get("mismatched_keys", ()))
                  if not k.startswith(tuple(allow_missing))]
    parts = [f"{what}: {keys}" for what, keys in (
        ("missing from the checkpoint (they would be randomly initialised)", missing and _key_groups(missing)),
        ("in the checkpoint but not in the model", unexpected and _key_groups(unexpected)),
        ("of the wrong shape", ", ".join(mismatched[:12])),
        ("errors", "; ".join(str(e) for e in info.get("error_msgs", ()) if e))) if keys]
    if not parts:
        return
    fields = [f"{k}={getattr(config, k)}" for k in ("n_layers", "emb_dim", "n_heads", "vocab_size", "context_length",
                                                   "num_hidden_layers", "hidden_size") if hasattr(config, k)]
    described = f" (config: {', '.join(dict.fromkeys(fields))})" if fields else ""
    raise CheckpointMismatchError(
        f"{source}: the weights do not match the model its config.json describes{described}. Weights "
        + "; ".join(parts) + ". Fix config.json or the weight files (or choose the right checkpoint); nothing was trained."
    )


def from_pretrained_strict(model_class, path: str, allow_missing: Sequence[str] = (),
                           allow_unexpected: Sequence[str] = (), **kwargs):
    """`model_class.from_pretrained(path, **kwargs)` that raises `CheckpointMismatchError`
    (`check_loading_info`) instead of logging a load report and initialising weights randomly."""
    kwargs.setdefault("ignore_mismatched_sizes", True)  # reported and judged here, not a bare RuntimeError
    kwargs.setdefault("trust_remote_code", False)
    model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    check_loading_info(info, str(path), allow_missing, allow_unexpected, config=getattr(model, "config", None))
    return model


# ---- Models


def _rebuild_with_overrides(model, overrides: dict[str, Any], model_args: ModelArguments):
    """A copy of `model` built from its config plus `overrides`, with the same weights."""
    config = model.config.__class__.from_dict(model.config.to_dict(), **overrides)
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    new = type(model)._from_config(config, **kwargs)
    try:
        new.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"--config_overrides {overrides} do not fit the checkpoint's weights: {err}") from None
    return new


def torch_default_init(model) -> None:
    """PyTorch's default initialisation (`reset_parameters`), the book's `GPTModel`'s: embeddings
    N(0, 1), Linear layers uniform in +-1/sqrt(fan_in), norms 1 and 0. A tied embedding gets the
    Linear init (the output head is reset last)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
            module.reset_parameters()


def load_causal_lm(model_args: ModelArguments, tokenizer=None):
    """The causal LM the recipe trains: `--model_name_or_path` loaded strictly (a stock GPT-2
    checkpoint converted with `convert.gpt2_to_scratch`; `--config_overrides` must keep the
    weights' shapes), else a new model of `--config_name` (default `GPTScratchConfig()`) plus
    `--config_overrides`, sized and given pad/bos/eos ids by the tokenizer. A tokenizer larger
    than a checkpoint's embedding grows it (as run_clm does, with a warning)."""
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
            from transformers import GPT2LMHeadModel

            from ..convert import gpt2_to_scratch

            model = gpt2_to_scratch(from_pretrained_strict(GPT2LMHeadModel, path, trust_remote_code=trust))
            # the overrides name GPTScratchConfig fields (drop_rate, ...), not GPT-2's
            overrides = parse_config_overrides(model_args.config_overrides, model.config)
            if overrides or attn_kwargs:
                model = _rebuild_with_overrides(model, overrides, model_args)
        else:
            config.update(parse_config_overrides(model_args.config_overrides, config))
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
        config.update(overrides)
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
    """Distinct parameters (`parameters()` yields a tied head once; ZeRO-3 partitions at creation)."""
    return sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters())


def weights_are_sharded(trainer) -> bool:
    """True when each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3): every
    process must then take part in each forward pass, e.g. when sampling after training."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    deepspeed = getattr(trainer, "is_deepspeed_enabled", False) and is_deepspeed_zero3_enabled()
    return bool(getattr(trainer, "is_fsdp_enabled", False) or deepspeed)


# ---- Training from a checked checkpoint


def check_checkpoint_fits(checkpoint: str | Path, model) -> None:
    """`CheckpointMismatchError` when the weights in `checkpoint` (their safetensors headers) are
    not `model`'s, e.g. another architecture or tokenizer (the Trainer loads them non-strictly: a
    random layer, or a size-mismatch traceback); a warning for missing optimizer, scheduler or RNG
    states (the Trainer starts them afresh without a word)."""
    folder = Path(checkpoint)
    files = [*folder.glob("model*.safetensors"), *folder.glob("adapter_model.safetensors")]
    saved = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            saved.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    if saved:
        if hasattr(model, "peft_config"):  # the Trainer saves a PEFT model's adapter weights only
            from peft import get_peft_model_state_dict

            expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
        else:  # ZeRO-3 partitions parameters at creation: ds_shape is the full shape
            expected = {k: tuple(getattr(p, "ds_shape", p.shape)) for k, p in model.named_parameters(remove_duplicate=False)}
        tied = set(getattr(model, "all_tied_weights_keys", None) or ())
        check_loading_info({
            "missing_keys": [k for k in expected if k not in saved and k not in tied],
            "unexpected_keys": [k for k in saved if k not in expected],
            "mismatched_keys": [(k, saved[k], expected[k]) for k in saved if k in expected and saved[k] != expected[k]],
        }, f"--resume_from_checkpoint {folder}", config=getattr(model, "config", None))
    lacking = [name for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth") if not any(folder.glob(name.split(".")[0] + "*"))]
    if lacking and not any(folder.glob("global_step*")):  # (DeepSpeed keeps its states there)
        logger.warning("--resume_from_checkpoint %s has no %s: the optimizer, schedule or random state start afresh, so "
                       "the run will not continue exactly as it would have.", folder, ", ".join(lacking))


def train_model(trainer):
    """`trainer.train()`, resuming from the checked checkpoint of --resume_from_checkpoint
    (`faults.resolve_resume_checkpoint`, `check_checkpoint_fits`; no second evaluation on start),
    or with --overwrite_output_dir after removing the previous run's checkpoints, adapters and
    results (`faults.remove_previous_run`), so none of them is resumed or pushed. TRL's trainers
    write their own README.md at every checkpoint: turned off, the folder's card is ours (`hub.finish_run`)."""
    trainer.create_model_card = lambda *args, **kwargs: None
    args = trainer.args
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if resume:
        check_checkpoint_fits(resume, trainer.model)
        args.eval_on_start = False
    elif getattr(args, "overwrite_output_dir", False) and args.should_save:
        remove_previous_run(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return trainer.train(resume_from_checkpoint=resume)


def save_final_model(trainer, output_dir: str | None = None) -> None:
    """`trainer.save_model` (safetensors, config, tokenizer; training_args.json, not the pickle)
    into `output_dir` (default --output_dir) through `faults.staged_save`; call it on every
    process. FSDP's SHARDED_STATE_DICT would save no weights: switched to FULL_STATE_DICT first."""
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
    main = trainer.args.should_save
    folder = Path(output_dir or trainer.args.output_dir)
    with staged_save(folder) if main else contextlib.nullcontext(folder / STAGE) as stage:
        trainer.accelerator.wait_for_everyone()  # the stage exists before any process writes into it
        trainer.save_model(str(stage))
        trainer.accelerator.wait_for_everyone()  # every process wrote before the files move
        if main:
            replace_pickled_training_args(stage, trainer.args)


@contextlib.contextmanager
def unsharded_loading(training_args):
    """`from_pretrained` builds full models inside, even under DeepSpeed ZeRO-3 (which partitions
    every model built while its config is registered): evaluation copies each process runs alone."""
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
    "tokenizer_source", "load_tokenizer_for",
    "CheckpointMismatchError", "check_loading_info", "from_pretrained_strict", "torch_default_init", "load_causal_lm",
    "count_parameters", "weights_are_sharded", "check_checkpoint_fits", "train_model", "save_final_model",
    "unsharded_loading",
]
