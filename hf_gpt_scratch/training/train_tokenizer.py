"""Command line: train a byte-level BPE (`tokenization.train_bpe_tokenizer`) and save it, refusing
to write over a model, tokenizer or run in --output_dir (`faults.check_output_dir`) and saving as
one set (`faults.save_pretrained_to`: a failed save keeps the old files)::

    python -m hf_gpt_scratch.training.train_tokenizer --train_file a.txt --vocab_size 8000 --output_dir tok
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .faults import OutputDirNotEmptyError, check_output_dir, save_pretrained_to
from ..tokenization import train_bpe_tokenizer


def _read_text(path: str, parser: argparse.ArgumentParser) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        parser.error(f"--train_file {path}: {err.strerror or err}")
    except UnicodeDecodeError as err:
        parser.error(f"--train_file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                     f"{err.start}); convert it first, e.g. `iconv -f utf-16 -t utf-8` or `iconv -f latin1 -t utf-8`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_gpt_scratch.training.train_tokenizer",
                                     description="Train a byte-level BPE and save it with save_pretrained.")
    parser.add_argument("--train_file", action="append", required=True, help="UTF-8 text file (repeatable)")
    parser.add_argument("--vocab_size", type=int, required=True)
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--model_max_length", type=int, default=None)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace the model, tokenizer or run already in --output_dir")
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir)  # before any work
    except OutputDirNotEmptyError as err:
        parser.error(str(err))

    tokenizer = train_bpe_tokenizer(
        [_read_text(path, parser) for path in args.train_file],
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
    )
    save_pretrained_to(args.output_dir, tokenizer)
    print(f"saved a {len(tokenizer)}-token byte-level BPE to {args.output_dir}")


if __name__ == "__main__":
    main()
