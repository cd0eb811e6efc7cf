"""`make demo` end to end in its --quick form (numbers meaningless, every step and file real)."""

import json
import subprocess
import sys

import pytest
from conftest import RECIPES, load_recipe

from hf_gpt_scratch.training.data import (
    SPAM_LABELS,
    _classification_dataset,
    balanced_split,
    load_sms_spam,
    load_text,
    split_text,
)

demo = load_recipe("demo")
build_corpus, unlabeled_spam_texts = demo.build_corpus, demo.unlabeled_spam_texts


def test_unlabeled_spam_texts_drop_every_copy_of_a_held_out_text():
    messages = _classification_dataset(
        ["win cash now", "see you at 5", "  see you at 5 ", "ok", "win cash now", "call me", ""],
        [1, 0, 0, 0, 1, 0, 0],
        SPAM_LABELS,
    )
    held_out = messages.select([1])  # "see you at 5": its padded duplicate (row 2) must go too
    assert unlabeled_spam_texts(messages, [held_out]) == ["win cash now", "ok", "call me"]
    assert unlabeled_spam_texts(messages, [held_out, messages.select([3, 5])]) == ["win cash now"]


def test_demo_corpus_has_no_validation_or_test_message(tmp_path, data_dir):
    messages = load_sms_spam(data_dir=data_dir)
    split = balanced_split(messages)
    pool = unlabeled_spam_texts(messages, [split["validation"], split["test"]])
    held_out = {t.strip() for name in ("validation", "test") for t in split[name]["text"]}
    # the collection repeats messages: some held-out texts also occur among the other rows
    outside = {t.strip() for t in messages["text"]} - held_out
    assert len(pool) == len(outside) > 4000 and not held_out & set(pool)
    sizes = build_corpus(tmp_path, str(data_dir))
    files = {name: (tmp_path / f"{name}.txt").read_text() for name in ("train", "validation")}
    assert sizes == {name: len(text) for name, text in files.items()}
    lines = {name: {line.strip() for line in text.replace("<|endoftext|>", "\n").splitlines()} for name, text in files.items()}
    assert set(pool) <= lines["train"] | lines["validation"] and not held_out & (lines["train"] | lines["validation"])


def test_demo_validation_text_is_a_sample_of_every_source(tmp_path, data_dir):
    """The pretraining validation text holds ~10% of each source (the-verdict.txt's end, SMS
    messages, instruction entries), none of it in the training text."""
    build_corpus(tmp_path, str(data_dir))
    train, validation = ((tmp_path / f"{name}.txt").read_text() for name in ("train", "validation"))
    verdict = load_text(data_dir / "the-verdict.txt")
    assert train.startswith(split_text(verdict)[0]) and validation.startswith(split_text(verdict)[1])
    for marker in ("<|endoftext|>", "### Instruction:"):
        n_train, n_val = train.count(marker), validation.count(marker)
        assert 0.09 < n_val / (n_train + n_val) < 0.11, (marker, n_train, n_val)
    entries = validation.split("Below is an instruction")[1:]
    assert len(entries) > 80 and not any("Below is an instruction" + e.rstrip() in train for e in entries)
    assert len(validation) / (len(train) + len(validation)) == pytest.approx(0.1, abs=0.01)


@pytest.mark.slow
def test_demo_quick_runs_the_whole_journey(tmp_path, data_dir):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, str(RECIPES / "demo.py"), "--quick", "--output_dir", str(out), "--data_dir", str(data_dir)],
        capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    expected = {
        "pretrain": {"train_loss", "val_loss", "val_perplexity", "train_tokens", "tokens_per_second"},
        "classify": {"val_accuracy", "test_accuracy", "test_f1", "baseline_tfidf_test_accuracy"},
        "instruct": {"test_loss_before", "test_loss_after", "rouge_l_before", "rouge_l_after"},
        "preference": {"test_reward_margin_before", "test_reward_margin_after", "test_reward_accuracy_before",
                       "test_reward_accuracy_after"},
    }
    for step, keys in expected.items():
        assert set(summary[step]) == keys
        assert all(isinstance(v, (int, float)) and v == v for v in summary[step].values())
    assert 0.9 < summary["classify"]["baseline_tfidf_test_accuracy"] <= 1.0
    assert (out / "pretrain" / "loss.png").exists() and (out / "classify" / "confusion_matrix.png").exists()
    assert (out / "instruct" / "responses.json").exists() and (out / "preference" / "reward_margins.png").exists()
    assert summary["preference"]["test_reward_margin_before"] == 0  # the policy starts as its reference
    assert "summary:" in run.stdout
