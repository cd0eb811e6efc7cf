#!/usr/bin/env python
"""Generate text with a trained GPT, streaming tokens as they come.

The checkpoint can be one of ours (pretrain/instruct output), a stock GPT-2 folder (converted on
the fly), or a PEFT LoRA adapter folder (adapter_config.json: loaded over its base model, which
--base_model_name_or_path can point elsewhere). Prompts come from --prompt (one or more:
--prompt "A" "B") or, without it, from stdin: one prompt per line until EOF (an interactive
session in a terminal; each line is answered on its own, the models keep no chat history).

Decoding follows the book: greedy by default; --temperature > 0 samples (with --top_k / --top_p);
--do_sample forces sampling (temperature 1 unless given).

Examples:

    python recipes/generate.py --model_name_or_path runs/book_ch5 --prompt "Every effort moves you"
    python recipes/generate.py --model_name_or_path runs/instruct --alpaca \\
        --prompt "Rewrite the sentence using a simile." --input "The car is very fast."
    python recipes/generate.py --model_name_or_path runs/book_ch5 --temperature 1.4 --top_k 25   # chat
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import HfArgumentParser, TextStreamer

import hf_gpt_scratch  # noqa: F401  (registers the Auto classes)
from hf_gpt_scratch.training.arguments import ModelArguments
from hf_gpt_scratch.training.data import format_alpaca_prompt
from hf_gpt_scratch.training.loading import load_causal_lm, load_tokenizer_for
from hf_gpt_scratch.training.sampling import SamplingArguments, generate_text
from hf_gpt_scratch.tokenization import has_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class GenerateArguments(SamplingArguments):
    prompt: list[str] | None = field(
        default=None, metadata={"help": "Prompt(s) to continue: --prompt \"A\" \"B\". Without it, prompts are read from stdin, one per line."}
    )
    alpaca: bool = field(
        default=False,
        metadata={"help": "Wrap each prompt as the book's Alpaca instruction (chapter 7) and print only the response."},
    )
    input: str | None = field(default=None, metadata={"help": "With --alpaca: the entry's optional input text."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "For a LoRA adapter: its base model (default: the one in adapter_config.json)."}
    )
    seed: int | None = field(default=None, metadata={"help": "Random seed for sampling."})
    stream: bool = field(default=True, metadata={"help": "Print tokens as they are generated."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})

    def __post_init__(self):
        super().__post_init__()
        if self.input is not None and not self.alpaca:
            raise ValueError("--input only applies with --alpaca.")


def load_for_generation(model_args: ModelArguments, gen_args: GenerateArguments):
    """(model, tokenizer) for any supported checkpoint folder or hub id, in eval mode."""
    path = model_args.model_name_or_path
    adapter_config = Path(path) / "adapter_config.json" if path else None
    if adapter_config is not None and adapter_config.is_file():
        from peft import PeftConfig, PeftModel

        peft_config = PeftConfig.from_pretrained(path)
        base_path = gen_args.base_model_name_or_path or peft_config.base_model_name_or_path
        if base_path and not Path(base_path).exists() and (Path(path) / base_path).exists():
            base_path = str(Path(path) / base_path)
        base_args = replace(model_args, model_name_or_path=base_path)
        if not has_tokenizer(path):  # the adapter folder has no tokenizer: the base's
            tokenizer = load_tokenizer_for(base_args)
        else:
            tokenizer = load_tokenizer_for(model_args)
        base = load_causal_lm(base_args, tokenizer)
        model = PeftModel.from_pretrained(base, path)
    else:
        tokenizer = load_tokenizer_for(model_args)
        model = load_causal_lm(model_args, tokenizer)
    device = gen_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer


def build_prompt(text: str, gen_args: GenerateArguments) -> str:
    if not gen_args.alpaca:
        return text
    entry = {"instruction": text, "input": gen_args.input or ""}
    return format_alpaca_prompt(entry, response_header=True)


def _prompts(gen_args: GenerateArguments):
    if gen_args.prompt:
        yield from gen_args.prompt
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a prompt and press Enter (Ctrl-D to quit).", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.strip():
            yield line


def main(args: list[str] | None = None) -> list[str]:
    parser = HfArgumentParser((ModelArguments, GenerateArguments), description=__doc__.split("\n")[0])
    parser.set_defaults(max_new_tokens=100)
    model_args, gen_args = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    model, tokenizer = load_for_generation(model_args, gen_args)
    kwargs = gen_args.generation_kwargs()
    outputs = []
    for i, text in enumerate(_prompts(gen_args)):
        prompt = build_prompt(text, gen_args)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if gen_args.stream else None
        if not gen_args.alpaca and gen_args.prompt:
            print(text, end="", flush=True)  # a continuation reads best after its prompt
        seed = None if gen_args.seed is None else gen_args.seed + i
        completion = generate_text(model, tokenizer, prompt, streamer=streamer, seed=seed, **kwargs)
        if streamer is None:
            print(completion, flush=True)  # (the streamer ends its output with a newline itself)
        outputs.append(completion)
    return outputs


if __name__ == "__main__":
    main(sys.argv[1:])
