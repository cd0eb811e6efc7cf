"""Command line of `hf_gpt_scratch.convert` (`hf-gpt-scratch-convert`; here for the strict loading, folder
checks, card and upload). E.g. `--model_name_or_path openai-community/gpt2 --output_dir gpt2-scratch`,
`--book_checkpoint model.pth --book_config "gpt2-small (124M)" --output_dir book`, `... --to gpt2`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..convert import BOOK_MODEL_CONFIGS, gpt2_to_scratch, load_book_checkpoint, scratch_to_gpt2
from ..modeling_gpt_scratch import GPTScratchForCausalLM

PRESETS = ", ".join(BOOK_MODEL_CONFIGS)


def _book_config(value: str) -> dict | str:
    if value in BOOK_MODEL_CONFIGS:
        return value
    try:
        return json.loads(Path(value).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--book_config {value!r}: not a JSON file ({err}) nor one of {PRESETS}.") from None


def _convert(args) -> None:
    from transformers import AutoConfig, GPT2LMHeadModel

    # lazy: the CLI's import stays cheap (`--help` loads no GPT-2, no hub client)
    from ..tokenization import has_tokenizer, load_tokenizer
    from .faults import check_output_dir, remove_previous_run, save_pretrained_to
    from .hub import create_repo, finish_run
    from .loading import from_pretrained_strict

    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, overwrite=args.overwrite, flag="--overwrite")  # before any work
    tokenizer_source = args.tokenizer or args.model_name_or_path
    tokenizers = []
    if args.tokenizer or has_tokenizer(tokenizer_source):
        tokenizers.append(load_tokenizer(tokenizer_source, trust_remote_code=False))
    if args.book_checkpoint:
        scratch = load_book_checkpoint(args.book_checkpoint, _book_config(args.book_config))
        conversion = f"the book's `GPTModel` checkpoint `{Path(args.book_checkpoint).name}` converted"
        source, result = (None, scratch) if args.to == "scratch" else (scratch, scratch_to_gpt2(scratch))
    else:
        src = args.model_name_or_path
        wanted, model_class, convert = {
            "scratch": ("gpt2", GPT2LMHeadModel, gpt2_to_scratch),
            "gpt2": ("gpt_scratch", GPTScratchForCausalLM, scratch_to_gpt2),
        }[args.to]
        model_type = AutoConfig.from_pretrained(src, trust_remote_code=False).model_type
        if model_type != wanted:
            hint = {"gpt2": " (already GPT-2)", "gpt_scratch": "; --to gpt2 exports it"}.get(model_type, "")
            raise ValueError(f"--to {args.to} needs a {wanted!r} model, {src} is a {model_type!r} one{hint}.")
        source = from_pretrained_strict(model_class, src).eval()  # missing weights: refused
        result = convert(source)
        conversion = f"`{model_class.__name__}` converted"
    results = {
        "source": args.model_name_or_path or Path(args.book_checkpoint).name,
        "conversion": f"{conversion} to `{type(result).__name__}`",
        "num_parameters": result.num_parameters(),
    }
    print(f"Converted {results['source']} to {type(result).__name__} ({results['num_parameters']:,} "
          f"parameters, tied head: {result.config.tie_word_embeddings}).")
    if source is not None:  # a check of the conversion: the largest |logit difference| on a fixed batch
        shape = (2, min(8, result.config.max_position_embeddings))
        ids = torch.randint(0, result.config.vocab_size, shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (source(input_ids=ids).logits.float() - result(input_ids=ids).logits.float()).abs().max()
        results["max_logit_difference"] = diff.item()
        print(f"  check: largest |logit difference| to the source on a random batch: {diff.item():.2e}")

    if args.overwrite:
        remove_previous_run(output_dir)  # an old run's checkpoints and results are not the converted model's
    save_pretrained_to(output_dir, result, *tokenizers)
    print(f"Saved the model to {output_dir}.", f"Saved the tokenizer of {tokenizer_source}." if tokenizers
          else "No tokenizer saved (see --tokenizer).")
    repo_id = None
    if args.push_to_hub:  # the repo first: its full name (namespace included) goes into the card's snippets
        repo_id = create_repo(args.hub_model_id or output_dir.resolve().name, args.private or None)
    finish_run(output_dir, results, "convert", repo_id=repo_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 on success, 1 on a conversion error)."""
    parser = argparse.ArgumentParser(
        prog="hf-gpt-scratch-convert",
        description="Convert weights exactly: transformers GPT-2 or a .pth of the book's GPTModel -> this "
        "model (GPTScratchForCausalLM; --to scratch, the default), or this model -> GPT-2 (--to gpt2).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path", help="GPT-2 hub id or folder (gpt_scratch with --to gpt2)")
    source.add_argument("--book_checkpoint", help="a .pth state dict of the book's GPTModel")
    parser.add_argument("--book_config", help=f"a JSON file like GPT_CONFIG_124M, or one of {PRESETS}")
    parser.add_argument("--to", choices=("scratch", "gpt2"), default="scratch", help="target format")
    parser.add_argument("--output_dir", required=True, help="folder to save the converted model into")
    parser.add_argument("--tokenizer", help="tokenizer to save with it: hub id, folder, or 'gpt2' (OpenAI's "
                        "BPE, offline); default: the one in --model_name_or_path, if any")
    parser.add_argument("--overwrite", action="store_true", help="replace a model or run in --output_dir")
    parser.add_argument("--push_to_hub", action="store_true", help="also upload the result to the Hub")
    parser.add_argument("--hub_model_id", help="repo id for --push_to_hub (default: the name of output_dir)")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    args = parser.parse_args(argv)
    if bool(args.book_checkpoint) != bool(args.book_config):
        parser.error("--book_checkpoint needs --book_config (a JSON file or a preset), only it takes one.")
    if args.hub_model_id and not args.push_to_hub:
        parser.error("--hub_model_id needs --push_to_hub.")
    try:
        _convert(args)
    except (ValueError, TypeError, OSError, RuntimeError) as err:  # RuntimeError: the upload
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
