"""hf_gpt_scratch.training.data: book files, loaders, the book's splits, the Alpaca format and
pretraining blocks, checked against the book's own code (llms_from_scratch) where it has some."""

import csv
import hashlib
import io
import json
import os
import re
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from hf_gpt_scratch.training import data as D

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _book_path(name: str) -> Path:
    path = Path(os.environ.get(D.DATA_ENV) or DEFAULT_DATA) / name
    if not path.is_file():
        pytest.skip(f"book file {name} not found in {path.parent} (set {D.DATA_ENV})")
    return path


@pytest.fixture
def sms_path():
    return _book_path("SMSSpamCollection.tsv")


@pytest.fixture
def instruction_path():
    return _book_path("instruction-data.json")


@pytest.fixture
def no_download(monkeypatch):
    def fail(url, output_file, pooch=None):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(D, "_download", fail)


# ---------------------------------------------------------------------------------------------
# data directory and book files
# ---------------------------------------------------------------------------------------------


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert D.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(D.DATA_ENV)
    assert D.resolve_data_dir() == Path("~/.cache/hf_gpt_scratch").expanduser()


@pytest.mark.parametrize("name", sorted(D.BOOK_FILES))
def test_fetch_existing_files_verify_without_download(name, no_download):
    path = _book_path(name)
    assert D.fetch_book_file(name, data_dir=path.parent) == path


def test_fetch_unknown_name():
    with pytest.raises(ValueError, match="known files: .*the-verdict.txt"):
        D.fetch_book_file("nope.txt")


def test_fetch_sha256_mismatch(tmp_path, no_download):
    (tmp_path / "the-verdict.txt").write_text("not the verdict", encoding="utf-8")
    with pytest.raises(D.ChecksumMismatchError) as info:
        D.fetch_book_file("the-verdict.txt", data_dir=tmp_path)
    message = str(info.value)
    assert "the-verdict.txt" in message
    assert D.BOOK_FILES["the-verdict.txt"][1] in message
    assert hashlib.sha256(b"not the verdict").hexdigest() in message


def test_fetch_missing_file_downloads(tmp_path, monkeypatch):
    content = _book_path("the-verdict.txt").read_bytes()
    calls = []

    def fake_download(url, dest, pooch=None):
        calls.append(url)
        Path(dest).write_bytes(content)

    monkeypatch.setattr(D, "_download", fake_download)
    target = tmp_path / "new"
    path = D.fetch_book_file("the-verdict.txt", data_dir=target)
    assert calls == [D.BOOK_FILES["the-verdict.txt"][0]]
    assert path == target / "the-verdict.txt" and path.read_bytes() == content
    assert sorted(p.name for p in target.iterdir()) == ["the-verdict.txt"]  # no temp leftovers
    D.fetch_book_file("the-verdict.txt", data_dir=target)  # now present: no second download
    assert len(calls) == 1


def test_fetch_sms_extracts_zip_and_normalises_crlf(tmp_path, monkeypatch, sms_path):
    lf = sms_path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme", "SMS Spam Collection v.1")
        archive.writestr("SMSSpamCollection", lf.replace(b"\n", b"\r\n"))
    monkeypatch.setattr(D, "_download", lambda url, dest, pooch=None: Path(dest).write_bytes(buffer.getvalue()))
    path = D.fetch_book_file("SMSSpamCollection.tsv", data_dir=tmp_path)
    assert path.name == "SMSSpamCollection.tsv" and path.read_bytes() == lf
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMSSpamCollection.tsv"]  # zip and temp folder gone


def test_fetch_download_with_wrong_hash_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_download", lambda url, dest, pooch=None: Path(dest).write_bytes(b"tampered"))
    with pytest.raises(OSError, match="does not match the known hash") as info:
        D.fetch_book_file("instruction-data.json", data_dir=tmp_path)
    assert D.BOOK_FILES["instruction-data.json"][0] in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_tries_mirror_after_failure(tmp_path, monkeypatch, sms_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SMSSpamCollection", sms_path.read_bytes())
    calls = []

    def flaky(url, dest, pooch=None):
        calls.append(url)
        if len(calls) == 1:
            raise OSError("connection refused")
        Path(dest).write_bytes(buffer.getvalue())

    monkeypatch.setattr(D, "_download", flaky)
    D.fetch_book_file("SMSSpamCollection.tsv", data_dir=tmp_path)
    assert calls[0] == D.BOOK_FILES["SMSSpamCollection.tsv"][0] and "backblaze" in calls[1]


def test_fetch_with_the_real_downloader_from_a_local_server(tmp_path, monkeypatch):
    """pooch's HTTP downloader itself, from a server on 127.0.0.1: the file arrives checked, and a
    wrong hash writes nothing."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "the-verdict.txt").write_bytes(_book_path("the-verdict.txt").read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/the-verdict.txt"
        monkeypatch.setitem(D.BOOK_FILES, "the-verdict.txt", (url, D.BOOK_FILES["the-verdict.txt"][1]))
        path = D.fetch_book_file("the-verdict.txt", data_dir=tmp_path / "data")
        assert path.read_bytes() == (served / "the-verdict.txt").read_bytes()
        monkeypatch.setitem(D.BOOK_FILES, "the-verdict.txt", (url, "0" * 64))
        with pytest.raises(OSError, match=f"{url}: SHA256 hash of downloaded file"):
            D.fetch_book_file("the-verdict.txt", data_dir=tmp_path / "other")
        assert list((tmp_path / "other").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------


def test_load_text_verdict():
    text = D.load_text(_book_path("the-verdict.txt"))
    assert len(text) == 20479 and text.startswith("I HAD always thought Jack Gisburn")


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        D.load_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*empty.txt"):
        D.load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8: byte 'e9' at offset 3.*iconv -f ENCODING"):
        D.load_text(tmp_path / "latin1.txt")
    for encoding in ("utf-16", "utf-16-le"):  # with and without a byte-order mark
        (tmp_path / "utf16.txt").write_bytes("caf\u00e9 ok".encode(encoding))
        with pytest.raises(ValueError, match=r"utf16.txt is not UTF-8 text: .*iconv -f utf-16 -t utf-8"):
            D.load_text(tmp_path / "utf16.txt")


def test_load_text_newlines_like_open(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")
    assert D.load_text(tmp_path / "crlf.txt") == "a\nb\nc\n"


def test_split_text_like_book():
    text = "x" * 95 + "y" * 10
    train, val = D.split_text(text, 0.9)
    assert train == text[: int(0.9 * len(text))] and train + val == text


# ---------------------------------------------------------------------------------------------
# spam classification (ch. 6)
# ---------------------------------------------------------------------------------------------


def test_load_sms_spam_counts(sms_path, no_download):
    import pandas as pd

    ds = D.load_sms_spam(data_dir=sms_path.parent)
    assert ds.column_names == ["text", "label"] and ds.num_rows == 5574
    labels = list(ds["label"])
    assert labels.count(0) == 4827 and labels.count(1) == 747
    assert ds.features["label"].names == ["ham", "spam"]
    df = pd.read_csv(sms_path, sep="\t", header=None, names=["Label", "Text"], quoting=csv.QUOTE_NONE)
    assert list(ds["text"]) == df["Text"].tolist()
    assert labels == df["Label"].map({"ham": 0, "spam": 1}).tolist()


def test_load_sms_spam_book_quoting(sms_path):
    ds = D.load_sms_spam(sms_path, quoting=csv.QUOTE_MINIMAL)
    labels = list(ds["label"])
    assert ds.num_rows == 5572 and labels.count(0) == 4825 and labels.count(1) == 747


def _book_spam_splits(df):
    from llms_from_scratch.ch06 import create_balanced_dataset, random_split

    balanced = create_balanced_dataset(df)
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    return random_split(balanced, 0.7, 0.1)


def _assert_same_rows(ours, book_df):
    assert list(ours["text"]) == book_df["Text"].tolist()
    assert list(ours["label"]) == book_df["Label"].tolist()


def test_balanced_split_matches_book(sms_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("llms_from_scratch.ch06")
    splits = D.balanced_split(D.load_sms_spam(sms_path))
    assert {k: v.num_rows for k, v in splits.items()} == {"train": 1045, "validation": 149, "test": 300}
    assert sum(sum(s["label"]) for s in splits.values()) == 747  # 747 spam + 747 ham
    df = pd.read_csv(sms_path, sep="\t", header=None, names=["Label", "Text"], quoting=csv.QUOTE_NONE)
    for ours, book in zip(splits.values(), _book_spam_splits(df)):
        _assert_same_rows(ours, book)


def test_balanced_split_reproduces_book_notebook_rows(sms_path):
    """With the notebook's own parse (pandas default quoting), the very rows the book trains on."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("llms_from_scratch.ch06")
    splits = D.balanced_split(D.load_sms_spam(sms_path, quoting=csv.QUOTE_MINIMAL))
    df = pd.read_csv(sms_path, sep="\t", header=None, names=["Label", "Text"])  # as in ch06.ipynb
    for ours, book in zip(splits.values(), _book_spam_splits(df)):
        _assert_same_rows(ours, book)


def test_balanced_split_generic():
    import datasets

    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(30)], "label": [0] * 20 + [1] * 4 + [2] * 6})
    splits = D.balanced_split(ds, seed=1, train_frac=0.5, validation_frac=0.25)
    assert [s.num_rows for s in splits.values()] == [6, 3, 3]
    labels = sorted(l for s in splits.values() for l in s["label"])
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    texts = [t for s in splits.values() for t in s["text"]]
    assert len(set(texts)) == 12


def test_load_text_classification_file_formats(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hi, there",pos\nNA,neg\nok,pos\n', encoding="utf-8")
    ds, names = D.load_text_classification_file(tmp_path / "a.csv")
    assert names == ["neg", "pos"] and list(ds["label"]) == [1, 0, 1]
    assert ds["text"] == ["hi, there", "NA", "ok"]  # "NA" stays a text (pandas would read a missing value)

    ds, names = D.load_text_classification_file(tmp_path / "a.csv", label_names=["pos", "neg"])
    assert names == ["pos", "neg"] and list(ds["label"]) == [0, 1, 0]

    (tmp_path / "b.tsv").write_text('sms\tcls\n"quoted" text\tspam\nhello\tham\n', encoding="utf-8")
    ds, names = D.load_text_classification_file(tmp_path / "b.tsv", text_column="sms", label_column="cls")
    assert names == ["ham", "spam"] and ds[0] == {"text": '"quoted" text', "label": 1}

    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ds, names = D.load_text_classification_file(tmp_path / "c.jsonl")
    assert names == ["0", "1", "2"] and list(ds["label"]) == [1, 0, 2]
    (tmp_path / "c.json").write_text(json.dumps(rows), encoding="utf-8")
    ds, names = D.load_text_classification_file(tmp_path / "c.json", label_names=["x", "y", "z"])
    assert names == ["x", "y", "z"] and list(ds["label"]) == [1, 0, 2]


def test_load_text_classification_file_errors(tmp_path):
    (tmp_path / "a.csv").write_text("body,label\nhi,pos\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]; columns found: \['body', 'label'\]"):
        D.load_text_classification_file(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("text,label\nhi,pos\nyo,maybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 1 has label 'maybe', which is not one of the classes \['neg', 'pos'\]"):
        D.load_text_classification_file(tmp_path / "b.csv", label_names=["neg", "pos"])
    with pytest.raises(FileNotFoundError):
        D.load_text_classification_file(tmp_path / "none.csv")
    (tmp_path / "c.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type"):
        D.load_text_classification_file(tmp_path / "c.txt")


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("comma.csv", "label,text\nham,hello\nham,ok lor, on the way\n",
         r"row 1 \(line 3\) has 3 fields \['ham', 'ok lor', ' on the way'\] for the 2 columns \['label', 'text'\]; quote"),
        ("first.csv", "label,text\nham,ok lor, on the way\nham,hi\n", r"row 0 \(line 2\) has 3 fields"),  # not an index
        ("tab.tsv", "label\ttext\nham\thi\nspam\twin\tnow\n", r"row 1 \(line 3\) has 3 fields \['spam', 'win', 'now'\]"),
        ("case.csv", "label,text\nspam,a\nham,b\nSPAM,c\n", r"row 2 has label 'SPAM', the same as 'spam' but for case"),
        ("space.csv", "label,text\nspam,a\nham,b\n spam,c\n", r"row 2 has label ' spam', spaces around it"),
        ("float.csv", "label,text\n0,a\n1,b\n1.0,c\n", r"row 2 has label '1.0', a number that is not an integer id"),
        ("float.jsonl", '{"text": "a", "label": 0.0}\n{"text": "b", "label": 1.0}\n', r"row 0 has label 0.0, a number that is not"),
        ("mixed.json", '[{"text": "a", "label": "ham"}, {"text": "b", "label": 1}]', r"row 1 has label 1, an integer id among named"),
        ("gap.csv", "label,text\n0,a\n5,b\n", r"the integer labels \[0, 5\] are not the ids 0..1: they would make a 6-class head"),
        ("empty.csv", "label,text\nham,a\nspam,\n", r"row 1 has no text in column 'text' \(got ''\); an empty text"),
        ("blank.jsonl", '{"text": "a", "label": "ham"}\n{"text": "  ", "label": "spam"}\n', r"row 1 has no text"),
    ],
)
def test_classification_files_refuse_to_guess(tmp_path, name, content, pattern):
    """What a loader would otherwise guess (a cut text, new classes from spellings, a head with empty
    classes, a text-less example) is an error naming the file, the row and the values."""
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(name) + ": " + pattern):
        D.load_text_classification_file(tmp_path / name)


def test_class_names_are_the_explicit_mapping(tmp_path):
    (tmp_path / "a.csv").write_text("label,text\n0,a\n5,b\n", encoding="utf-8")
    ds, names = D.load_text_classification_file(tmp_path / "a.csv", label_names=list("abcdef"))
    assert names == list("abcdef") and ds["label"] == [0, 5]
    (tmp_path / "b.csv").write_text("label,text\nspam,a\nham,b\nSpam,c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 2 has label 'Spam', which is not one of the classes \['ham', 'spam'\]"):
        D.load_text_classification_file(tmp_path / "b.csv", label_names=["ham", "spam"])
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": -1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 1 has label -1, which is not one of the classes \['ham', 'spam'\]"):
        D.load_text_classification_file(tmp_path / "c.jsonl", label_names=["ham", "spam"])


# ---------------------------------------------------------------------------------------------
# instruction data (ch. 7)
# ---------------------------------------------------------------------------------------------


def test_instruction_data_and_book_split(instruction_path, no_download):
    entries = D.load_instruction_data(data_dir=instruction_path.parent)
    assert len(entries) == 1100
    train, val, test = D.split_instruction_data(entries)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    # ch07.ipynb, verbatim:
    data = json.loads(instruction_path.read_text(encoding="utf-8"))
    train_portion = int(len(data) * 0.85)
    test_portion = int(len(data) * 0.1)
    train_data = data[:train_portion]
    test_data = data[train_portion:train_portion + test_portion]
    val_data = data[train_portion + test_portion:]
    assert (train, val, test) == (train_data, val_data, test_data)


def test_alpaca_format_matches_book(instruction_path):
    ch07 = pytest.importorskip("llms_from_scratch.ch07")
    entries = D.load_instruction_data(instruction_path)
    with_input = [e for e in entries if e["input"]]
    without = [e for e in entries if not e["input"]]
    assert with_input and without
    for entry in entries:
        assert D.format_alpaca_prompt(entry) == ch07.format_input(entry)
        assert D.format_alpaca_prompt(entry, response_header=True) == ch07.format_input(entry) + "\n\n### Response:\n"
        assert D.format_alpaca_response(entry) == f"\n\n### Response:\n{entry['output']}"
    assert "### Input:" in D.format_alpaca_prompt(with_input[0])
    assert "### Input:" not in D.format_alpaca_prompt(without[0])
    assert D.format_alpaca_prompt({"instruction": "Do it.", "output": "Done."}) == ch07.format_input(
        {"instruction": "Do it.", "input": "", "output": "Done."}
    )


@pytest.mark.parametrize(
    "content, match",
    [
        ([{"instruction": "a", "input": ""}], r"row 0 has no 'output' field"),
        ([{"instruction": "a", "output": "b"}, {"instruction": "", "output": "b"}], r"row 1 field 'instruction' must be a non-empty string"),
        ([{"instruction": "a", "output": "b", "input": 3}], r"row 0 field 'input' must be a string"),
        ({"instruction": "a"}, r"expected a list of objects"),
    ],
)
def test_instruction_data_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        D.load_instruction_data(path)


def test_instruction_data_jsonl(tmp_path):
    """JSON lines are read like a JSON list, in a .jsonl file or in a .json one."""
    entries = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "output": "d"}]
    for name in ("e.jsonl", "e.json"):
        (tmp_path / name).write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")
        assert D.load_instruction_data(tmp_path / name) == entries
    (tmp_path / "bad.jsonl").write_text(json.dumps(entries[0]) + "\n" + '{"instruction": "x", "output": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1 field 'output' must be a non-empty string"):
        D.load_instruction_data(tmp_path / "bad.jsonl")
    (tmp_path / "broken.json").write_text('[{"instruction": "a", "output": "b"},\n oops]')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON: Expecting value: line 2"):
        D.load_instruction_data(tmp_path / "broken.json")


def test_alpaca_prompt_completion_is_the_books_text(instruction_path):
    """TRL's prompt + completion of each entry is the book's training text (ch07.InstructionDataset's
    full_text) plus <|endoftext|>, split at the end of the book's `format_input` prompt (what its
    exercise 7.2 masks). The tokens and the loss: tests/test_recipe_instruct.py."""
    ch07 = pytest.importorskip("llms_from_scratch.ch07")
    for entry in D.load_instruction_data(instruction_path):
        texts = D.alpaca_prompt_completion(entry, "<|endoftext|>")
        assert texts["prompt"] == ch07.format_input(entry)
        assert texts["prompt"] + texts["completion"] == (
            ch07.format_input(entry) + f"\n\n### Response:\n{entry['output']}" + "<|endoftext|>")


# ---------------------------------------------------------------------------------------------
# pretraining blocks
# ---------------------------------------------------------------------------------------------


def test_pack_into_blocks_with_datasets_map():
    import datasets

    ds = datasets.Dataset.from_dict(
        {"text": ["a", "b", "c"], "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]],
         "attention_mask": [[1, 1, 1], [1, 1], [1, 1, 1, 1, 1]]}
    )
    packed = ds.map(D.pack_into_blocks, batched=True, fn_kwargs={"block_size": 4}, remove_columns=ds.column_names)
    assert sorted(packed.column_names) == ["attention_mask", "input_ids", "labels"]
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # remainder [9, 10] dropped
    assert packed["labels"] == packed["input_ids"]
    assert packed["attention_mask"] == [[1] * 4, [1] * 4]
    assert D.pack_into_blocks({"input_ids": [[1, 2]]}, 4) == {"input_ids": [], "labels": []}


class IdsTokenizer:
    def __init__(self, ids):
        self.ids = ids

    def encode(self, text, allowed_special=None):
        return list(self.ids)


@pytest.mark.parametrize("context_length, stride", [(4, 4), (4, 2), (5, 3)])
def test_book_windows_match_gptdatasetv1(context_length, stride):
    ch02 = pytest.importorskip("llms_from_scratch.ch02")
    ids = list(range(100, 123))
    book = ch02.GPTDatasetV1("unused", IdsTokenizer(ids), context_length, stride)
    ours = D.book_windows(ids, context_length, stride)
    assert ours.num_rows == len(book)
    for i in range(len(book)):
        inputs, targets = book[i]
        assert ours[i]["input_ids"] == inputs.tolist()
        assert ours[i]["shift_labels"] == targets.tolist()
        assert ours[i]["labels"] == inputs.tolist()
    assert D.book_windows(ids, context_length, stride, shift_labels=False).column_names == ["input_ids", "labels"]


def test_book_windows_loss_is_the_books():
    from conftest import tiny_config

    from hf_gpt_scratch import GPTScratchForCausalLM

    model = GPTScratchForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 97, (70,)).tolist()
    ds = D.book_windows(ids, 16, 16).with_format("torch")
    batch = ds[:]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        book_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten())
        loss = model(**batch).loss
        fallback = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert torch.allclose(loss, book_loss)
    assert not torch.allclose(fallback, book_loss)  # labels alone lose each window's last target
