"""Configuration of the GPT from "Build a Large Language Model (From Scratch)".

The field names are the book's (`GPT_CONFIG_124M` in chapter 4); transformers' standard names
(`hidden_size`, `num_attention_heads`, ...) are aliases of them, so generic code works too.
"""

from transformers import PretrainedConfig

# Written into every saved config.json: with the two module files that `save_pretrained` copies
# beside the weights, one folder loads under each Auto class with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_gpt_scratch.GPTScratchConfig",
    "AutoModel": "modeling_gpt_scratch.GPTScratchModel",
    "AutoModelForCausalLM": "modeling_gpt_scratch.GPTScratchForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gpt_scratch.GPTScratchForSequenceClassification",
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
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        initializer_range (`float`, defaults to 0.02): std of the normal init of weights.
        pad_token_id, bos_token_id, eos_token_id (`int`, optional): special ids; the GPT-2 BPE uses
            50256 (`<|endoftext|>`) for end of text and, in this project's recipes, for padding.

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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    def validate_architecture(self):
        """Reject nonsense before any weight is allocated, naming the field and its value."""
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTScratchConfig.{name} must be a positive integer, got {value!r}.")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTScratchConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})."
            )
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, (int, float)) or not (
            0.0 <= self.drop_rate < 1.0
        ):
            raise ValueError(f"GPTScratchConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}.")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"GPTScratchConfig.qkv_bias must be True or False, got {self.qkv_bias!r}.")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(
                f"GPTScratchConfig.tie_word_embeddings must be True or False, got {self.tie_word_embeddings!r}."
            )
        if not isinstance(self.fused_loss, bool):
            raise ValueError(f"GPTScratchConfig.fused_loss must be True or False, got {self.fused_loss!r}.")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"GPTScratchConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if value is not None and not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"GPTScratchConfig.{name} must be None or an id in [0, vocab_size={self.vocab_size}), "
                    f"got {value!r}."
                )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads


__all__ = ["GPTScratchConfig"]
