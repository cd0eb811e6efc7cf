"""The fused head + loss (`GPTScratchLMHead`, `config.fused_loss`) against stock GPT-2 on the same
weights (`scratch_to_gpt2`): the same loss and gradients wherever the head's weight exists only
inside the head's own forward (accelerate offload, DeepSpeed ZeRO-3), under LoRA, with a quantized
head weight, and with the fused loss switched off (then the logits come back in training too)."""

import copy
import json
import sys

import pytest
import torch
from conftest import REPO, run_command, tiny_config

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from hf_gpt_scratch.convert import scratch_to_gpt2
from hf_gpt_scratch.modeling_gpt_scratch import GPTScratchLMHead

# our parameter -> stock GPT-2's (the rest of the body is reached through these gradients)
GPT2_NAMES = {
    "model.final_norm.weight": "transformer.ln_f.weight",
    "model.final_norm.bias": "transformer.ln_f.bias",
    "model.pos_emb.weight": "transformer.wpe.weight",
    "model.tok_emb.weight": "transformer.wte.weight",
    "out_head.weight": "lm_head.weight",
}


def lm(**overrides):
    model = GPTScratchForCausalLM(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.train()


def batch():
    x = torch.randint(0, 97, (3, 11))
    labels = x.clone()
    labels[0, :4] = -100  # a masked prompt
    return x, labels


def gpt2_reference(model, x, labels, **kwargs):
    """Stock GPT-2 holding `model`'s weights (and its frozen parameters), one training step:
    (output, {our name: GPT-2's gradient})."""
    gpt2 = scratch_to_gpt2(model).train()
    frozen = {GPT2_NAMES[n] for n, p in model.named_parameters() if n in GPT2_NAMES and not p.requires_grad}
    for name, p in gpt2.named_parameters():
        p.requires_grad_(name not in frozen)
    out = gpt2(x, labels=labels, **kwargs)
    out.loss.backward()
    params = dict(gpt2.named_parameters(remove_duplicate=False))
    return out, {ours: params[theirs].grad for ours, theirs in GPT2_NAMES.items()}


def assert_grads(model, reference, skip=()):
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, expected in reference.items():
        if name in skip:
            continue
        got = params[name].grad
        if expected is None:
            assert got is None, name
        else:
            torch.testing.assert_close(got, expected, msg=name, rtol=1e-4, atol=1e-6)


def leaf_copies(loss, model):
    """Tensors that received gradients in this backward but are not the model's parameters: the
    copies accelerate's offload hook materialises for a forward."""
    own = {id(p) for p in model.parameters()}
    seen, stack, found = set(), [loss.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None and id(variable) not in own:
            found.append(variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


# ---------------------------------------------------------------- the choice: fused or logits


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_flag_logits_none_or_returned_with_gpt2s_loss_and_grads(fused, tie):
    model = lm(fused_loss=fused, tie_word_embeddings=tie)
    x, labels = batch()
    for kwargs in [{}, {"num_items_in_batch": torch.tensor(23)}]:
        model.zero_grad()
        ref_out, ref_grads = gpt2_reference(model, x, labels, **kwargs)
        out = model(x, labels=labels, **kwargs)
        out.loss.backward()
        if fused:
            assert out.logits is None  # the memory saving: no [B, T, V] tensor
        else:
            torch.testing.assert_close(out.logits, ref_out.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.loss, ref_out.loss)
        assert_grads(model, ref_grads)


def test_fused_loss_is_a_validated_saved_config_field(tmp_path):
    assert GPTScratchConfig().fused_loss is True
    with pytest.raises(ValueError, match=r"fused_loss.*'no'"):
        GPTScratchConfig(fused_loss="no")
    GPTScratchForCausalLM(tiny_config(fused_loss=False)).save_pretrained(tmp_path)
    assert GPTScratchConfig.from_pretrained(tmp_path).fused_loss is False


# ---------------------------------------------------------------- a head that exists only in its forward


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_head_offloaded_to_disk_trains_as_gpt2(tmp_path, tie, frozen):
    """accelerate's `device_map` with the head on disk: the hook loads `out_head.weight` only for
    the head's own forward (a meta placeholder elsewhere). Loss and every gradient are stock
    GPT-2's, head frozen (as under LoRA) or trainable."""
    from accelerate import dispatch_model

    model = lm(tie_word_embeddings=tie)
    model.out_head.weight.requires_grad_(not frozen)
    x, labels = batch()
    ref_out, ref_grads = gpt2_reference(model, x, labels)
    model = dispatch_model(model, device_map={"model": "cpu", "out_head": "disk"}, offload_dir=tmp_path)
    assert model.out_head.weight.is_meta or tie  # (a tied head is the embedding, kept on the cpu)

    out = model(x, labels=labels)
    out.loss.backward()
    assert out.logits is None  # still fused
    torch.testing.assert_close(out.loss, ref_out.loss)
    assert_grads(model, ref_grads, skip={"out_head.weight"})
    copies = leaf_copies(out.loss, model)
    if frozen or tie:  # a tied head is the embedding, which stays on the cpu
        assert copies == []
    else:  # the gradient reaches the copy of the head that the hook made for the forward
        (head,) = copies
        torch.testing.assert_close(head.grad, ref_grads["out_head.weight"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_zero3_partitioned_head_is_fused_and_exact(tmp_path, tie):
    """DeepSpeed ZeRO-3 gathers a weight only for its own module's forward; nothing registers the
    head with DeepSpeed, yet the fused loss runs and every full gradient is the plain model's."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    report = tmp_path / "report.json"
    run_command([sys.executable, REPO / "tests" / "zero3_head_check.py", report, "tie" if tie else "untied"],
                timeout=300, OMP_NUM_THREADS=1)
    result = json.loads(report.read_text())
    assert result["partitioned"] and result["fused"], result
    assert result["loss"] == pytest.approx(result["reference_loss"], rel=1e-6)
    assert result["max_grad_diff"] < 1e-6, result


# ---------------------------------------------------------------- heads that are not ours, or not plain


@pytest.mark.parametrize("targets", [["out_head", "W_query"], ["W_query", "W_value"]])
def test_lora_wrapped_or_frozen_head_trains_as_gpt2(targets):
    """LoRA on the head (a PEFT module around ours: plain head + `loss_function`, logits returned)
    or on the body only (our frozen head: fused). The loss and the gradient reaching the input
    embeddings are stock GPT-2's on the merged weights, and the LoRA gradients do not depend on
    `fused_loss`."""
    from peft import LoraConfig, get_peft_model

    x, labels = batch()
    base = lm()
    lora_grads = {}
    for fused in (True, False):
        base.config.fused_loss = fused
        torch.manual_seed(1)
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
        peft_model.train()
        merged = copy.deepcopy(peft_model).merge_and_unload()
        embeds = merged.model.tok_emb(x).detach()
        gpt2 = scratch_to_gpt2(merged).train()
        ref_embeds = embeds.clone().requires_grad_()
        ref = gpt2(inputs_embeds=ref_embeds, labels=labels)
        ref.loss.backward()

        ours_embeds = embeds.clone().requires_grad_()
        out = peft_model(inputs_embeds=ours_embeds, labels=labels)
        out.loss.backward()
        assert (out.logits is None) == (fused and "out_head" not in targets)
        torch.testing.assert_close(out.loss, ref.loss)
        torch.testing.assert_close(ours_embeds.grad, ref_embeds.grad, rtol=1e-4, atol=1e-6)
        lora_grads[fused] = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert lora_grads[True].keys() == lora_grads[False].keys() and lora_grads[True]
    for name, grad in lora_grads[True].items():
        torch.testing.assert_close(grad, lora_grads[False][name], msg=name, rtol=1e-4, atol=1e-6)


class QuantizedWeight(torch.Tensor):
    """Stands in for a quantized weight that keeps the module (torchao's `quantize_` makes the
    weight an `Int8Tensor` subclass): only `F.linear`, which its class implements, computes with it;
    any other operation raises, as torchao's does for `t` or `mm`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if getattr(func, "__name__", "") in ("__get__", "detach", "requires_grad_"):  # metadata, Parameter()
            return super().__torch_function__(func, types, args, kwargs)
        raise NotImplementedError(f"{getattr(func, '__name__', func)} on a quantized weight")


def test_quantized_head_weight_gets_the_plain_loss():
    """A head weight that is a tensor subclass (quantized) even inside the head's forward: the head
    falls back to its Linear forward and transformers' loss, equal to the evaluation-mode loss and
    input gradient on the same weight."""
    model = lm()
    weight = model.out_head.weight.detach().as_subclass(QuantizedWeight)
    model.out_head.weight = torch.nn.Parameter(weight, requires_grad=False)  # as torchao's quantize_ does
    assert type(model.out_head.weight) is QuantizedWeight
    x, labels = batch()
    embeds = model.model.tok_emb(x).detach()
    train_embeds = embeds.clone().requires_grad_()
    out = model(inputs_embeds=train_embeds, labels=labels)
    out.loss.backward()
    model.eval()
    eval_embeds = embeds.clone().requires_grad_()
    ref = model(inputs_embeds=eval_embeds, labels=labels)  # eval: logits + loss_function
    ref.loss.backward()
    assert ref.logits is not None
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(train_embeds.grad, eval_embeds.grad)


def test_resized_head_stays_fused_and_exact():
    """`resize_token_embeddings` builds a plain nn.Linear head: set_output_embeddings keeps the same
    weight in our head, so training stays fused, with GPT-2's loss and gradients."""
    model = lm()
    head_weight_before = model.out_head.weight
    model.resize_token_embeddings(101)
    assert type(model.out_head) is GPTScratchLMHead and model.out_head.weight.shape == (101, 32)
    assert model.out_head.weight is not head_weight_before  # resized: a new Parameter
    assert set(model.state_dict()) == set(lm().state_dict())
    x, labels = batch()
    x[0, 0] = labels[1, 3] = 100  # a new token
    ref_out, ref_grads = gpt2_reference(model, x, labels)
    out = model(x, labels=labels)
    out.loss.backward()
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref_out.loss)
    assert_grads(model, ref_grads)
