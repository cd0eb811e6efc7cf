"""The book's data (pretraining text, ch. 6 spam, ch. 7 instructions) as `datasets` objects, fetched with
a sha256 check; what no library has: the book's splits, Alpaca format and `GPTDatasetV1` windows, run_clm's
`group_texts`. The loaders refuse what they would otherwise guess, naming the file, row and value."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pooch

DATA_ENV = "HF_GPT_SCRATCH_DATA"

_RAW = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"

# name -> (url, sha256 of the file as stored in the data directory)
BOOK_FILES: dict[str, tuple[str, str]] = {
    "the-verdict.txt": (
        _RAW + "ch02/01_main-chapter-code/the-verdict.txt",
        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
    "instruction-data.json": (
        _RAW + "ch07/01_main-chapter-code/instruction-data.json",
        "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    ),
    "instruction-data-with-preference.json": (
        _RAW + "ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
        "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
    ),
    # UCI's zip holds `SMSSpamCollection`; it is extracted, CRLF -> LF, and stored with the book's
    # `.tsv` name. The sha256 is that of the stored (LF) file.
    "SMSSpamCollection.tsv": (
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
    ),
}

# Fallback origins, tried in order after BOOK_FILES' url (the book's own backup for the UCI zip).
_MIRRORS: dict[str, tuple[str, ...]] = {
    "SMSSpamCollection.tsv": (
        "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
    ),
}
# Files that arrive inside a zip: name -> member to extract.
_ZIP_MEMBERS = {"SMSSpamCollection.tsv": "SMSSpamCollection"}

SPAM_LABELS = ("ham", "spam")
ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_HEADER = "\n\n### Response:\n"


class ChecksumMismatchError(ValueError):
    """A data file's sha256 is not the expected one."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir`, else `$HF_GPT_SCRATCH_DATA`, else `~/.cache/hf_gpt_scratch` (nothing is created)."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "~/.cache/hf_gpt_scratch").expanduser()


def _download(url: str, output_file: str, pooch_obj: Any = None) -> None:
    """pooch's HTTP(S) downloader with a progress bar (tests replace this function)."""
    pooch.HTTPDownloader(progressbar=True, headers={"User-Agent": "hf-gpt-scratch"}, timeout=60)(url, output_file, pooch_obj)


def fetch_book_file(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the book file `name` in the data directory, else downloaded there by `pooch` (`BOOK_FILES`'
    url, then `_MIRRORS`) and checked before it is written; OSError lists every origin's failure. A present
    file with another sha256 is never replaced: `ChecksumMismatchError` names the file and both hashes."""
    if name not in BOOK_FILES:
        raise ValueError(f"unknown book file {name!r}; known files: {', '.join(sorted(BOOK_FILES))}")
    url, expected = BOOK_FILES[name]
    directory = resolve_data_dir(data_dir)
    path = directory / name
    if path.exists():
        actual = pooch.file_hash(str(path))
        if actual != expected:
            raise ChecksumMismatchError(
                f"{name}: sha256 mismatch for {path}: expected {expected}, got {actual}. The file is not the "
                f"book's {name}; delete it to download it again, or point --data_dir / ${DATA_ENV} at a folder "
                f"with the right file."
            )
        return path

    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in (url, *_MIRRORS.get(name, ())):
        try:
            if name not in _ZIP_MEMBERS:
                known_hash = f"sha256:{expected}"
                return Path(pooch.retrieve(source, known_hash, name, directory, downloader=_download))
            # a zip: its member, CRLF -> LF, checked in a temporary folder before it is moved into place
            with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
                unzip = pooch.Unzip(members=[_ZIP_MEMBERS[name]])
                found = pooch.retrieve(source, None, "archive", tmp, processor=unzip, downloader=_download)
                if not found:
                    raise ValueError(f"the zip has no member {_ZIP_MEMBERS[name]!r}")
                partial = Path(tmp) / name
                partial.write_bytes(Path(found[0]).read_bytes().replace(b"\r\n", b"\n"))
                actual = pooch.file_hash(str(partial))
                if actual != expected:
                    raise ValueError(f"sha256 of the extracted {name} is {actual}, expected {expected}")
                return partial.replace(path)
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # requests' errors are OSErrors
            failures.append(f"{source}: {err}")
    raise OSError(
        f"could not get {name} into {directory}:\n  " + "\n  ".join(failures)
        + f"\nDownload it by hand into that folder (or set ${DATA_ENV} / --data_dir)."
    )


def load_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file as the book reads it (`open(path, encoding="utf-8").read()`: CRLF and CR
    become LF, a leading BOM is dropped). FileNotFoundError for a missing file; ValueError for an
    empty, UTF-16 (or binary) or non-UTF-8 file, naming the file (and the byte offset)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"text file is empty: {path}")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw:
        raise ValueError(
            f"{path} is not UTF-8 text: it has a UTF-16 byte-order mark or NUL bytes (UTF-16, or not text); "
            f"convert UTF-16 with `iconv -f utf-16 -t utf-8`"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not valid UTF-8: byte {raw[err.start:err.start + 1].hex()!r} at offset {err.start} "
            f"({err.reason}); convert it with `iconv -f ENCODING -t utf-8` (ENCODING e.g. latin1 or cp1252)"
        ) from None
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_text(text: str, train_ratio: float = 0.9) -> tuple[str, str]:
    """The book's ch. 5 split of raw text at a character index: `int(train_ratio * len(text))`."""
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


def _json_objects(path: Path, fields: Sequence[str], nonblank: bool = False, hint: str = "") -> list[dict]:
    """A JSON list's or JSONL file's (also in a .json file) objects, with a string (`nonblank`: not only
    spaces) in each of `fields`; else a ValueError naming the file, line or row, field (`hint`: a fix)."""
    text = load_text(path)
    try:
        rows = None if path.suffix.lower() == ".jsonl" else json.loads(text)
    except json.JSONDecodeError as err:
        if not (err.msg == "Extra data" and text.lstrip().startswith("{")):  # else: JSON lines
            raise ValueError(f"{path}: invalid JSON: {err}") from None
        rows = None
    if rows is None:  # JSON lines
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg} at column "
                                 f"{err.colno}); expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
            rows.append(row)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of objects (JSON) or one object per line (JSONL), "
                         f"got {type(rows).__name__}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
        for field in fields:
            if field not in row:
                raise ValueError(f"{path}: row {i} has no {field!r} field (fields: {sorted(row)}){hint}")
            value = row[field]
            if not isinstance(value, str) or (nonblank and not value.strip()):
                raise ValueError(f"{path}: row {i} field {field!r} must be a {'non-empty ' * nonblank}"
                                 f"string, got {type(value).__name__} {value!r:.60}")
    return rows


def load_text_records(path: str | os.PathLike, column: str = "text") -> list[str]:
    """The texts in `column` of a JSON (a list of objects) or JSONL file. Beyond `load_text`'s errors,
    a ValueError names the file, the line (from 1) or row (from 0) and the column."""
    rows = _json_objects(Path(path), [column], hint="; choose the column with --text_column_name")
    return [row[column] for row in rows]


def _classification_dataset(texts: list[str], labels: list[int], names: Sequence[str]) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _as_id(value: Any) -> int | None:
    """A class id written as an int >= 0 or a string of digits, else None (bools are not ids)."""
    if isinstance(value, str):
        return int(value) if value.isdigit() else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def infer_label_names(raw: Sequence[Any], source: str = "labels") -> list[str]:
    """Class names of unnamed labels: "0".."n-1" for the integer ids 0..n-1, else the distinct labels
    sorted. A ValueError names `source`, the row and the values where that would guess: ids with a gap,
    an integer among names, a non-integer number, spaces around a label, labels that differ by case."""
    first_row = {}
    for row, value in enumerate(raw):
        first_row.setdefault(value, row)
    ids = {_as_id(v) for v in first_row}
    if None not in ids:
        if ids != set(range(len(ids))):
            raise ValueError(f"{source}: the integer labels {sorted(ids)} are not the ids 0..{len(ids) - 1}: they would "
                             f"make a {max(ids) + 1}-class head; renumber them or name every class (class_names)")
        return [str(i) for i in range(len(ids))]
    seen: dict[str, Any] = {}
    for value, row in sorted(first_row.items(), key=lambda item: _as_id(item[0]) is not None):  # ids last
        text = str(value)
        why = ("an integer id among named classes" if _as_id(value) is not None
               else "a number that is not an integer id" if re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", text.strip().lower())
               else "spaces around it" if text != text.strip()
               else f"the same as {seen[text.casefold()]!r} but for case" if text.casefold() in seen else None)
        if why:
            raise ValueError(f"{source}: row {row} has label {value!r}, {why} (labels: {sorted(map(str, first_row))}); "
                             "fix the data or name the classes (class_names)")
        seen[text.casefold()] = value
    return sorted(str(v) for v in first_row)


def labelled_dataset(
    ds: datasets.Dataset,
    names: Sequence[str] | None = None,
    source: str = "data",
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[datasets.Dataset, list[str]]:
    """`(Dataset(text, label: ClassLabel), names)` from two columns of `ds` (default names: a ClassLabel's,
    else `infer_label_names`). A ValueError names `source`, the row and the column or value: a missing
    column, a blank text, a missing label, a label neither spelled as one of `names` nor an id in range."""
    missing = [c for c in (text_column, label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns found: {ds.column_names} "
                         "(choose them with text_column / label_column)")
    texts, labels, feature = list(ds[text_column]), list(ds[label_column]), ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):  # -1 (no label, e.g. GLUE's test splits) becomes None
        labels = [feature.int2str(v) if 0 <= v < feature.num_classes else None for v in labels]
        names = names or feature.names
    for row, (text, label) in enumerate(zip(texts, labels)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: row {row} has no text in column {text_column!r} (got {text!r}); "
                             "an empty text would be classified from a padding position")
        if label is None or label == "":
            raise ValueError(f"{source}: row {row} has no label in column {label_column!r}")
    names = [str(n) for n in names] if names is not None else infer_label_names(labels, source)
    index = {n: i for i, n in enumerate(names)}
    ids = [index.get(str(value), _as_id(value)) for value in labels]  # the spelling of a name, else an id
    for row, (value, i) in enumerate(zip(labels, ids)):
        if i is None or i >= len(names):
            raise ValueError(f"{source}: row {row} has label {value!r}, "
                             f"which is not one of the classes {names}")
    return _classification_dataset(texts, ids, names), names


def load_sms_spam(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    quoting: int = csv.QUOTE_NONE,
) -> datasets.Dataset:
    """The SMS Spam Collection (`label<TAB>text`, default `fetch_book_file("SMSSpamCollection.tsv")`) by
    the book's pandas call as `text`, `label` (ClassLabel: 0 ham, 1 spam). `csv.QUOTE_NONE` keeps every
    line: 5,574 rows (747 spam); the book's `csv.QUOTE_MINIMAL` merges some lines: its 5,572 rows."""
    import pandas as pd

    path = Path(path) if path is not None else fetch_book_file("SMSSpamCollection.tsv", data_dir)
    verbatim = {"dtype": str, "keep_default_na": False, "encoding": "utf-8"} if quoting == csv.QUOTE_NONE else {}
    df = pd.read_csv(path, sep="\t", header=None, names=["label", "text"], quoting=quoting, **verbatim)
    if df.empty:
        raise ValueError(f"SMS spam file is empty: {path}")
    return labelled_dataset(datasets.Dataset.from_pandas(df), SPAM_LABELS, f"{path} (label<TAB>text, no header)")[0]


def load_text_classification_file(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """`labelled_dataset` of a CSV, TSV (unquoted), JSON or JSONL file read by `datasets.load_dataset`.
    Beyond `load_text`'s errors, a ValueError names a CSV/TSV row whose field count is not the header's."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
    text = load_text(path)  # a missing, empty or non-UTF-8 file: an error naming it
    kind, options = "json", {}
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting)
        header, rows = next(reader), 0
        for row in reader:
            if row and len(row) != len(header):
                hint = "quote a field that holds ','" if sep == "," else (
                    "an unquoted TSV field cannot hold a tab: use a quoted CSV")
                raise ValueError(f"{path}: row {rows} (line {reader.line_num}) has {len(row)} fields {row} "
                                 f"for the {len(header)} columns {header}; {hint}")
            rows += bool(row)
        if not rows:
            raise ValueError(f"{path}: no rows")
        kind, options = "csv", dict(sep=sep, quoting=quoting,
                                    keep_default_na=False,  # no text or label becomes NaN (e.g. "NA", "null")
                                    features=datasets.Features({c: datasets.Value("string") for c in header}))
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", **options)
    except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
        raise ValueError(f"{path}: not a JSON list of objects or JSON Lines ({err.__cause__ or err})") from None
    return labelled_dataset(ds, label_names, str(path), text_column, label_column)


def balanced_split(
    ds: datasets.Dataset,
    seed: int = 123,
    train_frac: float = 0.7,
    validation_frac: float = 0.1,
    label_column: str = "label",
    balance: bool = True,
) -> datasets.DatasetDict:
    """Train / validation / test rows of `ds` (all columns), with `balance` each class undersampled to the
    smallest, by the book's pandas calls (`llms_from_scratch.ch06`; no library draws the same rows). The
    defaults are the book's ch. 6 split (the SMS data: 747 ham / 747 spam, 1045/149/300 rows)."""
    import pandas as pd

    if label_column not in ds.column_names:
        raise ValueError(f"no column {label_column!r}; columns: {ds.column_names}")
    if not (0 < train_frac and 0 <= validation_frac and train_frac + validation_frac <= 1):
        raise ValueError(f"bad fractions: train_frac={train_frac}, validation_frac={validation_frac}")
    df = pd.DataFrame({"label": list(ds[label_column])})
    if balance:
        counts = df["label"].value_counts()
        n_min = int(counts.min())
        classes = sorted(counts.index)
        sampled = [df[df["label"] == c].sample(n_min, random_state=seed) for c in classes if counts[c] > n_min]
        df = pd.concat(sampled + [df[df["label"] == c] for c in classes if counts[c] == n_min])
    order = df.sample(frac=1, random_state=seed).index.to_numpy()
    train_end = int(len(order) * train_frac)
    validation_end = train_end + int(len(order) * validation_frac)
    return datasets.DatasetDict(
        train=ds.select(order[:train_end]),
        validation=ds.select(order[train_end:validation_end]),
        test=ds.select(order[validation_end:]),
    )


def load_instruction_data(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    fields: Sequence[str] = ("instruction", "output"),
    book_file: str = "instruction-data.json",
) -> list[dict]:
    """A JSON list (or JSONL file) of Alpaca entries (default: `fetch_book_file(book_file, data_dir)`,
    1,100 entries), other keys kept. A ValueError names the file, the row (or JSONL line) and the
    field unless each of `fields` is a non-empty string and `input`, if there, a string."""
    path = Path(path) if path is not None else fetch_book_file(book_file, data_dir)
    entries = _json_objects(path, fields, nonblank=True)
    for i, entry in enumerate(entries):
        if not isinstance(entry.get("input", ""), str):
            raise ValueError(f"{path}: row {i} field 'input' must be a string, got {entry['input']!r}")
    return entries


def format_alpaca_prompt(entry: Mapping[str, Any], response_header: bool = False) -> str:
    """The book's `format_input`: the Alpaca instruction, the input section for a non-empty `input`,
    and with `response_header` `RESPONSE_HEADER` (the book prompts without it)."""
    instruction_text = f"{ALPACA_HEADER}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text + (RESPONSE_HEADER if response_header else "")


def format_alpaca_response(entry: Mapping[str, Any]) -> str:
    """The book's response section: `"\\n\\n### Response:\\n" + output`."""
    return RESPONSE_HEADER + entry["output"]


def split_instruction_data(
    entries: Sequence[dict], train_frac: float = 0.85, test_frac: float = 0.1
) -> tuple[list[dict], list[dict], list[dict]]:
    """The book's ch. 7 split as (train, validation, test): `int(n * 0.85)` entries, then
    `int(n * 0.1)` test, the rest validation (1100 -> 935 / 55 / 110). No shuffling, as in the book."""
    n = len(entries)
    train_portion = int(n * train_frac)
    test_portion = int(n * test_frac)
    train = list(entries[:train_portion])
    test = list(entries[train_portion : train_portion + test_portion])
    validation = list(entries[train_portion + test_portion :])
    return train, validation, test


def alpaca_prompt_completion(entry: Mapping[str, Any], eos_token: str) -> dict[str, str]:
    """An entry in TRL's prompt/completion form, split where the book's exercise 7.2 masks (SFTTrainer
    tokenizes the two as one text, as the book; `completion_only_loss` keeps "### Response:" in)."""
    return {"prompt": format_alpaca_prompt(entry), "completion": format_alpaca_response(entry) + eos_token}


def pack_into_blocks(examples: dict, block_size: int) -> dict:
    """transformers' run_clm `group_texts` (an example, not a library function) for `ds.map(batched=True)`:
    the id-list columns joined and cut into `block_size` blocks (the rest dropped), `labels` a copy."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if "input_ids" not in examples:
        raise KeyError(f"pack_into_blocks needs an 'input_ids' column; got {list(examples)}")
    keys = [
        k for k, v in examples.items()
        if k != "labels" and len(v) > 0 and all(isinstance(x, (list, tuple)) for x in v)
    ]
    concatenated = {k: [t for seq in examples[k] for t in seq] for k in keys}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    result = {
        k: [tokens[i : i + block_size] for i in range(0, total, block_size)]
        for k, tokens in concatenated.items()
    }
    result["labels"] = [list(block) for block in result["input_ids"]]
    return result


def book_windows(
    token_ids: Sequence[int], context_length: int, stride: int, shift_labels: bool = True
) -> datasets.Dataset:
    """The book's `GPTDatasetV1` windows as `input_ids` = `labels`, with `shift_labels` also the book's
    targets, used as they are by transformers' `ForCausalLMLoss` (the Trainer forwards them only with
    `remove_unused_columns=False`)."""
    if context_length < 1 or stride < 1:
        raise ValueError(f"context_length and stride must be positive, got {context_length}, {stride}")
    ids = list(token_ids)
    starts = range(0, len(ids) - context_length, stride)
    columns = {"input_ids": [ids[i : i + context_length] for i in starts]}
    columns["labels"] = [list(x) for x in columns["input_ids"]]
    if shift_labels:
        columns["shift_labels"] = [ids[i + 1 : i + context_length + 1] for i in starts]
    features = datasets.Features({k: datasets.List(datasets.Value("int64")) for k in columns})
    return datasets.Dataset.from_dict(columns, features=features)
