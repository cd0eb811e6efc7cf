"""GPTScratchConfig holds its rules on every path that sets a field (construction, from_pretrained
overrides, assignment, from_dict, update, update_from_string), with a ValueError naming the field
and the value; the standard names are in `to_dict()` and config.json, read from the book's fields."""

import json

import pytest
import torch
from conftest import tiny_config
from transformers import AutoConfig, AutoModelForCausalLM

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification

TINY = dict(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)

# (field, bad value, how the value reads in the message): one per rule of each field.
BAD_FIELDS = [
    ("vocab_size", 0, "0"),
    ("context_length", -1, "-1"),
    ("emb_dim", 2.5, "2.5"),
    ("n_heads", 0, "0"),
    ("n_layers", 0, "0"),
    ("n_layers", True, "True"),
    ("drop_rate", 1.0, "1.0"),
    ("drop_rate", -0.1, "-0.1"),
    ("qkv_bias", "yes", "'yes'"),
    ("tie_word_embeddings", 1, "1"),
    ("use_cache", None, "None"),
    ("layer_norm_eps", 0.0, "0.0"),
    ("layer_norm_eps", float("nan"), "nan"),
    ("initializer_range", -0.02, "-0.02"),
    ("initializer_range", 0, "0"),
    ("pad_token_id", -1, "-1"),
    ("bos_token_id", 1.5, "1.5"),
    ("eos_token_id", [], "[]"),
    ("eos_token_id", [3, -2], "[3, -2]"),
]
IDS = [f"{name}={value!r}" for name, value, _ in BAD_FIELDS]


def assert_names(error, *words):
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def saved_model(path):
    GPTScratchForCausalLM(GPTScratchConfig(**TINY)).save_pretrained(path)
    return path


# ---------------------------------------------------------------- one field, every path


@pytest.mark.parametrize("name, value, shown", BAD_FIELDS, ids=IDS)
def test_construction(name, value, shown):
    with pytest.raises(ValueError) as err:
        GPTScratchConfig(**{**TINY, name: value})
    assert_names(err, name, shown)


@pytest.mark.parametrize("name, value, shown", BAD_FIELDS, ids=IDS)
def test_assignment_refuses_and_keeps_the_old_value(name, value, shown):
    config = GPTScratchConfig(**TINY)
    before = getattr(config, name)
    with pytest.raises(ValueError) as err:
        setattr(config, name, value)
    assert_names(err, name, shown)
    assert getattr(config, name) == before


@pytest.mark.parametrize("name, value, shown", BAD_FIELDS, ids=IDS)
def test_from_dict(name, value, shown):
    with pytest.raises(ValueError) as err:
        GPTScratchConfig.from_dict({**TINY, name: value})
    assert_names(err, name, shown)
    with pytest.raises(ValueError) as err:  # as a keyword override, set after construction
        GPTScratchConfig.from_dict(TINY, **{name: value})
    assert_names(err, name, shown)


@pytest.mark.parametrize("name, value, shown", BAD_FIELDS, ids=IDS)
def test_update_changes_nothing(name, value, shown):
    config = GPTScratchConfig(**TINY)
    before = config.to_dict()
    with pytest.raises(ValueError) as err:
        config.update({"n_layers": 3, name: value})  # n_layers=3 is applied first, then undone
    assert_names(err, name, shown)
    assert config.to_dict() == before


@pytest.mark.parametrize("text", ["n_layers=0", "n_heads=0", "vocab_size=-5", "context_length=-1", "drop_rate=1.0",
                                  "layer_norm_eps=0.0", "initializer_range=-0.02", "emb_dim=34"])
def test_update_from_string_changes_nothing(text):
    config = GPTScratchConfig(**TINY)
    before = config.to_dict()
    with pytest.raises(ValueError) as err:
        config.update_from_string(f"n_layers=3,{text}")
    assert_names(err, *text.split("="))
    assert config.to_dict() == before


@pytest.mark.parametrize("name, value, shown", BAD_FIELDS, ids=IDS)
def test_from_pretrained_keyword_override(tmp_path, name, value, shown):
    folder = saved_model(tmp_path)
    with pytest.raises(ValueError) as err:
        AutoModelForCausalLM.from_pretrained(folder, **{name: value})
    assert_names(err, name, shown)


def test_standard_names_are_checked_and_named():
    config = GPTScratchConfig(**TINY)
    with pytest.raises(ValueError) as err:
        config.num_hidden_layers = 0
    assert_names(err, "n_layers", "num_hidden_layers", "0")
    with pytest.raises(ValueError) as err:
        GPTScratchConfig(**TINY, hidden_size=-8)
    assert_names(err, "emb_dim", "hidden_size", "-8")


# ---------------------------------------------------------------- the four cases


def test_from_pretrained_with_a_head_count_that_does_not_divide_the_width(tmp_path):
    folder = saved_model(tmp_path)
    with pytest.raises(ValueError) as err:
        AutoModelForCausalLM.from_pretrained(folder, n_heads=5)
    assert_names(err, "emb_dim", "32", "n_heads", "5")
    with pytest.raises(ValueError) as err:
        AutoModelForCausalLM.from_pretrained(folder, num_attention_heads=5)
    assert_names(err, "emb_dim", "32", "n_heads", "5")


@pytest.mark.parametrize("cls", [GPTScratchForCausalLM, GPTScratchForSequenceClassification])
def test_assigned_head_count_is_refused_when_a_model_is_built(cls):
    config = GPTScratchConfig(**TINY)
    config.n_heads = 5  # 32 % 5 != 0: a rule across two fields waits for the config to be used
    with pytest.raises(ValueError) as err:
        cls(config)
    assert_names(err, "emb_dim", "32", "n_heads", "5")
    with pytest.raises(ValueError):
        AutoModelForCausalLM.from_config(config)


def test_fields_can_change_one_at_a_time():
    config = GPTScratchConfig(**TINY)
    config.emb_dim = 40  # 40 % 4 == 0 but the target is 5 heads of 8
    config.n_heads = 5
    model = GPTScratchForCausalLM(config)
    assert model(torch.randint(0, 97, (1, 6))).logits.shape == (1, 6, 97)
    config.pad_token_id = 150  # beyond the vocabulary until the next line grows it
    config.vocab_size = 200
    config.validate()


def test_update_applies_fields_together():
    config = GPTScratchConfig(**TINY)
    config.update({"n_heads": 5, "emb_dim": 40})  # invalid after the first, valid after both
    assert (config.emb_dim, config.n_heads) == (40, 5)
    config.update_from_string("n_heads=8,emb_dim=64")
    assert (config.emb_dim, config.n_heads) == (64, 8)


def test_from_pretrained_overrides_apply_together(tmp_path):
    GPTScratchConfig(**TINY).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path, n_heads=5, emb_dim=40)
    assert (config.emb_dim, config.n_heads) == (40, 5)


def test_n_layers_zero_and_negative_init_range_never_reach_torch(tmp_path):
    folder = saved_model(tmp_path)
    for override in ({"n_layers": 0}, {"initializer_range": -0.02}):
        with pytest.raises(ValueError) as err:
            AutoModelForCausalLM.from_pretrained(folder, **override)
        (name, value), = override.items()
        assert_names(err, name, str(value))
        config = GPTScratchConfig(**TINY)
        with pytest.raises(ValueError):
            setattr(config, name, value)


# ---------------------------------------------------------------- nothing invalid is written


def test_invalid_config_is_never_written(tmp_path):
    config = GPTScratchConfig(**TINY)
    model = GPTScratchForCausalLM(config)
    config.n_heads = 5
    with pytest.raises(ValueError) as err:
        config.save_pretrained(tmp_path / "config")
    assert_names(err, "n_heads", "5")
    assert not (tmp_path / "config").exists()
    with pytest.raises(ValueError):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "config.json").exists()
    assert not list((tmp_path / "model").glob("*.safetensors"))
    config.n_heads = 4
    model.save_pretrained(tmp_path / "model")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.n_heads == 4


def test_a_config_json_that_breaks_a_rule_fails_at_load(tmp_path):
    folder = saved_model(tmp_path)
    saved = json.loads((folder / "config.json").read_text())
    saved.update(n_heads=5, num_attention_heads=5)
    (folder / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert_names(err, "emb_dim", "n_heads", "5")


# ---------------------------------------------------------------- standard names, one source of truth


STANDARD = {"hidden_size": "emb_dim", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
            "max_position_embeddings": "context_length"}


def test_standard_names_in_to_dict_and_config_json(tmp_path):
    config = tiny_config(emb_dim=48, n_heads=6, n_layers=3, context_length=24)
    as_dict = config.to_dict()
    assert {alias: as_dict[alias] for alias in STANDARD} == {alias: getattr(config, f) for alias, f in STANDARD.items()}
    assert {alias: as_dict[alias] for alias in STANDARD} == {
        "hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 3, "max_position_embeddings": 24}
    config.emb_dim = 60  # the standard names follow the field: nothing is stored twice
    assert config.to_dict()["hidden_size"] == 60 and "hidden_size" not in vars(config)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hidden_size"] == saved["emb_dim"] == 60 and saved["num_hidden_layers"] == 3
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert (loaded.emb_dim, loaded.n_heads, loaded.n_layers, loaded.context_length) == (60, 6, 3, 24)
    assert not set(STANDARD) & set(vars(loaded))
    assert GPTScratchConfig(**config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("make", ["constructor", "from_dict", "config.json"])
def test_two_names_of_one_field_that_disagree_are_refused(tmp_path, make):
    values = {**tiny_config().to_dict(), "emb_dim": 64}  # a stale hidden_size=32 beside it
    with pytest.raises(ValueError) as err:
        if make == "constructor":
            GPTScratchConfig(**values)
        elif make == "from_dict":
            GPTScratchConfig.from_dict(values)
        else:
            (tmp_path / "config.json").write_text(json.dumps(values))
            AutoConfig.from_pretrained(tmp_path)
    assert_names(err, "hidden_size=32", "emb_dim=64")


def test_lm_eval_reads_the_context_length():
    utils = pytest.importorskip("lm_eval.models.utils")
    assert utils.resolve_max_length(tiny_config(context_length=48), None, default=2048) == 48
