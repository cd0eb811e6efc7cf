"""Configuration of the GPT from "Build a Large Language Model (From Scratch)": the book's field names
(`GPT_CONFIG_124M`), with transformers' standard names as aliases (also in `to_dict()` and config.json).
Every path that sets a field checks it (ValueError naming field and value): one field's rule at each
assignment, the rules across fields once all are set (construction, `from_dict`, `update`, save, model
build). Not huggingface_hub's `@strict`: its errors are not ValueErrors and skip the aliases.
"""

import math
from contextlib import contextmanager

from transformers import PretrainedConfig

# In every saved config.json: with the module files copied beside the weights, a folder loads under
# each Auto class with `trust_remote_code=True`.
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
_SIZE = (lambda v: _is_int(v) and v > 0, "a positive integer")
_FLAG = (lambda v: isinstance(v, bool), "True or False")
_ID = (lambda v: v is None or _is_id(v), "None or a token id >= 0")
_FIELD_RULES = {
    **dict.fromkeys(("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"), _SIZE),
    **dict.fromkeys(("qkv_bias", "tie_word_embeddings", "fused_loss", "use_cache"), _FLAG),
    **dict.fromkeys(("pad_token_id", "bos_token_id"), _ID),
    "drop_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "layer_norm_eps": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "initializer_range": (lambda v: _is_number(v) and v > 0, "a finite number > 0 (the std of the init)"),
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
        qkv_bias (`bool`, defaults to False): bias in the query, key and value projections (OpenAI's).
        tie_word_embeddings (`bool`, defaults to False): share the output head with the token
            embedding (OpenAI's GPT-2 does, the book's `GPTModel` does not).
        fused_loss (`bool`, defaults to True): in training with labels, head and loss in one chunked
            pass (`loss_gpt_scratch.py`) returning `logits=None`; False returns the logits too.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm, > 0.
        initializer_range (`float`, defaults to 0.02): std of the normal init of weights, > 0.
        use_cache (`bool`, defaults to True): `generate` keeps keys and values of past tokens.
        pad_token_id, bos_token_id, eos_token_id (`int`, optional): special ids in [0, vocab_size)
            (eos may be a list); the GPT-2 BPE's `<|endoftext|>` is 50256.

    Raises:
        ValueError: a field breaks its rule, or two names of one field disagree.
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
        """Refuse a field given under two names that disagree (`GPTScratchConfig(**{**config.to_dict(),
        "emb_dim": 64})`): the standard name, set last, would silently win."""
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
        """Check every rule (each field's, those across fields, and transformers' `output_attentions`
        one); replaces the base `validate`, whose errors are not ValueErrors. Raises ValueError naming
        the field(s), the value(s) and what was expected."""
        for name, (test, expected) in _FIELD_RULES.items():  # a value may have bypassed __setattr__
            if not test(value := getattr(self, name)):
                raise ValueError(f"GPTScratchConfig.{name} must be {expected}, got {value!r}.")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTScratchConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})."
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if value is not None and not all(i < self.vocab_size for i in ids):
                raise ValueError(
                    f"GPTScratchConfig.{name} must be None or an id in [0, vocab_size={self.vocab_size}), "
                    f"got {value!r}."
                )
        self.validate_output_attentions()

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
        """`PretrainedConfig.update`, checked once all fields are set (ValueError: no change)."""
        with self._all_or_nothing():
            super().update(config_dict)

    def update_from_string(self, update_str):
        """`PretrainedConfig.update_from_string`, checked once all fields are set (ValueError: no change)."""
        with self._all_or_nothing():
            super().update_from_string(update_str)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PretrainedConfig.from_dict` (behind `from_pretrained`), checked after keyword overrides."""
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate()
        return loaded

    def to_dict(self):
        """The fields plus their standard names (`attribute_map`), for code that reads sizes from the
        dict: PEFT's prompt and prefix tuning, config.json readers."""
        output = super().to_dict()
        output.update({alias: output[name] for alias, name in self.attribute_map.items()})
        return output

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """`PretrainedConfig.save_pretrained`, refusing (ValueError) a broken rule before writing anything."""
        self.validate()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

