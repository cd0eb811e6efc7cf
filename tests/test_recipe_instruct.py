"""recipes/instruct.py and hf_gpt_scratch.training.instruction: instruction finetuning with TRL's
SFTTrainer end to end on a tiny checkpoint (LoRA and full), its first loss against the book's
chapter 7 code, the evaluation helpers, and examples/judge.py (the book's LLM judge) against a fake
Ollama server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import re
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_gpt_scratch  # noqa: F401
from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from hf_gpt_scratch.training.arguments import TrlLoraArguments
from hf_gpt_scratch.training.data import format_alpaca_prompt, load_instruction_data
from hf_gpt_scratch.training.instruction import sft_dataset
from hf_gpt_scratch.training.instruction import (
    evaluate_instruction_model,
    extract_response,
    generate_responses,
    response_loss,
    rouge_l,
)
from hf_gpt_scratch.tokenization import gpt2_tokenizer

from conftest import load_recipe

# peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "instruct.py"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


def _tiny_model(tokenizer) -> GPTScratchForCausalLM:
    config = GPTScratchConfig(
        vocab_size=len(tokenizer), context_length=160, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return GPTScratchForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny_gpt")
    _tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _entries(n: int) -> list[dict]:
    """Small synthetic Alpaca entries (some with an input)."""
    entries = []
    for i in range(n):
        if i % 3 == 0:
            entries.append({"instruction": "Add the two numbers.", "input": f"{i} and {i + 1}", "output": f"The sum is {2 * i + 1}."})
        else:
            entries.append({"instruction": f"Name a color number {i}.", "input": "", "output": "Blue." if i % 2 else "Red."})
    return entries


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "instructions.json"
    path.write_text(json.dumps(_entries(40)))  # book split: 34 train / 2 validation / 4 test
    return path


class _FakeOllama(BaseHTTPRequestHandler):
    """Answers POST /api/chat like Ollama: a streamed answer (one JSON line per chunk) whose content
    is the score given by the server's `answer` callable."""

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length).decode("utf-8"))
        self.server.requests.append({"path": self.path, "body": body})
        if self.path != "/api/chat":
            self.send_response(404)
            self.end_headers()
            return
        content = self.server.answer(body["messages"][-1]["content"])
        chunks = [content[: len(content) // 2], content[len(content) // 2 :]]
        lines = [json.dumps({"model": body["model"], "message": {"role": "assistant", "content": c}, "done": False}) for c in chunks]
        lines.append(json.dumps({"model": body["model"], "message": {"role": "assistant", "content": ""}, "done": True}))
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_judge():
    """A fake Ollama server on 127.0.0.1 (a free port), scoring every response 85 unless the test
    changes `server.answer`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOllama)
    server.requests = []
    server.answer = lambda prompt: "85"
    server.handle_error = lambda request, client_address: None  # a test's failing handler stays quiet
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_recipe(args: list) -> dict:
    """The recipe's main(argv), in this process."""
    return load_recipe("instruct").main([str(a) for a in args] + ["--disable_tqdm", "true"])


def _check_results(out: Path, n_test: int) -> dict:
    results = json.loads((out / "all_results.json").read_text())
    for key in ("test_loss_before", "test_loss_after", "rouge_l_before", "rouge_l_after", "train_loss", "runtime",
                "trainable_parameters", "total_parameters"):
        assert key in results, f"all_results.json has no {key}: {sorted(results)}"
        assert math.isfinite(results[key]), (key, results[key])
    assert 0 <= results["rouge_l_before"] <= 1 and 0 <= results["rouge_l_after"] <= 1
    assert results["n_test"] == n_test
    responses = json.loads((out / "responses.json").read_text())
    assert len(responses) == n_test
    for record in responses:
        assert {"instruction", "input", "output", "model_response"} <= set(record)
        assert isinstance(record["model_response"], str)
    assert len(json.loads((out / "responses_before.json").read_text())) == n_test
    assert (out / "loss.png").stat().st_size > 0
    return results


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_lora_end_to_end(tmp_path, tiny_checkpoint, train_file):
    from peft import AutoPeftModelForCausalLM, PeftModel

    out = tmp_path / "lora"
    _run_recipe([
        "--model_name_or_path", tiny_checkpoint, "--train_file", train_file, "--output_dir", out,
        "--max_train_samples", "24", "--max_new_tokens", "8", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "4", "--eval_steps", "3", "--logging_steps", "1", "--completion_only_loss", "true",
        "--lora_modules_to_save", "out_head",
    ])
    results = _check_results(out, n_test=4)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert results["finetuning"] == "lora" and adapter_config["modules_to_save"] == ["out_head"]
    trained_with = json.loads((out / "adapter" / "training_args.json").read_text())  # (beside the adapter)
    assert trained_with["learning_rate"] == pytest.approx(5e-4)
    assert results["train_steps"] == 6
    assert 0 < results["trainable_parameters"] < results["total_parameters"]
    responses = json.loads((out / "responses.json").read_text())
    assert [r["instruction"] for r in responses] == [e["instruction"] for e in _entries(40)[34:38]]

    # Adapter over the base == merged model == AutoPeftModel, and tuning changed the model.
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(1))
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        base_logits = base(input_ids=x).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
        adapter_logits = adapted(input_ids=x).logits
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        merged_logits = merged(input_ids=x).logits
        auto_logits = AutoPeftModelForCausalLM.from_pretrained(out / "adapter").eval()(input_ids=x).logits
    assert type(merged) is GPTScratchForCausalLM
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(auto_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-5)
    # the head trained in full (TRL reads the weight of PEFT's trained copy), the embedding not at all
    untuned = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)  # (PEFT wrapped `base` in place)
    assert not torch.equal(merged.out_head.weight, untuned.out_head.weight)
    assert torch.equal(merged.model.tok_emb.weight, untuned.model.tok_emb.weight)
    assert merged.config.use_cache is True
    assert (out / "tokenizer.json").exists() and (out / "adapter" / "tokenizer.json").exists()


def test_full_finetuning_end_to_end(tmp_path, tiny_checkpoint, train_file):
    out = tmp_path / "full"
    _run_recipe([
        "--model_name_or_path", tiny_checkpoint, "--train_file", train_file, "--output_dir", out,
        "--use_lora", "false", "--max_train_samples", "16", "--max_new_tokens", "6", "--max_steps", "3",
        "--per_device_train_batch_size", "4",
    ])
    results = _check_results(out, n_test=4)
    assert results["finetuning"] == "full"
    trained_with = json.loads((out / "training_args.json").read_text())
    assert trained_with["learning_rate"] == pytest.approx(5e-5)  # the book's rate for full finetuning
    assert results["trainable_parameters"] == results["total_parameters"]
    assert not (out / "adapter").exists()
    tuned = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed


def test_packing_trains_every_token_once_in_fewer_rows(tmp_path, tiny_checkpoint, train_file, tokenizer):
    """--packing (TRL's best-fit decreasing, padding-free): the 16 entries (39 to 50 tokens) fill rows
    of --max_length 160, so one epoch at 2 rows a step takes at most 3 steps (8 unpacked), and the
    tokens trained on are exactly the entries' tokens (no padding, nothing cut)."""
    out = tmp_path / "packed"
    results = _run_recipe([
        "--model_name_or_path", tiny_checkpoint, "--train_file", train_file, "--output_dir", out,
        "--packing", "true", "--max_train_samples", 16, "--per_device_train_batch_size", 2, "--num_train_epochs", 1,
        "--max_length", 160, "--eval_before", "false", "--max_test_samples", 1, "--max_new_tokens", 2,
    ])
    texts = sft_dataset(_entries(40)[:16], tokenizer.eos_token)
    tokens = sum(len(tokenizer(p + c)["input_ids"]) for p, c in zip(texts["prompt"], texts["completion"]))
    assert json.loads((out / "adapter" / "training_args.json").read_text())["packing"] is True
    assert 2 <= results["train_steps"] <= 3
    assert results["num_input_tokens_seen"] == tokens
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["test_loss_after"])


def test_book_data_split_and_sample_limits(tmp_path, tiny_checkpoint, data_dir):
    if not (data_dir / "instruction-data.json").exists():
        pytest.skip("instruction-data.json not in the data folder")
    out = tmp_path / "book"
    _run_recipe([
        "--model_name_or_path", tiny_checkpoint, "--data_dir", data_dir, "--output_dir", out,
        "--max_train_samples", "8", "--max_eval_samples", "4", "--max_test_samples", "3", "--max_new_tokens", "4",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_before", "false",
    ])
    results = json.loads((out / "all_results.json").read_text())
    assert (results["n_train"], results["n_validation"], results["n_test"]) == (8, 4, 3)
    assert "test_loss_before" not in results and math.isfinite(results["test_loss_after"])
    book = load_instruction_data(data_dir / "instruction-data.json")
    responses = json.loads((out / "responses.json").read_text())
    assert [r["instruction"] for r in responses] == [e["instruction"] for e in book[935:938]]  # the book's test split


def test_resume_evaluates_each_step_once(tmp_path, tiny_checkpoint, train_file):
    """A resumed run does not evaluate its resumed step again (eval_on_start is off), and the final
    evaluation reuses the last step's."""
    out = tmp_path / "resumed"
    common = ["--model_name_or_path", tiny_checkpoint, "--train_file", train_file, "--output_dir", out,
              "--max_train_samples", "16", "--per_device_train_batch_size", "4", "--eval_steps", "2",
              "--save_strategy", "steps", "--save_steps", "2", "--eval_before", "false",
              "--max_test_samples", "1", "--max_new_tokens", "2"]
    _run_recipe(common + ["--max_steps", "2"])
    results = _run_recipe(common + ["--max_steps", "4", "--resume_from_checkpoint", "last"])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [0, 2, 4]
    assert results["train_steps"] == 4 and results["eval_loss"] == [e for e in history if "eval_loss" in e][-1]["eval_loss"]
    assert "hf_gpt_scratch" in (out / "README.md").read_text()  # our card, not the one TRL writes at each checkpoint


def test_malformed_instruction_file_fails_before_training(tmp_path, train_file):
    entries = _entries(10)
    del entries[1]["output"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    recipe = load_recipe("instruct")
    out = tmp_path / "out"
    # The model path does not exist: the data error must come first.
    with pytest.raises(ValueError, match=r"row 1 has no 'output' field"):
        recipe.main(["--model_name_or_path", str(tmp_path / "no_such_model"), "--train_file", str(bad),
                     "--output_dir", str(out), "--report_to", "none"])
    assert not out.exists()


def test_use_lora_picks_the_learning_rate_default(tmp_path):
    recipe = load_recipe("instruct")

    def learning_rate(*argv):
        return recipe.parse_args([*argv, "--output_dir", str(tmp_path / "out")])[4].learning_rate

    assert learning_rate() == learning_rate("--use_lora") == recipe.LORA_LEARNING_RATE
    for argv in (["--use_lora", "false"], ["--no_use_lora"], ["--use-lora", "false"], ["--use_lora=no"]):
        assert learning_rate(*argv) == recipe.FULL_LEARNING_RATE, argv
    assert learning_rate("--preset", "book_ch7") == recipe.FULL_LEARNING_RATE
    assert learning_rate("--use_lora", "false", "--learning_rate", "0.1") == 0.1  # an explicit rate wins
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"use_lora": False}))
    assert learning_rate(str(flags)) == recipe.FULL_LEARNING_RATE
    _, _, lora_args, _, training_args, preset = recipe.parse_args(["--preset", "demo", "--output_dir", str(tmp_path)])
    assert preset == "demo" and training_args.learning_rate == 1e-3 and lora_args.lora_dropout == 0.05
    assert "out_head" not in lora_args.target_modules() and training_args.completion_only_loss is True


def test_help_shows_the_defaults_in_use_and_old_flags_name_their_successors(tmp_path, capsys):
    recipe = load_recipe("instruct")
    for argv, rate in ((["--help"], "0.0005"), (["--use_lora", "false", "--help"], "5e-05")):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
        shown = capsys.readouterr().out
        assert "Instruction finetuning of the book's GPT" in shown
        assert re.search(r"The initial learning rate for AdamW\. \(default: " + rate + r"\)", shown)
    # pretrain's and classify's dataset flags are not this recipe's: --help does not list them, a run refuses them
    assert "--block_size" not in shown and "--validation_split_percentage" not in shown
    for flag in ("--block_size", "--validation_split_percentage", "--dataset_name"):
        with pytest.raises(ValueError, match=f"not used by the HfArgumentParser: \\['{flag}', '20'\\]"):
            recipe.parse_args([flag, "20", "--output_dir", str(tmp_path / "out")])
    for old, new in (("--mask_prompt", "--completion_only_loss true"), ("--max_seq_length", "--max_length")):
        with pytest.raises(ValueError, match=f"{old} is now {new}"):
            recipe.parse_args([old, "1", "--output_dir", str(tmp_path / "out")])
    # SFTConfig's own flags, with the recipe's defaults: the book's full-sequence loss, float32, the model's context
    training_args = recipe.parse_args(["--output_dir", str(tmp_path)])[4]
    assert isinstance(training_args, recipe.SFTConfig)
    assert (training_args.completion_only_loss, training_args.bf16, training_args.max_length) == (False, False, None)
    assert training_args.activation_checkpointing is False and training_args.packing is False
    for given, expected in ((["--completion_only_loss"], True), (["--completion_only_loss", "false"], False)):
        assert recipe.parse_args(["--output_dir", str(tmp_path), *given])[4].completion_only_loss is expected
    model_args, *_, training_args, _ = recipe.parse_args(["--output_dir", str(tmp_path), "--trust_remote_code"])
    assert model_args.trust_remote_code is True and training_args.trust_remote_code is True  # one flag fills both


def test_trl_lora_config_refuses_the_output_head_and_unknown_names(tokenizer):
    """SFTTrainer computes the loss from the head's weight directly (an adapter there never trains):
    the head is refused by its name, tied or not, before any training, as is a name that is no module."""
    model = _tiny_model(tokenizer)
    config = TrlLoraArguments(lora_target_modules="W_query,ff.layers.0").checked_peft_config(model)
    assert config.task_type == "CAUSAL_LM" and set(config.target_modules) == {"W_query", "ff.layers.0"}
    assert TrlLoraArguments(lora_target_modules="all-linear").checked_peft_config(model).target_modules == "all-linear"
    tied = GPTScratchForCausalLM(GPTScratchConfig(**{**model.config.to_dict(), "tie_word_embeddings": True}))
    assert tied.out_head.weight is tied.model.tok_emb.weight
    for m in (model, tied):
        with pytest.raises(ValueError, match=r"--lora_target_modules out_head: that is the output head"):
            TrlLoraArguments(lora_target_modules="W_query,out_head").checked_peft_config(m)
    with pytest.raises(ValueError, match=r"--lora_modules_to_save: the output head is tied"):
        TrlLoraArguments(lora_modules_to_save=["out_head"]).checked_peft_config(tied)
    assert TrlLoraArguments(lora_modules_to_save=["out_head"]).checked_peft_config(model).modules_to_save == ["out_head"]
    with pytest.raises(ValueError, match=r"--lora_target_modules no_such_layer: no such module \(module names: .*'W_query'"):
        TrlLoraArguments(lora_target_modules="W_query,no_such_layer").checked_peft_config(model)


# --------------------------------------------------------------------------------------------
# What the recipe trains on: the book's tokens and loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_lora, completion_only_loss", [("false", "false"), ("false", "true"), ("true", "true")])
def test_first_loss_is_the_books(tmp_path, tokenizer, train_file, use_lora, completion_only_loss):
    """The recipe's first training loss (SFTTrainer: one batch of the 8 first training entries, 3 of
    them cut by --max_length 45) equals the book's on the same weights and batch: ch07's
    InstructionDataset and custom_collate_fn (allowed_max_length 44: 44 inputs and targets, from 45
    tokens) and ch05's calc_loss_batch on the book's GPTModel; completion-only loss is the book's
    exercise 7.2, which masks targets[:len(prompt) - 1]. LoRA starts at B = 0: the same loss."""
    ch04 = pytest.importorskip("llms_from_scratch.ch04")
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    ch07 = pytest.importorskip("llms_from_scratch.ch07")
    from hf_gpt_scratch.convert import book_to_scratch

    book_config = dict(vocab_size=len(tokenizer), context_length=64, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                       qkv_bias=True)
    torch.manual_seed(0)
    book = ch04.GPTModel(book_config).eval()
    book_to_scratch(book.state_dict(), book_config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    entries = _entries(40)[:8]
    inputs, targets = ch07.custom_collate_fn(list(ch07.InstructionDataset(entries, tokenizer)), allowed_max_length=44)
    if completion_only_loss == "true":
        for row, entry in enumerate(entries):
            targets[row, : len(tokenizer.encode(ch07.format_input(entry))) - 1] = -100
    assert (targets[:, -1] != -100).sum() == 3  # three rows cut, none of them masked at the end
    with torch.no_grad():
        expected = ch05.calc_loss_batch(inputs, targets, book, "cpu").item()

    out = tmp_path / "out"
    _run_recipe([
        "--model_name_or_path", tmp_path / "model", "--train_file", train_file, "--output_dir", out,
        "--use_lora", use_lora, "--completion_only_loss", completion_only_loss, "--max_length", 45,
        "--max_train_samples", 8, "--per_device_train_batch_size", 8, "--max_steps", 1, "--logging_steps", 1,
        "--eval_before", "false", "--max_test_samples", 1, "--max_new_tokens", 1,
    ])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["loss"] for e in history if "loss" in e] == [pytest.approx(expected, rel=1e-5)]


def test_sft_tokens_are_the_books_on_the_book_data(tmp_path, tokenizer, data_dir):
    """Every entry of instruction-data.json as SFTTrainer prepares it from `sft_dataset`: the ids
    are the book's (ch07.InstructionDataset) plus <|endoftext|>, and completion-only labels mask
    exactly the tokens of the book's `format_input` prompt."""
    ch07 = pytest.importorskip("llms_from_scratch.ch07")
    from trl import SFTConfig, SFTTrainer

    if not (data_dir / "instruction-data.json").exists():
        pytest.skip("instruction-data.json not in the data folder")
    entries = load_instruction_data(data_dir / "instruction-data.json")
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=None, bf16=False, use_cpu=True,
                     activation_checkpointing=False, report_to="none")
    prepared = SFTTrainer(model=_tiny_model(tokenizer), args=args, processing_class=tokenizer,
                          train_dataset=sft_dataset(entries, tokenizer.eos_token)).train_dataset
    book = ch07.InstructionDataset(entries, tokenizer)
    assert len(prepared) == len(entries) == 1100
    for i, (entry, row) in enumerate(zip(entries, prepared)):
        ids = book[i] + [tokenizer.eos_token_id]
        prompt = len(tokenizer.encode(ch07.format_input(entry)))
        assert row["input_ids"] == ids, i
        assert row["labels"] == [-100] * prompt + ids[prompt:], i


# --------------------------------------------------------------------------------------------
# Evaluation helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("The car is as fast as lightning.", "The car is as fast as lightning."),
        ("  Paris.\n\n### Instruction:\nName a city.", "Paris."),
        ("\n\n### Response:\nJane Austen.\n\n### Instruction:\nWho?", "Jane Austen."),  # the book's prompt
        ("### Response:\n42", "42"),
        ("Blue.\n\n### Input:\nfoo", "Blue."),
        ("Red.\n\n### Response:\nGreen.", "Red."),
        ("Yes.\nBelow is an instruction that describes a task. Write a response", "Yes."),
        ("ok<|endoftext|>more", "ok"),
        ("", ""),
        ("\n\n### Instruction:\nonly a new prompt", ""),
    ],
)
def test_extract_response(generated, expected):
    assert extract_response(generated) == expected


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("\n\n### Response:\nJane Austen.<|endoftext|>", "Jane Austen."),
        ("\n\n### Input:\nx\n\n### Response:\nParis.\n\n### Instruction:\nmore", "Paris."),
        ("no header at all", "no header at all"),
    ],
)
def test_extract_response_from_the_books_prompt(generated, expected):
    """The book prompts without "### Response:" and keeps what follows the header the model writes."""
    assert extract_response(generated, header_in_prompt=False) == expected


def test_batched_left_padded_generation_matches_one_by_one(tokenizer):
    model = _tiny_model(tokenizer)
    entries = _entries(5)
    one = generate_responses(model, tokenizer, entries, max_new_tokens=6, batch_size=1, stop_strings=None)
    batched = generate_responses(model, tokenizer, entries, max_new_tokens=6, batch_size=4, stop_strings=None)
    assert [r["generated"] for r in batched] == [r["generated"] for r in one]
    # Each raw continuation equals a plain greedy generate of that single prompt.
    ids = tokenizer(format_alpaca_prompt(entries[2], response_header=True), return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert one[2]["generated"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert not model.training


def test_generation_keeps_prompts_whole_within_the_context(tokenizer, caplog):
    model = _tiny_model(tokenizer)  # context 160; these prompts are ~40-60 tokens
    entries = _entries(2)
    short = generate_responses(model, tokenizer, entries, max_new_tokens=6, batch_size=1, stop_strings=None)
    long = generate_responses(model, tokenizer, entries, max_new_tokens=1000, batch_size=1, stop_strings=None)
    for a, b in zip(short, long):
        assert b["generated"].startswith(a["generated"])  # the prompt was not cut to make room
        assert len(b["generated"]) > len(a["generated"])  # ... and generation ran on to the context's end
    assert "cut" not in caplog.text
    # A prompt longer than the context is cut from the left instead of failing, with a warning.
    huge = entries + [{"instruction": "word " * 300, "input": "", "output": "x"}]
    with caplog.at_level("WARNING", logger="hf_gpt_scratch.training.instruction"):
        assert len(generate_responses(model, tokenizer, huge, max_new_tokens=8, stop_strings=None)) == 3
    n = len(tokenizer(format_alpaca_prompt(huge[2], response_header=True))["input_ids"])
    assert f"Entry 2: its prompt has {n} tokens, the model's context 160; generating from its last 152 tokens" in caplog.text


def test_response_loss_counts_response_tokens_only(tokenizer):
    model = _tiny_model(tokenizer)
    entries = _entries(5)
    total1, count1 = response_loss(model, tokenizer, entries, batch_size=1)
    total3, count3 = response_loss(model, tokenizer, entries, batch_size=3)
    assert count1 == count3 and total1 == pytest.approx(total3, rel=1e-5)
    # Response tokens (+ the appended end-of-text) of each entry, computed by hand.
    expected_count, expected_total = 0, 0.0
    for entry in entries:
        prompt = tokenizer(format_alpaca_prompt(entry), add_special_tokens=False)["input_ids"]
        full = tokenizer(format_alpaca_prompt(entry) + f"\n\n### Response:\n{entry['output']}", add_special_tokens=False)["input_ids"]
        full = full + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0]
        targets = torch.tensor(full[len(prompt):])
        expected_total += torch.nn.functional.cross_entropy(logits[len(prompt) - 1 : -1], targets, reduction="sum").item()
        expected_count += len(targets)
    assert count1 == expected_count
    assert total1 == pytest.approx(expected_total, rel=1e-4)


def test_evaluate_instruction_model(tokenizer):
    model = _tiny_model(tokenizer)
    entries = _entries(3)
    result = evaluate_instruction_model(model, tokenizer, entries, max_new_tokens=4, batch_size=2)
    assert len(result["responses"]) == 3 and len(result["generated"]) == 3
    assert math.isfinite(result["loss"]) and result["loss_tokens"] > 0
    assert 0.0 <= result["rouge_l"] <= 1.0


def test_rouge_l():
    assert rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(0.8571428571428571)
    assert rouge_l(["a b", ""], ["a b", "x"]) == pytest.approx(0.5)
    assert math.isnan(rouge_l([], []))


# --------------------------------------------------------------------------------------------
# examples/judge.py: the book's LLM judge on responses.json
# --------------------------------------------------------------------------------------------


def _judge_module():
    spec = importlib.util.spec_from_file_location("judge_example", ROOT / "examples" / "judge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _responses_file(tmp_path, n=3) -> Path:
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([dict(e, model_response=f"response {i}") for i, e in enumerate(_entries(n))]))
    return path


def test_judge_scores_responses_with_fake_ollama(tmp_path, fake_judge, capsys):
    judge = _judge_module()
    answers = iter(["90", "I would say 60.", "no idea"])
    fake_judge.answer = lambda prompt: next(answers)
    responses = _responses_file(tmp_path)
    url = f"http://127.0.0.1:{fake_judge.server_address[1]}/api/chat"
    assert judge.main([str(responses), "--url", url, "--model", "fake-judge"]) == [90, 60, None]
    assert "Could not convert score for entry 2: 'no idea'" in capsys.readouterr().out
    scored = json.loads((tmp_path / "responses_scored.json").read_text())
    assert [r["judge_score"] for r in scored] == [90, 60, None] and scored[1]["model_response"] == "response 1"
    # The book's prompt for every entry, at /api/chat, with the book's deterministic options.
    entry = json.loads(responses.read_text())[1]
    first = fake_judge.requests[1]
    assert first["path"] == "/api/chat" and first["body"]["model"] == "fake-judge"
    assert first["body"]["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
    expected = (
        f"Given the input `{format_alpaca_prompt(entry)}` and correct output `{entry['output']}`, "
        f"score the model response `response 1` on a scale from 0 to 100, where 100 is the "
        f"best score. Respond with the integer number only."
    )
    assert first["body"]["messages"] == [{"role": "user", "content": expected}]


def test_judge_parse_score_and_unreachable_server(tmp_path):
    judge = _judge_module()
    assert [judge.parse_score(a) for a in ("85", " 70\n", "Score: 40", "great", "250")] == [85, 70, 40, None, None]
    url = f"http://127.0.0.1:{_closed_port()}/api/chat"
    with pytest.raises(SystemExit, match=r"did not answer entry 0: .*is `ollama serve` running"):
        judge.main([str(_responses_file(tmp_path)), "--url", url])


# --------------------------------------------------------------------------------------------
# Several processes
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_sharded_evaluation(tmp_path, tiny_checkpoint, train_file):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(_closed_port()), str(RECIPE),
         "--model_name_or_path", str(tiny_checkpoint), "--train_file", str(train_file), "--output_dir", str(out),
         "--max_train_samples", "16", "--max_new_tokens", "5", "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "3", "--disable_tqdm", "true"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = _check_results(out, n_test=4)
    assert results["world_size"] == 2
    # Sharded evaluation gives the one-process numbers for the untuned model.
    tokenizer = gpt2_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    single = evaluate_instruction_model(base, tokenizer, _entries(40)[34:38], max_new_tokens=5, batch_size=3)
    assert results["test_loss_before"] == pytest.approx(single["loss"], rel=1e-5)
    before = json.loads((out / "responses_before.json").read_text())
    assert [r["model_response"] for r in before] == single["responses"]


@pytest.mark.slow
@pytest.mark.parametrize("use_lora", ["true", "false"])
def test_deepspeed_zero3_two_processes(tmp_path, tiny_checkpoint, train_file, use_lora):
    """Under ZeRO-3 the trained weights are partitioned over the processes: the recipe evaluates
    full, unsharded copies (the untuned model reloaded, the tuned one reloaded from what the Trainer
    gathered and saved), so every process can generate for its share of the test entries."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    out = tmp_path / "zero3"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml"), "--main_process_port", str(_closed_port()),
         str(RECIPE), "--model_name_or_path", str(tiny_checkpoint), "--train_file", str(train_file),
         "--output_dir", str(out), "--use_lora", use_lora, "--max_train_samples", "16", "--max_new_tokens", "5",
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
         "--disable_tqdm", "true"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = _check_results(out, n_test=4)
    assert results["world_size"] == 2
    tokenizer = gpt2_tokenizer()
    entries = _entries(40)[34:38]
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    single = evaluate_instruction_model(base, tokenizer, entries, max_new_tokens=5, batch_size=3)
    assert results["test_loss_before"] == pytest.approx(single["loss"], rel=1e-5)
    # the saved (merged) model is the one that was evaluated after tuning, and it was trained
    tuned = AutoModelForCausalLM.from_pretrained(out).eval()
    single_after = evaluate_instruction_model(tuned, tokenizer, entries, max_new_tokens=5, batch_size=3)
    assert results["test_loss_after"] == pytest.approx(single_after["loss"], rel=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(base.state_dict().values(), tuned.state_dict().values()))
    if use_lora == "true":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
