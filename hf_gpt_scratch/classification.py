"""Shared logic of the text-classification recipe (`recipes/classify.py`, the book's chapter 6).

- `ClassificationArguments`: what trains (`--trainable head|last_block|all|lora`, LoRA settings)
  and the TF-IDF baseline switch.
- `ClassifyDataArguments`: where the labelled texts come from (the SMS Spam Collection by default,
  CSV/TSV/JSON files or a hub dataset) and how they are split, truncated and padded.
- `load_classification_splits`: train / validation / test `Dataset`s with columns `text` and
  `label` (a `ClassLabel`), split the book's way when only training data is given.
- `load_sequence_classifier`: a `GPTScratchForSequenceClassification` built on a pretrained
  causal-LM checkpoint (ours, or a stock GPT-2 folder converted on the fly), with every body
  weight checked to come from the checkpoint.
- `set_trainable`: freezes the model the book's way (`last_block`), trains only the head, all of
  it, or wraps it with PEFT LoRA; `count_parameters_by_trainability` reports the result.
- `classification_metrics`, `build_compute_metrics`: accuracy, precision, recall and F1 through
  the packaged offline `evaluate` metrics (binary with the last class, e.g. "spam", as positive;
  macro averages for more than two classes).
- `tfidf_baseline`: TF-IDF + logistic regression (scikit-learn) fit on the training texts and
  scored on the same validation and test texts as the GPT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import DataArguments, ModelArguments, apply_config_overrides, parse_config_overrides
from .data import balanced_split, infer_label_names, label_ids, load_sms_spam, load_text_classification_file

logger = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("head", "last_block", "all", "lora")
# Linear leaves of every block: attention projections and both feed-forward layers.
DEFAULT_LORA_TARGETS = ("W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2")
SPAM_LABEL_NAMES = ("ham", "spam")
_VALIDATION_SPLIT_NAMES = ("validation", "valid", "dev", "val")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


@dataclass
class ClassificationArguments:
    """What the classification recipe trains."""

    trainable: str = field(
        default="last_block",
        metadata={
            "help": "Which parameters train: 'last_block' (the book: last transformer block + final norm + new "
            "head), 'head' (only the new head), 'all', or 'lora' (LoRA adapters on the attention and feed-forward "
            "linears + the head).",
            "choices": list(TRAINABLE_CHOICES),
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (--trainable lora)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": f"Names of the Linear leaves LoRA adapts (default: {' '.join(DEFAULT_LORA_TARGETS)})."},
    )
    aux_lm_weight: float = field(
        default=0.0,
        metadata={
            "help": "GPT-1's auxiliary objective while finetuning: loss = classification loss + this weight x the "
            "next-token loss on the texts themselves, predicted through the token embedding (tied; no parameter "
            "is added, the saved model is a plain classifier). 0 turns it off."
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the trained weights (after every optimizer step: "
            "ema = decay * ema + (1 - decay) * weights) and end training with it: the final evaluation, test "
            "and saved model use the average. 0 turns it off; e.g. 0.99 averages over the last ~100 steps."
        },
    )
    train_tokenizer_vocab_size: int | None = field(
        default=None,
        metadata={
            "help": "Only without --model_name_or_path (a randomly initialised GPT): train a byte-level BPE of this "
            "many tokens on the training texts (each followed by <|endoftext|>) instead of using --tokenizer_name."
        },
    )
    tfidf_baseline: bool = field(
        default=True,
        metadata={"help": "Also fit TF-IDF + logistic regression on the training texts and score it on the same splits."},
    )

    def __post_init__(self):
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"--trainable must be one of {', '.join(TRAINABLE_CHOICES)}, got {self.trainable!r}.")
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r must be a positive integer, got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.aux_lm_weight < 0:
            raise ValueError(f"--aux_lm_weight must be >= 0, got {self.aux_lm_weight}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.train_tokenizer_vocab_size is not None and self.train_tokenizer_vocab_size <= 257:
            raise ValueError(
                f"--train_tokenizer_vocab_size must exceed 257 (256 bytes + <|endoftext|>), got {self.train_tokenizer_vocab_size}."
            )


@dataclass
class ClassifyDataArguments(DataArguments):
    """Labelled texts. Default: the UCI SMS Spam Collection, balanced and split as in the book."""

    test_file: str | None = field(default=None, metadata={"help": "Test data file (CSV/TSV/JSON/JSONL)."})
    text_column: str = field(default="text", metadata={"help": "Column with the texts (files and --dataset_name)."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (files and --dataset_name)."})
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names in id order, e.g. --class_names ham spam. Labels in the data must be one of them "
            "(or an id in range). Default: ham spam for the SMS data, a hub dataset's ClassLabel names, or "
            "the training file's labels (strings sorted, integers as ids)."
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate texts to this many tokens. Default: the longest training text, capped at the "
            "model's context_length (the book pads to the longest training example)."
        },
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many test examples (for quick runs)."}
    )
    test_split_percentage: float = field(
        default=20.0,
        metadata={"help": "Percent of the data held out for testing when there is no test split/file (book: 20)."},
    )
    balance_classes: bool = field(
        default=True,
        metadata={
            "help": "When the recipe splits the data itself, first undersample every class to the size of the "
            "smallest (the book: 747 ham / 747 spam)."
        },
    )
    split_seed: int = field(default=123, metadata={"help": "Seed of the undersampling and the split (book: 123)."})
    append_eos: bool = field(
        default=False,
        metadata={
            "help": "Append the end-of-text token to every text, so the head reads a fixed 'summary' position "
            "(the model pools the last real token)."
        },
    )
    eval_train_samples: int = field(
        default=0,
        metadata={
            "help": "Also evaluate on this many training examples at each evaluation (the book's training "
            "accuracy); logged as eval_train_accuracy."
        },
    )
    export_train_texts: str | None = field(
        default=None,
        metadata={
            "help": "Write the training split's texts to this .txt file, each followed by <|endoftext|>, and exit: "
            "in-domain pretraining text for recipes/pretrain.py that holds no validation or test text."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.block_size is not None:
            raise ValueError("--block_size does not apply to classification; use --max_seq_length.")
        if self.test_file is not None and not Path(self.test_file).is_file():
            raise FileNotFoundError(f"--test_file {self.test_file}: no such file.")
        for name in ("max_seq_length", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive integer, got {value}.")
        if self.eval_train_samples < 0:
            raise ValueError(f"--eval_train_samples must be >= 0, got {self.eval_train_samples}.")
        if not 0.0 <= self.test_split_percentage < 100.0:
            raise ValueError(f"--test_split_percentage must be in [0, 100), got {self.test_split_percentage}.")
        if self.validation_split_percentage + self.test_split_percentage >= 100.0:
            raise ValueError(
                "--validation_split_percentage + --test_split_percentage must leave some training data "
                f"(got {self.validation_split_percentage} + {self.test_split_percentage})."
            )
        if self.dataset_name and (self.train_file or self.validation_file or self.test_file):
            raise ValueError("Pass either --dataset_name or data files (--train_file ...), not both.")
        if (self.validation_file or self.test_file) and not self.train_file:
            raise ValueError("--validation_file / --test_file need --train_file.")
        if self.class_names is not None:
            if len(self.class_names) == 1 and "," in self.class_names[0]:
                self.class_names = [n.strip() for n in self.class_names[0].split(",") if n.strip()]
            if len(self.class_names) < 2:
                raise ValueError(f"--class_names needs at least two classes, got {self.class_names}.")
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError(f"--class_names has duplicates: {self.class_names}.")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _standard_dataset(texts: list[str], labels: list[int], names: Sequence[str]) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _from_hub_split(ds: datasets.Dataset, data_args: ClassifyDataArguments, names: list[str] | None, split: str):
    source = f"{data_args.dataset_name}[{split}]"
    missing = [c for c in (data_args.text_column, data_args.label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; columns: {ds.column_names} "
            "(choose them with --text_column / --label_column)."
        )
    feature = ds.features[data_args.label_column]
    raw = list(ds[data_args.label_column])
    if isinstance(feature, datasets.ClassLabel):
        raw = [feature.int2str(int(v)) for v in raw]  # by name, so --class_names may reorder them
        if names is None:
            names = list(feature.names)
    if names is None:
        names = infer_label_names(raw)
    texts = list(ds[data_args.text_column])
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{source}: row {row} has no text in column {data_args.text_column!r} (got {text!r}).")
    return _standard_dataset(texts, label_ids(raw, names, source, expected="not one of the classes"), names), names


def _carve(train: datasets.Dataset, splits: dict, data_args: ClassifyDataArguments) -> dict:
    """Hold out the missing validation and/or test split from `train` (book: balance, shuffle,
    70/10/20)."""
    want_val = "validation" not in splits
    want_test = "test" not in splits
    val_frac = data_args.validation_split_percentage / 100.0 if want_val else 0.0
    test_frac = data_args.test_split_percentage / 100.0 if want_test else 0.0
    if val_frac == 0.0 and test_frac == 0.0:
        return {"train": train, **splits}
    parts = balanced_split(
        train,
        seed=data_args.split_seed,
        train_frac=1.0 - val_frac - test_frac,
        validation_frac=val_frac,
        balance=data_args.balance_classes,
    )
    out = {"train": parts["train"], **splits}
    if want_val and val_frac > 0:
        out["validation"] = parts["validation"]
    if want_test and test_frac > 0:
        out["test"] = parts["test"]
    elif len(parts["test"]):  # rounding leftovers when no test split is carved: back to training
        out["train"] = datasets.concatenate_datasets([parts["train"], parts["test"]])
    return out


def _load_file(path: str, data_args: ClassifyDataArguments, names: list[str] | None):
    try:
        return load_text_classification_file(path, data_args.text_column, data_args.label_column, label_names=names)
    except ValueError as err:  # name the recipe's flags rather than the function's arguments
        message = str(err).replace("text_column= / label_column=", "--text_column / --label_column")
        message = message.replace("not in label_names", "not one of the classes (--class_names or the training file's)")
        raise ValueError(message) from None


def load_classification_splits(data_args: ClassifyDataArguments) -> tuple[datasets.DatasetDict, list[str]]:
    """`(DatasetDict(train, validation?, test?), label_names)`, each split with columns `text`
    and `label` (a ClassLabel). Errors (missing columns, unknown labels) name the file and row.

    Sources: --dataset_name (its train / validation / test splits), --train_file with optional
    --validation_file and --test_file, or by default the SMS Spam Collection (5,574 messages).
    Missing validation/test splits are carved from the training data: every class undersampled
    to the smallest (--balance_classes), shuffled with --split_seed, split by
    --validation_split_percentage / --test_split_percentage (the book's 747/747, 70/10/20:
    1045/149/300 messages). Then --max_*_samples keep the first rows of each split.
    """
    names = list(data_args.class_names) if data_args.class_names else None
    splits: dict[str, datasets.Dataset] = {}
    if data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        if "train" not in raw:
            raise ValueError(f"dataset {data_args.dataset_name} has no train split (splits: {list(raw)}).")
        train, names = _from_hub_split(raw["train"], data_args, names, "train")
        for split in _VALIDATION_SPLIT_NAMES:
            if split in raw:
                splits["validation"], _ = _from_hub_split(raw[split], data_args, names, split)
                break
        if "test" in raw:
            splits["test"], _ = _from_hub_split(raw["test"], data_args, names, "test")
    elif data_args.train_file:
        train, names = _load_file(data_args.train_file, data_args, names)
        for split, path in (("validation", data_args.validation_file), ("test", data_args.test_file)):
            if path:
                splits[split], _ = _load_file(path, data_args, names)
    else:
        train = load_sms_spam(data_dir=data_args.data_dir)
        if names is not None and list(names) != list(SPAM_LABEL_NAMES):
            raise ValueError(f"The SMS data has the classes {list(SPAM_LABEL_NAMES)}; got --class_names {names}.")
        names = list(SPAM_LABEL_NAMES)
    if len(names) < 2:
        raise ValueError(f"Classification needs at least two classes; the data has {names}.")

    out = _carve(train, splits, data_args)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_test_samples}
    for split, limit in limits.items():
        if split in out and limit is not None:
            out[split] = out[split].select(range(min(limit, len(out[split]))))
    for split, ds in out.items():
        if len(ds) == 0:
            raise ValueError(f"The {split} split is empty.")
    return datasets.DatasetDict(out), names


def train_tokenizer_on_texts(texts: Sequence[str], vocab_size: int, model_max_length: int | None = None):
    """A byte-level BPE (`tokenization.train_bpe_tokenizer`) trained on `texts`, each followed by
    `<|endoftext|>` as in `write_pretraining_text`: the same tokenizer as
    `python -m hf_gpt_scratch.tokenization train` on the exported training texts."""
    from .tokenization import ENDOFTEXT, train_bpe_tokenizer

    return train_bpe_tokenizer(
        [f"{text}{ENDOFTEXT}\n" for text in texts], vocab_size=vocab_size, model_max_length=model_max_length
    )


def write_pretraining_text(texts: Sequence[str], path: str | Path, separator: str = "<|endoftext|>") -> Path:
    """Write `texts` to `path` as one text file, each text followed by `separator` and a newline
    (the GPT-2 tokenizers keep `<|endoftext|>` as one token, so pretraining on this file teaches
    the model where a message ends). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}{separator}\n" for text in texts), encoding="utf-8")
    return path


def tokenize_splits(
    splits: datasets.DatasetDict,
    tokenizer,
    max_seq_length: int | None,
    context_length: int | None,
    append_eos: bool = False,
) -> tuple[datasets.DatasetDict, int]:
    """Token ids (`input_ids`, `attention_mask`, `label`) of every split, truncated to
    `max_seq_length` (default: the longest training text, capped at `context_length`), with the
    end-of-text token appended when `append_eos`. Returns the splits and the length used."""
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("--append_eos: the tokenizer has no eos token.")
    extra = 1 if append_eos else 0

    def encode(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]}

    encoded = splits.map(encode, batched=True, desc="Tokenizing")
    if max_seq_length is None:
        longest = max(len(ids) for ids in encoded["train"]["input_ids"]) + extra
        max_seq_length = min(longest, context_length) if context_length else longest
    elif context_length and max_seq_length > context_length:
        raise ValueError(f"--max_seq_length {max_seq_length} exceeds the model's context_length {context_length}.")
    if max_seq_length <= extra:
        raise ValueError(f"--max_seq_length {max_seq_length} leaves no room for text.")

    def cut(batch):
        ids = [row[: max_seq_length - extra] + ([eos] if append_eos else []) for row in batch["input_ids"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}

    encoded = encoded.map(cut, batched=True, desc=f"Truncating to {max_seq_length} tokens")
    return encoded.remove_columns("text"), max_seq_length


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _label_config(config, label_names: Sequence[str], tokenizer) -> None:
    config.id2label = {i: str(n) for i, n in enumerate(label_names)}
    config.label2id = {str(n): i for i, n in enumerate(label_names)}
    config.problem_type = "single_label_classification"
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    config.use_cache = False  # classification never needs the KV cache


def _check_body_loaded(info: dict, source: str, head_prefix: str = "score.") -> None:
    """Raise when a weight other than the new head was initialised instead of loaded."""
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(head_prefix))
    # mismatched entries are (name, checkpoint shape, model shape)
    mismatched = sorted(
        str(k) for k in info.get("mismatched_keys", ()) if not (k[0] if isinstance(k, tuple) else k).startswith(head_prefix)
    )
    if missing or mismatched:
        raise ValueError(
            f"{source}: these body weights are not in the checkpoint and would be randomly initialised: "
            f"{missing + mismatched}. Is it a GPTScratch causal-LM checkpoint?"
        )


def load_sequence_classifier(model_args: ModelArguments, tokenizer, label_names: Sequence[str]):
    """A `GPTScratchForSequenceClassification` with a new head for `label_names` on the body of
    `--model_name_or_path`.

    - a GPTScratch checkpoint (causal LM or classifier): `from_pretrained` of the classification
      class; every `model.*` weight must load from the checkpoint (checked), only `score` is new
      (or kept from a classifier with the same classes);
    - a stock GPT-2 folder (model_type "gpt2"): converted with `loading.load_causal_lm`, then
      its body copied over (strictly);
    - no checkpoint: a randomly initialised GPT (`--config_overrides` shapes it; a warning says so).

    `--config_overrides` (e.g. drop_rate=0.0) apply on top; the config gets id2label/label2id,
    the tokenizer's pad id and use_cache=False. The embedding grows when the tokenizer has more
    tokens than the checkpoint.
    """
    from transformers import AutoConfig

    from .loading import load_causal_lm
    from .modeling_gpt_scratch import GPTScratchForSequenceClassification

    path = model_args.model_name_or_path
    trust = bool(model_args.trust_remote_code)
    attn_kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust) if path else None

    if config is not None and config.model_type == "gpt_scratch":
        old_labels = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
        was_classifier = any("SequenceClassification" in a for a in (config.architectures or []))
        keep_head = was_classifier and [str(n) for n in old_labels] == [str(n) for n in label_names]
        apply_config_overrides(config, parse_config_overrides(model_args.config_overrides, config))
        _label_config(config, label_names, tokenizer)
        model, info = GPTScratchForSequenceClassification.from_pretrained(
            path,
            config=config,
            output_loading_info=True,
            ignore_mismatched_sizes=was_classifier and not keep_head,
            trust_remote_code=trust,
            **attn_kwargs,
        )
        _check_body_loaded(info, path)
        if was_classifier and not keep_head:
            logger.warning("%s was trained for the classes %s: its head is replaced by a new one.", path, old_labels)
    else:
        if config is not None and config.model_type != "gpt2":
            raise ValueError(
                f"--model_name_or_path {path}: model_type {config.model_type!r} is not supported; use a GPTScratch "
                "checkpoint or a stock GPT-2 folder (converted on the fly)."
            )
        if path is None:
            logger.warning("No --model_name_or_path: classifying with a randomly initialised GPT (not pretrained).")
        clm = load_causal_lm(model_args, tokenizer)  # converts GPT-2; from scratch without a path
        config = clm.config.__class__.from_dict(clm.config.to_dict())
        _label_config(config, label_names, tokenizer)
        model = GPTScratchForSequenceClassification._from_config(config, **attn_kwargs)
        body = {k[len("model."):]: v for k, v in clm.state_dict().items() if k.startswith("model.")}
        model.model.load_state_dict(body, strict=True)
        del clm

    embedding = model.get_input_embeddings()
    if tokenizer is not None and len(tokenizer) > embedding.weight.shape[0]:
        logger.warning(
            "Tokenizer has %d tokens but the model's embedding %d rows: resizing the embedding.",
            len(tokenizer), embedding.weight.shape[0],
        )
        model.resize_token_embeddings(len(tokenizer))
    return model


# --------------------------------------------------------------------------------------------
# What trains
# --------------------------------------------------------------------------------------------


def count_parameters_by_trainability(model) -> tuple[int, int]:
    """(trainable, total) distinct parameters."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def set_trainable(
    model,
    mode: str = "last_block",
    lora_r: int = 16,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_modules: Sequence[str] | None = None,
):
    """Choose what trains in a `GPTScratchForSequenceClassification`; returns the model to train
    (a PEFT model for "lora", otherwise `model` itself).

    - "head": only the new `score` layer;
    - "last_block": the book's choice: the last transformer block, the final LayerNorm and `score`;
    - "all": every parameter;
    - "lora": LoRA (rank `lora_r`, scale `lora_alpha / lora_r`) on `lora_target_modules` of
      every block (default: the attention projections and both feed-forward linears), plus a
      trainable copy of `score` (PEFT `modules_to_save`); everything else is frozen.
    """
    if mode not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable mode must be one of {', '.join(TRAINABLE_CHOICES)}, got {mode!r}.")
    for attr in ("model", "score"):
        if not hasattr(model, attr):
            raise TypeError(f"set_trainable expects a GPTScratchForSequenceClassification, got {type(model).__name__}.")
    if mode == "all":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="SEQ_CLS",
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=list(lora_target_modules or DEFAULT_LORA_TARGETS),
            modules_to_save=["score"],
        )
        return get_peft_model(model, lora)
    model.score.requires_grad_(True)
    if mode == "last_block":
        model.model.trf_blocks[-1].requires_grad_(True)
        model.model.final_norm.requires_grad_(True)
    return model


# --------------------------------------------------------------------------------------------
# Auxiliary language-modeling loss
# --------------------------------------------------------------------------------------------


def _classifier_core(model):
    """The GPTScratchForSequenceClassification inside DDP / PEFT wrappers."""
    while hasattr(model, "module"):  # DDP, accelerate wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def auxiliary_lm_loss(hidden, input_ids, attention_mask, embedding_weight):
    """Mean next-token cross-entropy of the real tokens, with logits `hidden @ embedding^T`
    (the token embedding as a tied output head). hidden [B, T, E], input_ids/attention_mask [B, T]."""
    logits = hidden[:, :-1] @ embedding_weight.T  # [B, T-1, V]
    targets = input_ids[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class ClassificationTrainer(Trainer):
    """`Trainer` that can add GPT-1's auxiliary language-modeling loss while training
    (`aux_lm_weight` > 0): the body's final hidden states, captured with a forward hook (so DDP
    and PEFT wrappers still run their own forward), predict the next token through the tied
    token embedding. Evaluation losses stay the plain classification loss."""

    def __init__(self, *args, aux_lm_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.aux_lm_weight = float(aux_lm_weight)
        self._hidden = None
        if self.aux_lm_weight > 0:
            core = _classifier_core(self.model)
            if not hasattr(core, "model") or not hasattr(core.model, "tok_emb"):
                raise TypeError("--aux_lm_weight needs a GPTScratchForSequenceClassification.")
            core.model.register_forward_hook(self._capture)

    def _capture(self, module, args, output):
        self._hidden = output.last_hidden_state if module.training else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.aux_lm_weight <= 0 or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        hidden, self._hidden = self._hidden, None
        embedding = _classifier_core(model).model.tok_emb.weight
        loss = loss + self.aux_lm_weight * auxiliary_lm_loss(hidden, input_ids, attention_mask, embedding)
        return (loss, outputs) if return_outputs else loss


class WeightAverageCallback(TrainerCallback):
    """An exponential moving average of the trainable weights, updated after every optimizer step
    and copied into the model when training ends (Polyak averaging: the average of the last
    ~1 / (1 - decay) steps is usually a better classifier than the last step's weights). The
    per-epoch evaluations during training see the current weights. The average is saved in every
    checkpoint (`weight_average.safetensors`) and restored when training resumes from one, so a
    resumed run ends with the same weights as an uninterrupted one."""

    FILE = "weight_average.safetensors"

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _trainable(model) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in _classifier_core(model).named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = self._trainable(model)
        if self.average is None:
            self.average = {name: p.detach().clone() for name, p in params.items()}
            return
        for name, p in params.items():
            self.average[name].lerp_(p.detach(), 1.0 - self.decay)

    def _file(self, args, state) -> Path:
        """The average's file in the checkpoint the Trainer writes (or resumes from) at this step."""
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / self.FILE

    def on_save(self, args, state, control, **kwargs):
        if self.average is not None and state.is_world_process_zero:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.average.items()}, str(self._file(args, state)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            return
        path = self._file(args, state)
        if not path.is_file():
            logger.warning("Resuming at step %d without %s: the weight average starts again.", state.global_step, path)
            return
        from safetensors.torch import load_file

        device = next(iter(self._trainable(model).values())).device if model is not None else "cpu"
        self.average = load_file(str(path), device=str(device))

    @torch.no_grad()
    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.average is None:  # no step was taken
            return
        for name, p in self._trainable(model).items():
            p.copy_(self.average[name])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

_METRICS: dict[str, Any] = {}


def _metric(name: str):
    from .metrics import load_metric

    if name not in _METRICS:
        _METRICS[name] = load_metric(name)
    return _METRICS[name]


def classification_metrics(predictions: Sequence[int], references: Sequence[int], num_labels: int = 2) -> dict[str, float]:
    """accuracy, precision, recall, f1 via the packaged `evaluate` metrics. Two classes: binary,
    class 1 (e.g. "spam") positive; more: macro averages. An undefined precision/recall
    (no positive prediction) is 0."""
    predictions = [int(p) for p in predictions]
    references = [int(r) for r in references]
    kwargs = {"average": "binary", "pos_label": 1} if num_labels == 2 else {"average": "macro"}
    out = {"accuracy": float(_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"])}
    for name in ("precision", "recall", "f1"):
        value = _metric(name).compute(predictions=predictions, references=references, zero_division=0, **kwargs)[name]
        out[name] = float(value)
    return out


def build_compute_metrics(num_labels: int = 2):
    """`compute_metrics` for the Trainer: argmax of the logits, then `classification_metrics`."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = logits.argmax(-1)
        return classification_metrics(predictions, eval_pred.label_ids, num_labels)

    return compute_metrics


# --------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    eval_sets: dict[str, tuple[Sequence[str], Sequence[int]]],
    num_labels: int = 2,
    seed: int = 123,
) -> dict[str, Any]:
    """TF-IDF (scikit-learn defaults: lowercased word unigrams) + logistic regression (C=1,
    max_iter 1000), fit on the training texts. Returns `{split: metrics}` for each of
    `eval_sets` ({"validation": (texts, labels), "test": ...}) plus `{split}_predictions`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(int(v) for v in train_labels)) < 2:
        raise ValueError("TF-IDF baseline: the training data has a single class.")
    vectorizer = TfidfVectorizer()
    features = vectorizer.fit_transform(list(train_texts))
    classifier = LogisticRegression(max_iter=1000, random_state=seed)
    classifier.fit(features, [int(v) for v in train_labels])
    out: dict[str, Any] = {}
    for split, (texts, labels) in eval_sets.items():
        predictions = classifier.predict(vectorizer.transform(list(texts))).tolist()
        out[split] = classification_metrics(predictions, labels, num_labels)
        out[f"{split}_predictions"] = predictions
    return out


__all__ = [
    "TRAINABLE_CHOICES",
    "DEFAULT_LORA_TARGETS",
    "SPAM_LABEL_NAMES",
    "ClassificationArguments",
    "ClassifyDataArguments",
    "load_classification_splits",
    "tokenize_splits",
    "write_pretraining_text",
    "train_tokenizer_on_texts",
    "load_sequence_classifier",
    "count_parameters_by_trainability",
    "set_trainable",
    "auxiliary_lm_loss",
    "ClassificationTrainer",
    "classification_metrics",
    "build_compute_metrics",
    "tfidf_baseline",
]
