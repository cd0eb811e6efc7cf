"""Where transformers picks behaviour from its built-in tables of model class names instead of the Auto
registry, our classes are treated as their GPT-2 equivalents: plain, PEFT-wrapped, and loaded as remote
code in a process where the package cannot be imported."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    Blip2Config,
    GPT2Config,
    GPT2ForSequenceClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from hf_gpt_scratch.convert import scratch_to_gpt2
from hf_gpt_scratch.tokenization import gpt2_tokenizer

EPSILONS = [0.1, 1e-9]
LORA_OURS = dict(r=4, lora_alpha=8, target_modules=["W_query", "W_value"])
LORA_GPT2 = dict(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)


def lm_pair(**overrides):
    """Our causal LM (issue sizes: vocab 100, emb 32, 4 heads, 2 layers; a wide init so that shifted
    and unshifted targets give clearly different losses) and stock GPT-2 with the same weights."""
    model = GPTScratchForCausalLM(tiny_config(**{"vocab_size": 100, "initializer_range": 0.2, **overrides})).eval()
    return model, scratch_to_gpt2(model).eval()


def trainer_loss(model, x, eps, tmp_path) -> float:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), label_smoothing_factor=eps, use_cpu=True, report_to=[])
    with torch.no_grad():
        return Trainer(model=model, args=args).compute_loss(model, {"input_ids": x, "labels": x}).item()


def torch_smoothed(model, x, eps, shift=True) -> float:
    """torch's own label smoothing, against next-token targets (or unshifted ones)."""
    with torch.no_grad():
        logits = model(x).logits
    if shift:
        logits, x = logits[:, :-1], x[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), x.flatten(), label_smoothing=eps).item()


@pytest.mark.parametrize("eps", EPSILONS)
def test_label_smoothing_shifts_labels_like_gpt2(eps, tmp_path):
    model, gpt2 = lm_pair()
    x = torch.randint(0, 100, (2, 9))
    assert abs(torch_smoothed(model, x, eps) - torch_smoothed(model, x, eps, shift=False)) > 1e-2  # the check can fail

    ours, stock = trainer_loss(model, x, eps, tmp_path), trainer_loss(gpt2, x, eps, tmp_path)
    assert ours == pytest.approx(stock, abs=1e-5)
    assert ours == pytest.approx(torch_smoothed(model, x, eps), abs=1e-5)


@pytest.mark.parametrize("eps", EPSILONS)
def test_label_smoothing_shifts_labels_like_gpt2_under_lora(eps, tmp_path):
    model, gpt2 = lm_pair()
    x = torch.randint(0, 100, (2, 9))
    expected = torch_smoothed(model, x, eps)  # LoRA starts as the identity (B = 0)
    ours = get_peft_model(model, LoraConfig(**LORA_OURS))
    stock = get_peft_model(gpt2, LoraConfig(**LORA_GPT2))
    assert trainer_loss(ours, x, eps, tmp_path) == pytest.approx(expected, abs=1e-5)
    assert trainer_loss(stock, x, eps, tmp_path) == pytest.approx(expected, abs=1e-5)


def test_label_smoothing_training_step_with_accumulation(tmp_path):
    """One SGD step over 2 micro-batches of 2 with label smoothing equals the step computed by hand with
    torch's smoothed cross-entropy on next-token targets: the Trainer shifts the labels and counts the
    target tokens over labels[..., 1:] (`Trainer._loss_shifts_labels`, from our `loss_type`)."""
    from datasets import Dataset

    model, _ = lm_pair()
    x = torch.randint(0, 100, (4, 9))
    x_labels = x.clone()
    x_labels[0, 5:] = -100  # unequal target counts per micro-batch: the normalisation must be global
    reference = GPTScratchForCausalLM(model.config)
    reference.load_state_dict(model.state_dict())
    reference.train()
    logits = reference(x).logits[:, :-1]
    F.cross_entropy(logits.flatten(0, 1), x_labels[:, 1:].flatten(), label_smoothing=0.1).backward()
    expected = {n: (p - 0.5 * p.grad).detach() for n, p in reference.named_parameters()}

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), label_smoothing_factor=0.1, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", dataloader_pin_memory=False,
    )
    dataset = Dataset.from_dict({"input_ids": x.tolist(), "labels": x_labels.tolist()})
    trainer = Trainer(model=model.train(), args=args, train_dataset=dataset)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
    trainer.train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], atol=2e-6, rtol=1e-5, msg=name)


class PipelineErrors(logging.Handler):
    """Collects what `Pipeline.check_model_type` logs (an error, not an exception)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("transformers.pipelines.base").addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger("transformers.pipelines.base").removeHandler(self)


def test_peft_name_lists_find_our_heads_like_gpt2():
    """PEFT's "all-linear" leaves out the output head (`get_output_embeddings`), and its SEQ_CLS task
    trains in full a head named in SEQ_CLS_HEAD_NAMES ("score", as GPT-2's): same treatment as GPT-2."""
    def targets(model):
        wrapped = get_peft_model(model, LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM"))
        return {".".join(name.split(".")[-2:]) for name in wrapped.peft_config["default"].target_modules}

    model, gpt2 = lm_pair()
    assert targets(model) == {"att.W_query", "att.W_key", "att.W_value", "att.out_proj", "layers.0", "layers.2"}
    assert targets(gpt2) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}  # neither has its head

    gpt2_cfg = GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100, pad_token_id=0)
    for classifier in (GPTScratchForSequenceClassification(tiny_config(pad_token_id=0)), GPT2ForSequenceClassification(gpt2_cfg)):
        wrapped = get_peft_model(classifier, LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"))
        trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
        assert {n for n in trainable if ".score." in n and "modules_to_save" in n}, sorted(trainable)
        assert not any("score" in t for t in wrapped.peft_config["default"].target_modules)


@pytest.mark.parametrize(
    "task, cls", [("text-generation", GPTScratchForCausalLM), ("text-classification", GPTScratchForSequenceClassification)]
)
def test_pipelines_accept_our_classes(task, cls):
    """`Pipeline.check_model_type` accepts the class names of its table and the classes registered with
    the matching Auto class (the package's `register` calls; the Auto loader's for remote code)."""
    model = cls(tiny_config(vocab_size=50257, pad_token_id=50256)).eval()
    with PipelineErrors() as errors:
        pipe = pipeline(task, model=model, tokenizer=gpt2_tokenizer())
    assert not [m for m in errors if "is not supported" in m], errors
    assert pipe("Every effort moves you", **({"max_new_tokens": 2} if task == "text-generation" else {}))


def test_model_card_task_is_inferred_like_gpt2(tmp_path):
    from transformers.modelcard import TrainingSummary

    def task_of(model):
        args = TrainingArguments(output_dir=str(tmp_path / "card"), use_cpu=True, report_to=[])
        return TrainingSummary.from_trainer(Trainer(model=model, args=args)).tasks

    model, gpt2 = lm_pair()
    assert task_of(model) == task_of(gpt2) == "text-generation"
    gpt2_classifier = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100))
    assert task_of(GPTScratchForSequenceClassification(tiny_config())) == task_of(gpt2_classifier)
    assert task_of(gpt2_classifier) == "text-classification"


def test_serve_sees_a_language_model():
    from transformers.cli.serving.model_manager import ModelManager

    model, gpt2 = lm_pair()
    assert ModelManager.get_model_modality(model) == ModelManager.get_model_modality(gpt2)


def test_blip2_treats_our_text_config_as_decoder_only():
    ours = Blip2Config(text_config=tiny_config().to_dict())
    stock = Blip2Config(text_config=GPT2Config(n_embd=32, n_layer=1, n_head=4).to_dict())
    assert ours.use_decoder_only_language_model == stock.use_decoder_only_language_model is True


def test_auto_classes_are_untouched_by_the_name_tables():
    """The Auto mappings only resolve model types that CONFIG_MAPPING_NAMES lists; our entries in the name
    tables must not make them look for a `transformers.models.gpt_scratch` module."""
    assert "gpt_scratch" not in CONFIG_MAPPING_NAMES
    assert modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["gpt_scratch"] == "GPTScratchForCausalLM"
    assert modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING[GPTScratchConfig] is GPTScratchForCausalLM
    assert len(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING) > 100
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100))
    assert type(gpt2).__name__ == "GPT2LMHeadModel"
    assert type(AutoModelForCausalLM.from_config(tiny_config())) is GPTScratchForCausalLM


FRESH_PROCESS = textwrap.dedent(
    """
    import json, logging, sys
    sys.modules["hf_gpt_scratch"] = None  # the package is NOT importable: only the shipped code is
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, pipeline

    folder, out, x, lora = sys.argv[1], sys.argv[2], torch.tensor(json.loads(sys.argv[3])), json.loads(sys.argv[4])
    load = lambda: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    report = {"module": type(load()).__module__, "loss": {}, "errors": []}
    for eps in json.loads(sys.argv[5]):
        for name, model in (("plain", load()), ("lora", get_peft_model(load(), LoraConfig(**lora)))):
            args = TrainingArguments(output_dir=out, label_smoothing_factor=eps, use_cpu=True, report_to=[])
            with torch.no_grad():
                loss = Trainer(model=model, args=args).compute_loss(model, {"input_ids": x, "labels": x})
            report["loss"][f"{name} {eps}"] = loss.item()

    class Errors(logging.Handler):
        def emit(self, record):
            report["errors"].append(record.getMessage())

    logging.getLogger("transformers.pipelines.base").addHandler(Errors())
    for task in ("text-generation", "text-classification"):
        pipe = pipeline(task, model=folder, trust_remote_code=True)
        report[task] = type(pipe.model).__module__
    print(json.dumps(report))
    """
)


def test_remote_code_gets_the_same_treatment(tmp_path):
    model, gpt2 = lm_pair(vocab_size=50257, pad_token_id=50256)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    x = torch.randint(0, 100, (2, 9))

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    argv = [str(folder), str(tmp_path / "out"), json.dumps(x.tolist()), json.dumps(LORA_OURS), json.dumps(EPSILONS)]
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])

    assert report["module"].startswith("transformers_modules.")
    assert report["text-generation"].startswith("transformers_modules.")
    assert report["text-classification"].startswith("transformers_modules.")
    assert not [m for m in report["errors"] if "is not supported" in m], report["errors"]
    for eps in EPSILONS:
        stock = trainer_loss(gpt2, x, eps, tmp_path)
        assert report["loss"][f"plain {eps}"] == pytest.approx(stock, abs=1e-5)
        assert report["loss"][f"lora {eps}"] == pytest.approx(stock, abs=1e-5)
        assert stock == pytest.approx(torch_smoothed(model, x, eps), abs=1e-5)
