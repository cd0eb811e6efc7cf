"""`make demo`: the book's whole journey on CPU in one command.

1. pretrain a small GPT from scratch (recipes/pretrain.py) on public text available offline: the
   book's the-verdict.txt, the instruction data's *training* split and every SMS message outside the
   spam validation and test splits as unlabeled text (never a held-out text), with a byte-level BPE
   trained on that text; 10% of each source is the pretraining validation text;
2. classify spam starting from it (recipes/classify.py, the book's chapter 6);
3. instruction-tune it with LoRA (recipes/instruct.py on TRL's SFTTrainer, chapter 7);
4. preference-tune the instruct model with DPO (recipes/preference.py on TRL's DPOTrainer, with the
   book's hyperparameters: `--preset book_dpo`, chapter 7's bonus);
5. generate from the tuned model (recipes/generate.py).

Each step is the recipe itself, run as a subprocess with the flags printed, so every number can be
reproduced by hand. The results land in `<output_dir>/summary.json` (printed as a table) with each
step's plots beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import datasets

from hf_gpt_scratch.training.data import (
    balanced_split,
    fetch_book_file,
    format_alpaca_prompt,
    format_alpaca_response,
    load_instruction_data,
    load_sms_spam,
    load_text,
    split_instruction_data,
    split_text,
)
from hf_gpt_scratch.tokenization import ENDOFTEXT

RECIPES = Path(__file__).resolve().parent

# The small GPT of the demo: ~1.3M parameters with a 2k vocabulary; 600 steps take about 2 minutes on one core.
PRETRAIN_CONFIG = "n_layers=4,emb_dim=128,n_heads=4,context_length=256,drop_rate=0.1"
PRETRAIN_FLAGS = [
    "--block_size", "128", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
    "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--weight_decay", "0.1",
    "--max_steps", "600", "--eval_steps", "100", "--logging_steps", "20",
]
VOCAB_SIZE = 2048  # of 1,024-8,192 tried, 1,536 and 2,048 gave the best spam accuracy (docs/demo.md)


def unlabeled_spam_texts(messages: datasets.Dataset, held_out: Iterable[datasets.Dataset]) -> list[str]:
    """The messages usable as unlabeled pretraining text: every text of `messages` (labels dropped)
    that is in none of the `held_out` splits, compared after `strip()` (the collection repeats some
    messages, so a held-out row's text can also occur among the rows the split left out), each text
    once, in file order. For the book's split these are the training messages plus the ~4,000 ham
    messages that undersampling drops; the validation and test texts never reach pretraining."""
    excluded = {text.strip() for split in held_out for text in split["text"]}
    kept = dict.fromkeys(text.strip() for text in messages["text"])
    return [text for text in kept if text and text not in excluded]


def build_corpus(out: Path, data_dir: str | None, seed: int = 123, validation_fraction: float = 0.1) -> dict[str, int]:
    """Write the pretraining text to `out`/train.txt and `out`/validation.txt, each holding every
    source, so that the validation loss measures the mix that is trained on: the-verdict.txt (the
    book's split: its last 10% of characters), the SMS messages outside the spam validation and test
    splits (`unlabeled_spam_texts`, each followed by <|endoftext|> as the classifier reads them) and
    the instruction training entries (Alpaca-formatted); of the messages and of the entries a random
    10% (`Dataset.train_test_split`) is validation. The later steps' test splits are never in either
    file. Returns the characters written per file."""
    messages = load_sms_spam(data_dir=data_dir)
    spam = balanced_split(messages)
    sms = [text + ENDOFTEXT for text in unlabeled_spam_texts(messages, [spam["validation"], spam["test"]])]
    instruct_train, _, _ = split_instruction_data(load_instruction_data(data_dir=data_dir))
    alpaca = [format_alpaca_prompt(e) + format_alpaca_response(e) for e in instruct_train]
    verdict = split_text(load_text(fetch_book_file("the-verdict.txt", data_dir)), 1 - validation_fraction)
    sms, alpaca = (
        datasets.Dataset.from_dict({"text": texts}).train_test_split(test_size=validation_fraction, seed=seed)
        for texts in (sms, alpaca)
    )
    sizes = {}
    for name, verdict_part, key in (("train", verdict[0], "train"), ("validation", verdict[1], "test")):
        text = "\n\n".join([verdict_part, "\n".join(sms[key]["text"]), *alpaca[key]["text"]])
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        sizes[name] = len(text)
    return sizes


def run_step(name: str, argv: list[str], log_dir: Path) -> float:
    """Run one recipe as a subprocess, echoing its command; its output also goes to <name>.log."""
    print(f"\n=== {name}: {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        if proc.wait() != 0:
            raise SystemExit(f"demo step {name!r} failed (exit {proc.returncode}); see {log_dir / (name + '.log')}")
    seconds = time.perf_counter() - started
    print(f"=== {name} done in {seconds:.0f} s", flush=True)
    return seconds


def read_results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def summarize(out: Path, seconds: dict[str, float]) -> dict:
    pre, cls, ins, dpo = (read_results(out / name) for name in ("pretrain", "classify", "instruct", "preference"))
    summary = {
        "pretrain": {
            "train_loss": pre["train_loss"],
            "val_loss": pre["eval_loss"],
            "val_perplexity": pre["perplexity"],
            "train_tokens": pre["train_tokens"],
            "tokens_per_second": pre["tokens_per_second"],
        },
        "classify": {
            "val_accuracy": cls["val_accuracy"],
            "test_accuracy": cls["test_accuracy"],
            "test_f1": cls["test_f1"],
            "baseline_tfidf_test_accuracy": cls["baseline_tfidf_test_accuracy"],
        },
        "instruct": {
            "test_loss_before": ins["test_loss_before"],
            "test_loss_after": ins["test_loss_after"],
            "rouge_l_before": ins["rouge_l_before"],
            "rouge_l_after": ins["rouge_l_after"],
        },
        "preference": {
            "test_reward_margin_before": dpo["test_reward_margin_before"],
            "test_reward_margin_after": dpo["test_reward_margin_after"],
            "test_reward_accuracy_before": dpo["test_reward_accuracy_before"],
            "test_reward_accuracy_after": dpo["test_reward_accuracy_after"],
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict, out: Path) -> None:
    print("\n" + "=" * 64)
    print(f"{'step':<10} {'metric':<30} {'value':>14}")
    print("-" * 64)
    for step, values in summary.items():
        for key, value in values.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{step:<10} {key:<30} {shown:>14}")
    print("=" * 64)
    print(f"summary: {out / 'summary.json'}; plots: {', '.join(str(p) for p in sorted(out.glob('*/*.png')))}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--data_dir", default=None, help="folder with the book's data files (default: $HF_GPT_SCRATCH_DATA)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes); numbers are meaningless")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        os.environ["HF_GPT_SCRATCH_DATA"] = args.data_dir
    py = sys.executable
    common = ["--seed", str(args.seed), "--overwrite_output_dir", "true"]
    quick = args.quick
    seconds: dict[str, float] = {}

    chars = build_corpus(out, args.data_dir, seed=args.seed)
    print(f"pretraining text: {chars['train']:,} characters in {out / 'train.txt'}, "
          f"{chars['validation']:,} in {out / 'validation.txt'}")
    seconds["tokenizer"] = run_step(
        "tokenizer",
        [py, "-m", "hf_gpt_scratch.training.train_tokenizer", "--train_file", str(out / "train.txt"),
         "--vocab_size", str(1024 if quick else VOCAB_SIZE), "--model_max_length", "256",
         "--output_dir", str(out / "tokenizer"), "--overwrite_output_dir"],
        out,
    )
    pretrain_flags = PRETRAIN_FLAGS + (["--max_steps", "10", "--eval_steps", "5"] if quick else [])
    seconds["pretrain"] = run_step(
        "pretrain",
        [py, str(RECIPES / "pretrain.py"), "--train_file", str(out / "train.txt"), "--validation_file",
         str(out / "validation.txt"), "--tokenizer_name", str(out / "tokenizer"),
         "--config_overrides", PRETRAIN_CONFIG, *pretrain_flags, *common, "--output_dir", str(out / "pretrain")],
        out,
    )
    seconds["classify"] = run_step(
        "classify",
        [py, str(RECIPES / "classify.py"), "--preset", "demo", "--model_name_or_path", str(out / "pretrain"),
         *(["--max_steps", "5"] if quick else []), *common, "--output_dir", str(out / "classify")],
        out,
    )
    seconds["instruct"] = run_step(
        "instruct",
        [py, str(RECIPES / "instruct.py"), "--preset", "demo", "--model_name_or_path", str(out / "pretrain"),
         *(["--max_steps", "5", "--max_test_samples", "4", "--max_new_tokens", "8"] if quick else []),
         *common, "--output_dir", str(out / "instruct")],
        out,
    )
    seconds["preference"] = run_step(
        "preference",
        [py, str(RECIPES / "preference.py"), "--preset", "book_dpo", "--model_name_or_path", str(out / "instruct"),
         *(["--max_steps", "2", "--max_test_samples", "4", "--num_samples", "1", "--max_new_tokens", "8"] if quick else []),
         *common, "--output_dir", str(out / "preference")],
        out,
    )
    seconds["generate"] = run_step(
        "generate",
        [py, str(RECIPES / "generate.py"), "--model_name_or_path", str(out / "preference"), "--alpaca",
         "--prompt", "Rewrite the sentence using a simile.", "--input", "The car is very fast.",
         "--max_new_tokens", "8" if quick else "48"],
        out,
    )
    summary = summarize(out, seconds)
    print_summary(summary, out)
    return summary


if __name__ == "__main__":
    main()
