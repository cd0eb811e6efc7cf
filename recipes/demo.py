"""`make demo`: the book's journey on CPU in one command: a BPE, then pretrain.py, classify.py,
instruct.py, preference.py and generate.py, each a subprocess with its flags printed (the steps:
README). The results land in `<output_dir>/summary.json`, each step's plots and log beside it."""

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

from hf_gpt_scratch.training import data
from hf_gpt_scratch.tokenization import ENDOFTEXT

RECIPES = Path(__file__).resolve().parent
VOCAB_SIZE = 2048  # of 1,024-8,192 tried, 1,536 and 2,048 gave the best spam accuracy (docs/demo.md)
# What summary.json takes from each step's all_results.json, under the names of RESULT_KEYS where they differ.
SUMMARY_KEYS = {
    "pretrain": ["train_loss", "val_loss", "val_perplexity", "train_tokens", "tokens_per_second"],
    "classify": ["val_accuracy", "test_accuracy", "test_f1", "baseline_tfidf_test_accuracy"],
    "instruct": ["test_loss_before", "test_loss_after", "rouge_l_before", "rouge_l_after"],
    "preference": ["test_reward_margin_before", "test_reward_margin_after", "test_reward_accuracy_before",
                   "test_reward_accuracy_after"],
}
RESULT_KEYS = {"train_loss": "train_loss_last", "val_loss": "eval_loss", "val_perplexity": "perplexity",
               "train_tokens": "num_input_tokens_seen", "tokens_per_second": "train_tokens_per_second",
               "val_accuracy": "eval_accuracy"}
QUICK = {  # --quick: each recipe's extra flags
    "pretrain": ["--max_steps", "10", "--eval_steps", "5"],
    "classify": ["--max_steps", "5"],
    "instruct": ["--max_steps", "5", "--max_test_samples", "4", "--max_new_tokens", "8"],
    "preference": ["--max_steps", "2", "--max_test_samples", "4", "--num_samples", "1",
                   "--max_new_tokens", "8"],
}


def unlabeled_spam_texts(messages: datasets.Dataset, held_out: Iterable[datasets.Dataset]) -> list[str]:
    """The texts of `messages` in none of the `held_out` splits (compared after `strip()`: the
    collection repeats some messages), each once, in file order: for the book's split, the training
    messages and the ham that undersampling drops, never a validation or test text."""
    excluded = {text.strip() for split in held_out for text in split["text"]}
    kept = dict.fromkeys(text.strip() for text in messages["text"])
    return [text for text in kept if text and text not in excluded]


def build_corpus(out: Path, data_dir: str | None, seed: int = 123, validation_fraction: float = 0.1) -> dict[str, int]:
    """Write `out`/train.txt and validation.txt, each from every source: the-verdict.txt (the book's
    character split), `unlabeled_spam_texts` + <|endoftext|> each and the Alpaca-formatted instruction
    training entries (a random `validation_fraction` of both; no test text). Returns characters per file."""
    messages = data.load_sms_spam(data_dir=data_dir)
    spam = data.balanced_split(messages)
    sms = [text + ENDOFTEXT for text in unlabeled_spam_texts(messages, [spam["validation"], spam["test"]])]
    instruct_train, _, _ = data.split_instruction_data(data.load_instruction_data(data_dir=data_dir))
    alpaca = [data.format_alpaca_prompt(e) + data.format_alpaca_response(e) for e in instruct_train]
    verdict = data.load_text(data.fetch_book_file("the-verdict.txt", data_dir))
    verdict = data.split_text(verdict, 1 - validation_fraction)
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
    """Run one step as a subprocess, echoing its command; its output also goes to <name>.log."""
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--data_dir", default=None, help="folder with the book's data files (default: $HF_GPT_SCRATCH_DATA)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step (about 2 minutes); numbers are meaningless")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        os.environ["HF_GPT_SCRATCH_DATA"] = args.data_dir
    chars = build_corpus(out, args.data_dir, seed=args.seed)
    print(f"pretraining text: {chars['train']:,} characters in {out / 'train.txt'}, "
          f"{chars['validation']:,} in {out / 'validation.txt'}")

    def recipe(name: str, *flags: str) -> list[str]:  # a recipe's command line, writing to <out>/<name>
        common = ["--seed", str(args.seed), "--overwrite_output_dir", "true", "--output_dir", str(out / name)]
        return [str(RECIPES / f"{name}.py"), *flags, *(QUICK[name] if args.quick else []), *common]

    steps = {
        "tokenizer": ["-m", "hf_gpt_scratch.training.train_tokenizer", "--train_file", str(out / "train.txt"),
                      "--vocab_size", str(1024 if args.quick else VOCAB_SIZE), "--model_max_length", "256",
                      "--output_dir", str(out / "tokenizer"), "--overwrite_output_dir"],
        "pretrain": recipe("pretrain", "--preset", "demo", "--train_file", str(out / "train.txt"),
                           "--validation_file", str(out / "validation.txt"),
                           "--tokenizer_name", str(out / "tokenizer")),
        "classify": recipe("classify", "--preset", "demo", "--model_name_or_path", str(out / "pretrain")),
        "instruct": recipe("instruct", "--preset", "demo", "--model_name_or_path", str(out / "pretrain")),
        "preference": recipe("preference", "--preset", "book_dpo", "--model_name_or_path",
                             str(out / "instruct")),
        "generate": [str(RECIPES / "generate.py"), "--model_name_or_path", str(out / "preference"),
                     "--alpaca", "--prompt", "Rewrite the sentence using a simile.", "--input",
                     "The car is very fast.", "--max_new_tokens", "8" if args.quick else "48"],
    }
    seconds = {}
    for name, step_argv in steps.items():
        seconds[name] = run_step(name, [sys.executable, *step_argv], out)

    summary = {}
    for step, keys in SUMMARY_KEYS.items():
        results = json.loads((out / step / "all_results.json").read_text())
        summary[step] = {key: results[RESULT_KEYS.get(key, key)] for key in keys}
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}; plots: {', '.join(str(p) for p in sorted(out.glob('*/*.png')))}")
    return summary


if __name__ == "__main__":
    main()
