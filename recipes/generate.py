#!/usr/bin/env python
"""Generate text with a trained GPT, streaming tokens as they come.
Usage, checkpoints, decoding and chat from stdin: docs/recipes.md."""

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import HfArgumentParser, TextStreamer

from hf_gpt_scratch.training.arguments import ModelArguments
from hf_gpt_scratch.training.data import format_alpaca_prompt
from hf_gpt_scratch.training.loading import load_causal_lm, load_tokenizer_for
from hf_gpt_scratch.training.sampling import SamplingArguments, generate_text
from hf_gpt_scratch.tokenization import has_tokenizer


@dataclass
class GenerateArguments(SamplingArguments):
    prompt: list[str] | None = field(
        default=None, metadata={"help": "Prompt(s) to continue: --prompt \"A\" \"B\" (default: stdin lines)."}
    )
    alpaca: bool = field(
        default=False, metadata={"help": "Wrap prompts in the book's Alpaca format; print only the response."}
    )
    input: str | None = field(default=None, metadata={"help": "With --alpaca: the entry's input text."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A LoRA adapter's base model (default: adapter_config.json's)."}
    )
    seed: int | None = field(default=None, metadata={"help": "Random seed for sampling."})
    stream: bool = field(default=True, metadata={"help": "Print tokens as they are generated."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})

    def __post_init__(self):
        super().__post_init__()
        if self.input is not None and not self.alpaca:
            raise ValueError("--input only applies with --alpaca.")


def load_for_generation(model_args: ModelArguments, base_model_name_or_path: str | None = None):
    """(model, tokenizer); a PEFT LoRA adapter folder is loaded over its base model."""
    path = model_args.model_name_or_path
    if not (Path(path) / "adapter_config.json").is_file():
        tokenizer = load_tokenizer_for(model_args)
        return load_causal_lm(model_args, tokenizer), tokenizer
    from peft import PeftConfig, PeftModel

    base_path = base_model_name_or_path or PeftConfig.from_pretrained(path).base_model_name_or_path
    if base_path and not Path(base_path).exists() and (Path(path) / base_path).exists():
        base_path = str(Path(path) / base_path)  # a base saved beside the adapter, named relative to it
    base_args = replace(model_args, model_name_or_path=base_path)
    tokenizer = load_tokenizer_for(model_args if has_tokenizer(path) else base_args)  # else the base's
    return PeftModel.from_pretrained(load_causal_lm(base_args, tokenizer), path), tokenizer


def _stdin_prompts():
    prompt = "> " if sys.stdin.isatty() else ""
    if prompt:
        print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
    print(prompt, end="", file=sys.stderr, flush=True)
    for line in iter(sys.stdin.readline, ""):
        if line.strip():
            yield line.rstrip("\n")
        print(prompt, end="", file=sys.stderr, flush=True)


def main(args: list[str] | None = None) -> list[str]:
    parser = HfArgumentParser((ModelArguments, GenerateArguments), description=__doc__.split("\n")[0])
    parser.set_defaults(max_new_tokens=100)
    model_args, gen_args = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    model, tokenizer = load_for_generation(model_args, gen_args.base_model_name_or_path)
    model.to(gen_args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    kwargs = gen_args.generation_kwargs()
    outputs = []
    for i, text in enumerate(gen_args.prompt or _stdin_prompts()):
        entry = {"instruction": text, "input": gen_args.input or ""}
        prompt = format_alpaca_prompt(entry, response_header=True) if gen_args.alpaca else text
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if gen_args.stream else None
        if gen_args.prompt and not gen_args.alpaca:
            print(text, end="", flush=True)  # a continuation reads best after its prompt
        seed = None if gen_args.seed is None else gen_args.seed + i
        completion = generate_text(model, tokenizer, prompt, streamer=streamer, seed=seed, **kwargs)
        if streamer is None:
            print(completion, flush=True)  # (the streamer ends its output with a newline itself)
        outputs.append(completion)
    return outputs


if __name__ == "__main__":
    main(sys.argv[1:])
