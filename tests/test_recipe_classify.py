"""recipes/classify.py end to end (subprocesses, as a user runs it) and the shared logic of
hf_gpt_scratch/classification.py: what trains per --trainable mode, the body weights carried over
from a causal-LM checkpoint, the data sources and their errors, the metrics and the baseline."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_gpt_scratch
from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from hf_gpt_scratch import classification as C
from hf_gpt_scratch.arguments import ModelArguments
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


def _env():
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env["HF_GPT_SCRATCH_DATA"] = str(DATA)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


def run(*args, timeout=600):
    cmd = [sys.executable, str(CLASSIFY), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_classify", CLASSIFY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


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
def test_recipe_on_sms_spam(tiny_clm, tmp_path):
    out = tmp_path / "run"
    proc = run(
        "--model_name_or_path", tiny_clm,
        "--output_dir", out,
        "--max_train_samples", 48, "--max_eval_samples", 16, "--max_test_samples", 24,
        "--max_steps", 4, "--per_device_train_batch_size", 4, "--logging_steps", 1,
        "--eval_strategy", "steps", "--eval_steps", 2,
        "--disable_tqdm", "true",
    )
    results = json.loads((out / "results.json").read_text())
    for prefix in ("val", "test", "baseline_tfidf_val", "baseline_tfidf_test"):
        for metric in METRICS:
            _finite_unit(results, f"{prefix}_{metric}")
    assert results["train_steps"] == 4
    assert (results["train_examples"], results["validation_examples"], results["test_examples"]) == (48, 16, 24)
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
    assert "GPT vs TF-IDF" in proc.stdout


def _write_csv(path, rows, fieldnames):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_recipe_on_csv_with_custom_columns_and_lora(tiny_clm, tmp_path):
    rows = [{"id": i, "message": t, "category": "ham"} for i, t in enumerate(HAM * 4)]
    rows += [{"id": 100 + i, "message": t, "category": "spam"} for i, t in enumerate(SPAM * 4)]
    train = _write_csv(tmp_path / "train.csv", rows, ["id", "message", "category"])
    test = _write_csv(tmp_path / "test.csv", rows[::4], ["id", "message", "category"])
    out = tmp_path / "run"
    run(
        "--model_name_or_path", tiny_clm,
        "--train_file", train, "--test_file", test,
        "--text_column", "message", "--label_column", "category",
        "--trainable", "lora", "--lora_r", 4, "--learning_rate", 1e-3,
        "--append_eos", "true",
        "--max_steps", 3, "--per_device_train_batch_size", 4,
        "--output_dir", out, "--disable_tqdm", "true",
    )
    results = json.loads((out / "results.json").read_text())
    # validation carved from the training file (10%), the test file used as given
    assert results["test_examples"] == len(rows[::4])
    assert results["validation_examples"] + results["train_examples"] == len(rows)
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


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


def test_missing_column_fails_before_training(recipe, tiny_clm, tmp_path):
    rows = [{"message": t, "label": "ham"} for t in HAM] + [{"message": t, "label": "spam"} for t in SPAM]
    train = _write_csv(tmp_path / "train.csv", rows, ["message", "label"])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\].*'message'.*--text_column"):
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


def test_bad_flags(recipe, tmp_path):
    with pytest.raises(SystemExit):
        recipe.main(["--trainable", "everything", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--max_seq_length"):
        recipe.main(["--block_size", "32", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--class_names needs at least two"):
        recipe.main(["--class_names", "spam", "--output_dir", str(tmp_path)])


@needs_sms
def test_export_train_texts(recipe, tmp_path):
    path = tmp_path / "sms_train.txt"
    recipe.main(["--export_train_texts", str(path), "--output_dir", str(tmp_path / "unused")])
    text = path.read_text(encoding="utf-8")
    assert text.count("<|endoftext|>") == 1045
    splits, _ = C.load_classification_splits(C.ClassifyDataArguments())
    for message in splits["test"]["text"][:50]:
        if message not in splits["train"]["text"]:  # (a few messages occur twice in the collection)
            assert f"{message}<|endoftext|>" not in text


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


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_set_trainable_counts(qkv_bias):
    E, L, V, T, K = 32, 2, 97, 64, 2
    qkv = 3 * (E * E + (E if qkv_bias else 0))
    block = 2 * 2 * E + qkv + (E * E + E) + (E * 4 * E + 4 * E) + (4 * E * E + E)
    head = E * K + K
    total = V * E + T * E + L * block + 2 * E + head

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "head")
    assert C.count_parameters_by_trainability(model) == (head, total)
    assert _trainable_names(model) == {"score.weight", "score.bias"}

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "last_block")
    assert C.count_parameters_by_trainability(model) == (block + 2 * E + head, total)
    names = _trainable_names(model)
    assert all(n.startswith(("model.trf_blocks.1.", "model.final_norm.", "score.")) for n in names)
    assert "model.trf_blocks.1.att.W_query.weight" in names and "model.final_norm.weight" in names

    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "all")
    assert C.count_parameters_by_trainability(model) == (total, total)

    r = 4
    model = C.set_trainable(_classifier(qkv_bias=qkv_bias), "lora", lora_r=r)
    lora = L * (4 * r * (E + E) + r * (E + 4 * E) + r * (4 * E + E))
    trainable, all_params = C.count_parameters_by_trainability(model)
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
    model = C.set_trainable(_classifier(), "lora", lora_r=4)
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
    with pytest.raises(ValueError, match=r"randomly initialised.*trf_blocks\.1\.ff\.layers\.0\.weight"):
        C.load_sequence_classifier(ModelArguments(model_name_or_path=str(broken)), _tokenizer_for(tiny_clm), ["a", "b"])


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


def test_tokenize_splits_length_and_eos(tiny_clm):
    tokenizer = _tokenizer_for(tiny_clm)
    splits = C.datasets.DatasetDict(
        train=C._standard_dataset(HAM, [0] * len(HAM), ["ham", "spam"]),
        test=C._standard_dataset([SPAM[1] * 10], [1], ["ham", "spam"]),
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
    texts, labels = HAM + SPAM, [0] * len(HAM) + [1] * len(SPAM)
    result = C.tfidf_baseline(texts, labels, {"test": (["free prize call now", "see you at home"], [1, 0])})
    assert set(result["test"]) == set(METRICS)
    assert result["test_predictions"] == [1, 0] and result["test"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="single class"):
        C.tfidf_baseline(HAM, [0] * len(HAM), {})


# --------------------------------------------------------------------------------------------
# Auxiliary language-modeling loss, a new model with its own tokenizer
# --------------------------------------------------------------------------------------------


def test_auxiliary_lm_loss_matches_a_tied_head():
    model = _classifier().eval()
    ids = torch.randint(1, 97, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = C.auxiliary_lm_loss(hidden, ids, mask, model.model.tok_emb.weight)
    logits = hidden @ model.model.tok_emb.weight.T
    losses = [torch.nn.functional.cross_entropy(logits[b, t], ids[b, t + 1]) for b in range(2) for t in range(5) if mask[b, t + 1]]
    torch.testing.assert_close(got, torch.stack(losses).mean())


def test_classification_trainer_adds_the_lm_loss_only_while_training(tmp_path):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = _classifier()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], dataloader_pin_memory=False)
    trainer = C.ClassificationTrainer(model=model, args=args, aux_lm_weight=0.5)
    ids = torch.randint(1, 97, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    model.train()  # drop_rate 0: deterministic
    plain = model(**batch).loss
    lm = C.auxiliary_lm_loss(model.model(input_ids=ids, attention_mask=mask).last_hidden_state, ids, mask, model.model.tok_emb.weight)
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), plain + 0.5 * lm)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**batch).loss)


def test_weight_average_callback_ends_training_with_the_moving_average():
    model = _classifier()
    model.requires_grad_(False)
    model.score.requires_grad_(True)  # only trainable weights are averaged
    callback = C.WeightAverageCallback(0.5)
    frozen = model.model.tok_emb.weight.detach().clone()
    for value in (1.0, 3.0, 5.0):  # three optimizer steps
        with torch.no_grad():
            model.score.weight.fill_(value)
            model.model.tok_emb.weight.add_(1.0)
        callback.on_step_end(None, None, None, model=model)
    callback.on_train_end(None, None, None, model=model)
    # ema = 1 after the first step, then 0.5 * ema + 0.5 * w: 2, then 3.5
    torch.testing.assert_close(model.score.weight, torch.full_like(model.score.weight, 3.5))
    torch.testing.assert_close(model.model.tok_emb.weight, frozen + 3.0)  # untouched
    with pytest.raises(ValueError, match="decay must be in"):
        C.WeightAverageCallback(1.0)
    with pytest.raises(ValueError, match="--ema_decay must be in"):
        C.ClassificationArguments(ema_decay=-0.1)


@needs_sms
def test_new_model_with_a_tokenizer_trained_on_the_training_texts(recipe, tmp_path):
    out = tmp_path / "run"
    results = recipe.main([
        "--train_tokenizer_vocab_size", "300",
        "--config_overrides", "n_layers=1,emb_dim=16,n_heads=2,context_length=256,drop_rate=0.0",
        "--trainable", "all", "--append_eos", "true", "--aux_lm_weight", "0.5",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--max_test_samples", "8",
        "--max_steps", "2", "--output_dir", str(out), "--disable_tqdm", "true",
    ])
    assert results["trainable_parameters"] == results["total_parameters"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 300 and tokenizer.eos_token == "<|endoftext|>"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.vocab_size == 300 and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="only applies without --model_name_or_path"):
        recipe.main(["--train_tokenizer_vocab_size", "300", "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "x")])


def test_weight_average_survives_a_resume(tmp_path):
    """Stopped after its checkpoint at step 2 and resumed from it, a run with the weight average
    ends with the same weights as an uninterrupted run (the average is saved with the checkpoint)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    ids = torch.randint(1, 97, (16, 6))
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": int(i % 2)} for i in range(16)]

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    def train(out, resume=None, stop=False):
        torch.manual_seed(0)
        model = _classifier()
        args = TrainingArguments(output_dir=str(out), max_steps=4, save_steps=2, per_device_train_batch_size=4,
                                 learning_rate=1e-2, use_cpu=True, report_to=[], disable_tqdm=True, seed=0,
                                 dataloader_pin_memory=False)
        callbacks = [C.WeightAverageCallback(0.5)] + ([StopAt()] if stop else [])
        Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train(resume_from_checkpoint=resume)
        return model.state_dict()

    whole = train(tmp_path / "whole")
    train(tmp_path / "cut", stop=True)
    assert (tmp_path / "cut" / "checkpoint-2" / C.WeightAverageCallback.FILE).is_file()
    resumed = train(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], msg=name)
