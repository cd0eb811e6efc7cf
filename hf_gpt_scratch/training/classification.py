"""The classification recipe's logic (`recipes/classify.py`, the book's chapter 6): its flags, the
labelled splits, tokenization, the classifier on a causal-LM body, what trains, the metrics (the
packaged `evaluate` modules) and a TF-IDF + logistic-regression baseline."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import datasets
import torch
from transformers import AutoConfig

from ..modeling_gpt_scratch import GPTScratchForSequenceClassification as Classifier
from .arguments import DatasetArguments, LoraArguments, ModelArguments, parse_config_overrides
from .data import SPAM_LABELS, balanced_split, labelled_dataset, load_sms_spam, load_text_classification_file
from .loading import from_pretrained_strict, load_causal_lm
from .metrics import load_metric

logger = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("head", "last_block", "all", "lora")
_VALIDATION_SPLIT_NAMES = ("validation", "valid", "dev", "val")


@dataclass
class ClassificationArguments:
    """What the classification recipe trains."""

    trainable: str = field(
        default="last_block",
        metadata={
            "help": "What trains: 'last_block' (the book: last block + final norm + new head), 'head' (the "
            "new head), 'all', or 'lora' (LoRA adapters on the attention and MLP linears + the head).",
            "choices": list(TRAINABLE_CHOICES),
        },
    )
    tfidf_baseline: bool = field(
        default=True,
        metadata={"help": "Also fit TF-IDF + logistic regression on the training texts and score it on the same splits."},
    )

    def __post_init__(self):  # a preset's value skips argparse's choices
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"--trainable must be one of {', '.join(TRAINABLE_CHOICES)}, got {self.trainable!r}.")


@dataclass
class ClassifyDataArguments(DatasetArguments):
    """Labelled texts. Default: the UCI SMS Spam Collection, balanced and split as in the book."""

    test_file: str | None = field(default=None, metadata={"help": "Test data file (CSV/TSV/JSON/JSONL)."})
    text_column: str = field(default="text", metadata={"help": "Column with the texts (files and --dataset_name)."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (files and --dataset_name)."})
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names in id order (e.g. ham spam); a label is one of them or an id in "
                  "range. Default: the SMS data's, a hub ClassLabel's, or the training labels (sorted)."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens kept per text (default: the longest training text, <= context_length)."},
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many test examples (for quick runs)."}
    )
    test_split_percentage: float = field(
        default=20.0, metadata={"help": "Percent held out for testing without a test split/file (book: 20)."}
    )
    balance_classes: bool = field(
        default=True,
        metadata={"help": "Undersample every class to the smallest before the recipe's own split (book)."},
    )
    split_seed: int = field(default=123, metadata={"help": "Seed of the undersampling and the split (book: 123)."})
    append_eos: bool = field(
        default=False, metadata={"help": "Append the end-of-text token to every text (a fixed last token)."}
    )
    eval_train_samples: int = field(
        default=0, metadata={"help": "Also evaluate on this many training examples (logged as eval_train_*)."}
    )
    _files = ("train_file", "validation_file", "test_file")

    def __post_init__(self):
        super().__post_init__()
        self._positive("max_seq_length", "max_test_samples")
        if self.eval_train_samples < 0:
            raise ValueError(f"--eval_train_samples must be >= 0, got {self.eval_train_samples}.")
        if not 0.0 <= self.test_split_percentage < 100.0:
            raise ValueError(f"--test_split_percentage must be in [0, 100), got {self.test_split_percentage}.")
        if self.validation_split_percentage + self.test_split_percentage >= 100.0:
            raise ValueError(
                "--validation_split_percentage + --test_split_percentage must leave some training data "
                f"(got {self.validation_split_percentage} + {self.test_split_percentage})."
            )
        if (self.validation_file or self.test_file) and not self.train_file:
            raise ValueError("--validation_file / --test_file need --train_file.")
        if not (self.train_file or self.dataset_name) and (self.text_column, self.label_column) != ("text", "label"):
            raise ValueError("--text_column / --label_column name columns of --train_file or --dataset_name; "
                             "the SMS data has none.")
        if self.class_names is not None and (len(self.class_names) < 2 or len(set(self.class_names)) < len(self.class_names)):
            raise ValueError(f"--class_names needs at least two distinct classes, got {self.class_names}.")


def load_classification_splits(data_args: ClassifyDataArguments) -> tuple[datasets.DatasetDict, list[str]]:
    """`(DatasetDict(train, validation?, test?), label_names)` of `text`, `label` (the training data's
    classes) from --dataset_name, --train_file (+ --validation_file / --test_file) or the SMS data; a missing
    split is carved by `balanced_split`, --max_*_samples keep the first rows. Errors name the file and row."""
    names, columns = data_args.class_names, (data_args.text_column, data_args.label_column)
    splits: dict[str, datasets.Dataset] = {}
    if data_args.dataset_name:
        hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        if "train" not in hub:
            raise ValueError(f"dataset {data_args.dataset_name} has no train split (splits: {list(hub)}).")
        validation = next((s for s in _VALIDATION_SPLIT_NAMES if s in hub), None)
        for split, name in (("train", "train"), ("validation", validation), ("test", "test" if "test" in hub else None)):
            if name:
                splits[split], names = labelled_dataset(hub[name], names, f"{data_args.dataset_name}[{name}]", *columns)
    elif data_args.train_file:
        for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file), ("test", data_args.test_file)):
            if path:
                splits[split], names = load_text_classification_file(path, *columns, label_names=names)
    else:
        if names is not None and list(names) != list(SPAM_LABELS):
            raise ValueError(f"The SMS data has the classes {list(SPAM_LABELS)}; got --class_names {names}.")
        splits, names = {"train": load_sms_spam(data_dir=data_args.data_dir)}, list(SPAM_LABELS)
    found = [names[i] for i in sorted(set(splits["train"]["label"]))]
    if len(found) < 2:  # before any training: a one-class model learns nothing (and the TF-IDF fit fails)
        source = data_args.train_file or (f"{data_args.dataset_name}[train]" if data_args.dataset_name else "the SMS data")
        raise ValueError(f"{source}: the training data has only the class(es) {found} (of {list(names)}); "
                         "classification needs rows of at least two classes.")

    val = 0.0 if "validation" in splits else data_args.validation_split_percentage / 100.0
    test = 0.0 if "test" in splits else data_args.test_split_percentage / 100.0
    if val or test:
        balance, seed = data_args.balance_classes, data_args.split_seed
        parts = balanced_split(splits["train"], seed, 1.0 - val - test, val, balance=balance)
        splits["train"] = parts["train"]
        if val:
            splits["validation"] = parts["validation"]
        if test:
            splits["test"] = parts["test"]
        elif len(parts["test"]):  # rounding leftovers go back to training
            splits["train"] = datasets.concatenate_datasets([parts["train"], parts["test"]])
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_test_samples}
    for split, ds in splits.items():
        if limits[split] is not None:
            splits[split] = ds = ds.select(range(min(limits[split], len(ds))))
        if len(ds) == 0:
            raise ValueError(f"The {split} split is empty.")
    return datasets.DatasetDict(splits), list(names)


def tokenize_splits(
    splits: datasets.DatasetDict,
    tokenizer,
    max_seq_length: int | None,
    context_length: int | None,
    append_eos: bool = False,
    num_proc: int | None = None,
) -> tuple[datasets.DatasetDict, int]:
    """(splits of `input_ids` and `label`, the length used): ids cut to `max_seq_length` (default: the
    longest training text, capped at `context_length`), ending in the end-of-text token with `append_eos`."""
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError("--append_eos: the tokenizer has no eos token.")
    eos = [tokenizer.eos_token_id] if append_eos else []
    encoded = splits.map(
        lambda batch: {"input_ids": tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]},
        batched=True, remove_columns="text", num_proc=num_proc, desc="Tokenizing",
    )
    if max_seq_length is None:
        longest = max(map(len, encoded["train"]["input_ids"])) + len(eos)
        max_seq_length = min(longest, context_length) if context_length else longest
    elif context_length and max_seq_length > context_length:
        raise ValueError(f"--max_seq_length {max_seq_length} exceeds the model's context_length {context_length}.")
    if max_seq_length <= len(eos):
        raise ValueError(f"--max_seq_length {max_seq_length} leaves no room for text.")
    keep = max_seq_length - len(eos)
    encoded = encoded.map(
        lambda batch: {"input_ids": [ids[:keep] + eos for ids in batch["input_ids"]]},
        batched=True, num_proc=num_proc, desc=f"Truncating to {max_seq_length} tokens",
    )
    return encoded, max_seq_length


def load_sequence_classifier(model_args: ModelArguments, tokenizer, label_names: Sequence[str]):
    """A `GPTScratchForSequenceClassification` for `label_names`: `load_causal_lm`'s body and a new head, or
    a saved classifier (its head kept for the same classes). Weights load strictly
    (`loading.CheckpointMismatchError`); ValueError for a model_type other than gpt_scratch / gpt2."""
    path, trust = model_args.model_name_or_path, bool(model_args.trust_remote_code)
    attn = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    labels = {
        "id2label": dict(enumerate(map(str, label_names))),
        "label2id": {str(n): i for i, n in enumerate(label_names)},
        "problem_type": "single_label_classification",
        "use_cache": False,  # classification never needs the KV cache
    }
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        labels["pad_token_id"] = tokenizer.pad_token_id
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust) if path else None
    if config is not None and config.model_type not in ("gpt_scratch", "gpt2"):
        raise ValueError(
            f"--model_name_or_path {path}: model_type {config.model_type!r} is not supported; use a GPTScratch "
            "checkpoint or a stock GPT-2 folder (converted on the fly)."
        )
    if config is not None and any("SequenceClassification" in a for a in config.architectures or []):
        old_labels = [config.id2label[i] for i in sorted(config.id2label)]
        config.update(parse_config_overrides(model_args.config_overrides, config))
        config.update(labels)
        model = from_pretrained_strict(Classifier, path, allow_missing=("score.",), config=config, trust_remote_code=trust, **attn)
        if old_labels != list(labels["id2label"].values()):
            logger.warning("%s was trained for the classes %s: its head is replaced by a new one.", path, old_labels)
            torch.nn.init.normal_(model.score.weight, std=config.initializer_range)
            torch.nn.init.zeros_(model.score.bias)
        if tokenizer is not None and len(tokenizer) > config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        return model
    if path is None:
        logger.warning("No --model_name_or_path: classifying with a randomly initialised GPT (not pretrained).")
    clm = load_causal_lm(model_args, tokenizer)
    config = clm.config.__class__.from_dict({**clm.config.to_dict(), **labels})
    model = Classifier._from_config(config, **attn)
    model.model.load_state_dict(clm.model.state_dict(), strict=True)
    return model


def set_trainable(model, mode: str = "last_block", lora: LoraArguments | None = None):
    """Freeze all of a `GPTScratchForSequenceClassification` but `mode`'s part (see `--trainable`); "lora":
    PEFT adapters of `lora` (default `LoraArguments()`) plus `score`. Returns the model to train."""
    if mode not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable mode must be one of {', '.join(TRAINABLE_CHOICES)}, got {mode!r}.")
    if not (hasattr(model, "model") and hasattr(model, "score")):
        raise TypeError(f"set_trainable expects a GPTScratchForSequenceClassification, got {type(model).__name__}.")
    model.requires_grad_(mode == "all")
    if mode == "lora":
        from peft import get_peft_model

        lora = lora or LoraArguments()
        config = lora.peft_config(task_type="SEQ_CLS", modules_to_save=["score", *(lora.lora_modules_to_save or [])])
        return get_peft_model(model, config)
    model.score.requires_grad_(True)
    if mode == "last_block":
        model.model.trf_blocks[-1].requires_grad_(True)
        model.model.final_norm.requires_grad_(True)
    return model


_metric = functools.cache(load_metric)


def classification_metrics(predictions: Sequence[int], references: Sequence[int], num_labels: int = 2) -> dict[str, float]:
    """accuracy, precision, recall, f1 (the packaged `evaluate` metrics): binary with class 1 (e.g.
    "spam") positive for two classes, else macro averages; an undefined precision/recall is 0."""
    kwargs = {"average": "binary", "pos_label": 1} if num_labels == 2 else {"average": "macro"}
    out = _metric("accuracy").compute(predictions=predictions, references=references)
    for name in ("precision", "recall", "f1"):
        out.update(_metric(name).compute(predictions=predictions, references=references, zero_division=0, **kwargs))
    return out


def build_compute_metrics(num_labels: int = 2):
    """The Trainer's `compute_metrics`: `classification_metrics` of the logits' argmax."""
    return lambda eval_pred: classification_metrics(eval_pred.predictions.argmax(-1), eval_pred.label_ids, num_labels)


def tfidf_baseline(splits: datasets.DatasetDict, num_labels: int = 2, seed: int = 123) -> dict[str, dict[str, float]]:
    """`{split: classification_metrics}` on validation and test of scikit-learn's TF-IDF (defaults)
    + logistic regression (max_iter 1000) fit on `splits["train"]`: the floor a GPT must beat."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = splits["train"]
    if len(set(train["label"])) < 2:
        raise ValueError("TF-IDF baseline: the training data has a single class.")
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000, random_state=seed))
    pipeline.fit(train["text"], train["label"])
    return {
        split: classification_metrics(pipeline.predict(splits[split]["text"]), splits[split]["label"], num_labels)
        for split in ("validation", "test") if split in splits
    }
