"""The GPT of "Build a Large Language Model (From Scratch)" (chapter 4) as a transformers model: token +
learned position embeddings, pre-LayerNorm blocks (causal attention, 4x tanh-GELU feed-forward), final norm.
Shapes: B batch, T new tokens, S all tokens seen (cache + new), E emb_dim, H heads, D = E / H, V vocab_size.
Copied beside saved weights for `trust_remote_code=True`: import only transformers, torch and sibling files.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_gpt_scratch import GPTScratchConfig
from .loss_gpt_scratch import linear_cross_entropy


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The book's attention: softmax(Q K^T / sqrt(D) + mask) V. query [B, H, T, D], key/value [B, H, S, D],
    attention_mask additive [B, 1, T, S] (causal triangle and padding). Returns the context [B, T, H, D]
    and the attention weights [B, H, T, S]."""
    attn_scores = query @ key.transpose(2, 3) * scaling  # [B, H, T, S]
    if attention_mask is not None:
        attn_scores = attn_scores + attention_mask
    attn_weights = torch.softmax(attn_scores, dim=-1)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    context = (attn_weights @ value).transpose(1, 2)  # [B, T, H, D]
    return context, attn_weights


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with separate query, key and value projections."""

    is_causal = True

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.emb_dim // config.n_heads
        self.scaling = self.head_dim**-0.5
        self.W_query = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_key = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_value = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.out_proj.is_residual_projection = True  # scaled init, see GPTScratchPreTrainedModel

    def forward(self, x, attention_mask=None, cache: Cache | None = None, **kwargs):
        b, t, _ = x.shape
        heads = (b, t, -1, self.head_dim)
        queries = self.W_query(x).view(heads).transpose(1, 2)  # [B, H, T, D]
        keys = self.W_key(x).view(heads).transpose(1, 2)  # [B, H, T, D]
        values = self.W_value(x).view(heads).transpose(1, 2)  # [B, H, T, D]
        if cache is not None:
            keys, values = cache.update(keys, values, self.layer_idx)  # [B, H, S, D]

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, attn_weights = attention(
            self,
            queries,
            keys,
            values,
            attention_mask,
            scaling=self.scaling,
            dropout=self.config.drop_rate if self.training else 0.0,
            **kwargs,
        )
        context = context.reshape(b, t, -1)  # [B, T, E]: heads concatenated
        return self.out_proj(context), attn_weights


class FeedForward(nn.Module):
    """Position-wise MLP: E -> 4E -> GELU (tanh approximation, as GPT-2) -> E."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(config.emb_dim, 4 * config.emb_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * config.emb_dim, config.emb_dim),
        )
        self.layers[2].is_residual_projection = True

    def forward(self, x):
        return self.layers(x)  # [B, T, E]


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block: x + drop(att(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.att = MultiHeadAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.ff = FeedForward(config)
        self.drop_resid = nn.Dropout(config.drop_rate)

    def forward(self, x, attention_mask=None, cache: Cache | None = None, **kwargs):
        attn_out, _ = self.att(self.norm1(x), attention_mask, cache=cache, **kwargs)
        x = x + self.drop_resid(attn_out)  # [B, T, E]
        x = x + self.drop_resid(self.ff(self.norm2(x)))  # [B, T, E]
        return x


class GPTScratchPreTrainedModel(PreTrainedModel):
    config: GPTScratchConfig
    config_class = GPTScratchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": TransformerBlock,
        "attentions": OutputRecorder(MultiHeadAttention, index=1),
    }

    @staticmethod
    def _head_output(output_class, outputs: BaseModelOutputWithPast, logits, loss):
        """`output_class` with a head's logits and loss, and the body's cache, hidden states, attentions."""
        return output_class(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _init_weights(self, module):
        """Normal(0, 0.02) weights, zero biases, unit norms; residual projections (attention output
        and second feed-forward layer) scaled by 1/sqrt(2 * n_layers) as in GPT-2."""
        super()._init_weights(module)
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / (2 * self.config.n_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)


def _check_shapes(config: GPTScratchConfig, input_ids, inputs_embeds, attention_mask, position_ids, past_len):
    """ValueErrors naming the argument and its shape for inputs the model cannot run, before any work.
    `past_len`: the cache length, an int or a 0-d tensor (a filled StaticCache) that is not read."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None and input_ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, tokens], got shape {list(input_ids.shape)}.")
    if inputs_embeds is not None and (inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.emb_dim):
        raise ValueError(
            f"inputs_embeds must be [batch, tokens, emb_dim={config.emb_dim}], got shape {list(inputs_embeds.shape)}."
        )
    name, inputs = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
    batch, seq_len = inputs.shape[:2]
    if batch == 0 or seq_len == 0:
        raise ValueError(
            f"{name} is empty (shape {list(inputs.shape)}): the model needs at least one row of one token "
            "(to generate from nothing, start the prompt with a token such as the tokenizer's bos or eos id)."
        )
    if isinstance(attention_mask, torch.Tensor):
        # transformers' convention: a 2-D mask covers the cached tokens and the new ones
        known_past = isinstance(past_len, int)
        expected = [batch, past_len + seq_len if known_past else attention_mask.shape[-1]]
        if attention_mask.ndim == 4:  # already prepared: [B or 1, 1, T, S]
            fits = attention_mask.shape[0] in (1, batch) and attention_mask.shape[2] == seq_len
        else:
            fits = list(attention_mask.shape) == expected
        if not fits:
            cached = f" after {past_len} cached tokens" if known_past and past_len else ""
            raise ValueError(
                f"attention_mask has shape {list(attention_mask.shape)}, but {name} is {list(inputs.shape[:2])}"
                f"{cached}: expected {expected} (1 for real tokens, 0 for padding) or a 4-D mask."
            )
    if position_ids is not None and (
        position_ids.ndim != 2 or position_ids.shape[0] not in (1, batch) or position_ids.shape[1] != seq_len
    ):
        raise ValueError(f"position_ids has shape {list(position_ids.shape)}, expected [{batch} or 1, {seq_len}].")


def _reads_are_free(tensor) -> bool:
    """Reading a tensor's values on the host costs no device-to-host sync only on the CPU."""
    return tensor.device.type == "cpu"


def _check_ids_and_positions(config: GPTScratchConfig, input_ids, position_ids, past_len, seq_len: int):
    """ValueErrors for token ids outside the vocabulary and positions outside the position table
    (explicit `position_ids`, e.g. packed rows, may make a row longer than `context_length`). Values
    are read (a device sync) on the CPU and on every call but a cached one-token decode step, so
    `generate` syncs once per call; the ids and positions it feeds back grow from checked ones."""
    known_past = isinstance(past_len, int)  # else a StaticCache's tensor: not read
    too_long = known_past and past_len + seq_len > config.context_length
    if position_ids is None and too_long:  # the positions would run on after the cache, past the table
        raise ValueError(
            f"Input is {past_len + seq_len} tokens long ({past_len} cached + {seq_len} new), but the model's "
            f"context_length is {config.context_length}. Truncate the input or use a model with a longer context."
        )
    decode_step = seq_len == 1 and not (known_past and past_len == 0)
    values = input_ids if input_ids is not None else position_ids
    read = values is not None and (not decode_step or _reads_are_free(values))
    if position_ids is not None and (read or too_long):
        low, high = torch.stack(torch.aminmax(position_ids)).tolist()
        if low < 0 or high >= config.context_length:
            raise ValueError(
                f"position_ids holds {low if low < 0 else high}, but positions must be in [0, context_length="
                f"{config.context_length}). Truncate the input or use a model with a longer context."
            )
    if input_ids is not None and read:
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"Token id {low if low < 0 else high} is outside the vocabulary: ids must be in "
                f"[0, {config.vocab_size}) (vocab_size={config.vocab_size}). Was the text encoded with this "
                "model's tokenizer?"
            )


def _check_labels(config: GPTScratchConfig, labels, shift_labels, input_ids, inputs_embeds):
    """ValueError unless `labels` (and `shift_labels`, already shifted) have the input's shape [B, T]
    and hold token ids or -100 (ignored). Reads the values: `generate` never passes labels."""
    inputs = input_ids if input_ids is not None else inputs_embeds
    for name, target in (("labels", labels), ("shift_labels", shift_labels)):
        if target is None or inputs is None:
            continue
        if target.shape != inputs.shape[:2] or target.is_floating_point():
            raise ValueError(
                f"{name} must be integer token ids of the input's shape {list(inputs.shape[:2])}, got "
                f"{target.dtype} of shape {list(target.shape)}."
            )
        bad = (target != -100) & ((target < 0) | (target >= config.vocab_size))
        if bad.any():
            raise ValueError(
                f"{name} holds {target[bad][0].item()}: expected token ids in [0, vocab_size={config.vocab_size}) "
                "or -100 for positions that count in no loss."
            )


class GPTScratchModel(GPTScratchPreTrainedModel):
    """The GPT body: embeddings, transformer blocks and final norm; returns hidden states [B, T, E]."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        config.validate()  # the rules across fields (emb_dim % n_heads, ...) that assignment leaves to here
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList([TransformerBlock(config, i) for i in range(config.n_layers)])
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0  # int, or a 0-d tensor (StaticCache)
        if not torch.compiler.is_compiling():
            _check_shapes(self.config, input_ids, inputs_embeds, attention_mask, position_ids, past_len)
            seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            _check_ids_and_positions(self.config, input_ids, position_ids, past_len, seq_len)

        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)  # [B, T, E]
        if position_ids is None:
            position_ids = self._positions(attention_mask, past_len, inputs_embeds)
        x = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))  # [B, T, E]

        # An empty cache is left out, so that transformers detects packed rows (position_ids restarting
        # at 0, no attention_mask) as without a cache; a StaticCache is kept (its keys span its length).
        empty_cache = isinstance(past_len, int) and past_len == 0 and not getattr(cache, "is_compileable", False)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=None if empty_cache else cache,
            position_ids=position_ids,
        )
        for block in self.trf_blocks:
            x = block(x, mask, cache=cache, position_ids=position_ids, **kwargs)
        x = self.final_norm(x)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None)

    @staticmethod
    def _positions(attention_mask, past_len, inputs_embeds) -> torch.LongTensor:
        """Positions [B or 1, T] of the new tokens: counted over the real tokens of `attention_mask`
        (left padding does not shift them), else continuing after the cached ones."""
        seq_len = inputs_embeds.shape[1]
        if attention_mask is not None and attention_mask.ndim == 2:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, S]
            return positions[:, -seq_len:]
        return (torch.arange(seq_len, device=inputs_embeds.device) + past_len).unsqueeze(0)  # no sync on a tensor


class GPTScratchLMHead(nn.Linear):
    """The output head, a bias-free Linear E -> V: `head(hidden)` returns logits [B, T, V],
    `head(hidden, labels=labels)` the fused, chunked loss of `linear_cross_entropy` without them. The
    loss runs in this module's forward, where offload hooks, ZeRO-3 and FSDP have provided the weight;
    a weight that is not a plain tensor (quantized, meta) gets the logits and `ForCausalLMLoss`."""

    def forward(self, hidden, labels=None, **loss_kwargs):
        if labels is None:
            return super().forward(hidden)  # [B, T, V]
        weight = self.weight  # [V, E]
        if type(weight) in (torch.Tensor, nn.Parameter) and not weight.is_meta:
            return linear_cross_entropy(hidden, weight, labels, **loss_kwargs)
        return ForCausalLMLoss(super().forward(hidden), labels, self.out_features, **loss_kwargs)


class GPTScratchForCausalLM(GPTScratchPreTrainedModel, GenerationMixin):
    """The GPT with its output head: next-token logits [B, T, V]."""

    _tied_weights_keys = {"out_head.weight": "model.tok_emb.weight"}

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.model = GPTScratchModel(config)
        self.out_head = GPTScratchLMHead(config.emb_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.out_head

    def set_output_embeddings(self, value):
        if type(value) is nn.Linear and value.bias is None:  # e.g. resize_token_embeddings' new head
            head = GPTScratchLMHead(value.in_features, value.out_features, bias=False, device="meta")
            head.weight = value.weight  # the same Parameter: the fused loss stays available
            value = head
        self.out_head = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): next-token
            targets, unshifted (`labels = input_ids` works); -100 is ignored, other ids outside
            `[0, vocab_size)` or another shape are a ValueError.
        logits_to_keep (`int` or `torch.Tensor`): logits for the last `logits_to_keep` positions only
            (0 keeps all), as `generate` asks.
        """
        if not torch.compiler.is_compiling():
            _check_labels(self.config, labels, kwargs.get("shift_labels"), input_ids, inputs_embeds)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, T, E]
        logits = loss = None
        if self._fuse_head_and_loss(labels, logits_to_keep):
            # training: head and loss in one chunked pass, the [B, T, V] logits are never built
            loss = self.out_head(hidden, labels=labels, **kwargs)
        else:
            logits = self.out_head(slice_logits_to_keep(hidden, logits_to_keep))  # [B, T, V]
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return self._head_output(CausalLMOutputWithPast, outputs, logits, loss)

    def _fuse_head_and_loss(self, labels, logits_to_keep) -> bool:
        """Training with labels and `config.fused_loss`: the head returns the loss and `logits` are None
        (they cost most of a small model's step memory). Evaluation, generation, no-grad calls,
        `fused_loss=False` and a head that is not ours (LoRA-wrapped, swapped) get logits."""
        return (
            self.config.fused_loss
            and labels is not None
            and self.training
            and torch.is_grad_enabled()
            and logits_to_keep == 0
            and type(self.out_head) is GPTScratchLMHead
        )


class GPTScratchForSequenceClassification(GPTScratchPreTrainedModel):
    """The GPT with a classification head on the last real token's hidden state (the book's chapter 6),
    left or right padded."""

    accepts_loss_kwargs = False  # the loss is a per-example mean: the Trainer divides by accumulation

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTScratchModel(config)
        self.score = nn.Linear(config.emb_dim, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids in
            `[0, num_labels)`; float targets for regression (`num_labels == 1`) or multi-label.
        Other keywords (`position_ids`, `cache`, `inputs_embeds`, `use_cache`, ...) go to `GPTScratchModel`.
        """
        outputs: BaseModelOutputWithPast = self.model(input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state  # [B, T, E]
        last = self._last_token_index(input_ids, attention_mask, hidden)  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, E]
        logits = self.score(pooled)  # [B, num_labels]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return self._head_output(SequenceClassifierOutputWithPast, outputs, logits, loss)

    def _last_token_index(self, input_ids, attention_mask, hidden) -> torch.LongTensor:
        """Index of the rightmost real token of each row: from `attention_mask` when given, else the
        rightmost token that is not `pad_token_id`. A row with no real token is a ValueError."""
        batch_size, seq_len = hidden.shape[:2]
        if attention_mask is not None and attention_mask.ndim == 2:
            real = attention_mask[:, -seq_len:].to(hidden.device).bool()  # [B, T]
            what = "its attention_mask is all 0"
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(hidden.device)  # [B, T]
            what = f"every id is pad_token_id={self.config.pad_token_id}"
        elif self.config.pad_token_id is None and batch_size != 1:
            raise ValueError(
                f"Cannot classify a batch of {batch_size} sequences without an attention_mask: the config has no "
                "pad_token_id, so padding cannot be told apart from text. Pass the attention_mask or set "
                "config.pad_token_id (e.g. the tokenizer's pad id)."
            )
        else:  # one sequence, or embeddings: no padding to find
            return torch.full((batch_size,), seq_len - 1, device=hidden.device, dtype=torch.long)
        empty = ~real.any(-1)  # [B]
        if empty.any():
            raise ValueError(f"Row {int(empty.nonzero()[0])} has no real token ({what}): there is nothing to classify.")
        positions = torch.arange(seq_len, device=hidden.device)
        return (positions * real).argmax(-1)


def _add_to_transformers_name_tables() -> None:
    """Add our class names (never replacing an entry) to the built-in tables that parts of transformers
    read instead of the Auto registry: the Trainer's label smoothing shift, `create_model_card`'s task
    and `transformers serve`'s modality. Runs on import, so it holds for remote code too."""
    from transformers.models.auto import modeling_auto

    for table, model_class in (
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, GPTScratchForCausalLM),
        (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, GPTScratchForSequenceClassification),
    ):
        table.setdefault(GPTScratchConfig.model_type, model_class.__name__)


_add_to_transformers_name_tables()

__all__ = [
    "GPTScratchPreTrainedModel",
    "GPTScratchModel",
    "GPTScratchForCausalLM",
    "GPTScratchForSequenceClassification",
    "GPTScratchLMHead",
]
