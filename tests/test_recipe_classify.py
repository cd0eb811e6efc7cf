"""recipes/classify.py end to end (its `main(argv)`, in process) and the shared logic of
hf_gpt_scratch/training/classification.py: what trains per --trainable mode, the body weights carried over
from a causal-LM checkpoint, the data sources and their errors, the metrics and the baseline."""

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from hf_gpt_scratch.training import classification as C
from hf_gpt_scratch.training.arguments import LoraArguments, ModelArguments
from hf_gpt_scratch.training.data import _classification_dataset
from hf_gpt_scratch.training.loading import CheckpointMismatchError
from hf_gpt_scratch.tokenization import train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
CLASSIFY = REPO / "recipes" / "classify.py"
DATA = Path(os.environ.get("HF_GPT_SCRATCH_DATA", REPO.parent / "shared" / "data"))
SMS = DATA / "SMSSpamCollection.tsv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ("accuracy", "precision", "recall", "f1")

needs_sms = pytest.mark.skipif(not SMS.is_file(), reason=f"SMSSpamCollection.tsv not found in {DATA}")

HAM = ["ok see you at home later", "are you coming to the party tonight", "call me when you get this",
       "i will be late for dinner sorry", "thanks for the lift yesterday", "what time is the film"]
SPAM = ["WIN a FREE prize now! Text WIN to 80082", "URGENT! You have won a 1000 cash award call 09061701461",
        "Free entry in a weekly competition, text FA to 87121", "Claim your free ringtone now, reply YES",
        "Congratulations you won a holiday! Call 0906 now", "You are selected for a cash prize, txt CLAIM"]


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe_classify", CLASSIFY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def run(recipe, *args):
    return recipe.main([str(a) for a in (*args, "--disable_tqdm", "true")])


def tiny_config(vocab_size, **overrides):
    kwargs = dict(vocab_size=vocab_size, context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    kwargs.update(overrides)
    return GPTScratchConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny_clm(tmp_path_factory):
    """A tiny GPTScratchForCausalLM checkpoint with a 300-token BPE trained on SMS-like text,
    saved with save_pretrained (model + tokenizer), as recipes/pretrain.py leaves one."""
    path = tmp_path_factory.mktemp("clm")
    tokenizer = train_bpe_tokenizer((HAM + SPAM) * 20, vocab_size=300)
    config = tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPTScratchForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _finite_unit(results, key):
    value = results[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0, (key, value)


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


@needs_sms
def test_recipe_on_sms_spam(recipe, tiny_clm, tmp_path, capsys):
    out = tmp_path / "run"
    run(
        recipe,
        "--model_name_or_path", tiny_clm,
        "--output_dir", out,
        "--max_train_samples", 48, "--max_eval_samples", 16, "--max_test_samples", 24,
        "--max_steps", 4, "--per_device_train_batch_size", 4, "--logging_steps", 1,
        "--eval_strategy", "steps", "--eval_steps", 2,
    )
    results = json.loads((out / "all_results.json").read_text())
    for prefix in ("eval", "test", "baseline_tfidf_eval", "baseline_tfidf_test"):
        for metric in METRICS:
            _finite_unit(results, f"{prefix}_{metric}")
    assert results["train_steps"] == 4
    assert (results["train_examples"], results["eval_examples"], results["test_examples"]) == (48, 16, 24)
    assert results["label_names"] == ["ham", "spam"]
    assert results["trainable"] == "last_block"
    assert sum(map(sum, results["test_confusion_matrix"])) == 24
    assert 0 < results["max_seq_length"] <= 64 and results["runtime"] > 0

    # the book's default: last block + final norm + head
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(model, GPTScratchForSequenceClassification)
    assert model.config.id2label == {0: "ham", 1: "spam"} and model.config.num_labels == 2
    expected = sum(p.numel() for m in (model.model.trf_blocks[-1], model.model.final_norm, model.score) for p in m.parameters())
    assert results["trainable_parameters"] == expected
    assert results["total_parameters"] == sum(p.numel() for p in model.parameters())

    for name in ("confusion_matrix.png", "loss.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name

    # the saved classifier predicts what the recipe measured
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["Free entry! txt WIN to 80082", "see you later"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    printed = capsys.readouterr().out  # the Trainer's log_metrics: the baseline beside the GPT's numbers
    assert "***** test metrics *****" in printed and "baseline_tfidf_test_accuracy" in printed


def _write_csv(path, rows, fieldnames):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_recipe_on_csv_with_custom_columns_and_lora(recipe, tiny_clm, tmp_path):
    rows = [{"id": i, "message": t, "category": "ham"} for i, t in enumerate(HAM * 4)]
    rows += [{"id": 100 + i, "message": t, "category": "spam"} for i, t in enumerate(SPAM * 4)]
    train = _write_csv(tmp_path / "train.csv", rows, ["id", "message", "category"])
    test = _write_csv(tmp_path / "test.csv", rows[::4], ["id", "message", "category"])
    out = tmp_path / "run"
    run(
        recipe,
        "--model_name_or_path", tiny_clm,
        "--train_file", train, "--test_file", test,
        "--text_column", "message", "--label_column", "category",
        "--trainable", "lora", "--lora_r", 4, "--learning_rate", 1e-3,
        "--append_eos", "true",
        "--max_steps", 3, "--per_device_train_batch_size", 4,
        "--output_dir", out,
    )
    results = json.loads((out / "all_results.json").read_text())
    # validation carved from the training file (10%), the test file used as given
    assert results["test_examples"] == len(rows[::4])
    assert results["eval_examples"] + results["train_examples"] == len(rows)
    for metric in METRICS:
        _finite_unit(results, f"test_{metric}")
        _finite_unit(results, f"baseline_tfidf_test_{metric}")
    # lora: adapters on 6 linears of each of 2 blocks + the head's trainable copy
    E, r = 32, 4
    per_block = 4 * r * (E + E) + r * (E + 4 * E) + r * (4 * E + E)
    assert results["trainable_parameters"] == 2 * per_block + (E * 2 + 2)
    # the merged classifier loads without peft
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------------------------
# Errors before training
# --------------------------------------------------------------------------------------------


def test_missing_column_fails_before_training(recipe, tiny_clm, tmp_path):
    rows = [{"message": t, "label": "ham"} for t in HAM] + [{"message": t, "label": "spam"} for t in SPAM]
    train = _write_csv(tmp_path / "train.csv", rows, ["message", "label"])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train\.csv: missing column\(s\) \['text'\].*'message'.*text_column"):
        recipe.main(["--model_name_or_path", str(tiny_clm), "--train_file", str(train), "--output_dir", str(out)])
    assert not out.exists()


def test_unknown_label_fails_before_training(recipe, tiny_clm, tmp_path):
    rows = [{"text": t, "label": "ham"} for t in HAM] + [{"text": t, "label": "spam"} for t in SPAM]
    rows.append({"text": "maybe spam?", "label": "phishing"})
    train = _write_csv(tmp_path / "train.csv", rows, ["text", "label"])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"row 12 has label 'phishing'.*\['ham', 'spam'\]"):
        recipe.main(["--model_name_or_path", str(tiny_clm), "--train_file", str(train),
                     "--class_names", "ham", "spam", "--output_dir", str(out)])
    assert not out.exists()
    # without --class_names the classes come from the training file: a test label outside them fails
    ok = _write_csv(tmp_path / "ok.csv", rows[:-1], ["text", "label"])
    bad_test = _write_csv(tmp_path / "test.csv", rows[-2:], ["text", "label"])
    with pytest.raises(ValueError, match=r"test.csv: row 1 has label 'phishing'"):
        recipe.main(["--model_name_or_path", str(tiny_clm), "--train_file", str(ok),
                     "--test_file", str(bad_test), "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, error, match",
    [
        (["--trainable", "everything"], SystemExit, None),
        (["--block_size", "32"], ValueError, r"not used by the HfArgumentParser: \['--block_size', '32'\]"),
        (["--class_names", "spam"], ValueError, "--class_names needs at least two distinct"),
        (["--class_names", "ham", "ham"], ValueError, "--class_names needs at least two distinct"),
        (["--lora_target_modules", "W_query"], ValueError, r"--lora_\* flags only apply to --trainable lora"),
        (["--trainable", "lora", "--lora_alpha", "0"], ValueError, "--lora_alpha must be positive"),
        (["--text_column", "message"], ValueError, "--text_column / --label_column name columns of --train_file"),
        (["--test_split_percentage", "95"], ValueError, r"--validation_split_percentage \+ --test_split_percentage"),
        (["--max_seq_length", "0"], ValueError, "--max_seq_length must be a positive integer"),
    ],
)
def test_nonsense_flags_fail_before_any_work(recipe, tmp_path, flags, error, match):
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        recipe.main([*flags, "--output_dir", str(out)])
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# What trains
# --------------------------------------------------------------------------------------------


def _classifier(**overrides):
    config = tiny_config(97, pad_token_id=0, **overrides)
    config.id2label = {0: "ham", 1: "spam"}
    config.label2id = {"ham": 0, "spam": 1}
    return GPTScratchForSequenceClassification(config)


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _counts(model):
    """(trainable, total) parameters, counted by hand."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_set_trainable_counts(qkv_bias):
    E, L, V, T, K = 32, 2, 97, 64, 2
    qkv = 3 * (E * E + (E if qkv_bias else 0))
    block = 2 * 2 * E + qkv + (E * E + E) + (E * 4 * E + 4 * E) + (4 * E * E + E)
    head = E * K + K
    total = V * E + T * E + L * block + 2 * E + head

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "head")
    assert _counts(model) == (head, total)
    assert _trainable_names(model) == {"score.weight", "score.bias"}

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "last_block")
    assert _counts(model) == (block + 2 * E + head, total)
    names = _trainable_names(model)
    assert all(n.startswith(("model.trf_blocks.1.", "model.final_norm.", "score.")) for n in names)
    assert "model.trf_blocks.1.att.W_query.weight" in names and "model.final_norm.weight" in names

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "all")
    assert _counts(model) == (total, total)

    r = 4
    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "lora", LoraArguments(lora_r=r))
    lora = L * (4 * r * (E + E) + r * (E + 4 * E) + r * (4 * E + E))
    trainable, all_params = _counts(model)
    assert trainable == lora + head
    assert all_params == total + lora + head  # the frozen original head + its trainable copy
    assert all("lora_" in n or "score" in n for n in _trainable_names(model))


def test_set_trainable_refreezes_and_rejects():
    model = _classifier()
    C.set_trainable(model, "all")
    C.set_trainable(model, "head")
    assert _trainable_names(model) == {"score.weight", "score.bias"}
    with pytest.raises(ValueError, match="trainable mode"):
        C.set_trainable(model, "embeddings")
    with pytest.raises(TypeError, match="GPTScratchForSequenceClassification"):
        C.set_trainable(torch.nn.Linear(2, 2), "head")


def test_lora_trains_only_adapters_and_head():
    torch.manual_seed(0)
    model = C.set_trainable(_classifier(), "lora", LoraArguments(lora_r=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1, 97, (4, 10))
    for _ in range(2):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_B" in n or "lora_A" in n or "modules_to_save" in n for n in changed)


# --------------------------------------------------------------------------------------------
# Loading the body
# --------------------------------------------------------------------------------------------


def _tokenizer_for(path):
    return AutoTokenizer.from_pretrained(path)


def test_body_weights_come_from_the_checkpoint(tiny_clm):
    clm = GPTScratchForCausalLM.from_pretrained(tiny_clm)
    tokenizer = _tokenizer_for(tiny_clm)
    model = C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tiny_clm)), tokenizer, ["ham", "spam"])
    body = clm.model.state_dict()
    for name, value in model.model.state_dict().items():
        torch.testing.assert_close(value, body[name], msg=name, atol=0, rtol=0)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.id2label == {0: "ham", 1: "spam"} and model.score.out_features == 2
    assert model.config.use_cache is False


def test_checkpoint_missing_a_body_weight_is_an_error(tiny_clm, tmp_path):
    broken = tmp_path / "broken"
    GPTScratchForCausalLM.from_pretrained(tiny_clm).save_pretrained(broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.trf_blocks.1.ff.layers.0.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint.*randomly initialised.*trf_blocks\.1\."):
        C.load_sequence_classifier(ModelArguments(model_name_or_path=str(broken)), _tokenizer_for(tiny_clm), ["a", "b"])


def test_checkpoint_with_an_unused_weight_is_an_error(tiny_clm, tmp_path):
    """A weight the model does not use (another architecture's, a renamed layer) is named, not
    dropped with a log line: for a causal-LM checkpoint and for a saved classifier."""
    tokenizer = _tokenizer_for(tiny_clm)
    clm = tmp_path / "clm"
    GPTScratchForCausalLM.from_pretrained(tiny_clm).save_pretrained(clm)
    classifier = tmp_path / "classifier"
    C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tiny_clm)), tokenizer, ["a", "b"]).save_pretrained(classifier)
    for folder in (clm, classifier):
        weights = load_file(folder / "model.safetensors")
        weights["model.trf_blocks.0.att.rotary.weight"] = torch.zeros(4)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(CheckpointMismatchError, match=r"in the checkpoint but not in the model: model\.trf_blocks\.0\."):
            C.load_sequence_classifier(ModelArguments(model_name_or_path=str(folder)), tokenizer, ["a", "b"])


def test_config_overrides_and_new_classes(tiny_clm, tmp_path):
    args = ModelArguments(model_name_or_path=str(tiny_clm), config_overrides="drop_rate=0.2")
    model = C.load_sequence_classifier(args, _tokenizer_for(tiny_clm), ["neg", "neu", "pos"])
    assert model.config.drop_rate == 0.2 and model.config.num_labels == 3
    # a saved classifier with other classes gets a new head, its body is kept
    model.save_pretrained(tmp_path / "cls3")
    again = C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tmp_path / "cls3")), None, ["ham", "spam"])
    assert again.score.out_features == 2
    torch.testing.assert_close(again.model.tok_emb.weight, model.model.tok_emb.weight)
    same = C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tmp_path / "cls3")), None, ["neg", "neu", "pos"])
    torch.testing.assert_close(same.score.weight, model.score.weight)
    renamed = C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tmp_path / "cls3")), None, ["a", "b", "c"])
    assert renamed.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert not torch.equal(renamed.score.weight, model.score.weight)  # same shape, other classes: a new head
    torch.testing.assert_close(renamed.model.tok_emb.weight, model.model.tok_emb.weight)


def test_no_checkpoint_is_a_new_gpt_for_the_tokenizer(tiny_clm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_clm)
    args = ModelArguments(config_overrides="n_layers=1,emb_dim=16,n_heads=2,context_length=32")
    model = C.load_sequence_classifier(args, tokenizer, ["ham", "spam"])
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.n_layers == 1 and model.score.out_features == 2


def test_stock_gpt2_folder_is_converted(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    gpt2.save_pretrained(tmp_path / "gpt2")
    model = C.load_sequence_classifier(ModelArguments(model_name_or_path=str(tmp_path / "gpt2")), None, ["ham", "spam"])
    assert isinstance(model, GPTScratchForSequenceClassification)
    torch.testing.assert_close(model.model.tok_emb.weight, gpt2.transformer.wte.weight)
    torch.testing.assert_close(model.model.trf_blocks[1].ff.layers[2].weight, gpt2.transformer.h[1].mlp.c_proj.weight.T)
    # same hidden states as GPT-2 at the pooled position
    ids = torch.randint(0, 97, (1, 7))
    model.eval(), gpt2.eval()
    with torch.no_grad():
        ours = model.model(ids).last_hidden_state
        theirs = gpt2.transformer(ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Data, metrics, baseline
# --------------------------------------------------------------------------------------------


@needs_sms
def test_default_data_is_the_books_split():
    splits, names = C.load_classification_splits(C.ClassifyDataArguments())
    assert names == ["ham", "spam"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 1045, "validation": 149, "test": 300}
    labels = [*splits["train"]["label"], *splits["validation"]["label"], *splits["test"]["label"]]
    assert labels.count(0) == labels.count(1) == 747


def test_csv_train_only_is_carved_and_balanced(tmp_path):
    rows = [{"t": f"ham message {i}", "y": "ham"} for i in range(60)] + [{"t": f"spam {i}", "y": "spam"} for i in range(20)]
    path = _write_csv(tmp_path / "d.csv", rows, ["t", "y"])
    args = C.ClassifyDataArguments(train_file=str(path), text_column="t", label_column="y")
    splits, names = C.load_classification_splits(args)
    assert names == ["ham", "spam"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 28, "validation": 4, "test": 8}  # 20 + 20, 70/10/20
    unbalanced = C.ClassifyDataArguments(train_file=str(path), text_column="t", label_column="y", balance_classes=False)
    assert sum(len(v) for v in C.load_classification_splits(unbalanced)[0].values()) == 80


def test_dataset_name_reads_class_labels_by_name(tmp_path):
    """--dataset_name (here a local folder of parquet splits): a ClassLabel column names the classes,
    --class_names may reorder them, and labels follow by name, not by id."""
    features = C.datasets.Features({"sms": C.datasets.Value("string"), "y": C.datasets.ClassLabel(names=["spam", "ham"])})
    rows = {"sms": HAM + SPAM + HAM + SPAM, "y": [1] * 6 + [0] * 6 + [1] * 6 + [0] * 6}
    C.datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))
    C.datasets.Dataset.from_dict({"sms": ["free prize", "see you"], "y": [0, 1]}, features=features).to_parquet(str(tmp_path / "test.parquet"))
    args = dict(dataset_name=str(tmp_path), text_column="sms", label_column="y")
    splits, names = C.load_classification_splits(C.ClassifyDataArguments(**args))
    assert names == ["spam", "ham"] and splits["test"]["label"] == [0, 1]
    assert {k: len(v) for k, v in splits.items()} == {"train": 22, "validation": 2, "test": 2}  # 10% carved
    splits, names = C.load_classification_splits(C.ClassifyDataArguments(**args, class_names=["ham", "spam"]))
    assert names == ["ham", "spam"] and splits["test"]["label"] == [1, 0] and splits["test"]["text"] == ["free prize", "see you"]
    with pytest.raises(ValueError, match=r"\[train\]: missing column\(s\) \['text'\]; columns found: \['sms', 'y'\]"):
        C.load_classification_splits(C.ClassifyDataArguments(dataset_name=str(tmp_path), label_column="y"))
    C.datasets.Dataset.from_dict({"sms": ["a", "b"], "y": [0, -1]}, features=features).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(ValueError, match=r"\[test\]: row 1 has no label in column 'y'"):  # -1: unlabelled
        C.load_classification_splits(C.ClassifyDataArguments(**args))


def test_tokenize_splits_length_and_eos(tiny_clm):
    tokenizer = _tokenizer_for(tiny_clm)
    splits = C.datasets.DatasetDict(
        train=_classification_dataset(HAM, [0] * len(HAM), ["ham", "spam"]),
        test=_classification_dataset([SPAM[1] * 10], [1], ["ham", "spam"]),
    )
    longest = max(len(tokenizer(t)["input_ids"]) for t in HAM)
    encoded, length = C.tokenize_splits(splits, tokenizer, None, 64)
    assert length == longest and len(encoded["test"][0]["input_ids"]) == longest
    encoded, length = C.tokenize_splits(splits, tokenizer, 8, 64, append_eos=True)
    assert length == 8
    assert all(row[-1] == tokenizer.eos_token_id and len(row) <= 8 for row in encoded["train"]["input_ids"])
    with pytest.raises(ValueError, match="context_length"):
        C.tokenize_splits(splits, tokenizer, 65, 64)


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    y = [0, 1, 1, 0, 1, 0, 1, 1]
    p = [0, 1, 0, 0, 1, 1, 1, 1]
    got = C.classification_metrics(p, y)
    assert got == pytest.approx({"accuracy": accuracy_score(y, p), "precision": precision_score(y, p),
                                 "recall": recall_score(y, p), "f1": f1_score(y, p)})
    assert C.classification_metrics([0, 0], [0, 1])["precision"] == 0.0  # no positive prediction
    three = C.classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], num_labels=3)
    assert three["f1"] == pytest.approx(f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="macro"))
    from transformers import EvalPrediction

    compute = C.build_compute_metrics(2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).numpy()
    assert compute(EvalPrediction(predictions=logits, label_ids=[0, 1, 1]))["accuracy"] == pytest.approx(2 / 3)


def test_tfidf_baseline():
    splits = C.datasets.DatasetDict(
        train=_classification_dataset(HAM + SPAM, [0] * len(HAM) + [1] * len(SPAM), ["ham", "spam"]),
        test=_classification_dataset(["free prize call now", "see you at home"], [1, 0], ["ham", "spam"]),
    )
    result = C.tfidf_baseline(splits)
    assert list(result) == ["test"] and set(result["test"]) == set(METRICS)
    assert result["test"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="single class"):
        C.tfidf_baseline(C.datasets.DatasetDict(train=splits["train"].select(range(len(HAM)))))
