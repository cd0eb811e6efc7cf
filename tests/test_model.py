"""Behaviour of the model against transformers' contract: causality, backends, cache, padding,
heads, gradient checkpointing, outputs, and the errors a user meets."""

import functools
import warnings

import pytest
import torch
from conftest import tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DynamicCache,
)

from hf_gpt_scratch import (
    GPTScratchConfig,
    GPTScratchForCausalLM,
    GPTScratchForSequenceClassification,
    GPTScratchModel,
)


def perturbed(model):
    """Random norms and biases so that no parameter is an identity or a zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def lm(**overrides):
    return perturbed(GPTScratchForCausalLM(tiny_config(**overrides)))


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_books_124m():
    cfg = GPTScratchConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (50257, 1024, 768, 12, 12)
    assert cfg.drop_rate == 0.1 and cfg.qkv_bias is False and cfg.tie_word_embeddings is False
    assert cfg.model_type == "gpt_scratch"


def test_config_standard_names_are_aliases():
    cfg = GPTScratchConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=128)
    assert (cfg.emb_dim, cfg.n_heads, cfg.n_layers, cfg.context_length) == (64, 4, 3, 128)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (64, 4, 3)
    assert GPTScratchConfig(num_labels=3).num_labels == 3


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(emb_dim=100, n_heads=3), ["emb_dim", "100", "n_heads", "3"]),
        (dict(n_layers=0), ["n_layers", "0"]),
        (dict(vocab_size=-5), ["vocab_size", "-5"]),
        (dict(context_length=2.5), ["context_length", "2.5"]),
        (dict(drop_rate=1.0), ["drop_rate", "1.0"]),
        (dict(drop_rate=-0.1), ["drop_rate", "-0.1"]),
        (dict(vocab_size=10, pad_token_id=10), ["pad_token_id", "10"]),
    ],
)
def test_config_rejects_nonsense(kwargs, words):
    with pytest.raises(ValueError) as err:
        GPTScratchConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("tie", [False, True])
def test_tie_word_embeddings_honoured_through_save_and_load(tmp_path, tie):
    model = GPTScratchForCausalLM(tiny_config(tie_word_embeddings=tie))
    assert (model.out_head.weight is model.model.tok_emb.weight) is tie
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.tie_word_embeddings is tie
    assert (loaded.out_head.weight is loaded.model.tok_emb.weight) is tie
    torch.testing.assert_close(loaded.out_head.weight, model.out_head.weight)


def test_auto_classes_build_our_models():
    cfg = tiny_config()
    assert type(AutoConfig.for_model("gpt_scratch")) is GPTScratchConfig
    assert type(AutoModel.from_config(cfg)) is GPTScratchModel
    assert type(AutoModelForCausalLM.from_config(cfg)) is GPTScratchForCausalLM
    assert type(AutoModelForSequenceClassification.from_config(cfg)) is GPTScratchForSequenceClassification


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(emb_dim=256, n_heads=4, n_layers=8))
    block = model.model.trf_blocks[0]
    expected = 0.02 / (2 * 8) ** 0.5
    assert abs(block.att.out_proj.weight.std().item() - expected) < 0.15 * expected
    assert abs(block.ff.layers[2].weight.std().item() - expected) < 0.15 * expected
    assert abs(block.att.W_query.weight.std().item() - 0.02) < 0.1 * 0.02
    assert torch.all(block.norm1.weight == 1) and torch.all(block.ff.layers[0].bias == 0)


# ---------------------------------------------------------------- the forward pass


def test_causal_future_tokens_do_not_change_the_past():
    model = lm()
    x = torch.randint(0, 97, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 97, (2, 5))
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_eager_equals_sdpa(qkv_bias):
    sdpa = lm(qkv_bias=qkv_bias)
    eager = AutoModelForCausalLM.from_config(tiny_config(qkv_bias=qkv_bias), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    x = torch.randint(0, 97, (3, 20))
    mask = torch.ones_like(x)
    mask[0, :5] = 0  # left padding
    mask[1, 15:] = 0  # right padding
    torch.testing.assert_close(eager(x).logits, sdpa(x).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        eager(x, attention_mask=mask).logits[mask.bool()], sdpa(x, attention_mask=mask).logits[mask.bool()],
        atol=1e-5, rtol=1e-5,
    )


def test_labels_give_the_shifted_cross_entropy():
    model = lm()
    x = torch.randint(0, 97, (2, 10))
    labels = x.clone()
    labels[0, :3] = -100
    out = model(x, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


def test_logits_to_keep():
    model = lm()
    x = torch.randint(0, 97, (2, 10))
    full = model(x).logits
    last = model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 97)
    torch.testing.assert_close(last, full[:, -1:])


def test_positions_come_from_the_attention_mask():
    """Left padding must not shift the positions of the real tokens."""
    model = lm()
    x = torch.randint(1, 97, (1, 8))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 4:], model(x).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- cache and generate


def test_incremental_decoding_with_cache_equals_full_forward():
    model = lm()
    x = torch.randint(0, 97, (2, 12))
    full = model(x).logits
    cache = DynamicCache(config=model.config)
    first = model(x[:, :8], cache=cache, use_cache=True)
    assert first.cache.get_seq_length() == 8
    steps = [model(x[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(8, 12)]
    torch.testing.assert_close(torch.cat([first.logits, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_cached_and_uncached_generation_give_identical_tokens():
    model = lm()
    x = torch.randint(0, 97, (2, 5))
    kwargs = dict(max_new_tokens=12, pad_token_id=0)
    greedy = model.generate(x, do_sample=False, **kwargs)
    assert greedy.shape == (2, 17)
    assert torch.equal(greedy, model.generate(x, do_sample=False, use_cache=False, **kwargs))
    torch.manual_seed(1)
    sampled = model.generate(x, do_sample=True, top_k=20, temperature=0.8, **kwargs)
    torch.manual_seed(1)
    assert torch.equal(sampled, model.generate(x, do_sample=True, top_k=20, temperature=0.8, use_cache=False, **kwargs))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_generates_like_each_prompt_alone(attn):
    model = AutoModelForCausalLM.from_config(tiny_config(pad_token_id=0), attn_implementation=attn)
    perturbed(model)
    short, long = torch.randint(1, 97, (1, 3)), torch.randint(1, 97, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = (torch.arange(7) >= torch.tensor([[4], [0]])).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
    alone_short = model.generate(short, max_new_tokens=6, do_sample=False)
    alone_long = model.generate(long, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[0, 4:], alone_short[0])
    assert torch.equal(out[1], alone_long[0])


def test_past_key_values_keyword_still_works_with_a_deprecation_warning():
    model = lm()
    x = torch.randint(0, 97, (1, 6))
    cache = DynamicCache(config=model.config)
    model(x[:, :5], cache=cache, use_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = model(x[:, 5:], past_key_values=cache, use_cache=True)
    assert any("past_key_values" in str(w.message) for w in caught)
    torch.testing.assert_close(step.logits[:, -1], model(x).logits[:, -1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the forward contract


def test_output_attentions_and_hidden_states_are_real_tensors():
    model = AutoModelForCausalLM.from_config(tiny_config(), attn_implementation="eager").eval()
    x = torch.randint(0, 97, (2, 9))
    out = model(x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 9))
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 9, 32) for h in out.hidden_states)
    # the last hidden state is the final-normed output that feeds the head
    torch.testing.assert_close(model.out_head(out.hidden_states[-1]), out.logits)


def test_return_dict_false_returns_tuples():
    model = lm()
    x = torch.randint(0, 97, (2, 6))
    out = model(x, labels=x, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], model(x, labels=x).loss)
    torch.testing.assert_close(out[1], model(x).logits)
    base = GPTScratchModel(tiny_config())(x, return_dict=False)
    assert isinstance(base, tuple) and base[0].shape == (2, 6, 32)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = lm()
    model.train()  # dropout is 0, so train mode is deterministic
    x = torch.randint(0, 97, (2, 10))

    def grads():
        model.zero_grad()
        model(x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(b.gradient_checkpointing for b in model.model.trf_blocks)
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_no_split_modules_name_the_block():
    model = lm()
    assert set(model._no_split_modules) == {"TransformerBlock"}
    assert type(model.model.trf_blocks[0]).__name__ == "TransformerBlock"


# ---------------------------------------------------------------- sequence classification


def classifier(**overrides):
    return perturbed(GPTScratchForSequenceClassification(tiny_config(pad_token_id=0, **overrides)))


def test_classifier_pools_the_last_real_token_whatever_the_padding():
    model = classifier(num_labels=3)
    a, b = torch.randint(1, 97, (1, 4)), torch.randint(1, 97, (1, 9))
    alone = torch.cat([model(a).logits, model(b).logits])
    assert alone.shape == (2, 3)
    zeros = torch.zeros(1, 5, dtype=torch.long)
    right = torch.cat([torch.cat([a, zeros], 1), b])
    left = torch.cat([torch.cat([zeros, a], 1), b])
    right_mask, left_mask = (right != 0).long(), (left != 0).long()
    torch.testing.assert_close(model(right, attention_mask=right_mask).logits, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(left, attention_mask=left_mask).logits, alone, atol=1e-5, rtol=1e-5)
    # without a mask, right padding is found through pad_token_id
    torch.testing.assert_close(model(right).logits, alone, atol=1e-5, rtol=1e-5)


def test_classifier_batch_without_pad_token_id_is_a_clear_error():
    model = GPTScratchForSequenceClassification(tiny_config()).eval()
    model(torch.randint(0, 97, (1, 5)))  # a single sequence is fine
    with pytest.raises(ValueError, match="pad_token_id"):
        model(torch.randint(0, 97, (2, 5)))


@pytest.mark.parametrize(
    "num_labels, labels, problem",
    [
        (2, torch.tensor([0, 1, 1]), "single_label_classification"),
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_classifier_losses_match_transformers_heads(num_labels, labels, problem):
    model = classifier(num_labels=num_labels)
    x = torch.randint(1, 97, (3, 6))
    out = model(x, labels=labels)
    assert model.config.problem_type == problem
    if problem == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(out.logits, labels)
    elif problem == "regression":
        expected = torch.nn.functional.mse_loss(out.logits.squeeze(), labels)
    else:
        expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- bad input


def test_too_long_input_names_both_lengths():
    model = lm()
    with pytest.raises(ValueError, match=r"40.*context_length is 32"):
        model(torch.randint(0, 97, (1, 40)))
    cache = DynamicCache(config=model.config)
    model(torch.randint(0, 97, (1, 30)), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"33 tokens long \(30 cached \+ 3 new\)"):
        model(torch.randint(0, 97, (1, 3)), cache=cache, use_cache=True)


@pytest.mark.parametrize("bad", [97, 1000, -1])
def test_unknown_token_ids_mention_the_vocabulary(bad):
    model = lm()
    x = torch.randint(0, 97, (1, 5))
    x[0, 2] = bad
    with pytest.raises(ValueError, match=rf"{bad}.*vocab_size=97"):
        model(x)


def test_truncated_weights_file_is_an_error_not_a_random_model(tmp_path):
    GPTScratchForCausalLM(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as err:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "safetensors" in str(err.value).lower() or "header" in str(err.value).lower() or "incomplete" in str(err.value).lower()
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(tmp_path)


# ---------------------------------------------------------------- the fused training loss


@pytest.mark.parametrize("tie", [False, True])
def test_training_loss_is_fused_and_equals_the_plain_loss(tie):
    """In training the head and loss run chunked (no logits); loss and every gradient must equal
    the plain logits + cross-entropy path."""
    model = lm(tie_word_embeddings=tie)
    x = torch.randint(0, 97, (3, 11))
    labels = x.clone()
    labels[0, :4] = -100

    def run(train, **kwargs):
        model.train(train)
        model.zero_grad()
        out = model(x, labels=labels, **kwargs)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    for kwargs in [{}, {"num_items_in_batch": torch.tensor(50)}]:
        fused, fused_grads = run(True, **kwargs)
        plain, plain_grads = run(False, **kwargs)  # eval mode: logits path (dropout is 0)
        assert fused.logits is None and plain.logits is not None
        torch.testing.assert_close(fused.loss, plain.loss)
        for name in plain_grads:
            torch.testing.assert_close(fused_grads[name], plain_grads[name], msg=name)


@pytest.mark.parametrize("compiling", [False, True])
def test_fused_loss_in_chunks_with_shift_labels_and_a_frozen_head(compiling, monkeypatch):
    """Ignored rows are dropped before the head in eager mode and masked inside it under
    torch.compile (no data-dependent shapes): both give the reference loss and gradient."""
    from hf_gpt_scratch.loss_gpt_scratch import linear_cross_entropy

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)

    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16)  # frozen: no gradient wanted
    shift = torch.randint(0, 50, (2, 9))
    shift[1, 3:] = -100
    loss = linear_cross_entropy(hidden, weight, labels=None, shift_labels=shift, chunk_rows=4)
    loss.backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy((ref_hidden @ weight.t()).reshape(-1, 50), shift.reshape(-1))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(hidden.grad, ref_hidden.grad)


def test_fused_loss_under_autocast_computes_like_a_linear_under_autocast():
    """Under bf16 autocast the fused head's matmuls run in bf16 as `nn.Linear`'s do (a float32 head
    would give the float32 loss instead and be several times slower on a GPU)."""
    from hf_gpt_scratch.loss_gpt_scratch import linear_cross_entropy

    hidden = torch.randn(2, 40, 32, requires_grad=True)
    weight = (0.1 * torch.randn(300, 32)).requires_grad_()
    labels = torch.randint(0, 300, (2, 40))
    labels[0, :10] = -100

    def losses(fused):
        loss = linear_cross_entropy(hidden, weight, labels, chunk_rows=16) if fused else transformers_loss()
        return loss, torch.autograd.grad(loss, (hidden, weight))

    def transformers_loss():
        from transformers.loss.loss_utils import ForCausalLMLoss

        return ForCausalLMLoss(torch.nn.functional.linear(hidden, weight), labels, 300)

    float32_loss = losses(fused=False)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (fused, fused_grads), (plain, plain_grads) = losses(fused=True), losses(fused=False)
    assert abs(float(plain - float32_loss)) > 1e-5  # bf16 rounding is visible at this size
    assert abs(float(fused - plain)) < abs(float(plain - float32_loss)) / 10
    for got, want in zip(fused_grads, plain_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02 * float(want.abs().max()))


# ---------------------------------------------------------------- packed rows (DataCollatorWithFlattening, TRL packing)


def _gpt2(model, attn):
    from hf_gpt_scratch.convert import scratch_to_gpt2

    gpt2 = scratch_to_gpt2(model)
    gpt2.set_attn_implementation(attn)
    return gpt2


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_its_sequences_run_alone(attn, use_cache):
    """Context 8, one row holding two 6-token sequences with position_ids [0..5, 0..5]: each token
    sees only its own sequence. transformers' create_causal_mask detects the restart from position_ids;
    stock GPT-2 does so only without a cache (with use_cache=True it attends across the examples), so
    the reference is GPT-2 with use_cache=False."""
    model = lm(context_length=8)
    model.set_attn_implementation(attn)
    a, b = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 6))
    row, positions = torch.cat([a, b], 1), torch.arange(6).repeat(2)[None]
    alone = torch.cat([model(a).logits, model(b).logits], 1)
    packed = model(row, position_ids=positions, use_cache=use_cache).logits
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    gpt2 = _gpt2(model, attn).eval()
    torch.testing.assert_close(packed, gpt2(row, position_ids=positions, use_cache=False).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flattened_batch_wider_than_the_context_trains_like_gpt2(attn):
    """DataCollatorWithFlattening (padding-free, what TRL's packing produces) puts 18 tokens of three
    examples in one row of a model with context 8: loss and gradients equal stock GPT-2's on the same
    weights (use_cache=False, as the Trainer sets it)."""
    from transformers import DataCollatorWithFlattening

    model = lm(context_length=8).train()
    model.set_attn_implementation(attn)
    examples = [torch.randint(0, 97, (n,)).tolist() for n in (6, 5, 7)]
    batch = DataCollatorWithFlattening()([{"input_ids": ids, "labels": ids} for ids in examples])
    assert batch["input_ids"].shape == (1, 18) and "attention_mask" not in batch
    gpt2 = _gpt2(model, attn).train()
    ours, theirs = model(**batch), gpt2(**batch, use_cache=False)
    ours.loss.backward()
    theirs.loss.backward()
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.model.pos_emb.weight.grad, gpt2.transformer.wpe.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.model.tok_emb.weight.grad, gpt2.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4)
    # the loss of the examples run one by one, weighted by their number of targets
    model.eval()
    losses = [model(torch.tensor([ids]), labels=torch.tensor([ids])).loss * (len(ids) - 1) for ids in examples]
    torch.testing.assert_close(ours.loss, sum(losses) / 15, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [8, 50, -1])
def test_position_ids_outside_the_table_name_the_value(bad):
    model = lm(context_length=8)
    positions = torch.arange(6)[None].clone()
    positions[0, 3] = bad
    with pytest.raises(ValueError, match=rf"position_ids holds {bad}.*\[0, context_length=8\)"):
        model(torch.randint(0, 97, (1, 6)), position_ids=positions)


# ---------------------------------------------------------------- no host sync per generated token


def _filled_cache(kind, config, batch, past, device):
    from transformers import StaticCache

    cache = DynamicCache(config=config) if kind == "dynamic" else StaticCache(config=config, max_cache_len=16)
    shape = (batch, config.n_heads, past, config.head_dim)
    for layer in range(config.n_layers):
        cache.update(torch.zeros(shape, device=device), torch.zeros(shape, device=device), layer)
    return cache


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_decode_step_reads_no_value_from_the_device(attn, cache_kind, with_mask):
    """On the meta device a tensor has no values: anything that reads one (`.item()`, `int()`, `if t:`,
    `.tolist()`, boolean indexing, a tensor-sized `arange`, ...) raises. A cached decode step of one
    token per row, as `generate` runs it on an accelerator, must run there; a prefill reads the ids.
    (transformers' own sdpa mask reads a padding mask on every step, in GPT-2 too: not tested here.)"""
    if attn == "sdpa" and with_mask:
        pytest.skip("transformers' sdpa mask creation reads the padding mask (masking_utils._ignore_causal_mask_sdpa)")
    model = GPTScratchForCausalLM(tiny_config()).eval().to("meta")
    model.set_attn_implementation(attn)
    cache = _filled_cache(cache_kind, model.config, batch=2, past=5, device="meta")
    step = dict(
        input_ids=torch.zeros(2, 1, dtype=torch.long, device="meta"),
        position_ids=torch.zeros(2, 1, dtype=torch.long, device="meta"),
        attention_mask=torch.ones(2, 6, dtype=torch.long, device="meta") if with_mask else None,
    )
    assert model(**step, cache=cache, use_cache=True, logits_to_keep=1).logits.shape == (2, 1, 97)
    # positions counted on from the cache (a tensor in a StaticCache), as transformers' own models do
    assert model(step["input_ids"], cache=cache, use_cache=True).logits.shape == (2, 1, 97)
    with pytest.raises(RuntimeError, match="meta"):  # the prefill does read the ids (once per generate call)
        model(torch.zeros(2, 3, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("cache_implementation", [None, "static"])
@pytest.mark.parametrize("padded", [False, True])
def test_generate_syncs_only_in_the_prefill(padded, cache_implementation, monkeypatch):
    """Counts the reads of tensor values (`item`, `int()`, `bool()`, `tolist`) inside our forward during
    `generate`, taking the accelerator path on the CPU (`_reads_are_free` patched): the prefill reads
    (its checks), each decode step reads nothing. Padded batches run eager: transformers' sdpa mask
    creation reads a padding mask itself (GPT-2 too)."""
    from hf_gpt_scratch import modeling_gpt_scratch

    model = AutoModelForCausalLM.from_config(tiny_config(pad_token_id=0), attn_implementation="eager" if padded else "sdpa")
    model.eval()
    monkeypatch.setattr(modeling_gpt_scratch, "_reads_are_free", lambda tensor: False, raising=False)
    reads, calls = [0], []
    for name in ("item", "__int__", "__bool__", "tolist", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    forward = model.forward

    @functools.wraps(forward)  # generate reads the signature (attention_mask, position_ids)
    def counting_forward(*args, **kwargs):
        before = reads[0]
        out = forward(*args, **kwargs)
        calls.append((kwargs["input_ids"].shape[1], reads[0] - before))
        return out

    monkeypatch.setattr(model, "forward", counting_forward)
    prompt = torch.randint(1, 97, (2, 5))
    mask = torch.ones_like(prompt)
    if padded:
        prompt[0, :2], mask[0, :2] = 0, 0
    model.generate(prompt, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                   cache_implementation=cache_implementation)
    monkeypatch.undo()
    (prefill_len, prefill_reads), *steps = calls
    assert prefill_len == 5 and prefill_reads > 0  # the counter sees our checks
    assert steps == [(1, 0)] * 5
