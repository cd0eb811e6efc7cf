"""Command line: train a byte-level BPE (`tokenization.train_bpe_tokenizer`) on UTF-8 files and save
it as one set, refusing to write over a model, tokenizer or run in --output_dir (`faults`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tokenization import train_bpe_tokenizer
from .faults import OutputDirNotEmptyError, check_output_dir, save_pretrained_to


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
    texts = []
    try:
        check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir)  # before any work
        for path in args.train_file:
            texts.append(Path(path).read_text(encoding="utf-8"))
    except OutputDirNotEmptyError as err:
        parser.error(str(err))
    except OSError as err:
        parser.error(f"--train_file {path}: {err.strerror or err}")
    except UnicodeDecodeError as err:
        parser.error(f"--train_file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                     f"{err.start}); convert it first, e.g. `iconv -f utf-16 -t utf-8` or "
                     "`iconv -f latin1 -t utf-8`")
    tokenizer = train_bpe_tokenizer(texts, args.vocab_size, min_frequency=args.min_frequency,
                                    model_max_length=args.model_max_length)
    save_pretrained_to(args.output_dir, tokenizer)
    print(f"saved a {len(tokenizer)}-token byte-level BPE to {args.output_dir}")


if __name__ == "__main__":
    main()
