"""Data for the book's three workflows: pretraining text, spam classification (ch. 6) and
instruction finetuning (ch. 7), as `datasets` objects.

Book files are never shipped with the package. `fetch_book_file(name)` looks for them in the data
directory (`--data_dir`, else `$HF_GPT_SCRATCH_DATA`, else `~/.cache/hf_gpt_scratch`), verifies
their sha256, and downloads them with `pooch` only when they are missing.

Splits reproduce the book's code exactly (same rows, same order):

* spam: `balance_and_split_spam` = `create_balanced_dataset` + `random_split(df, 0.7, 0.1)` of
  `llms_from_scratch.ch06` (pandas sampling with `random_state=123`), 1045/149/300 rows;
* instructions: `split_instruction_data` = the 85% / 10% / rest slicing of ch. 7, 935/55/110 rows
  (returned as train, validation, test; the book slices train, test, validation in that order).

Kept here because no library has them: the book's splits, the Alpaca format (`format_alpaca_prompt`,
the one source of the prompt and response header; `alpaca_prompt_completion`, TRL's form of it),
`pack_into_blocks` (the `group_texts` of transformers' run_clm, which is an example, not a library
function) and `book_windows` (the book's `GPTDatasetV1` windows, with the book's exact targets in a
`shift_labels` column; the Trainer only forwards that column with `remove_unused_columns=False`).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
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

__all__ = [
    "DATA_ENV",
    "BOOK_FILES",
    "ChecksumMismatchError",
    "resolve_data_dir",
    "fetch_book_file",
    "load_text",
    "split_text",
    "load_sms_spam",
    "load_text_classification_file",
    "labelled_dataset",
    "load_text_records",
    "balanced_split",
    "balance_and_split_spam",
    "load_instruction_data",
    "ALPACA_HEADER",
    "RESPONSE_HEADER",
    "format_alpaca_prompt",
    "format_alpaca_response",
    "split_instruction_data",
    "alpaca_prompt_completion",
    "pack_into_blocks",
    "book_windows",
]

DATA_ENV = "HF_GPT_SCRATCH_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/hf_gpt_scratch")

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


# ---------------------------------------------------------------------------------------------
# Data directory and book files
# ---------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: `data_dir` if given, else `$HF_GPT_SCRATCH_DATA`, else
    `~/.cache/hf_gpt_scratch`. Nothing is created."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def _download(url: str, output_file: str, pooch_obj: Any = None) -> None:
    """pooch's HTTP(S) downloader with a progress bar (tests replace this function)."""
    pooch.HTTPDownloader(progressbar=True, headers={"User-Agent": "hf-gpt-scratch"}, timeout=60)(url, output_file, pooch_obj)


def _fetch_zip_member(name: str, url: str, directory: Path) -> None:
    """Download the zip at `url`, extract `_ZIP_MEMBERS[name]` (CRLF -> LF), check its sha256 and
    store it as `directory / name` (nothing is written when a step fails)."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        archive = pooch.retrieve(url, known_hash=None, fname="download.zip", path=tmp, downloader=_download)
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.namelist() if m.rsplit("/", 1)[-1] == _ZIP_MEMBERS[name]]
            if not members:
                raise ValueError(f"the zip has no member {_ZIP_MEMBERS[name]!r}: {zipped.namelist()}")
            payload = zipped.read(members[0]).replace(b"\r\n", b"\n")
        actual, expected = hashlib.sha256(payload).hexdigest(), BOOK_FILES[name][1]
        if actual != expected:
            raise ValueError(f"sha256 of the extracted {name} is {actual}, expected {expected}")
        partial = Path(tmp) / name
        partial.write_bytes(payload)
        partial.replace(directory / name)


def fetch_book_file(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the book file `name` in the data directory, downloaded there if missing.

    A file already present is verified against its sha256 and never replaced
    (`ChecksumMismatchError` names the file, the expected and the actual hash). A missing file is
    downloaded by `pooch` from its public origin (`BOOK_FILES`, then `_MIRRORS`) and verified
    before it is written; OSError lists every origin's failure.
    """
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
            if name in _ZIP_MEMBERS:
                _fetch_zip_member(name, source, directory)
            else:
                pooch.retrieve(source, known_hash=f"sha256:{expected}", fname=name, path=directory, downloader=_download)
            return path
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # requests' errors are OSErrors
            failures.append(f"{source}: {err}")
    raise OSError(
        f"could not get {name} into {directory}:\n  " + "\n  ".join(failures)
        + f"\nDownload it by hand into that folder (or set ${DATA_ENV} / --data_dir)."
    )


# ---------------------------------------------------------------------------------------------
# Plain text (pretraining)
# ---------------------------------------------------------------------------------------------


def load_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file as the book reads it (`open(path, encoding="utf-8").read()`: universal
    newlines, so CRLF and CR become LF; a leading BOM is dropped).

    Raises FileNotFoundError for a missing file, ValueError for an empty file, a UTF-16 (or binary)
    file, or bytes that are not UTF-8 (naming the file and the byte offset).
    """
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


# ---------------------------------------------------------------------------------------------
# Classification (ch. 6)
# ---------------------------------------------------------------------------------------------


def _classification_dataset(texts: list[str], labels: list[int], names: Sequence[str]) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def labelled_dataset(
    ds: datasets.Dataset,
    names: Sequence[str] | None = None,
    source: str = "data",
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[datasets.Dataset, list[str]]:
    """`(Dataset(text, label: ClassLabel), names)` from the text and label columns of `ds`, validated:
    a missing column, a missing or blank text (it would be classified from a padding position) or
    label is a ValueError naming `source`, the row (from 0) and the column. A ClassLabel column is
    read by name (so `names` may reorder it) and names the classes when `names` is None; other
    labels map by `label_ids`, or without `names` by `infer_label_names`."""
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
    return _classification_dataset(texts, label_ids(labels, names, source), names), names


def load_sms_spam(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    quoting: int = csv.QUOTE_NONE,
) -> datasets.Dataset:
    """The SMS Spam Collection as a Dataset with `text` and `label` (a ClassLabel: 0 ham, 1 spam).

    Read with the book's pandas call (a headerless TSV `label<TAB>text`). With `quoting=csv.QUOTE_NONE`
    (default) every line is one message: 5,574 rows (4,827 ham, 747 spam). The book's notebook reads it
    with pandas' default `csv.QUOTE_MINIMAL`, which strips some quote characters and merges lines:
    5,572 rows (4,825 ham); pass that for the book's exact rows. Without `path`,
    `fetch_book_file("SMSSpamCollection.tsv", data_dir)`.
    """
    import pandas as pd

    path = Path(path) if path is not None else fetch_book_file("SMSSpamCollection.tsv", data_dir)
    if not path.is_file():
        raise FileNotFoundError(f"SMS spam file not found: {path}")
    verbatim = {"dtype": str, "keep_default_na": False, "encoding": "utf-8"} if quoting == csv.QUOTE_NONE else {}
    df = pd.read_csv(path, sep="\t", header=None, names=["label", "text"], quoting=quoting, **verbatim)
    if df.empty:
        raise ValueError(f"SMS spam file is empty: {path}")
    return labelled_dataset(datasets.Dataset.from_pandas(df), SPAM_LABELS, f"{path} (label<TAB>text, no header)")[0]


def _json_rows(path: Path) -> Any:
    """The parsed content of a JSON file, or the list of values of a JSONL file (one JSON object a
    line, also accepted in a .json file); errors name the file and the line."""
    text = load_text(path)
    if path.suffix.lower() != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            if not (err.msg == "Extra data" and text.lstrip().startswith("{")):  # else: JSON lines
                raise ValueError(f"{path}: invalid JSON: {err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                             f"expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    return rows


def _read_records(path: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV/TSV (with header) or JSON (list of objects) / JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        text = load_text(path)
        if suffix == ".tsv":
            reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    if suffix in (".json", ".jsonl"):
        rows = _json_rows(path)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a list of objects (JSON) or one object per line (JSONL)")
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        return list(columns), rows
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")


def load_text_records(path: str | os.PathLike, column: str = "text") -> list[str]:
    """The texts in column `column` of a JSON (a list of objects) or JSONL file, validated the
    way `load_text` validates a text file: a missing, empty or non-UTF-8 file, a line that is not
    JSON, a row without `column` or whose value is not a string raise an error naming the file,
    the line or row and the column. (Rows are counted from 0, lines from 1.)"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    columns, rows = _read_records(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    texts = []
    for i, row in enumerate(rows):
        if column not in row:
            raise ValueError(f"{path}: row {i} has no {column!r} field (fields: {sorted(row)}); choose the column "
                             f"with --text_column_name")
        value = row[column]
        if not isinstance(value, str):
            raise ValueError(f"{path}: row {i} field {column!r} must be a string, got {type(value).__name__} {value!r:.60}")
        texts.append(value)
    return texts


def as_int_label(value: Any) -> int | None:
    """An integer class id written as an int or a string of digits, else None (bools are not ids)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def label_ids(raw: Sequence[Any], names: Sequence[str], source: str) -> list[int]:
    """Class ids of `raw` labels: a label spelled exactly as a name gets its index, an integer id in
    range is the id itself; anything else ("Spam" for "spam", "1.0", " spam") is a ValueError naming
    `source`, the row and the value."""
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for row, value in enumerate(raw):
        as_int = as_int_label(value)
        if str(value) in index:
            ids.append(index[str(value)])
        elif as_int is not None and as_int < len(names):
            ids.append(as_int)
        else:
            raise ValueError(f"{source}: row {row} has label {value!r}, which is not one of the classes {list(names)}")
    return ids


def infer_label_names(raw: Sequence[Any], source: str = "labels") -> list[str]:
    """Class names of labels given without names: "0".."n-1" when the labels are the integer ids
    0..n-1, else the distinct labels sorted. Where that would guess, a ValueError names `source`, the
    row and the values: integer ids that skip one (0 and 5 would make a six-class head), an integer
    among names, a number that is not an integer ("1.0" beside "1"), spaces around a label, labels
    that differ only in case ("spam" / "Spam"). Name the classes (`class_names`) or fix the data."""
    first_row = {}
    for row, value in enumerate(raw):
        first_row.setdefault(value, row)
    ids = {as_int_label(v) for v in first_row}
    if None not in ids:
        if ids != set(range(len(ids))):
            raise ValueError(f"{source}: the integer labels {sorted(ids)} are not the ids 0..{len(ids) - 1}: they would "
                             f"make a {max(ids) + 1}-class head; renumber them or name every class (class_names)")
        return [str(i) for i in range(len(ids))]
    seen: dict[str, Any] = {}
    for value, row in sorted(first_row.items(), key=lambda item: as_int_label(item[0]) is not None):  # ids last
        text = str(value)
        why = ("an integer id among named classes" if as_int_label(value) is not None
               else "a number that is not an integer id" if re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", text.strip().lower())
               else "spaces around it" if text != text.strip()
               else f"the same as {seen[text.casefold()]!r} but for case" if text.casefold() in seen else None)
        if why:
            raise ValueError(f"{source}: row {row} has label {value!r}, {why} (labels: {sorted(map(str, first_row))}); "
                             "fix the data or name the classes (class_names)")
        seen[text.casefold()] = value
    return sorted(str(v) for v in first_row)


def _csv_columns(path: Path, sep: str) -> list[str]:
    """The header of a CSV (`sep` ",", quoted) or TSV ("\\t", unquoted) file, after checking that
    every row has one field per column: a comma in an unquoted CSV field (or a tab in a TSV text)
    would otherwise cut the text or shift it into the next column."""
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(load_text(path)), delimiter=sep, quoting=quoting)
    header = next(reader)
    rows = 0
    for row in reader:
        if row and len(row) != len(header):
            raise ValueError(f"{path}: row {rows} (line {reader.line_num}) has {len(row)} fields {row} for the "
                             f"{len(header)} columns {header}; " + ("quote a field that holds ','" if sep == "," else
                             "an unquoted TSV field cannot hold a tab: use a quoted CSV"))
        rows += bool(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return header


def load_text_classification_file(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """A CSV / TSV (a header row; TSV unquoted) / JSON (a list of objects) / JSONL file with a text
    and a label column, read with `datasets.load_dataset`, as `(Dataset(text, label), label_names)`.

    Labels: with `label_names`, `label_ids`; without, `infer_label_names`. Errors name the file, the
    row (from 0, after the header) and the values: a row whose field count is not the header's, a
    missing column, an empty text or label, a label the names do not cover or that would be guessed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classification file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        columns = _csv_columns(path, sep)
        kind, options = "csv", dict(sep=sep, quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
                                    keep_default_na=False,  # no text or label becomes NaN (e.g. "NA", "null")
                                    features=datasets.Features({c: datasets.Value("string") for c in columns}))
    elif suffix in (".json", ".jsonl"):
        load_text(path)  # a missing, empty or non-UTF-8 file: an error naming it
        kind, options = "json", {}
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
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
    """Undersample every class to the size of the smallest, shuffle, and split into train /
    validation / test with the book's pandas calls (`llms_from_scratch.ch06`; no library draws the
    same rows): each larger class `df[df.label == c].sample(n_min, random_state=seed)` in label
    order, then the classes of size n_min whole; `df.sample(frac=1, random_state=seed)`;
    `train_end = int(n * train_frac)`, `validation_end = train_end + int(n * validation_frac)`.
    Rows are selected from `ds` (all its columns and features are kept)."""
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


def balance_and_split_spam(ds: datasets.Dataset, seed: int = 123) -> datasets.DatasetDict:
    """The book's ch. 6 split: ham undersampled to the 747 spam, shuffled, split 70/10/20 into
    1045/149/300 rows, the book's rows in the book's order (for the same parse of the file, see
    `load_sms_spam(quoting=...)`)."""
    return balanced_split(ds, seed=seed, train_frac=0.7, validation_frac=0.1)


# ---------------------------------------------------------------------------------------------
# Instruction finetuning (ch. 7)
# ---------------------------------------------------------------------------------------------


def load_instruction_data(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    fields: Sequence[str] = ("instruction", "output"),
    book_file: str = "instruction-data.json",
) -> list[dict]:
    """A JSON list (or JSONL file) of Alpaca entries, validated: each of `fields` a non-empty string
    (`instruction`, `output`; the preference data's `chosen`, `rejected`), `input` (optional) a
    string; other keys are kept. Errors name the file, the entry index (or JSONL line) and the field.
    Without `path`, `fetch_book_file(book_file, data_dir)` (1,100 entries).
    """
    path = Path(path) if path is not None else fetch_book_file(book_file, data_dir)
    entries = _json_rows(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise ValueError(f"{path}: no entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is a {type(entry).__name__}, not an object")
        for field in fields:
            if field not in entry:
                raise ValueError(f"{path}: entry {i} has no {field!r} field (keys: {sorted(entry)})")
            if not isinstance(entry[field], str) or not entry[field].strip():
                raise ValueError(f"{path}: entry {i} field {field!r} must be a non-empty string, got {entry[field]!r}")
        if "input" in entry and not isinstance(entry["input"], str):
            raise ValueError(f"{path}: entry {i} field 'input' must be a string, got {entry['input']!r}")
    return entries


def format_alpaca_prompt(entry: Mapping[str, Any], response_header: bool = False) -> str:
    """The book's `format_input`: the Alpaca instruction, plus the input section when the entry
    has a non-empty `input`; with `response_header`, followed by `RESPONSE_HEADER` (the model then
    answers right away; the book prompts without it and lets the model write the header)."""
    instruction_text = f"{ALPACA_HEADER}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text + (RESPONSE_HEADER if response_header else "")


def format_alpaca_response(entry: Mapping[str, Any]) -> str:
    """The book's response section: `"\\n\\n### Response:\\n" + output`."""
    return RESPONSE_HEADER + entry["output"]


def split_instruction_data(
    entries: Sequence[dict], train_frac: float = 0.85, test_frac: float = 0.1
) -> tuple[list[dict], list[dict], list[dict]]:
    """The book's ch. 7 split, returned as (train, validation, test): `train_portion =
    int(n * 0.85)`, `test_portion = int(n * 0.1)`; the book slices train, then test, then the rest
    as validation (1100 entries -> 935 / 55 / 110). No shuffling, as in the book."""
    n = len(entries)
    train_portion = int(n * train_frac)
    test_portion = int(n * test_frac)
    train = list(entries[:train_portion])
    test = list(entries[train_portion : train_portion + test_portion])
    validation = list(entries[train_portion + test_portion :])
    return train, validation, test


def alpaca_prompt_completion(entry: Mapping[str, Any], eos_token: str) -> dict[str, str]:
    """An entry in TRL's prompt/completion format, split where the book's exercise 7.2 masks:
    `{"prompt": format_alpaca_prompt(entry), "completion": format_alpaca_response(entry) + eos_token}`.
    `SFTTrainer` tokenizes prompt + completion as one text, as the book does (the book appends the
    end-of-text id after tokenizing: the same ids), and with `completion_only_loss` leaves the
    prompt's tokens out of the loss (the "### Response:" header stays in, as in the book)."""
    return {"prompt": format_alpaca_prompt(entry), "completion": format_alpaca_response(entry) + eos_token}


# ---------------------------------------------------------------------------------------------
# Pretraining blocks
# ---------------------------------------------------------------------------------------------


def pack_into_blocks(examples: dict, block_size: int) -> dict:
    """For `ds.map(pack_into_blocks, batched=True, fn_kwargs={"block_size": n},
    remove_columns=ds.column_names)`: concatenates the token columns (`input_ids` and any other
    column of id lists, e.g. `attention_mask`) of the batch and cuts them into blocks of
    `block_size`, dropping the remainder (transformers' run_clm `group_texts`); `labels` is a copy
    of `input_ids`. Other columns (e.g. `text`) are dropped."""
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
    """The book's `GPTDatasetV1` windows: for `i in range(0, len(ids) - context_length, stride)`,
    inputs `ids[i : i + context_length]` and targets `ids[i + 1 : i + context_length + 1]`.

    Columns: `input_ids` (the inputs), `labels` (= `input_ids`, unshifted; the model's loss needs a
    `labels` tensor to compute a loss at all) and, with `shift_labels=True`, `shift_labels` (the
    book's targets). transformers' `ForCausalLMLoss` uses `shift_labels` as-is when given, so the
    loss is the book's, on every one of the `context_length` targets, with no input longer than the
    context. The Trainer counts tokens from `shift_labels` too, but only forwards that column with
    `TrainingArguments(remove_unused_columns=False)`: otherwise it is dropped (forward() has no
    such parameter) and the loss falls back to `labels`, which lack the last target of each window.
    """
    if context_length < 1 or stride < 1:
        raise ValueError(f"context_length and stride must be positive, got {context_length}, {stride}")
    ids = list(token_ids)
    starts = range(0, len(ids) - context_length, stride)
    columns = {
        "input_ids": [ids[i : i + context_length] for i in starts],
    }
    columns["labels"] = [list(x) for x in columns["input_ids"]]
    if shift_labels:
        columns["shift_labels"] = [ids[i + 1 : i + context_length + 1] for i in starts]
    features = datasets.Features({k: datasets.List(datasets.Value("int64")) for k in columns})
    return datasets.Dataset.from_dict(columns, features=features)
