"""Command line of `hf_gpt_scratch.convert` (installed as `hf-gpt-scratch-convert`).

It belongs to the training layer (strict loading, folder checks, model card, hub upload), so the
core converter `hf_gpt_scratch.convert` never imports it::

    # GPT-2 from the hub or a local folder -> this model
    python -m hf_gpt_scratch.training.convert_cli --model_name_or_path openai-community/gpt2 --output_dir gpt2-scratch
    # the book's chapter 5 checkpoint -> this model (config: a JSON file or a preset name)
    python -m hf_gpt_scratch.training.convert_cli --book_checkpoint model.pth --book_config "gpt2-small (124M)" \\
        --output_dir book-gpt
    # this model -> stock GPT-2
    python -m hf_gpt_scratch.training.convert_cli --model_name_or_path book-gpt --to gpt2 --output_dir book-gpt2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..configuration_gpt_scratch import GPTScratchConfig
from ..convert import (
    _BOOK_CONFIG_KEYS,
    BOOK_MODEL_CONFIGS,
    _read_pth,
    book_config_from_preset,
    book_to_scratch,
    gpt2_to_scratch,
    scratch_to_gpt2,
)
from ..modeling_gpt_scratch import GPTScratchForCausalLM

__all__ = ["main"]



def _read_book_config(value: str, state_dict) -> dict:
    if value in BOOK_MODEL_CONFIGS:
        return book_config_from_preset(value, state_dict)
    path = Path(value)
    if not path.is_file():
        raise ValueError(
            f"--book_config {value!r} is neither a JSON file nor a preset name ({', '.join(BOOK_MODEL_CONFIGS)})."
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--book_config {path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"--book_config {path} must hold a JSON object like the book's GPT_CONFIG_124M.")
    return cfg


def _max_logit_difference(a, b, vocab_size: int, context_length: int) -> float:
    """Largest |logit difference| of two models on a fixed random batch (a sanity check of the conversion)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, min(8, context_length)), generator=generator)
    with torch.no_grad():
        la = a(input_ids=ids.to(a.device)).logits.float().cpu()
        lb = b(input_ids=ids.to(b.device)).logits.float().cpu()
    return (la - lb).abs().max().item()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-gpt-scratch-convert",
        description=(
            "Convert weights to or from hf_gpt_scratch's GPTScratchForCausalLM: transformers GPT-2 "
            "(hub id or folder) or a .pth of the book's GPTModel -> this model (--to scratch, the default), "
            "or this model -> stock GPT-2 (--to gpt2). Conversions are exact."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model_name_or_path",
        help="hub id (e.g. openai-community/gpt2) or local folder of a GPT-2 model, or of a gpt_scratch model with --to gpt2",
    )
    source.add_argument("--book_checkpoint", help="a .pth state dict of the book's GPTModel (e.g. chapter 5's model.pth)")
    parser.add_argument(
        "--book_config",
        help=f"with --book_checkpoint: a JSON file like GPT_CONFIG_124M, or a preset: {', '.join(BOOK_MODEL_CONFIGS)}",
    )
    parser.add_argument("--to", choices=("scratch", "gpt2"), default="scratch", help="target format (default: scratch)")
    parser.add_argument("--output_dir", required=True, help="folder to save_pretrained the converted model into")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer (hub id, folder, or 'gpt2' for OpenAI's GPT-2 BPE offline) to save with the model; "
        "default: the one in --model_name_or_path, if any",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into an output_dir that already holds a model")
    parser.add_argument("--push_to_hub", action="store_true", help="also upload the result to the Hugging Face Hub")
    parser.add_argument("--hub_model_id", help="repo id for --push_to_hub (default: the name of output_dir)")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    return parser


def _convert(args) -> int:
    from transformers import AutoConfig, GPT2LMHeadModel

    # lazy: the CLI's import stays cheap (`--help` loads no GPT-2, no hub client)
    from .faults import check_output_dir, remove_previous_run, save_pretrained_to
    from .loading import from_pretrained_strict
    from ..tokenization import has_tokenizer, load_tokenizer

    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, overwrite=args.overwrite, flag="--overwrite")  # before any work
    tokenizer_source = args.tokenizer or args.model_name_or_path
    tokenizer = None
    if args.tokenizer or has_tokenizer(tokenizer_source):
        tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=False)
    if args.book_checkpoint:
        state_dict = _read_pth(args.book_checkpoint)
        book_config = _read_book_config(args.book_config, state_dict)
        scratch = book_to_scratch(state_dict, book_config)
        print(
            f"Loaded the book's GPTModel from {args.book_checkpoint} ({len(state_dict)} tensors; "
            f"{ {k: book_config[k] for k in _BOOK_CONFIG_KEYS} })"
        )
        if args.to == "scratch":
            source, result = None, scratch
            conversion = f"the book's `GPTModel` checkpoint `{Path(args.book_checkpoint).name}` converted"
            print("Converted it to GPTScratchForCausalLM (LayerNorm scale/shift -> weight/bias, untied head).")
        else:
            source, result = scratch, scratch_to_gpt2(scratch)
            conversion = f"the book's `GPTModel` checkpoint `{Path(args.book_checkpoint).name}` converted"
            print("Converted it to GPTScratchForCausalLM, then to GPT2LMHeadModel.")
    else:
        src = args.model_name_or_path
        model_type = AutoConfig.from_pretrained(src, trust_remote_code=False).model_type
        if args.to == "scratch":
            if model_type == GPTScratchConfig.model_type:
                raise ValueError(f"{src} already is a gpt_scratch model; use --to gpt2 to export it to GPT-2.")
            if model_type != "gpt2":
                raise ValueError(f"{src} is a {model_type!r} model; only GPT-2 (model_type 'gpt2') can be converted.")
            source = from_pretrained_strict(GPT2LMHeadModel, src).eval()  # missing weights: refused
            result = gpt2_to_scratch(source)
            conversion = "OpenAI GPT-2 (`GPT2LMHeadModel`) converted"
            print(f"Converted GPT2LMHeadModel {src} to GPTScratchForCausalLM.")
        else:
            if model_type != GPTScratchConfig.model_type:
                raise ValueError(
                    f"--to gpt2 exports a gpt_scratch model, but {src} is a {model_type!r} model"
                    + (" (already GPT-2)." if model_type == "gpt2" else ".")
                )
            source = from_pretrained_strict(GPTScratchForCausalLM, src).eval()
            result = scratch_to_gpt2(source)
            conversion = "`GPTScratchForCausalLM` exported"
            print(f"Converted GPTScratchForCausalLM {src} to GPT2LMHeadModel.")

    cfg = result.config
    n_params = sum(p.numel() for p in result.parameters())
    print(
        f"  {n_params:,} parameters, vocab {cfg.vocab_size}, context {cfg.max_position_embeddings}, "
        f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads, width {cfg.hidden_size}, "
        f"tied head: {cfg.tie_word_embeddings}"
    )
    diff = None
    if source is not None:
        diff = _max_logit_difference(source, result, cfg.vocab_size, cfg.max_position_embeddings)
        print(f"  check: largest |logit difference| to the source on a random batch: {diff:.2e}")

    if args.overwrite:
        remove_previous_run(output_dir)  # an old run's checkpoints and results are not the converted model's
    save_pretrained_to(output_dir, result, *[tokenizer] * (tokenizer is not None))
    print(f"Saved the model to {output_dir} (safetensors).")
    if tokenizer is not None:
        print(f"Saved the tokenizer of {tokenizer_source} to {output_dir}.")
    else:
        print("No tokenizer saved (none found" + (f" in {tokenizer_source}" if tokenizer_source else "") + "; see --tokenizer).")

    card_results = {
        "source": args.model_name_or_path or Path(args.book_checkpoint).name,
        "conversion": f"{conversion} to `{type(result).__name__}`",
        "num_parameters": n_params,
    }
    if diff is not None:
        card_results["max_logit_difference"] = diff
    from .hub import create_repo, push_run, write_model_card

    repo_id = None
    if args.push_to_hub:
        try:  # the repo first: its full name (namespace included) goes into the card's snippets
            repo_id = create_repo(args.hub_model_id or output_dir.resolve().name, private=args.private or None)
        except RuntimeError as err:
            print(f"error: the model is saved in {output_dir} but {err}", file=sys.stderr)
            return 1
    try:
        write_model_card(output_dir, card_results, "convert", repo_id=repo_id)
        print(f"Wrote the model card {output_dir / 'README.md'}.")
    except Exception as err:  # a missing template must not lose the conversion
        if args.push_to_hub:
            print(f"error: the model is saved in {output_dir} but its model card failed: {err}", file=sys.stderr)
            return 1
        print(f"No model card written ({type(err).__name__}: {err}).")
    if args.push_to_hub:
        try:
            info = push_run(output_dir, repo_id, private=args.private or None)
        except Exception as err:
            print(f"error: the model is saved in {output_dir} but uploading to {repo_id} failed: {err}", file=sys.stderr)
            return 1
        print(f"Pushed to the Hugging Face Hub as {repo_id} (commit {info.oid}): model, code, tokenizer and card.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 on success, 1 on a conversion error)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.book_checkpoint and not args.book_config:
        parser.error("--book_checkpoint needs --book_config (a JSON file or a preset name).")
    if args.book_config and not args.book_checkpoint:
        parser.error("--book_config only applies with --book_checkpoint.")
    if args.hub_model_id and not args.push_to_hub:
        parser.error("--hub_model_id needs --push_to_hub.")
    try:
        return _convert(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
