"""The GPT of "Build a Large Language Model (From Scratch)" (chapter 4) as a transformers model.

The math reads like the book: token + learned position embeddings, pre-LayerNorm transformer blocks
(multi-head causal attention, then a 4x feed-forward with tanh-GELU), a final norm and an output
head. The Hugging Face glue (attention backends, KV cache, masks, output classes) stays thin.

Shapes in comments: B batch, T new tokens, S all tokens seen (cache + new), E emb_dim, H heads,
D head_dim = E / H, V vocab_size.

This file and `configuration_gpt_scratch.py` are copied next to saved weights for
`trust_remote_code=True`: keep imports to transformers, torch and that sibling file.
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
    """The book's attention, written out: softmax(Q K^T / sqrt(D) + mask) V.

    query [B, H, T, D], key/value [B, H, S, D], attention_mask additive [B, 1, T, S] (0 or a large
    negative number; it carries both the causal triangle and the padding). Returns the context
    vectors as [B, T, H, D] and the attention weights [B, H, T, S].
    """
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

    def _init_weights(self, module):
        """Normal(0, 0.02) weights, zero biases, unit norms; residual projections (attention output
        and second feed-forward layer) scaled by 1/sqrt(2 * n_layers) as in GPT-2."""
        super()._init_weights(module)
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / (2 * self.config.n_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)


def _check_inputs(config: GPTScratchConfig, input_ids, seq_len: int, past_len: int):
    """Clear errors for inputs the model cannot embed, instead of an index error deep in torch."""
    if past_len + seq_len > config.context_length:
        raise ValueError(
            f"Input is {past_len + seq_len} tokens long ({past_len} cached + {seq_len} new), but the model's "
            f"context_length is {config.context_length}. Truncate the input or use a model with a longer context."
        )
    if input_ids is not None and input_ids.numel() > 0:
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"Token id {bad} is outside the vocabulary: ids must be in [0, {config.vocab_size}) "
                f"(vocab_size={config.vocab_size}). Was the text encoded with this model's tokenizer?"
            )


class GPTScratchModel(GPTScratchPreTrainedModel):
    """The GPT body: embeddings, transformer blocks and final norm; returns hidden states [B, T, E]."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
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
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if not torch.compiler.is_compiling():
            _check_inputs(self.config, input_ids, seq_len, past_len)

        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)  # [B, T, E]
        if position_ids is None:
            position_ids = self._positions(attention_mask, past_len, seq_len, inputs_embeds.device)
        x = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))  # [B, T, E]

        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        for block in self.trf_blocks:
            x = block(x, mask, cache=cache, position_ids=position_ids, **kwargs)
        x = self.final_norm(x)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None)

    @staticmethod
    def _positions(attention_mask, past_len: int, seq_len: int, device) -> torch.LongTensor:
        """Positions of the new tokens: counted over real tokens of `attention_mask` (so left padding
        does not shift them), else continuing after the cached ones. Returns [B or 1, T]."""
        if attention_mask is not None and attention_mask.ndim == 2:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, S]
            return positions[:, -seq_len:]
        return torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)


class GPTScratchLMHead(nn.Linear):
    """The output head, a bias-free Linear E -> V (weight [V, E]) that can also compute the
    next-token loss itself: `head(hidden)` returns logits [B, T, V]; `head(hidden, labels=labels)`
    returns the loss of `linear_cross_entropy`, fused and chunked, without the logits.

    The loss runs inside this module's own forward, where every wrapper that provides a weight only
    for its module's forward (accelerate's offload hooks, DeepSpeed ZeRO-3, FSDP) has provided it.
    A weight that is not a plain tensor even there (a quantized tensor subclass, meta) gets the
    plain logits and transformers' `ForCausalLMLoss`."""

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
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for next-token prediction, unshifted (`labels = input_ids` works; the loss
            shifts them). Positions set to -100 are ignored.
        logits_to_keep (`int` or `torch.Tensor`): compute logits for the last `logits_to_keep`
            positions only (0 keeps all), as `generate` does.
        """
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
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _fuse_head_and_loss(self, labels, logits_to_keep) -> bool:
        """While training with labels and `config.fused_loss` (the default), the head returns the loss
        itself and `logits` come back as None: a training step does not read them, and building them
        costs most of a small model's step memory. Evaluation, generation, no-grad calls and
        `fused_loss=False` get logits and `self.loss_function`; so does a head that is not ours
        (LoRA-wrapped, replaced, quantized by module swap)."""
        return (
            self.config.fused_loss
            and labels is not None
            and self.training
            and torch.is_grad_enabled()
            and logits_to_keep == 0
            and type(self.out_head) is GPTScratchLMHead
        )


class GPTScratchForSequenceClassification(GPTScratchPreTrainedModel):
    """The GPT with a classification head on the hidden state of the last real token (the book's
    chapter 6), robust to left and right padding."""

    # The Trainer then divides the loss by the accumulation steps itself, which is exact for
    # equally sized micro-batches and for every problem type (the loss here is a per-example mean).
    accepts_loss_kwargs = False

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTScratchModel(config)
        self.score = nn.Linear(config.emb_dim, config.num_labels)
        self.post_init()

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
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids in
            `[0, num_labels)`; float targets for regression (`num_labels == 1`) or multi-label.
        """
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
        last = self._last_token_index(input_ids, attention_mask, hidden)  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, E]
        logits = self.score(pooled)  # [B, num_labels]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _last_token_index(self, input_ids, attention_mask, hidden) -> torch.LongTensor:
        """Index of the rightmost real token of each row: from `attention_mask` when given, else the
        rightmost token that is not `pad_token_id`."""
        batch_size, seq_len = hidden.shape[:2]
        if self.config.pad_token_id is None and batch_size != 1:
            raise ValueError(
                f"Cannot classify a batch of {batch_size} sequences: the config has no pad_token_id, so padding "
                "cannot be told apart from text. Set config.pad_token_id (e.g. the tokenizer's pad id)."
            )
        positions = torch.arange(seq_len, device=hidden.device)
        if attention_mask is not None and attention_mask.ndim == 2:
            real = attention_mask[:, -seq_len:].to(hidden.device).bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(hidden.device)
        else:
            return torch.full((batch_size,), seq_len - 1, device=hidden.device, dtype=torch.long)
        return (positions * real).argmax(-1)


__all__ = [
    "GPTScratchPreTrainedModel",
    "GPTScratchModel",
    "GPTScratchForCausalLM",
    "GPTScratchForSequenceClassification",
    "GPTScratchLMHead",
]
