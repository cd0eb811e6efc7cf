"""Configuration of the GPT from "Build a Large Language Model (From Scratch)".

The field names are the book's (`GPT_CONFIG_124M` in chapter 4); transformers' standard names
(`hidden_size`, `num_attention_heads`, ...) are aliases of them, so generic code works too, and
`to_dict()` (hence config.json) lists them as well, for code that reads sizes from the dict.

Every rule is checked on every path that sets a field, with a ValueError naming the field and the
value: a rule on one field (`n_heads > 0`) at each assignment; the rules across fields
(`emb_dim % n_heads == 0`, token ids below `vocab_size`) once the fields are all set: at the end of
construction, `from_dict`/`from_pretrained` (after keyword overrides), `update` and
`update_from_string`, before `save_pretrained` writes anything, and when a model is built. So
`cfg.emb_dim = 40; cfg.n_heads = 5` works one field at a time.

Not huggingface_hub's `@strict` (transformers' own configs): its errors are not ValueErrors, it
checks the name as written so `attribute_map` aliases skip it (`GPT2Config().num_attention_heads =
"x"` is accepted), and its `float` check refuses an int (`GPT2Config(initializer_range=1)`).
"""

import math
from contextlib import contextmanager

from transformers import PretrainedConfig

# Written into every saved config.json: with the two module files that `save_pretrained` copies
# beside the weights, one folder loads under each Auto class with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_gpt_scratch.GPTScratchConfig",
    "AutoModel": "modeling_gpt_scratch.GPTScratchModel",
    "AutoModelForCausalLM": "modeling_gpt_scratch.GPTScratchForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gpt_scratch.GPTScratchForSequenceClassification",
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value) -> bool:
    return _is_int(value) and value >= 0


# The rule of each field on its own: (test, what is expected). Checked on every assignment.
_FIELD_RULES = {
    "vocab_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "context_length": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "emb_dim": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "n_heads": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "n_layers": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "drop_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "qkv_bias": (lambda v: isinstance(v, bool), "True or False"),
    "tie_word_embeddings": (lambda v: isinstance(v, bool), "True or False"),
    "fused_loss": (lambda v: isinstance(v, bool), "True or False"),
    "use_cache": (lambda v: isinstance(v, bool), "True or False"),
    "layer_norm_eps": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "initializer_range": (lambda v: _is_number(v) and v > 0, "a finite number > 0 (the std of the init)"),
    "pad_token_id": (lambda v: v is None or _is_id(v), "None or a token id >= 0"),
    "bos_token_id": (lambda v: v is None or _is_id(v), "None or a token id >= 0"),
    "eos_token_id": (
        lambda v: v is None or _is_id(v) or (isinstance(v, list) and len(v) > 0 and all(map(_is_id, v))),
        "None, a token id >= 0 or a non-empty list of them",
    ),
}


class GPTScratchConfig(PretrainedConfig):
    r"""
    Configuration of [`GPTScratchModel`]. Defaults are the book's GPT-2 small (124M parameters).

    Args:
        vocab_size (`int`, defaults to 50257): number of token ids (GPT-2 BPE).
        context_length (`int`, defaults to 1024): longest sequence, size of the learned position table.
        emb_dim (`int`, defaults to 768): width of the token embeddings and of every block.
        n_heads (`int`, defaults to 12): attention heads; must divide `emb_dim`.
        n_layers (`int`, defaults to 12): transformer blocks.
        drop_rate (`float`, defaults to 0.1): dropout after embeddings, attention weights and each
            residual branch, in [0, 1).
        qkv_bias (`bool`, defaults to False): bias in the query, key and value projections
            (OpenAI's GPT-2 weights have them).
        tie_word_embeddings (`bool`, defaults to False): share the output head with the token
            embedding. The book's `GPTModel` does not; OpenAI's GPT-2 does.
        fused_loss (`bool`, defaults to True): in training with labels, compute the output head and
            the loss in one chunked pass (`loss_gpt_scratch.py`) and return `logits=None`: the
            [B, T, V] logits, their softmax and gradient are never built. False returns the logits in
            training too (for metrics or a custom loss), with the same loss.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm, > 0.
        initializer_range (`float`, defaults to 0.02): std of the normal init of weights, > 0.
        use_cache (`bool`, defaults to True): `generate` keeps keys and values of past tokens.
        pad_token_id, bos_token_id, eos_token_id (`int`, optional): special ids in [0, vocab_size)
            (eos may be a list); the GPT-2 BPE uses 50256 (`<|endoftext|>`) for end of text and, in
            this project's recipes, for padding.

    Raises:
        ValueError: a field breaks its rule, or two names of one field disagree (see the module
            docstring for when each rule is checked).

    Example:
    ```python
    >>> import hf_gpt_scratch
    >>> from transformers import AutoModelForCausalLM
    >>> cfg = hf_gpt_scratch.GPTScratchConfig(emb_dim=128, n_heads=4, n_layers=2)
    >>> model = AutoModelForCausalLM.from_config(cfg)
    ```
    """

    model_type = "gpt_scratch"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "emb_dim",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "context_length",
    }

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    fused_loss: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __new__(cls, *args, **kwargs):
        """Refuse a field given under two names that disagree, as in a hand-edited config.json or
        `GPTScratchConfig(**{**config.to_dict(), "emb_dim": 64})`: the standard name, set last, would
        silently win. Equal values are one value."""
        for alias, name in cls.attribute_map.items():
            if alias in kwargs and name in kwargs and kwargs[alias] != kwargs[name]:
                raise ValueError(
                    f"GPTScratchConfig: {alias}={kwargs[alias]!r} disagrees with {name}={kwargs[name]!r}; "
                    f"{alias} is another name of {name}: give one value."
                )
        return super().__new__(cls)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.validate()

    def __setattr__(self, key, value):
        """Check the field's own rule before any value is stored (aliases resolve to the book's name)."""
        name = self.attribute_map.get(key, key)
        rule = _FIELD_RULES.get(name)
        if rule is not None and not rule[0](value):
            alias = f" (set as {key})" if key != name else ""
            raise ValueError(f"GPTScratchConfig.{name}{alias} must be {rule[1]}, got {value!r}.")
        super().__setattr__(name, value)

    def validate(self):
        """Check every rule: each field's own, those across fields, and transformers' one that
        applies here (`output_attentions` needs eager attention). Replaces the base `validate`
        (called by `save_pretrained`), whose errors are not ValueErrors.

        Raises:
            ValueError: naming the field(s), the value(s) and what was expected.
        """
        for name, (test, expected) in _FIELD_RULES.items():  # a value may have bypassed __setattr__
            if not test(value := getattr(self, name)):
                raise ValueError(f"GPTScratchConfig.{name} must be {expected}, got {value!r}.")
        self.validate_architecture()
        self.validate_token_ids()
        self.validate_output_attentions()

    def validate_architecture(self):
        """The rule across sizes: heads split the width evenly."""
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTScratchConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})."
            )

    def validate_token_ids(self):
        """The rule across ids: special tokens lie in the vocabulary."""
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if value is not None and not all(i < self.vocab_size for i in ids):
                raise ValueError(
                    f"GPTScratchConfig.{name} must be None or an id in [0, vocab_size={self.vocab_size}), "
                    f"got {value!r}."
                )

    @contextmanager
    def _all_or_nothing(self):
        """Apply several fields, then check them together; on any error the config is left as it was."""
        before = dict(self.__dict__)
        try:
            yield
            self.validate()
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def update(self, config_dict):
        """`PretrainedConfig.update`, checked once all fields are set. Raises ValueError, changing nothing."""
        with self._all_or_nothing():
            super().update(config_dict)

    def update_from_string(self, update_str):
        """`PretrainedConfig.update_from_string`, checked once all fields are set. Raises ValueError,
        changing nothing."""
        with self._all_or_nothing():
            super().update_from_string(update_str)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PretrainedConfig.from_dict` (also behind `from_pretrained`), checked after the keyword
        overrides. Raises ValueError."""
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate()
        return loaded

    def to_dict(self):
        """The fields, plus the standard names of `attribute_map` read from them (one source of truth),
        for code that reads sizes from the dict: PEFT's prompt and prefix tuning, config.json readers."""
        output = super().to_dict()
        output.update({alias: output[name] for alias, name in self.attribute_map.items()})
        return output

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """`PretrainedConfig.save_pretrained`, refusing (ValueError) before anything is written if a
        rule is broken."""
        self.validate()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads


__all__ = ["GPTScratchConfig"]
