"""The stock Trainer drives both heads, and gradient accumulation is exact: one step over a batch of
4 equals one step over 2 micro-batches of 2, and both equal plain full-batch SGD by hand."""

import copy

import pytest
import torch
from conftest import tiny_config
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification


def one_sgd_step(model, dataset, tmp_path, batch_size, accumulation):
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}a{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        dataloader_pin_memory=False,
    )
    # a sequential order so both runs see the same 4 examples in the same micro-batches
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def by_hand(model, batch, lr=0.5):
    model.zero_grad()
    model(**batch).loss.backward()
    with torch.no_grad():
        return {n: p - lr * p.grad for n, p in model.named_parameters()}


def assert_same(a, b):
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-5, msg=name)


def test_causal_lm_accumulation_is_exact(tmp_path):
    base = GPTScratchForCausalLM(tiny_config())
    ids = torch.randint(0, 97, (4, 12))
    labels = ids.clone()
    labels[0, :9] = -100  # micro-batches with very different numbers of target tokens
    labels[1, :2] = -100
    labels[3, :5] = -100
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    full = one_sgd_step(copy.deepcopy(base), dataset, tmp_path, batch_size=4, accumulation=1)
    accumulated = one_sgd_step(copy.deepcopy(base), dataset, tmp_path, batch_size=2, accumulation=2)
    expected = by_hand(copy.deepcopy(base).train(), {"input_ids": ids, "labels": labels})
    assert_same(full, expected)
    assert_same(accumulated, expected)


@pytest.mark.parametrize("num_labels, labels", [(2, [0, 1, 1, 0]), (1, [0.5, -1.0, 2.0, 0.0])])
def test_sequence_classification_accumulation_is_exact(tmp_path, num_labels, labels):
    base = GPTScratchForSequenceClassification(tiny_config(pad_token_id=0, num_labels=num_labels))
    ids = torch.randint(1, 97, (4, 10))
    mask = torch.ones_like(ids)
    ids[0, 6:], mask[0, 6:] = 0, 0  # padded rows
    ids[3, 3:], mask[3, 3:] = 0, 0
    label_tensor = torch.tensor(labels)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels})

    full = one_sgd_step(copy.deepcopy(base), dataset, tmp_path, batch_size=4, accumulation=1)
    accumulated = one_sgd_step(copy.deepcopy(base), dataset, tmp_path, batch_size=2, accumulation=2)
    expected = by_hand(copy.deepcopy(base).train(), {"input_ids": ids, "attention_mask": mask, "labels": label_tensor})
    assert_same(full, expected)
    assert_same(accumulated, expected)
