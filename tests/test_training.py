"""Shared recipe logic (arguments, loading, reporting, sampling) and the figures (hf_gpt_scratch.training.plots)."""

import json
import os

import matplotlib.image
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import hf_gpt_scratch
from hf_gpt_scratch.training.arguments import (
    DataArguments,
    DatasetArguments,
    LoraArguments,
    ModelArguments,
    cpu_distributed_defaults,
    parse_config_overrides,
    parse_recipe_args,
)
from hf_gpt_scratch.training.callbacks import default_callbacks
from hf_gpt_scratch.training.loading import load_causal_lm, tokenizer_source
from hf_gpt_scratch.training.plots import plot_confusion_matrix, plot_losses
from hf_gpt_scratch.training.reporting import log_history_to_curves, logged, save_metrics
from hf_gpt_scratch.training.sampling import SamplingArguments, context_length_of, generate_samples
from hf_gpt_scratch.tokenization import gpt2_tokenizer

from conftest import load_recipe, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gpt2_tok():
    return gpt2_tokenizer()


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# ---------------------------------------------------------------- config overrides


def test_config_overrides_are_typed():
    config = hf_gpt_scratch.GPTScratchConfig()
    values = parse_config_overrides("n_layers=2, emb_dim=64,drop_rate=0,qkv_bias=true,tie_word_embeddings=No", config)
    assert values == {"n_layers": 2, "emb_dim": 64, "drop_rate": 0.0, "qkv_bias": True, "tie_word_embeddings": False}
    assert isinstance(values["drop_rate"], float) and isinstance(values["n_layers"], int)
    assert config.n_layers == 12  # parsing changes nothing
    # standard aliases map onto the book's names; later keys win
    assert parse_config_overrides("hidden_size=128,num_hidden_layers=3,n_layers=4", config) == {"emb_dim": 128, "n_layers": 4}
    assert parse_config_overrides(None, config) == {} and parse_config_overrides(" ", config) == {}
    # any config class: its own fields
    assert parse_config_overrides("n_layer=3,resid_pdrop=0", GPT2Config()) == {"n_layer": 3, "resid_pdrop": 0.0}


def test_config_overrides_errors_name_the_key():
    config = hf_gpt_scratch.GPTScratchConfig()
    with pytest.raises(ValueError, match="'n_layer=2': expected key=value with a field of GPTScratchConfig"):
        parse_config_overrides("n_layer=2", config)
    with pytest.raises(ValueError, match="n_layers=two"):
        parse_config_overrides("n_layers=two", config)
    with pytest.raises(ValueError, match="qkv_bias"):
        parse_config_overrides("qkv_bias=maybe", config)
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("n_layers", config)
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        parse_config_overrides("n_heads=0", config)
    # dtype would train in half precision on CPU; model_type and the other PretrainedConfig fields are internal
    for key in ("dtype=float16", "model_type=gpt2", "architectures=x", "output_hidden_states=true"):
        with pytest.raises(ValueError, match=f"'{key}': expected key=value with a field"):
            parse_config_overrides(key, config)
    # values that parse but make no sense together are rejected by the config, which stays as it was
    with pytest.raises(ValueError, match="divisible"):
        config.update(parse_config_overrides("emb_dim=30,n_heads=4", config))
    assert (config.emb_dim, config.n_heads) == (768, 12)


# ---------------------------------------------------------------- model loading


def test_load_causal_lm_from_scratch(gpt2_tok):
    args = ModelArguments(config_overrides="n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.0")
    model = load_causal_lm(args, gpt2_tok)
    assert isinstance(model, hf_gpt_scratch.GPTScratchForCausalLM)
    cfg = model.config
    assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.context_length, cfg.drop_rate) == (2, 32, 2, 64, 0.0)
    assert cfg.vocab_size == len(gpt2_tok) == 50257
    assert cfg.pad_token_id == cfg.eos_token_id == 50256
    assert not cfg.tie_word_embeddings and not cfg.qkv_bias  # the book's defaults are kept
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 50257)

    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        load_causal_lm(ModelArguments(config_overrides="vocab_size=100,n_layers=1,emb_dim=16,n_heads=2"), gpt2_tok)
    with pytest.raises(ValueError, match="n_layerz"):
        load_causal_lm(ModelArguments(config_overrides="n_layerz=1"), gpt2_tok)


def test_init_weights_torch_is_the_books_initialisation(gpt2_tok, tmp_path):
    """--init_weights torch gives PyTorch's defaults, as the book's GPTModel has them; the default
    is transformers' GPT-2 convention (std 0.02)."""
    overrides = "n_layers=2,emb_dim=64,n_heads=2,context_length=64"
    gpt2_init = load_causal_lm(ModelArguments(config_overrides=overrides), gpt2_tok)
    book_init = load_causal_lm(ModelArguments(config_overrides=overrides, init_weights="torch"), gpt2_tok)
    assert gpt2_init.model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert book_init.model.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding: N(0, 1)
    for module in (book_init.model.trf_blocks[0].att.W_query, book_init.out_head):  # nn.Linear: U(+-1/sqrt(fan_in))
        assert module.weight.abs().max().item() <= 64**-0.5
        assert module.weight.std().item() == pytest.approx(64**-0.5 / 3**0.5, rel=0.05)
    with pytest.raises(ValueError, match="--init_weights must be one of gpt2, torch"):
        ModelArguments(init_weights="xavier")
    gpt2_init.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="only applies to a model trained from scratch"):
        load_causal_lm(ModelArguments(model_name_or_path=str(tmp_path), init_weights="torch"), gpt2_tok)


def test_load_causal_lm_from_config_name(tmp_path, gpt2_tok):
    tiny_config(vocab_size=50257).save_pretrained(tmp_path)
    model = load_causal_lm(ModelArguments(config_name=str(tmp_path), config_overrides="n_layers=1"), gpt2_tok)
    assert model.config.n_layers == 1 and model.config.emb_dim == 32


def test_load_causal_lm_from_stock_gpt2_dir(tmp_path, gpt2_tok):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    model = load_causal_lm(ModelArguments(model_name_or_path=str(tmp_path / "gpt2")), gpt2_tok).eval()
    assert isinstance(model, hf_gpt_scratch.GPTScratchForCausalLM)
    assert model.config.context_length == 64 and model.config.qkv_bias
    ids = torch.tensor([[15496, 11, 995, 0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gpt2(ids).logits, atol=1e-4, rtol=1e-4)
    # overrides on a checkpoint: allowed when the weights still fit
    no_dropout = load_causal_lm(
        ModelArguments(model_name_or_path=str(tmp_path / "gpt2"), config_overrides="drop_rate=0.0"), gpt2_tok
    ).eval()
    assert no_dropout.config.drop_rate == 0.0
    with torch.no_grad():
        torch.testing.assert_close(no_dropout(ids).logits, gpt2(ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        load_causal_lm(ModelArguments(model_name_or_path=str(tmp_path / "gpt2"), config_overrides="emb_dim=64"), gpt2_tok)


def test_load_causal_lm_from_our_checkpoint(tmp_path, gpt2_tok):
    saved = hf_gpt_scratch.GPTScratchForCausalLM(tiny_config(vocab_size=50257)).eval()
    saved.save_pretrained(tmp_path)
    model = load_causal_lm(ModelArguments(model_name_or_path=str(tmp_path)), gpt2_tok).eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, saved(ids).logits)
    assert model.config.pad_token_id == 50256  # taken from the tokenizer when the checkpoint had none


def test_tokenizer_source(tmp_path, gpt2_tok):
    assert tokenizer_source(ModelArguments()) is None
    assert tokenizer_source(ModelArguments(tokenizer_name="gpt2")) == "gpt2"
    assert tokenizer_source(ModelArguments(model_name_or_path="org/model")) == "org/model"  # a hub id
    with pytest.raises(ValueError, match="no tokenizer files"):  # (see test_faults.py for the GPT-2-sized case)
        tokenizer_source(ModelArguments(model_name_or_path=str(tmp_path)))
    gpt2_tok.save_pretrained(tmp_path)
    assert tokenizer_source(ModelArguments(model_name_or_path=str(tmp_path))) == str(tmp_path)
    assert tokenizer_source(ModelArguments(model_name_or_path=str(tmp_path), tokenizer_name="x")) == "x"


# ---------------------------------------------------------------- argument parsing


@pytest.fixture
def presets(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "small.yaml").write_text("# a comment\nlearning_rate: 0.25\nconfig_overrides: n_layers=3,emb_dim=64\nmax_train_samples: 32\n")
    return folder


TYPES = (ModelArguments, DataArguments, TrainingArguments)


def test_parse_recipe_args_preset_and_explicit_flags(tmp_path, presets, capsys):
    model_args, data_args, training_args, preset = parse_recipe_args(
        TYPES, presets=presets, defaults={"logging_steps": 7}, args=["--output_dir", str(tmp_path)]
    )
    assert preset is None and training_args.logging_steps == 7 and training_args.learning_rate == 5e-5
    assert model_args.config_overrides is None

    model_args, data_args, training_args, preset = parse_recipe_args(
        TYPES,
        presets=presets,
        defaults={"logging_steps": 7, "learning_rate": 0.5},
        args=["--preset", "small", "--output_dir", str(tmp_path), "--max_train_samples", "16", "--config_overrides", "n_layers=1"],
    )
    assert preset == "small"
    assert training_args.learning_rate == 0.25 and training_args.logging_steps == 7  # preset beats recipe defaults
    assert data_args.max_train_samples == 16  # explicit flag beats preset
    assert model_args.config_overrides == "n_layers=3,emb_dim=64,n_layers=1"  # appended: later keys win
    assert parse_config_overrides(model_args.config_overrides, hf_gpt_scratch.GPTScratchConfig()) == {
        "n_layers": 1,
        "emb_dim": 64,
    }

    with pytest.raises(SystemExit):
        parse_recipe_args(TYPES, presets=presets, args=["--preset", "nope", "--output_dir", str(tmp_path)])
    assert "--preset: invalid choice: 'nope' (choose from 'small')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no such arguments: nope"):
        parse_recipe_args(TYPES, defaults={"nope": 1}, args=["--output_dir", str(tmp_path)])

    # a file of flag values as the first argument (YAML or JSON), flags after it still win
    for name, text in (("args.json", json.dumps({"output_dir": str(tmp_path), "max_train_samples": 3})),
                       ("args.yaml", f"output_dir: {tmp_path}\nmax_train_samples: 3\n")):
        (tmp_path / name).write_text(text)
        _, data_args, training_args, preset = parse_recipe_args(TYPES, args=[str(tmp_path / name), "--seed", "5"])
        assert preset == "args" and data_args.max_train_samples == 3 and training_args.seed == 5
    with pytest.raises(ValueError, match="either --preset small or the file"):
        parse_recipe_args(TYPES, presets=presets, args=[str(tmp_path / "args.yaml"), "--preset", "small"])
    (tmp_path / "bad.yaml").write_text("preset: small\nblok_size: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: no such arguments: blok_size, preset"):
        parse_recipe_args(TYPES, args=[str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("max_steps", "0", "a positive number of steps, or -1"),
        ("max_steps", "-3", "a positive number of steps, or -1"),
        ("num_train_epochs", "0", "a positive finite number of epochs"),
        ("num_train_epochs", "nan", "a positive finite number of epochs"),
        ("gradient_accumulation_steps", "0", "a positive integer"),
        ("per_device_train_batch_size", "0", "a positive integer"),
        ("per_device_eval_batch_size", "-1", "a positive integer"),
        ("learning_rate", "-0.001", "a finite number >= 0"),
        ("learning_rate", "nan", "a finite number >= 0"),
        ("seed", "-1", "an integer in \\[0, 2\\*\\*32\\)"),
        ("data_seed", "4294967296", "an integer in \\[0, 2\\*\\*32\\)"),
    ],
)
def test_nonsense_training_flags_fail_at_parse_time(tmp_path, flag, value, expected):
    with pytest.raises(ValueError, match=f"^--{flag} must be {expected}.*, got"):
        parse_recipe_args(TYPES, args=["--output_dir", str(tmp_path), f"--{flag}", value])
    assert not any(tmp_path.iterdir())


def test_epochs_may_be_zero_when_max_steps_is_given(tmp_path):
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(tmp_path), "--num_train_epochs", "0",
                                                          "--max_steps", "3"])
    assert training_args.max_steps == 3


def test_lora_arguments():
    default = LoraArguments()
    assert default.target_modules() == ["W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2"]
    assert LoraArguments(lora_target_modules=["all-linear"]).target_modules() == "all-linear"
    assert LoraArguments(lora_target_modules=["W_query,W_key", "out_head"]).target_modules() == ["W_query", "W_key", "out_head"]
    config = LoraArguments(lora_r=4, lora_alpha=8.0).peft_config(task_type="CAUSAL_LM", target_modules=["W_query"])
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (4, 8.0, 0.0, {"W_query"})
    for kwargs, flag in (({"lora_r": 0}, "--lora_r"), ({"lora_dropout": 1.0}, "--lora_dropout"),
                         ({"lora_target_modules": [" , "]}, "--lora_target_modules")):
        with pytest.raises(ValueError, match=flag):
            LoraArguments(**kwargs)


def test_data_arguments_validation(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="validation_split_percentage"):
        DatasetArguments(validation_split_percentage=100)
    (tmp_path / "t.txt").write_text("text")
    with pytest.raises(ValueError, match=r"either --dataset_name or data files \(--train_file\), not both"):
        DatasetArguments(dataset_name="wikitext", train_file=str(tmp_path / "t.txt"))
    from hf_gpt_scratch.training.classification import ClassifyDataArguments

    with pytest.raises(ValueError, match=r"data files \(--test_file\), not both"):  # a subclass's file flag too
        ClassifyDataArguments(dataset_name="glue", test_file=str(tmp_path / "t.txt"))
    for cls, name in ((DatasetArguments, "validation_file"), (ClassifyDataArguments, "test_file")):
        with pytest.raises(FileNotFoundError, match=f"--{name} .*missing.csv: no such file"):
            cls(**{name: str(tmp_path / "missing.csv")})
    for cls, name in ((DataArguments, "max_train_samples"), (DatasetArguments, "preprocessing_num_workers"),
                      (load_recipe("pretrain").PretrainDataArguments, "block_size")):
        with pytest.raises(ValueError, match=f"--{name} must be a positive integer, got 0"):
            cls(**{name: 0})
    with pytest.raises(FileNotFoundError, match="train_file"):
        DataArguments(train_file=str(tmp_path / "missing.txt"))
    monkeypatch.setenv("HF_GPT_SCRATCH_DATA", "/elsewhere")
    DataArguments(data_dir=str(tmp_path))
    assert os.environ["HF_GPT_SCRATCH_DATA"] == str(tmp_path.resolve())


def test_cpu_distributed_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cpu_distributed_defaults() == {"dataloader_pin_memory": False}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cpu_distributed_defaults() == {"dataloader_pin_memory": False, "ddp_backend": "gloo", "use_cpu": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_distributed_defaults() == {}


# ---------------------------------------------------------------- results, curves, tables


def _idle_trainer(output_dir) -> Trainer:
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True)
    return Trainer(model=hf_gpt_scratch.GPTScratchForCausalLM(tiny_config()), args=args)


def test_save_metrics_writes_the_trainers_files(tmp_path, caplog, capsys):
    trainer = _idle_trainer(tmp_path)
    splits = {
        "train": {"train_loss": 1.5, "train_steps": 3, "packing": True, "preset": "demo", "none": None},
        "eval": {"eval_loss": 2.0, "perplexity": float("inf"), "eval_bad": float("nan")},
        "test": {"test_confusion_matrix": [[1, 0], [2, 3]], "label_names": ["ham", "spam"]},
    }
    merged = save_metrics(trainer, splits)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all_results.json", "eval_results.json", "test_results.json", "train_results.json"]
    saved = json.loads((tmp_path / "eval_results.json").read_text())  # NaN and Infinity, as the Trainer does
    assert saved["eval_loss"] == 2.0 and saved["perplexity"] == float("inf")
    assert saved["eval_bad"] != saved["eval_bad"]  # NaN
    assert "perplexity, eval_bad not finite" in caplog.text
    train = json.loads((tmp_path / "train_results.json").read_text())
    assert train == {key: value for key, value in splits["train"].items() if value is not None}
    everything = json.loads((tmp_path / "all_results.json").read_text())
    assert everything["test_confusion_matrix"] == [[1, 0], [2, 3]] and everything["train_loss"] == 1.5
    assert set(merged) == set(everything) and "none" not in merged
    printed = capsys.readouterr().out  # log_metrics: lists and booleans as text
    assert "***** test metrics *****" in printed and "[[1, 0], [2, 3]]" in printed and "True" in printed


def test_reports_only_on_the_main_process(tmp_path, monkeypatch, capsys):
    trainer = _idle_trainer(tmp_path)
    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: False)
    assert save_metrics(trainer, {"train": {"train_loss": 1.0}}) == {"train_loss": 1.0}  # on every rank
    assert not list(tmp_path.glob("*.json")) and capsys.readouterr().out == ""


LOG_HISTORY = [
    {"eval_loss": 10.9, "epoch": 0, "num_input_tokens_seen": 0, "step": 0, "eval_runtime": 0.1},
    {"loss": 9.0, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": 0.5, "num_input_tokens_seen": 512, "step": 5,
     "train_runtime": 1.0, "train_tokens_per_second": 512.0},
    {"loss": 8.0, "grad_norm": float("nan"), "learning_rate": 1e-3, "epoch": 1.0, "num_input_tokens_seen": 1024,
     "step": 10},
    {"eval_loss": 8.5, "eval_train_loss": 7.9, "eval_accuracy": 0.5, "epoch": 1.0, "num_input_tokens_seen": 1024,
     "step": 10},
    {"train_runtime": 3.0, "train_samples_per_second": 1.0, "train_steps_per_second": 3.3, "total_flos": 1.0,
     "train_loss": 8.5, "epoch": 1.0, "step": 10},
]


def test_log_history_to_curves():
    curves = log_history_to_curves(LOG_HISTORY)
    assert set(curves) == {"eval_loss", "train_loss", "grad_norm", "learning_rate", "eval_train_loss", "eval_accuracy"}
    assert curves["train_loss"] == {
        "step": [5, 10], "epoch": [0.5, 1.0], "tokens_seen": [512, 1024], "value": [9.0, 8.0]
    }
    assert curves["eval_loss"]["value"] == [10.9, 8.5] and curves["eval_loss"]["tokens_seen"] == [0, 1024]
    assert curves["grad_norm"]["value"] == [1.0]  # the nan point is skipped


def test_plot_losses_writes_png(tmp_path):
    curves = log_history_to_curves(LOG_HISTORY)
    assert_png(plot_losses(curves, tmp_path / "sub" / "loss.png", title="tiny"))
    assert_png(plot_losses(curves, tmp_path / "acc.png", metric="accuracy"))
    # no token counts: steps on the x axis
    no_tokens = log_history_to_curves([{k: v for k, v in e.items() if k != "num_input_tokens_seen"} for e in LOG_HISTORY])
    assert_png(plot_losses(no_tokens, tmp_path / "fallback.png"))
    with pytest.raises(ValueError, match="no 'bleu' series"):
        plot_losses(curves, tmp_path / "x.png", metric="bleu")


def test_plot_confusion_matrix(tmp_path):
    counts = plot_confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["ham", "spam"], tmp_path / "cm.png", title="test")
    assert counts.tolist() == [[1, 1], [1, 2]]
    assert_png(tmp_path / "cm.png")
    assert plot_confusion_matrix([1, 1], [1, 1], ["a", "b", "c"], tmp_path / "cm3.png").tolist() == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"class ids \[2\] are outside 0..1"):
        plot_confusion_matrix([0, 2], [0, 1], ["a", "b"], tmp_path / "bad.png")


# ---------------------------------------------------------------- Trainer integration and sampling


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, n, length, vocab):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_curves_and_counters_from_a_trainer(tmp_path):
    """What the recipes read from a real Trainer's log history: curves against tokens seen and the
    Trainer's own tokens-per-second counter, logged at the last step too (5 is no multiple of 2)."""
    model = hf_gpt_scratch.GPTScratchForCausalLM(tiny_config())
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=2, logging_steps=2,
        eval_strategy="steps", eval_steps=2, report_to="none", save_strategy="no", disable_tqdm=True,
        use_cpu=True, dataloader_pin_memory=False, include_num_input_tokens_seen=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_Blocks(16, 8, 97), eval_dataset=_Blocks(4, 8, 97),
        data_collator=default_data_collator, callbacks=default_callbacks(),
    )
    trainer.train()
    history = trainer.state.log_history
    curves = log_history_to_curves(history)
    assert curves["train_loss"]["tokens_seen"] == [32, 64, 80]
    assert logged(history, "num_input_tokens_seen") == 80
    assert curves["train_loss"]["step"] == [2, 4, 5] and curves["eval_loss"]["step"] == [2, 4, 5]
    speeds = [entry["step"] for entry in history if "train_tokens_per_second" in entry]
    assert speeds == [2, 4, 5] and logged(history, "train_tokens_per_second") > 0
    assert logged(history, "eval_loss", 0) == history[1]["eval_loss"] and logged(history, "bleu") is None


def test_generation_kwargs_follow_the_book():
    def kwargs(**values):
        return SamplingArguments(**values).generation_kwargs()

    assert kwargs(max_new_tokens=5) == {"max_new_tokens": 5, "do_sample": False}
    assert kwargs(max_new_tokens=5, temperature=1.4, top_k=25) == {
        "max_new_tokens": 5, "do_sample": True, "temperature": 1.4, "top_k": 25
    }
    assert kwargs(temperature=0.7)["top_k"] == 0  # no hidden top-50 filter
    assert kwargs(do_sample=True)["temperature"] == 1.0
    assert kwargs(do_sample=True, top_p=0.9, repetition_penalty=1.2) == {
        "max_new_tokens": 50, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.2
    }
    assert kwargs(temperature=1.0, do_sample=False) == {"max_new_tokens": 50, "do_sample": False}
    for values in ({"temperature": -1}, {"max_new_tokens": 0}, {"top_k": 0}):
        with pytest.raises(ValueError, match=f"--{next(iter(values))}"):
            SamplingArguments(**values)


def test_context_length_of_any_causal_lm():
    assert context_length_of(hf_gpt_scratch.GPTScratchForCausalLM(tiny_config(context_length=24))) == 24
    assert context_length_of(GPT2LMHeadModel(GPT2Config(n_positions=40, n_embd=8, n_layer=1, n_head=2))) == 40


def test_generate_samples_greedy_is_deterministic_and_fits_context(gpt2_tok):
    model = hf_gpt_scratch.GPTScratchForCausalLM(tiny_config(vocab_size=50257, context_length=16)).eval()
    long_prompt = "word " * 40  # longer than the context: cut from the left
    samples = generate_samples(model, gpt2_tok, ["Every effort moves you", long_prompt], max_new_tokens=6)
    again = generate_samples(model, gpt2_tok, ["Every effort moves you", long_prompt], max_new_tokens=6)
    assert samples == again
    assert samples[0]["prompt"] == "Every effort moves you"
    assert all(isinstance(s["completion"], str) for s in samples)
    assert model.training is False

    # what reaches generate(): the prompt first, then as many new tokens as the context leaves
    calls = []
    original = model.generate

    def recording_generate(input_ids, **kwargs):
        calls.append((input_ids.shape[1], kwargs["max_new_tokens"]))
        return original(input_ids=input_ids, **kwargs)

    model.generate = recording_generate
    generate_samples(model, gpt2_tok, ["Hi", "Every effort moves you", long_prompt], max_new_tokens=40)
    generate_samples(model, gpt2_tok, ["Every effort moves you"], max_new_tokens=3)
    assert calls == [(1, 15), (4, 12), (8, 8), (4, 3)]
