"""Bad input gets a clear error before any training, naming the file, the row or field and what
was expected, and leaves the output folder as it was; over-long examples follow each recipe's
policy; a checkpoint whose weights do not match its config is an error; and the safety rules
(safetensors only, no remote code unless asked, no tokens in logs or saved arguments).

Permissions: a file made unreadable with chmod 000 is still readable by root, and the tests
usually run as root; that case is skipped there (`os.geteuid() == 0`).
"""

import ast
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, TrainingArguments

import hf_gpt_scratch
import hf_gpt_scratch.tokenization
from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from hf_gpt_scratch.training.arguments import DataArguments, ModelArguments, parse_recipe_args
from hf_gpt_scratch.training.data import load_instruction_data, load_text, load_text_classification_file, load_text_records
from hf_gpt_scratch.training.faults import ExampleTooLongError, check_sequence_lengths
from hf_gpt_scratch.training.loading import CheckpointMismatchError, from_pretrained_strict, load_causal_lm
from hf_gpt_scratch.tokenization import train_bpe_tokenizer

from conftest import RECIPES, REPO, load_recipe, pickle_files, tiny_config

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.0"
TEXT = "Every effort moves you forward. I had always thought Jack Gisburn rather a cheap genius.\n" * 40


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer([TEXT, "Below is an instruction. ### Response: ham spam"], vocab_size=300).save_pretrained(path)
    return path


@pytest.fixture
def finished(tmp_path):
    """An output folder holding a finished model; returns (folder, snapshot function)."""
    out = tmp_path / "out"
    out.mkdir()
    save_file({"w": torch.ones(2)}, str(out / "model.safetensors"))
    (out / "config.json").write_text("{}")
    (out / "all_results.json").write_text('{"eval_loss": 1.0}')

    def snapshot():
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}

    return out, snapshot


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# pretrain: missing, empty, unreadable, non-UTF-8, malformed JSON/JSONL
# --------------------------------------------------------------------------------------------


def _pretrain_fails(bpe_dir, out, train_file, *extra):
    recipe = load_recipe("pretrain")
    args = ["--tokenizer_name", str(bpe_dir), "--config_overrides", TINY, "--block_size", "32", "--max_steps", "2",
            "--train_file", str(train_file), "--output_dir", str(out), "--overwrite_output_dir", *extra]
    return recipe.main(args)


@pytest.mark.parametrize(
    "name, data, error, pattern",
    [
        ("missing.txt", None, FileNotFoundError, r"--train_file .*missing\.txt: no such file"),
        ("empty.txt", b"  \n\n", ValueError, r"text file is empty: .*empty\.txt"),
        ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), ValueError,
         r"latin1\.txt is not valid UTF-8: byte 'e9' at offset 3"),
        ("empty.jsonl", b"", ValueError, r"text file is empty: .*empty\.jsonl"),
        ("latin1.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1"), ValueError, r"latin1\.jsonl is not valid UTF-8"),
        ("broken.jsonl", b'{"text": "fine"}\n{"text": oops}\n', ValueError,
         r"broken\.jsonl: line 2 is not valid JSON .* expected one JSON object per line"),
        ("list.jsonl", b'{"text": "fine"}\n["not", "an", "object"]\n', ValueError,
         r"list\.jsonl: line 2 is a JSON list, expected an object"),
        ("column.jsonl", b'{"text": "fine"}\n{"content": "other name"}\n', ValueError,
         r"column\.jsonl: row 1 has no 'text' field \(fields: \['content'\]\); choose the column with --text_column_name"),
        ("number.jsonl", b'{"text": "fine"}\n{"text": 42}\n', ValueError,
         r"number\.jsonl: row 1 field 'text' must be a string, got int 42"),
        ("object.json", b'{"text": "not a list"}', ValueError,
         r"object\.json: expected a list of objects \(JSON\) or one object per line \(JSONL\)"),
    ],
)
def test_pretrain_bad_text_files(tmp_path, bpe_dir, finished, name, data, error, pattern):
    out, snapshot = finished
    before = snapshot()
    path = tmp_path / name
    if data is not None:
        _write(path, data)
    with pytest.raises(error, match=pattern):
        _pretrain_fails(bpe_dir, out, path)
    assert snapshot() == before  # nothing in the output folder was touched


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions (chmod 000 cannot be tested)")
def test_unreadable_file_names_the_file(tmp_path, bpe_dir, finished):
    out, snapshot = finished
    path = _write(tmp_path / "secret.txt", TEXT.encode())
    path.chmod(0)
    try:
        with pytest.raises(PermissionError, match=r"secret\.txt"):
            _pretrain_fails(bpe_dir, out, path)
    finally:
        path.chmod(0o644)


def test_loaders_name_file_and_position(tmp_path):
    """The data-layer errors the recipes rely on (hf_gpt_scratch.training.data)."""
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        load_text(tmp_path / "nope.txt")
    bad = _write(tmp_path / "bad.txt", b"ok\n\xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt is not valid UTF-8: byte 'ff' at offset 3"):
        load_text(bad)
    # a UTF-8 BOM and Windows line ends are fine
    assert load_text(_write(tmp_path / "bom.txt", b"\xef\xbb\xbfa\r\nb")) == "a\nb"
    assert load_text_records(_write(tmp_path / "ok.jsonl", b'{"t": "a"}\n\n{"t": "b"}\n'), "t") == ["a", "b"]


# --------------------------------------------------------------------------------------------
# classification files: columns, labels
# --------------------------------------------------------------------------------------------


CSV_ROWS = [("ham", "see you at home"), ("spam", "WIN a FREE prize now"), ("ham", "call me later")] * 4


def _csv(path, header="label,text", rows=CSV_ROWS, sep=","):
    path.write_text(header.replace(",", sep) + "\n" + "".join(f"{a}{sep}{b}\n" for a, b in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, make, pattern",
    [
        ("nolabel.csv", lambda p: _csv(p, header="category,text"),
         r"nolabel\.csv: missing column\(s\) \['label'\]; columns found: \['category', 'text'\]"),
        ("notext.tsv", lambda p: _csv(p, header="label\tmessage", sep="\t"),
         r"notext\.tsv: missing column\(s\) \['text'\]; columns found: \['label', 'message'\]"),
        ("unknown.csv", lambda p: _csv(p, rows=CSV_ROWS + [("eggs", "not a class")]),
         r"unknown\.csv: row 12 has label 'eggs', which is not one of the classes"),
        ("nolabelvalue.csv", lambda p: _csv(p, rows=CSV_ROWS + [("", "no label here")]),
         r"nolabelvalue\.csv: row 12 has no label in column 'label'"),
        ("empty.csv", lambda p: _write(p, b""), r"text file is empty: .*empty\.csv"),
        ("header_only.csv", lambda p: _write(p, b"label,text\n"), r"header_only\.csv: no rows"),
        ("latin1.csv", lambda p: _write(p, "label,text\nham,caf\u00e9\n".encode("latin-1")),
         r"latin1\.csv is not valid UTF-8"),
    ],
)
def test_classification_files(tmp_path, finished, name, make, pattern):
    path = make(tmp_path / name)
    classify = RECIPES / "classify.py"
    if not classify.is_file():  # the data layer the recipe uses
        with pytest.raises(ValueError, match=pattern.replace("which is not one of the classes", "which is not in")):
            load_text_classification_file(path, label_names=["ham", "spam"])
        return
    out, snapshot = finished
    before = snapshot()
    recipe = load_recipe("classify")
    with pytest.raises(ValueError, match=pattern):  # data is read before any model is loaded
        recipe.main(["--train_file", str(path), "--class_names", "ham", "spam", "--output_dir", str(out),
                     "--overwrite_output_dir"])
    assert snapshot() == before


# --------------------------------------------------------------------------------------------
# instruction files
# --------------------------------------------------------------------------------------------


ENTRY = {"instruction": "Name a color.", "input": "", "output": "Blue."}


@pytest.mark.parametrize(
    "entries, pattern",
    [
        ([ENTRY, {"instruction": "No answer"}], r"row 1 has no 'output' field \(fields: \['instruction'\]\)"),
        ([{"input": "x", "output": "y"}], r"row 0 has no 'instruction' field"),
        ([ENTRY, {**ENTRY, "output": "  "}], r"row 1 field 'output' must be a non-empty string"),
        ([ENTRY, {**ENTRY, "input": 3}], r"row 1 field 'input' must be a string, got 3"),
        ([ENTRY, "just text"], r"row 1 is a str, expected an object"),
        ({"instruction": "x", "output": "y"},
         r"expected a list of objects \(JSON\) or one object per line \(JSONL\), got dict"),
    ],
)
def test_instruction_files(tmp_path, finished, entries, pattern):
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"entries\.json: " + pattern):
        load_instruction_data(path)
    if not (RECIPES / "instruct.py").is_file():
        return
    out, snapshot = finished
    before = snapshot()
    recipe = load_recipe("instruct")
    with pytest.raises(ValueError, match=r"entries\.json: " + pattern):  # before any model is loaded
        recipe.main(["--train_file", str(path), "--output_dir", str(out), "--overwrite_output_dir"])
    assert snapshot() == before


# --------------------------------------------------------------------------------------------
# Examples longer than the context
# --------------------------------------------------------------------------------------------


def test_length_policy_helper(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_gpt_scratch.training.faults"):
        assert check_sequence_lengths([3, 9, 4, 12], 8, source="f.csv (train split)", what="text") == 2
    assert ("f.csv (train split): 2 text(s) are longer than 8 tokens; the first is row 1 (9 tokens), "
            "the longest 12 tokens: they are truncated.") in caplog.text
    assert check_sequence_lengths([3, 4], 8, source="f.csv") == 0
    with pytest.raises(ExampleTooLongError, match=r"f\.csv: 2 prompt\(s\) are longer than 8 tokens; the first is row 1 \(9 tokens\)"):
        check_sequence_lengths([3, 9, 4, 12], 8, source="f.csv", policy="refuse", what="prompt")


@pytest.fixture(scope="module")
def tiny_clm(tmp_path_factory, bpe_dir):
    """A GPT with a context of 256 tokens and its tokenizer, in one folder."""
    path = tmp_path_factory.mktemp("clm")
    tokenizer = hf_gpt_scratch.tokenization.load_tokenizer(str(bpe_dir), trust_remote_code=False)
    config = GPTScratchConfig(vocab_size=len(tokenizer), context_length=256, emb_dim=32, n_heads=2, n_layers=1,
                              drop_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    GPTScratchForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_instruct_refuses_a_prompt_that_fills_the_context(tmp_path, tiny_clm, caplog):
    """recipes/instruct.py: over-long entries are truncated with a counted warning (the book's
    collator cuts to allowed_max_length); an entry whose prompt alone fills the context is refused
    (it would leave no response token to learn from)."""
    if not (RECIPES / "instruct.py").is_file():
        pytest.skip("recipes/instruct.py is not there yet")
    entries = [{**ENTRY, "output": "word " * 300}, {**ENTRY, "instruction": "Name a color. " * 150}] + [ENTRY] * 18
    path = tmp_path / "long.json"
    path.write_text(json.dumps(entries))
    recipe = load_recipe("instruct")
    with caplog.at_level(logging.WARNING), pytest.raises(ExampleTooLongError) as info:
        recipe.main(["--model_name_or_path", str(tiny_clm), "--train_file", str(path), "--output_dir",
                     str(tmp_path / "out"), "--eval_before", "false", "--max_steps", "1"])
    message = str(info.value)
    assert "long.json (train split): 1 prompt(s) are longer than 255 tokens; the first is row 1" in message
    assert "long.json (train split): 2 entry(s) are longer than 256 tokens; the first is row 0" in caplog.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_classify_counts_truncated_texts(tmp_path, tiny_clm, caplog):
    """recipes/classify.py truncates texts longer than --max_seq_length (the book's SpamDataset
    does) and says how many, per split."""
    if not (RECIPES / "classify.py").is_file():
        pytest.skip("recipes/classify.py is not there yet")
    rows = CSV_ROWS + [("spam", "WIN " * 50), ("ham", "later " * 40)]
    path = _csv(tmp_path / "long.csv", rows=rows)
    recipe = load_recipe("classify")
    with caplog.at_level(logging.WARNING):
        recipe.main(["--model_name_or_path", str(tiny_clm), "--train_file", str(path), "--output_dir",
                     str(tmp_path / "out"), "--max_steps", "1", "--tfidf_baseline", "false", "--max_seq_length", "16",
                     "--validation_split_percentage", "0", "--test_split_percentage", "0", "--balance_classes", "false",
                     "--report_to", "none", "--disable_tqdm", "true"])
    tokenizer = hf_gpt_scratch.tokenization.load_tokenizer(str(tiny_clm), trust_remote_code=False)
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in rows]
    expected = sum(n > 16 for n in lengths)
    assert 2 <= expected < len(rows)
    assert (f"long.csv (train split): {expected} text(s) are longer than 16 tokens; the first is row "
            f"{next(i for i, n in enumerate(lengths) if n > 16)} ") in caplog.text
    assert f"the longest {max(lengths)} tokens: they are truncated." in caplog.text


def test_pretrain_packs_rather_than_truncates(tmp_path):
    """recipes/pretrain.py never truncates: texts are concatenated and cut into blocks (run_clm)
    or the book's windows, so a long line is no error and no token before the last block is lost."""
    from hf_gpt_scratch.training.data import pack_into_blocks

    ids = list(range(100))
    blocks = pack_into_blocks({"input_ids": [ids[:7], ids[7:]]}, block_size=32)["input_ids"]
    assert [t for b in blocks for t in b] == ids[:96]


# --------------------------------------------------------------------------------------------
# Checkpoints whose config does not match their weights
# --------------------------------------------------------------------------------------------


def _checkpoint(path, **overrides):
    config = dict(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    config.update(overrides)
    GPTScratchForCausalLM(GPTScratchConfig(**config)).save_pretrained(path)
    return path


def _edit_config(path, **values):
    """Edit config.json under every name of each field: ours lists the standard names too
    (`num_hidden_layers` beside `n_layers`), and two names that disagree are refused."""
    config = json.loads((path / "config.json").read_text())
    config.update(values)
    if config.get("model_type") == GPTScratchConfig.model_type:
        config.update({alias: config[name] for alias, name in GPTScratchConfig.attribute_map.items()})
    (path / "config.json").write_text(json.dumps(config))


def _edit_weights(path, edit):
    weights = load_file(str(path / "model.safetensors"))
    edit(weights)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_config_with_more_layers_than_the_weights(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    _edit_config(ckpt, n_layers=3)
    with pytest.raises(CheckpointMismatchError) as info:
        load_causal_lm(ModelArguments(model_name_or_path=str(ckpt)))
    message = str(info.value)
    assert str(ckpt) in message and "n_layers=3" in message
    assert "missing from the checkpoint (they would be randomly initialised): model.trf_blocks.2.* (13 keys)" in message


def test_renamed_and_reshaped_weights(tmp_path):
    ckpt = _checkpoint(tmp_path / "renamed")
    _edit_weights(ckpt, lambda w: w.__setitem__("model.final_norm.gain", w.pop("model.final_norm.weight")))
    with pytest.raises(CheckpointMismatchError) as info:
        load_causal_lm(ModelArguments(model_name_or_path=str(ckpt)))
    message = str(info.value)
    assert "missing from the checkpoint (they would be randomly initialised): model.final_norm.weight" in message
    assert "in the checkpoint but not in the model: model.final_norm.gain" in message

    ckpt = _checkpoint(tmp_path / "reshaped")
    _edit_config(ckpt, vocab_size=90)
    with pytest.raises(CheckpointMismatchError, match=r"of the wrong shape: .*model.tok_emb.weight \(checkpoint \(97, 32\), model \(90, 32\)\)"):
        load_causal_lm(ModelArguments(model_name_or_path=str(ckpt)))


def test_matching_checkpoints_still_load(tmp_path):
    tied = _checkpoint(tmp_path / "tied", tie_word_embeddings=True)  # out_head.weight is not in the file
    assert "out_head.weight" not in load_file(str(tied / "model.safetensors"))
    model = load_causal_lm(ModelArguments(model_name_or_path=str(tied)))
    assert model.out_head.weight is model.model.tok_emb.weight
    # a classifier built from a causal LM: a new score head and an unused out_head are expected
    clm = _checkpoint(tmp_path / "clm")
    clf = from_pretrained_strict(GPTScratchForSequenceClassification, str(clm), allow_missing=("score.",),
                                 allow_unexpected=("out_head.",), num_labels=2)
    torch.testing.assert_close(clf.model.tok_emb.weight, load_file(str(clm / "model.safetensors"))["model.tok_emb.weight"])
    # ... but nothing else
    _edit_config(clm, n_layers=3)
    with pytest.raises(CheckpointMismatchError, match=r"model.trf_blocks.2.\* \(13 keys\)"):
        from_pretrained_strict(GPTScratchForSequenceClassification, str(clm), allow_missing=("score.",),
                               allow_unexpected=("out_head.",), num_labels=2)


def test_stock_gpt2_folder_with_a_missing_layer(tmp_path):
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2)).save_pretrained(folder)
    _edit_config(folder, n_layer=3)
    with pytest.raises(CheckpointMismatchError, match=r"transformer.h.2.\*"):
        load_causal_lm(ModelArguments(model_name_or_path=str(folder)))


def test_recipe_refuses_a_mismatched_checkpoint_before_training(tmp_path, bpe_dir, finished):
    ckpt = _checkpoint(tmp_path / "ckpt", vocab_size=300)
    _edit_config(ckpt, n_layers=3)
    out, snapshot = finished
    before = snapshot()
    train = _write(tmp_path / "train.txt", TEXT.encode())
    recipe = load_recipe("pretrain")
    with pytest.raises(CheckpointMismatchError, match="model.trf_blocks.2"):
        recipe.main(["--model_name_or_path", str(ckpt), "--tokenizer_name", str(bpe_dir), "--train_file", str(train),
                     "--output_dir", str(out), "--overwrite_output_dir", "--block_size", "16"])
    assert snapshot() == before


# --------------------------------------------------------------------------------------------
# Safety: remote code, tokens, pickles
# --------------------------------------------------------------------------------------------


def _python_files():
    return sorted([*RECIPES.glob("*.py"), *(REPO / "hf_gpt_scratch").rglob("*.py")])


def test_no_code_passes_trust_remote_code_true():
    """Every `trust_remote_code=` in the recipes and the package comes from the user's flag."""
    offenders, uses = [], 0
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                uses += 1
                if isinstance(node.value, ast.Constant) and node.value.value is True:
                    offenders.append(f"{path.relative_to(REPO)}:{node.value.lineno}")
    assert uses > 0 and offenders == []


def test_remote_code_runs_only_with_the_flag(tmp_path):
    """A checkpoint shipping its own code (auto_map, a model type this package does not know):
    without --trust_remote_code it is refused and its code never runs."""
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "configuration_evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_gpt'\n"
    )
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil_gpt", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                               "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_causal_lm(ModelArguments(model_name_or_path=str(folder)))
    assert not marker.exists()


def test_hub_token_flag_is_refused_and_tokens_are_redacted(tmp_path):
    types = (ModelArguments, DataArguments, TrainingArguments)
    with pytest.raises(ValueError, match="--hub_token is not accepted") as info:
        parse_recipe_args(types, args=["--output_dir", str(tmp_path), "--hub_token", "hf_SeCrEt123"])
    assert "hf_SeCrEt123" not in str(info.value)
    # what transformers prints and saves as JSON hides any *_token field
    args = TrainingArguments(output_dir=str(tmp_path), hub_token="hf_SeCrEt123", report_to="none")
    assert "hf_SeCrEt123" not in str(args) and "hf_SeCrEt123" not in repr(args)
    assert "hf_SeCrEt123" not in args.to_json_string()


def test_a_token_in_the_environment_reaches_no_log_and_no_file(tmp_path, bpe_dir, monkeypatch, capsys, caplog):
    secret = "hf_EnvSecret987654321"
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "run"
    train = _write(tmp_path / "train.txt", TEXT.encode())
    recipe = load_recipe("pretrain")
    with caplog.at_level(logging.DEBUG):
        recipe.main(["--tokenizer_name", str(bpe_dir), "--config_overrides", TINY, "--block_size", "16",
                     "--train_file", str(train), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                     "--eval_strategy", "no", "--eval_on_start", "false", "--logging_steps", "1",
                     "--max_new_tokens", "2", "--disable_tqdm", "true", "--log_level", "debug", "--output_dir", str(out)])
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path  # pickled arguments included
    # safetensors only: the final folder holds no pickle; checkpoints hold only the Trainer's resume files
    assert (out / "model.safetensors").is_file() and pickle_files(out) == []
    assert sorted(pickle_files(out, allow_trainer_checkpoints=False)) == [
        "checkpoint-2/optimizer.pt", "checkpoint-2/rng_state.pth", "checkpoint-2/scheduler.pt",
        "checkpoint-2/training_args.bin"]


def test_pickle_files_lists_what_is_not_the_trainers(tmp_path):
    (tmp_path / "checkpoint-5" / "global_step5").mkdir(parents=True)
    for name in ("model.safetensors", "pytorch_model.bin", "checkpoint-5/optimizer.pt", "checkpoint-5/rng_state_1.pth",
                 "checkpoint-5/extra.pkl", "checkpoint-5/global_step5/mp_rank_00_model_states.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert pickle_files(tmp_path) == ["checkpoint-5/extra.pkl", "pytorch_model.bin"]


# --------------------------------------------------------------------------------------------
# The model API: bad tensors get a ValueError naming the value, the same in train and eval mode
# --------------------------------------------------------------------------------------------


def _tiny(cls=GPTScratchForCausalLM, train=False, **overrides):
    model = cls(tiny_config(**overrides))
    return model.train(train)


def _ids(*shape):
    return torch.randint(1, 97, shape)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "make_kwargs, pattern",
    [
        (lambda: dict(input_ids=_ids(1, 0)), r"input_ids is empty \(shape \[1, 0\]\)"),
        (lambda: dict(input_ids=_ids(0, 4)), r"input_ids is empty \(shape \[0, 4\]\)"),
        (lambda: dict(input_ids=_ids(5)), r"input_ids must be 2-D \[batch, tokens\], got shape \[5\]"),
        (lambda: dict(inputs_embeds=torch.randn(2, 4, 16)), r"inputs_embeds must be \[batch, tokens, emb_dim=32\], got shape \[2, 4, 16\]"),
        (lambda: dict(inputs_embeds=torch.randn(2, 0, 32)), r"inputs_embeds is empty"),
        (lambda: dict(input_ids=_ids(2, 6), attention_mask=torch.ones(2, 5)), r"attention_mask has shape \[2, 5\].*expected \[2, 6\]"),
        (lambda: dict(input_ids=_ids(2, 6), attention_mask=torch.ones(1, 6)), r"attention_mask has shape \[1, 6\].*expected \[2, 6\]"),
        (lambda: dict(input_ids=_ids(2, 6), attention_mask=torch.ones(6)), r"attention_mask has shape \[6\]"),
        (lambda: dict(input_ids=_ids(2, 6), position_ids=torch.arange(5)[None]), r"position_ids has shape \[1, 5\], expected \[2 or 1, 6\]"),
    ],
)
@pytest.mark.parametrize("cls", [GPTScratchForCausalLM, GPTScratchForSequenceClassification])
def test_bad_input_tensors(cls, make_kwargs, pattern, train):
    model = _tiny(cls, train, pad_token_id=0)
    with pytest.raises(ValueError, match=pattern):
        model(**make_kwargs())


def test_generate_with_an_empty_prompt():
    model = _tiny(pad_token_id=0)
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \[1, 0\]\).*bos or eos id"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)


def test_a_mask_with_a_cache_covers_the_cached_tokens_too():
    """transformers' convention: after 4 cached tokens, 2 new ones take a mask of [batch, 6]."""
    model = _tiny()
    x = _ids(2, 6)
    cache = DynamicCache(config=model.config)
    model(x[:, :4], cache=cache, use_cache=True)
    step = model(x[:, 4:], attention_mask=torch.ones(2, 6), cache=cache, use_cache=True).logits
    torch.testing.assert_close(step, model(x).logits[:, 4:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"attention_mask has shape \[2, 2\], but input_ids is \[2, 2\] after 6 cached "
                                         r"tokens: expected \[2, 8\]"):
        model(x[:, 4:], attention_mask=torch.ones(2, 2), cache=cache, use_cache=True)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "make_labels, pattern",
    [
        (lambda x: torch.where(torch.arange(x.shape[1]) < 2, -1, x), r"labels holds -1: expected token ids in \[0, vocab_size=97\) or -100"),
        (lambda x: torch.where(torch.arange(x.shape[1]) == 3, 97, x), r"labels holds 97: expected token ids in \[0, vocab_size=97\)"),
        (lambda x: x[:, :-1], r"labels must be integer token ids of the input's shape \[2, 6\], got torch.int64 of shape \[2, 5\]"),
        (lambda x: x.reshape(-1), r"labels must be .* shape \[2, 6\], got torch.int64 of shape \[12\]"),
        (lambda x: x.float(), r"labels must be integer token ids .* got torch.float32"),
    ],
)
def test_bad_causal_lm_labels(make_labels, pattern, train):
    model = _tiny(train=train)
    x = _ids(2, 6)
    with pytest.raises(ValueError, match=pattern):
        model(x, labels=make_labels(x))
    with pytest.raises(ValueError, match=pattern.replace("labels", "shift_labels")):  # pre-shifted (context parallel)
        model(x, labels=x, shift_labels=make_labels(x))


@pytest.mark.parametrize("train", [False, True])
def test_shift_labels_give_the_loss_of_labels(train):
    model = _tiny(train=train)
    x = _ids(2, 6)
    labels = x.clone()
    labels[0, :2] = -100
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()  # as the Trainer passes them
    expected = model(x, labels=labels).loss
    torch.testing.assert_close(model(x, labels=labels, shift_labels=shift).loss, expected)
    torch.testing.assert_close(model(x, labels=torch.full_like(x, -100), shift_labels=shift).loss, expected)


@pytest.mark.parametrize("train", [False, True])
def test_classifier_refuses_a_row_with_no_real_token(train):
    model = _tiny(GPTScratchForSequenceClassification, train, pad_token_id=0, num_labels=2)
    x = _ids(3, 5)
    mask = torch.ones_like(x)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"Row 1 has no real token \(its attention_mask is all 0\)"):
        model(x, attention_mask=mask, labels=torch.tensor([0, 1, 0]))
    x[2] = 0
    with pytest.raises(ValueError, match=r"Row 2 has no real token \(every id is pad_token_id=0\)"):
        model(x, labels=torch.tensor([0, 1, 0]))


def test_classifier_without_pad_token_id_uses_the_attention_mask():
    model = _tiny(GPTScratchForSequenceClassification, num_labels=3)
    assert model.config.pad_token_id is None
    a, b = _ids(1, 3), _ids(1, 6)
    batch = torch.cat([torch.cat([a, torch.full((1, 3), 5)], 1), b])  # right-padded with an ordinary id
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    alone = torch.cat([model(a).logits, model(b).logits])
    torch.testing.assert_close(model(batch, attention_mask=mask).logits, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"Cannot classify a batch of 2 sequences without an attention_mask.*pad_token_id"):
        model(batch)
