"""The ecosystem works on the model as on a stock one: pipelines with the GPT-2 tokenizer, PEFT
LoRA (wrap, generate, save/load the adapter, merge), and PEFT prompt and prefix tuning, which read
the sizes from `config.to_dict()`."""

import pytest
import torch
from conftest import tiny_config
from peft import LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, pipeline

from hf_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification
from hf_gpt_scratch.convert import scratch_to_gpt2
from hf_gpt_scratch.tokenization import gpt2_tokenizer


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def gpt2_sized(cls, **overrides):
    cfg = tiny_config(vocab_size=50257, pad_token_id=50256, eos_token_id=50256, bos_token_id=50256, **overrides)
    return cls(cfg).eval()


def test_text_generation_pipeline_matches_generate(tok):
    model = gpt2_sized(GPTScratchForCausalLM)
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    out = gen("Every effort moves you", max_new_tokens=8, do_sample=False, return_full_text=False)
    ids = tok("Every effort moves you", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert out[0]["generated_text"] == tok.decode(expected)
    assert len(expected) == 8


def test_text_generation_pipeline_batches_with_left_padding(tok):
    model = gpt2_sized(GPTScratchForCausalLM)
    tok = gpt2_tokenizer(padding_side="left")
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    prompts = ["Hi", "Every effort moves you forward, said he"]
    batched = gen(prompts, max_new_tokens=6, do_sample=False, batch_size=2, return_full_text=False)
    alone = [gen(p, max_new_tokens=6, do_sample=False, return_full_text=False) for p in prompts]
    assert [b[0]["generated_text"] for b in batched] == [a[0]["generated_text"] for a in alone]


def test_text_classification_pipeline(tok):
    model = gpt2_sized(GPTScratchForSequenceClassification, num_labels=2, id2label={0: "ham", 1: "spam"})
    clf = pipeline("text-classification", model=model, tokenizer=tok)
    texts = ["WINNER!! Claim your prize now", "See you at lunch?"]
    out = clf(texts, batch_size=2)
    assert [o["label"] for o in out] == [
        model.config.id2label[int(i)] for i in model(**tok(texts, return_tensors="pt", padding=True)).logits.argmax(-1)
    ]
    assert all(0.0 < o["score"] <= 1.0 for o in out)


def test_peft_lora_wraps_trains_saves_and_merges(tmp_path):
    model = GPTScratchForCausalLM(tiny_config(pad_token_id=0)).eval()
    model.save_pretrained(tmp_path / "base")
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["W_query", "W_value"])
    peft_model = get_peft_model(model, lora)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    x = torch.randint(1, 97, (2, 10))
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        peft_model(input_ids=x, labels=x).loss.backward()
        opt.step()
    peft_model.eval()
    tuned_logits = peft_model(input_ids=x).logits.detach()
    generated = peft_model.generate(input_ids=x[:, :4], max_new_tokens=5, do_sample=False)

    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(input_ids=x).logits, tuned_logits, atol=1e-5, rtol=1e-5)

    merged = peft_model.merge_and_unload()
    assert type(merged) is GPTScratchForCausalLM
    torch.testing.assert_close(merged(x).logits, tuned_logits, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(again(x).logits, tuned_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(again.generate(x[:, :4], max_new_tokens=5, do_sample=False), generated)


@pytest.mark.parametrize("peft_config", [PromptTuningConfig, PrefixTuningConfig])
def test_peft_prompt_and_prefix_tuning_match_stock_gpt2(peft_config):
    """PEFT reads num_hidden_layers / hidden_size / num_attention_heads from `config.to_dict()`; with
    the same weights and the same virtual tokens our model and stock GPT-2 give the same outputs."""
    ours = GPTScratchForCausalLM(tiny_config(qkv_bias=True)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    stock = scratch_to_gpt2(ours).eval()
    tuned = get_peft_model(ours, peft_config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    reference = get_peft_model(stock, peft_config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    settings = tuned.peft_config["default"]
    assert (settings.num_layers, settings.token_dim, settings.num_attention_heads) == (2, 32, 4)
    reference.prompt_encoder.load_state_dict(tuned.prompt_encoder.state_dict())

    x = torch.randint(0, 97, (2, 6))
    logits = tuned(input_ids=x).logits
    torch.testing.assert_close(logits, reference(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    with tuned.disable_adapter():
        assert not torch.allclose(tuned(input_ids=x).logits, logits[:, -6:], atol=1e-3)  # the virtual tokens count
    loss = tuned(input_ids=x, labels=x).loss
    torch.testing.assert_close(loss, reference(input_ids=x, labels=x).loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    trainable = {n: p for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all("prompt_encoder" in n and p.grad is not None for n, p in trainable.items())
    assert torch.equal(tuned.generate(input_ids=x, max_new_tokens=4, do_sample=False),
                       reference.generate(input_ids=x, max_new_tokens=4, do_sample=False))
