"""recipes/preference.py and hf_gpt_scratch.training.preference: DPO on TRL's DPOTrainer. The loss of
a batch equals the book's `compute_dpo_loss` on log-probabilities computed here by hand (summed, and
averaged as the book's `compute_logprobs` does) and TRL's own; the recipe end to end on a tiny
checkpoint (LoRA and full); bad preference files refused before training."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from conftest import load_recipe, run_command, run_recipe
from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from hf_gpt_scratch.training.data import format_alpaca_prompt
from hf_gpt_scratch.training.preference import (
    load_preference_data,
    PreferenceDataArguments,
    preference_dataset,
)

# peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (not ours to fix).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    # TRL 1.16 declares `gradient_checkpointing`, which transformers 5 renamed (not ours to fix)
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "preference.py"
LOG2 = math.log(2)
THINGS = ["red", "blue", "green", "a cat", "the sea"]


# --------------------------------------------------------------------------------------------
# Fixtures: a tiny checkpoint with a 512-token BPE (GPT-2's 50k vocabulary works the same but makes
# `datasets` spend seconds hashing the tokenizer on each of TRL's maps), and preference files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, verdict_bpe_dir) -> Path:
    tok = AutoTokenizer.from_pretrained(verdict_bpe_dir)
    config = GPTScratchConfig(vocab_size=len(tok), context_length=256, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_gpt")
    GPTScratchForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _entries(n: int) -> list[dict]:
    """Polite (chosen) vs rude (rejected) answers, some entries with an input, as the book's file."""
    return [{"instruction": f"Name thing number {i}.", "input": "" if i % 2 else f"hint {i}",
             "output": f"It is {THINGS[i % 5]}.", "chosen": f"It is {THINGS[i % 5]}, thank you.",
             "rejected": f"It is {THINGS[i % 5]}, you fool."} for i in range(n)]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "preferences.json"
    path.write_text(json.dumps(_entries(40)))  # the book's split: 34 train / 2 validation / 4 test
    return path


# --------------------------------------------------------------------------------------------
# The loss of one batch: the book's formula, TRL's loss and TRL's logged margin agree
# --------------------------------------------------------------------------------------------


def book_compute_dpo_loss(model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs,
                          reference_rejected_logprobs, beta=0.1):
    """dpo-from-scratch.ipynb's `compute_dpo_loss`, as printed in the notebook."""
    model_logratios = model_chosen_logprobs - model_rejected_logprobs
    reference_logratios = reference_chosen_logprobs - reference_rejected_logprobs
    logits = model_logratios - reference_logratios
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()
    rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()
    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


def book_compute_logprobs(logits, labels, selection_mask):
    """dpo-from-scratch.ipynb's `compute_logprobs` (with a selection mask): the mean log-probability
    of the selected next tokens of each sequence."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    log_probs = F.log_softmax(logits, dim=-1)
    selected_log_probs = torch.gather(input=log_probs, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    mask = selection_mask[:, 1:].clone()
    selected_log_probs = selected_log_probs * mask
    return selected_log_probs.sum(-1) / mask.sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm"])
def test_dpo_loss_of_a_batch_is_the_books_formula_and_trls(tmp_path, tiny_checkpoint, loss_type):
    """sigmoid: the book's formula on summed response log-probabilities (the DPO paper's); sigmoid_norm:
    on the book's own per-token means. Policy and reference differ (the policy's weights are
    perturbed), so the loss is not the trivial log 2."""
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    entries = _entries(6)
    beta = 0.1
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], bf16=False, use_cpu=True,
                     report_to="none", per_device_train_batch_size=6, max_length=256, gradient_checkpointing=False)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=preference_dataset(entries),
                         processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(entries))])
    ids, mask = batch["input_ids"], batch["completion_mask"]
    n = len(entries)
    # the scored tokens: "\n\n### Response:\n" + the chosen / rejected text + <|endoftext|>
    for i, entry in enumerate(entries):
        assert tok.decode(ids[i][mask[i].bool()]) == "\n\n### Response:\n" + entry["chosen"] + tok.eos_token
        assert tok.decode(ids[n + i][mask[n + i].bool()]) == "\n\n### Response:\n" + entry["rejected"] + tok.eos_token
        assert tok.decode(ids[i][: int(mask[i].argmax())]) == format_alpaca_prompt(entry)

    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        means = {name: book_compute_logprobs(m(input_ids=ids, attention_mask=batch["attention_mask"]).logits, ids, mask)
                 for name, m in (("policy", policy), ("reference", reference))}
    counts = mask[:, 1:].sum(-1)
    logps = {name: v * counts if loss_type == "sigmoid" else v for name, v in means.items()}
    book_loss, _, _ = book_compute_dpo_loss(logps["policy"][:n], logps["policy"][n:], logps["reference"][:n],
                                            logps["reference"][n:], beta=beta)
    assert abs(book_loss.item() - LOG2) > 1e-3
    assert trl_loss.item() == pytest.approx(book_loss.item(), rel=1e-5)
    # TRL's logged margin: beta * the summed log-ratio of chosen minus rejected, averaged over the pairs
    sums = {name: v * counts for name, v in means.items()}
    margin = beta * ((sums["policy"][:n] - sums["reference"][:n]) - (sums["policy"][n:] - sums["reference"][n:]))
    assert trainer._metrics["eval"]["rewards/margins"][-1] == pytest.approx(margin.mean().item(), rel=1e-5, abs=1e-6)
    assert trainer._metrics["eval"]["rewards/accuracies"][-1] == pytest.approx((margin > 0).float().mean().item())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_book_file_split_and_format(data_dir):
    entries = load_preference_data()  # the book's file: 6 identical pairs kept, as the book does
    assert len(entries) == 1100
    assert [i for i, e in enumerate(entries) if e["chosen"] == e["rejected"]] == [122, 226, 400, 566, 628, 676]
    train, validation, test = PreferenceDataArguments().load_splits()
    assert (len(train), len(validation), len(test)) == (935, 55, 110)  # the notebook's
    assert test[0]["instruction"] == "Rewrite the sentence using a simile."  # the notebook's first test entry
    row = preference_dataset([entries[50]])[0]
    assert row["prompt"] == ("Below is an instruction that describes a task. Write a response that appropriately "
                             "completes the request.\n\n### Instruction:\nIdentify the correct spelling of the following "
                             "word.\n\n### Input:\nOcassion")  # the notebook's format_input(data[50])
    assert row["chosen"] == "\n\n### Response:\nThe correct spelling is 'Occasion.'"
    assert row["rejected"] == "\n\n### Response:\nThe correct spelling is obviously 'Occasion.'"
    with pytest.raises(ValueError, match=r"row 122, 226, 400, 566, 628, 676: 'chosen' and 'rejected' are identical"):
        load_preference_data(identical_pairs="error")
    assert len(load_preference_data(identical_pairs="drop")) == 1094


def _bad(entries, i, change):
    entries = [dict(e) for e in entries]
    change(entries[i])
    return entries


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.pop("rejected"), r"row 5 has no 'rejected' field"),
        (lambda e: e.update(chosen="  "), r"row 5 field 'chosen' must be a non-empty string, got str '  '"),
        (lambda e: e.update(instruction=3),
         r"row 5 field 'instruction' must be a non-empty string, got int 3"),
        (lambda e: e.update(rejected=e["chosen"]), r"row 5: 'chosen' and 'rejected' are identical"),
    ],
    ids=["missing", "empty", "not-a-string", "identical"],
)
def test_bad_preference_file_fails_before_training(tmp_path, tiny_checkpoint, change, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in _bad(_entries(12), 5, change)) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        run_recipe("preference", "--model_name_or_path", tiny_checkpoint, "--train_file", path, "--output_dir", out)
    assert not out.exists()  # nothing trained, nothing written


def test_identical_pairs_can_be_dropped(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_bad(_entries(12), 5, lambda e: e.update(rejected=e["chosen"]))))
    assert [e["instruction"] for e in load_preference_data(path, identical_pairs="drop")] == \
        [e["instruction"] for i, e in enumerate(_entries(12)) if i != 5]
    assert len(load_preference_data(path, identical_pairs="keep")) == 12


def test_book_dpo_preset_and_learning_rate_defaults(tmp_path):
    recipe = load_recipe("preference")
    *_, lora, _, args, preset = recipe.parse_args(["--preset", "book_dpo", "--output_dir", str(tmp_path / "a")])
    assert preset == "book_dpo" and not lora.use_lora
    assert (args.beta, args.loss_type, args.learning_rate, args.weight_decay, args.num_train_epochs) == \
        (0.1, ["sigmoid_norm"], 5e-6, 0.01, 1)
    assert (args.per_device_train_batch_size, args.eval_steps, args.max_grad_norm, args.bf16) == (8, 5, 0.0, False)
    assert recipe.parse_args(["--output_dir", str(tmp_path / "b")])[4].learning_rate == recipe.LORA_LEARNING_RATE
    assert recipe.parse_args(["--use_lora", "false", "--output_dir", str(tmp_path / "c")])[4].learning_rate == 5e-6


# --------------------------------------------------------------------------------------------
# The recipe end to end
# --------------------------------------------------------------------------------------------

COMMON = ["--max_steps", "6", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
          "--max_new_tokens", "6", "--eval_steps", "3", "--logging_steps", "2", "--disable_tqdm", "true"]


def _check_run(out: Path, n_test: int = 4, world: int = 1) -> dict:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "all_results.json",
                 "train_results.json", "eval_results.json", "test_results.json", "responses.json", "loss.png",
                 "reward_margins.png", "README.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["n_test"] == n_test and results["world_size"] == world
    for prefix in ("eval", "test"):
        # before training the policy is the reference: loss log 2, no margin, no pair ranked right
        assert results[f"{prefix}_loss_before"] == pytest.approx(LOG2, abs=1e-6)
        assert results[f"{prefix}_reward_margin_before"] == pytest.approx(0.0, abs=1e-6)
        assert results[f"{prefix}_reward_accuracy_before"] == 0.0
    # a few steps at a high rate: the chosen (polite) answers gain on the rejected ones
    assert results["test_reward_margin_after"] > results["test_reward_margin_before"] + 0.05
    assert results["test_reward_accuracy_after"] > results["test_reward_accuracy_before"]
    assert results["test_loss_after"] < LOG2
    responses = json.loads((out / "responses.json").read_text())
    assert len(responses) == 3 and all({"reference_response", "tuned_response", "chosen"} <= set(r) for r in responses)
    card = (out / "README.md").read_text()
    assert "test reward margin" in card and "DPOTrainer" in card
    assert "| dropout in training | off (TRL's disable_dropout) |" in card  # DPOConfig's default
    return results


def test_lora_end_to_end(tmp_path, tiny_checkpoint, train_file):
    out = tmp_path / "lora"
    printed = run_recipe("preference", "--model_name_or_path", tiny_checkpoint, "--train_file", train_file,
                         "--output_dir", out, "--learning_rate", "1e-2", *COMMON)
    results = _check_run(out)
    for split in ("eval", "test"):  # the Trainer's log_metrics: before and after tuning, side by side
        assert f"***** {split} metrics *****" in printed and f"{split}_reward_accuracy_before" in printed
    assert results["finetuning"] == "lora" and 0 < results["trainable_parameters"] < results["total_parameters"]
    # the merged model at the top is the base plus the adapter in adapter/
    from peft import PeftModel

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), out / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)


def test_full_end_to_end(tmp_path, tiny_checkpoint, train_file):
    out = tmp_path / "full"
    run_recipe("preference", "--model_name_or_path", tiny_checkpoint, "--train_file", train_file,
               "--output_dir", out, "--use_lora", "false", "--learning_rate", "1e-3", *COMMON)
    results = _check_run(out)
    assert results["finetuning"] == "full" and results["trainable_parameters"] == results["total_parameters"]
    assert not (out / "adapter").exists()
    start = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(start.get_input_embeddings().weight, tuned.get_input_embeddings().weight)


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, tiny_checkpoint, train_file):
    out = tmp_path / "ddp"
    run_command([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", RECIPE,
        "--model_name_or_path", tiny_checkpoint, "--train_file", train_file, "--output_dir", out,
        "--learning_rate", "1e-2", "--max_steps", "6", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2", "--max_new_tokens", "6", "--eval_steps", "3", "--logging_steps", "2",
        "--disable_tqdm", "true",
    ], timeout=400, OMP_NUM_THREADS="1")
    _check_run(out, world=2)


def test_the_length_check_counts_the_pairs_trl_truncates(tmp_path, tiny_checkpoint, caplog):
    """`check_lengths` counts a pair as TRL's DPOTrainer tokenizes it (prompt, then chosen/rejected
    with the eos TRL appends): at a --max_length one token short of the longest pair, exactly the
    pairs TRL's collator cuts are counted (without the eos, none would be)."""
    from hf_gpt_scratch.training.faults import check_lengths

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    dataset = preference_dataset(_entries(10))
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=None)
    prepared = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_checkpoint), args=args,
                          train_dataset=dataset, processing_class=tok).train_dataset
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in prepared]
    limit = max(lengths) - 1
    cut = sum(n > limit for n in lengths)
    with caplog.at_level("WARNING", logger="hf_gpt_scratch"):
        check_lengths({"train": dataset}, tok, limit, "prefs.json", completions=("chosen", "rejected"))
    assert f"prefs.json (train split): {cut} entry(s) are longer than {limit} tokens" in caplog.text


def test_a_max_length_the_prompts_fill_is_refused_before_training(tmp_path, tiny_checkpoint, train_file):
    """TRL drops pairs whose prompt fills --max_length without a word (an emptied split then failed
    with a KeyError after loading); the recipe names them first, and writes nothing."""
    from hf_gpt_scratch.training.faults import ExampleTooLongError

    out = tmp_path / "short"
    with pytest.raises(ExampleTooLongError, match=r"prompt\(s\) are longer than 19 tokens.*--max_length"):
        run_recipe("preference", "--model_name_or_path", tiny_checkpoint, "--train_file", train_file,
                   "--output_dir", out, "--max_length", "20", *COMMON)
    assert not out.exists() or not any(out.iterdir())
