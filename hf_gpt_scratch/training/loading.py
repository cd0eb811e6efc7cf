"""Tokenizers and models loaded strictly, with an explicit `trust_remote_code` (transformers only logs
missing or mis-shaped weights; its Trainer resumes non-strictly); `train_model`; the final save, reloaded."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors import safe_open
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GPT2LMHeadModel

from .arguments import ModelArguments, parse_config_overrides, setup_logging
from ..configuration_gpt_scratch import GPTScratchConfig
from ..convert import gpt2_to_scratch
from .sampling import length_within_context
from .faults import STAGE, remove_previous_run, resolve_resume_checkpoint, save_pretrained_to, staged_save
from .hub import prepare_push
from ..tokenization import GPT2_EOS_ID, TOKENIZER_FILES, has_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)


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


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not match the model its config describes."""


def _key_groups(keys: Iterable[str], limit: int = 12) -> str:
    """'model.trf_blocks.2.* (12 keys), model.final_norm.weight': a numbered block's keys collapse."""
    groups = Counter(re.sub(r"^(.*?\.\d+)\..*", r"\1.*", key) for key in sorted(keys))
    items = [f"{name} ({n} keys)" if n > 1 else name for name, n in groups.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_loading_info(info: dict, source: str, allow_missing: Sequence[str] = (),
                       allow_unexpected: Sequence[str] = (), config=None) -> None:
    """Raise `CheckpointMismatchError` when `info` (`from_pretrained`'s loading info) lists weights
    missing from the checkpoint, unused, or of the wrong shape, except keys starting with a prefix in
    `allow_missing` (a new head, "score.": may be missing or reshaped) or `allow_unexpected`."""
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


def load_causal_lm(model_args: ModelArguments, tokenizer=None):
    """The causal LM a recipe trains: --model_name_or_path loaded strictly (stock GPT-2 converted by
    `convert.gpt2_to_scratch`; --config_overrides must keep the weights' shapes), else a new model of
    --config_name (default `GPTScratchConfig()`) plus --config_overrides, sized and given pad/bos/eos
    ids by the tokenizer. A tokenizer larger than a checkpoint's embedding grows it (as run_clm does)."""
    trust, path = bool(model_args.trust_remote_code), model_args.model_name_or_path
    attn = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if path and model_args.init_weights != "gpt2":
        raise ValueError(
            f"--init_weights {model_args.init_weights} only applies to a model trained from scratch, not to "
            f"--model_name_or_path {model_args.model_name_or_path} (its weights are loaded)."
        )
    source = path or model_args.config_name
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust) if source else GPTScratchConfig()
    if path and config.model_type == "gpt2":
        model = gpt2_to_scratch(from_pretrained_strict(GPT2LMHeadModel, path, trust_remote_code=trust))
        # the overrides name GPTScratchConfig fields (drop_rate, ...): a model rebuilt with the same weights
        overrides = parse_config_overrides(model_args.config_overrides, model.config)
        if overrides or attn:
            weights, config = model.state_dict(), type(model.config).from_dict(model.config.to_dict())
            config.update(overrides)
            model = type(model)._from_config(config, **attn)
            try:
                model.load_state_dict(weights, strict=True)
            except RuntimeError as err:
                message = f"--config_overrides {overrides} do not fit the checkpoint's weights: {err}"
                raise ValueError(message) from None
    elif path:
        config.update(parse_config_overrides(model_args.config_overrides, config))
        model = from_pretrained_strict(AutoModelForCausalLM, path, config=config, trust_remote_code=trust,
                                       **attn)
    else:
        overrides = parse_config_overrides(model_args.config_overrides, config)
        if tokenizer is not None:  # the tokenizer's size and special ids, unless overridden
            if overrides.get("vocab_size", len(tokenizer)) < len(tokenizer):
                raise ValueError(f"config override vocab_size={overrides['vocab_size']} is smaller than the "
                                 f"tokenizer ({len(tokenizer)} tokens).")
            ids = {n: getattr(tokenizer, n, None) for n in ("pad_token_id", "bos_token_id", "eos_token_id")}
            overrides = {"vocab_size": len(tokenizer), **ids, **overrides}
        config.update(overrides)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust, **attn)
        if model_args.init_weights == "torch":  # PyTorch's defaults (the book's GPTModel's): N(0, 1)
            for module in model.modules():  # embeddings, Linear U(+-1/sqrt(fan_in)), norms 1 and 0
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
                    module.reset_parameters()

    if tokenizer is not None:
        weight = model.get_input_embeddings().weight
        rows = getattr(weight, "ds_shape", weight.shape)[0]  # (ZeRO-3 partitions the weight at creation)
        if len(tokenizer) > rows:
            logger.warning(
                "Tokenizer has %d tokens but the model's embedding %d rows: resizing the embedding.", len(tokenizer), rows
            )
            model.resize_token_embeddings(len(tokenizer))
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(tokenizer, name, None)
            if getattr(model.config, name, None) is None and value is not None:
                setattr(model.config, name, value)
                if getattr(model, "generation_config", None) is not None:
                    setattr(model.generation_config, name, value)
    return model


def check_checkpoint_fits(checkpoint: str | Path, model) -> None:
    """`CheckpointMismatchError` when the weights in `checkpoint` (safetensors headers) are not
    `model`'s (the Trainer loads them non-strictly); a warning for missing optimizer, scheduler or
    RNG states (the Trainer starts them afresh without a word)."""
    folder = Path(checkpoint)
    saved = {}
    for file in [*folder.glob("model*.safetensors"), *folder.glob("adapter_model.safetensors")]:
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
    """`trainer.train()` from the checked checkpoint of --resume_from_checkpoint (no second
    evaluation on start), or with --overwrite_output_dir after `faults.remove_previous_run`. TRL's
    own README.md at every checkpoint is turned off: the folder's card is ours (`hub.finish_run`)."""
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
    """`trainer.save_model` into `output_dir` (default --output_dir) through `faults.staged_save`, on
    every process. FSDP's SHARDED_STATE_DICT would save no weights: switched to FULL_STATE_DICT."""
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
        pickled = stage / "training_args.bin"
        if main and pickled.is_file():  # the arguments as JSON (tokens redacted), not pickled
            pickled.with_suffix(".json").write_text(trainer.args.to_json_string())
            pickled.unlink()


def start_tuning(model_args: ModelArguments, data_args, training_args) -> tuple:
    """The TRL recipes' opening, in order: logging, `hub.prepare_push`, seed, data splits, tokenizer, model
    on the device, --max_length (default: context). Returns (push repo or None, splits, tokenizer, model)."""
    setup_logging(training_args)
    repo_id = prepare_push(training_args)  # --push_to_hub: our push, not the Trainer's
    transformers.set_seed(training_args.seed)
    splits = data_args.load_splits()
    tokenizer = load_tokenizer_for(model_args)
    model = load_causal_lm(model_args, tokenizer)
    training_args.max_length = length_within_context(training_args.max_length, model, "--max_length")
    return repo_id, splits, tokenizer, model.to(training_args.device)


def save_and_reload(trainer, model_args: ModelArguments, tokenizer, lora: bool):
    """Save the trained model (`save_final_model`; a LoRA adapter into output_dir/adapter), then load it
    back on every process as a full copy (`unsharded_loading`), LoRA merged into the base and saved at
    the top of output_dir (loads without peft). Returns the copy on the training device, in eval mode."""
    output_dir = Path(trainer.args.output_dir)
    trainer.model.config.use_cache = True  # the Trainer turns the cache off for training
    save_final_model(trainer, str(output_dir / "adapter") if lora else None)
    trainer.accelerator.wait_for_everyone()
    with unsharded_loading(trainer.args):
        if lora:
            from peft import PeftModel

            base = load_causal_lm(model_args, tokenizer)
            tuned = PeftModel.from_pretrained(base, output_dir / "adapter").merge_and_unload()
        else:
            trust = model_args.trust_remote_code
            tuned = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=trust)
    tuned.to(trainer.args.device).eval()
    if lora and trainer.is_world_process_zero():
        save_pretrained_to(output_dir, tuned, tokenizer)
    return tuned


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
