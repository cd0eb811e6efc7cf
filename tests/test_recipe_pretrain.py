"""recipes/pretrain.py and recipes/generate.py end to end, with a user's flags: `main(argv)` in this
process (`run_recipe`), and under torchrun in subprocesses."""

import json
import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_gpt_scratch
from hf_gpt_scratch.training.arguments import parse_config_overrides
from hf_gpt_scratch.training.data import book_windows, split_text

from conftest import DATA, RECIPES, VERDICT, load_recipe, run_command, run_recipe

TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.0"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(not VERDICT.is_file(), reason=f"book data not found in {DATA}")


@pytest.fixture(scope="module")
def bpe_dir(verdict_bpe_dir):
    return verdict_bpe_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, bpe_dir):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    stdout = run_recipe(
        "pretrain",
        "--tokenizer_name", bpe_dir,
        "--config_overrides", TINY,
        "--block_size", 64,
        "--max_steps", 20,
        "--per_device_train_batch_size", 8,
        "--learning_rate", 5e-3,
        "--logging_steps", 5,
        "--eval_steps", 10,
        "--sample_prompts", "Every effort moves you", "I had always",
        "--max_new_tokens", 12,
        "--disable_tqdm", "true",
        "--output_dir", out,
    )
    return out, stdout


def test_results_json_has_finite_fields(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss_last", "eval_loss", "perplexity", "num_input_tokens_seen", "train_runtime",
                "train_tokens_per_second", "initial_eval_loss", "train_steps_per_second", "num_parameters",
                "train_loss"):
        assert isinstance(results[key], (int, float)) and math.isfinite(results[key]), key
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-6)
    assert results["train_steps"] == 20 and results["block_size"] == 64 and results["world_size"] == 1
    # 20 steps of 8 blocks of 64 tokens, less the short batch at the end of an epoch
    assert 0.9 * 20 * 8 * 64 <= results["num_input_tokens_seen"] <= 20 * 8 * 64
    samples = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == ["Every effort moves you", "I had always"]
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)


def test_training_moves_the_loss_the_right_way(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "all_results.json").read_text())
    # untrained: about ln(512) = 6.24; after 20 steps clearly lower
    assert results["initial_eval_loss"] == pytest.approx(math.log(512), abs=0.3)
    assert results["eval_loss"] < results["initial_eval_loss"] - 0.3
    assert results["train_loss_last"] < results["initial_eval_loss"]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert [e["num_input_tokens_seen"] for e in evals][0] == 0


def test_loss_plot_is_written(tiny_run):
    out, stdout = tiny_run
    png = out / "loss.png"
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert "***** eval metrics *****" in stdout and "Every effort moves you" in stdout


def test_saved_model_reloads_with_auto_classes(tiny_run, bpe_dir):
    out, _ = tiny_run
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, hf_gpt_scratch.GPTScratchForCausalLM)
    assert (model.config.n_layers, model.config.emb_dim, model.config.context_length) == (2, 32, 64)
    assert model.config.vocab_size == len(tokenizer) == 512
    assert tokenizer("Every effort")["input_ids"] == AutoTokenizer.from_pretrained(bpe_dir)("Every effort")["input_ids"]
    # the saved weights are the trained ones: the loss on held-out text matches all_results.json's ballpark
    results = json.loads((out / "all_results.json").read_text())
    _, val_text = split_text(VERDICT.read_text(encoding="utf-8"), 0.9)
    ids = torch.tensor([tokenizer(val_text)["input_ids"][:64]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < results["initial_eval_loss"] - 0.2


def test_generate_continues_a_prompt(tiny_run):
    out, _ = tiny_run
    stdout = run_recipe("generate", "--model_name_or_path", out, "--prompt", "Every effort moves you", "--max_new_tokens", 10)
    assert stdout.startswith("Every effort moves you")
    assert len(stdout.strip()) > len("Every effort moves you")
    sampled = run_recipe(
        "generate", "--model_name_or_path", out, "--prompt", "I had", "--max_new_tokens", 10,
        "--temperature", 1.0, "--top_k", 20, "--seed", 1, "--stream", "false",
    )
    assert sampled.startswith("I had") and len(sampled.strip()) > len("I had")


def test_generate_reads_prompts_from_stdin(tiny_run):
    out, _ = tiny_run
    stdout = run_recipe("generate", "--model_name_or_path", out, "--max_new_tokens", 5, "--alpaca", input="Name a color.\n\nSay hi.\n")
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) >= 2  # one answer per non-empty line


def test_book_windows_json_data_and_resume(tmp_path, bpe_dir):
    """--stride (the book's windows with exact targets), --eval_train_samples, a .jsonl train file,
    --validation_split_percentage over rows, and --resume_from_checkpoint last."""
    paragraphs = [p for p in VERDICT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    train_file = tmp_path / "verdict.jsonl"
    train_file.write_text("".join(json.dumps({"content": p}) + "\n" for p in paragraphs))
    common = [
        "--train_file", train_file, "--text_column_name", "content", "--validation_split_percentage", 20,
        "--tokenizer_name", bpe_dir, "--config_overrides", TINY, "--block_size", 32, "--stride", 16,
        "--eval_train_samples", 4, "--per_device_train_batch_size", 4, "--save_strategy", "steps",
        "--save_steps", 2, "--logging_steps", 1, "--eval_steps", 2, "--disable_tqdm", "true",
        "--output_dir", tmp_path / "out", "--max_new_tokens", 3,
    ]
    run_recipe("pretrain", *common, "--max_steps", 2)
    first = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    run_recipe("pretrain", *common, "--max_steps", 4, "--resume_from_checkpoint", "last")
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())

    # the windows are the book's: count them from the same rows
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    n_val = round(len(paragraphs) * 0.2)
    ids = [t for p in paragraphs[: len(paragraphs) - n_val] for t in tokenizer(p)["input_ids"]]
    assert first["train_blocks"] == results["train_blocks"] == len(book_windows(ids, 32, 16))
    assert results["train_steps"] == 4 and results["num_input_tokens_seen"] == 4 * 4 * 32
    assert math.isfinite(results["eval_train_loss"]) and math.isfinite(results["eval_loss"])
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_validation_loss" in e] == [0, 2, 4]
    assert [e["step"] for e in history if "eval_train_loss" in e] == [0, 2, 4]


def test_book_ch5_preset_arguments(tmp_path):
    recipe = load_recipe("pretrain")
    types = (recipe.ModelArguments, recipe.PretrainDataArguments, recipe.ReportArguments, recipe.TrainingArguments)
    model_args, data_args, sampling, args, preset = recipe.parse_recipe_args(
        types, presets=recipe.PRESETS, defaults=recipe.RECIPE_DEFAULTS,
        args=["--preset", "book_ch5", "--max_steps", "3", "--config_overrides", "n_layers=2"],
    )
    # the same file given by its path
    by_path = recipe.parse_recipe_args(types, presets=recipe.PRESETS, defaults=recipe.RECIPE_DEFAULTS,
                                       args=[str(recipe.PRESETS / "book_ch5.yaml")])
    assert by_path[-1] == preset == "book_ch5" and by_path[3].to_dict() == {**args.to_dict(), "max_steps": -1}
    assert args.learning_rate == 4e-4 and args.weight_decay == 0.1 and args.num_train_epochs == 10
    assert args.per_device_train_batch_size == 2 and args.seed == 123 and args.warmup_steps == 0
    assert args.lr_scheduler_type == "constant" and args.max_grad_norm == 0.0
    assert args.max_steps == 3  # explicit flags win
    assert data_args.block_size == 256 and data_args.stride == 256 and data_args.validation_split_percentage == 10
    assert model_args.tokenizer_name == "gpt2"
    overrides = parse_config_overrides(model_args.config_overrides, hf_gpt_scratch.GPTScratchConfig())
    assert overrides["context_length"] == 256 and overrides["n_layers"] == 2 and overrides["emb_dim"] == 768
    assert overrides["drop_rate"] == 0.1 and overrides["qkv_bias"] is False and overrides["tie_word_embeddings"] is False
    assert args.output_dir == "runs/book_ch5" and sampling.sample_prompts == ["Every effort moves you"]
    assert model_args.init_weights == "torch" and args.dataloader_drop_last and data_args.eval_train_samples == 10


def test_bad_arguments_fail_clearly(tmp_path, bpe_dir):
    recipe = load_recipe("pretrain")
    base = ["--tokenizer_name", str(bpe_dir), "--config_overrides", TINY, "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="exceeds the model's context_length"):
        recipe.main([*base, "--block_size", "128"])
    for override in ("n_layerz=2", "dtype=float16", "model_type=gpt2"):  # half precision on CPU, an internal field
        with pytest.raises(ValueError, match=f"--config_overrides '{override}'"):
            recipe.main([*base[:2], "--config_overrides", override, "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--max_steps must be"):
        recipe.main([*base, "--max_steps", "0"])
    with pytest.raises(ValueError, match="not enough for one block"):
        short = tmp_path / "short.txt"
        short.write_text("Only a few words here.\n" * 3)
        recipe.main([*base, "--train_file", str(short), "--block_size", "64"])


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, bpe_dir):
    out = tmp_path / "ddp"
    proc = run_command([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", RECIPES / "pretrain.py",
        "--tokenizer_name", bpe_dir, "--config_overrides", TINY, "--block_size", 32,
        "--max_steps", 4, "--per_device_train_batch_size", 2, "--learning_rate", 5e-3,
        "--logging_steps", 2, "--eval_steps", 2,
        "--disable_tqdm", "true", "--max_new_tokens", 4, "--output_dir", out,
    ])
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2
    # tokens are counted over both processes: 4 steps x 2 ranks x 2 blocks x 32 tokens
    assert results["num_input_tokens_seen"] == 4 * 2 * 2 * 32
    assert math.isfinite(results["eval_loss"]) and results["eval_loss"] < results["initial_eval_loss"]
    # reports, samples and files come from rank 0 only
    assert proc.stdout.count("***** train metrics *****") == 1
    assert proc.stdout.count(" - __main__ - preset ") == 1  # the start line (the Trainer logs the rest)
    assert proc.stdout.count("--- 'Every effort moves you'") == 1
    assert sorted(p.name for p in out.glob("*results.json")) == ["all_results.json", "eval_results.json",
                                                                  "train_results.json"]
    assert (out / "loss.png").is_file() and (out / "model.safetensors").is_file()


def test_generate_from_stock_gpt2_dir_and_lora_adapter(tmp_path, tiny_run):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_gpt_scratch.tokenization import gpt2_tokenizer

    # a stock GPT-2 folder (model + tokenizer files) is converted on the fly
    stock = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(stock)
    gpt2_tokenizer().save_pretrained(stock)
    stdout = run_recipe("generate", "--model_name_or_path", stock, "--prompt", "Hello", "--max_new_tokens", 4)
    assert stdout.startswith("Hello") and len(stdout.strip()) > len("Hello")

    # a LoRA adapter over the pretrained run: loaded over its base, tokenizer from the base
    out, _ = tiny_run
    base = AutoModelForCausalLM.from_pretrained(out)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "tokenizer.json").exists()
    stdout = run_recipe("generate", "--model_name_or_path", adapter, "--prompt", "Every effort", "--max_new_tokens", 4)
    assert stdout.startswith("Every effort") and len(stdout.strip()) > len("Every effort")
