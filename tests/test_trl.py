"""TRL trains the model as it trains stock GPT-2: SFT (full, LoRA, packed rows wider than the
context), DPO and a reward model, each a few steps on a handful of examples, with every loss equal
step by step to the run on the GPT-2 export of the same weights (same seed, same data order, no
dropout, float32)."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2ForSequenceClassification,
)
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from hf_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification

CONTEXT = 32  # the context_length of conftest's client_model_dirs
# Two float32 runs of the same math in a different order (fused vs separate q/k/v, Linear vs Conv1D)
# drift by float rounding that the optimizer carries from step to step: at most 6e-7 relative over 4
# steps here. A wrong position, mask or loss normalisation moves a loss by 1e-2 or more.
RTOL = 1e-5
# Logged rewards and margins are differences of such numbers, some near 0: compared to 1e-5 absolute.
ATOL = 1e-5

TEXTS = [
    "The cat sat on the mat and looked at the rain.",
    "Bread needs flour, water, salt and time.",
    "A small river starts high in the hills.",
    "Chess is played on a board of sixty-four squares.",
    "Children chased each other through the long grass.",
    "The lighthouse keeper climbed the stairs at dusk.",
    "Bees make honey from the nectar of flowers.",
    "Spring comes after winter and before summer.",
]
PREFERENCES = [
    {"prompt": "What do bees make?", "chosen": " Honey.", "rejected": " Bricks and mortar."},
    {"prompt": "Which season comes after winter?", "chosen": " Spring.", "rejected": " Tuesday."},
    {"prompt": "What is frozen water called?", "chosen": " Ice.", "rejected": " A kind of sand."},
    {"prompt": "How many legs does a spider have?", "chosen": " Eight.", "rejected": " Two, like a bird."},
    {"prompt": "Where does the sun rise?", "chosen": " In the east.", "rejected": " Under the sea."},
    {"prompt": "What do you write with?", "chosen": " A pencil.", "rejected": " A spoon."},
    {"prompt": "Which animal says moo?", "chosen": " A cow.", "rejected": " A fish."},
    {"prompt": "What colour is the sky?", "chosen": " Blue.", "rejected": " Seven."},
]


@pytest.fixture
def tok(client_model_dirs):
    return AutoTokenizer.from_pretrained(client_model_dirs["ours"])


def common_args(out, **overrides) -> dict:
    """4 steps of 4 examples, float32 (TRL's default is bf16 autocast, even on CPU), a seeded shuffle."""
    kwargs = dict(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, lr_scheduler_type="constant",
        logging_steps=1, bf16=False, use_cpu=True, report_to="none", save_strategy="no", seed=0, data_seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return kwargs


def load_lm(path):
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    # transformers 5.24's Trainer counts the tokens a causal-LM loss is divided by over the shifted
    # labels only when `loss_type` is "ForCausalLM", which it derives from the class name:
    # "GPT2LMHeadModel" matches nothing, so stock GPT-2's SFT loss is divided by the unshifted count
    # (each row's first token included, about 10% too low on these short rows). Ours is named
    # ...ForCausalLM and gets the right count; the reference is given the same.
    model.loss_type = "ForCausalLM"
    return model.eval()


def logged(trainer, key="loss") -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def assert_same_losses(ours, gpt2, steps=4):
    assert len(ours) == len(gpt2) == steps, (ours, gpt2)
    assert ours == pytest.approx(gpt2, rel=RTOL), (ours, gpt2)


def sft(path, tok, out, dataset, peft_config=None, **overrides):
    model = load_lm(path)
    args = SFTConfig(**common_args(out, **overrides))
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config)


def test_sft_full_matches_gpt2(client_model_dirs, tok, tmp_path):
    data = Dataset.from_dict({"text": TEXTS})
    runs = {n: sft(client_model_dirs[n], tok, tmp_path / n, data, max_length=CONTEXT) for n in ("ours", "gpt2")}
    for trainer in runs.values():
        trainer.train()
    ours, gpt2 = logged(runs["ours"]), logged(runs["gpt2"])
    assert_same_losses(ours, gpt2)
    assert ours[-1] < ours[0] - 0.5, ours  # it learns (each text seen twice)

    # The first logged loss is the plain model's mean loss over the predicted tokens of the first batch.
    trained = runs["ours"].model
    assert isinstance(trained, GPTScratchForCausalLM)
    first = next(iter(runs["ours"].get_train_dataloader()))
    with torch.no_grad():
        fresh = load_lm(client_model_dirs["ours"])(**first).loss.item()
    assert ours[0] == pytest.approx(fresh, rel=1e-6)


def test_sft_lora_matches_gpt2_and_reloads(client_model_dirs, tok, tmp_path):
    """LoRA on the same layers of both: attention output projection and both MLP layers (GPT-2 fuses
    q/k/v into one `c_attn`, so those cannot be matched). The adapters start equal (ours copied into
    the GPT-2 run: same shapes, as PEFT's LoRA on a Conv1D stores `lora_A` [r, in] like on a Linear)."""
    data = Dataset.from_dict({"text": TEXTS})
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM")
    targets = {"ours": ["out_proj", "ff.layers.0", "ff.layers.2"], "gpt2": ["attn.c_proj", "mlp.c_fc", "mlp.c_proj"]}
    runs = {
        n: sft(client_model_dirs[n], tok, tmp_path / n, data, max_length=CONTEXT, learning_rate=3e-2,
               peft_config=LoraConfig(target_modules=targets[n], fan_in_fan_out=n == "gpt2", **lora))
        for n in ("ours", "gpt2")
    }
    adapters = {n: [(k, p) for k, p in t.model.named_parameters() if "lora_" in k] for n, t in runs.items()}
    assert len(adapters["ours"]) == len(adapters["gpt2"]) == 2 * 3 * 2  # A and B, 3 layers, 2 blocks
    with torch.no_grad():
        for (_, p_ours), (_, p_gpt2) in zip(adapters["ours"], adapters["gpt2"]):
            assert p_gpt2.shape == p_ours.shape
            p_gpt2.copy_(p_ours)
    frozen = {k: p.detach().clone() for k, p in runs["ours"].model.named_parameters() if "lora_" not in k}
    for trainer in runs.values():
        trainer.train()
    ours = logged(runs["ours"])
    assert_same_losses(ours, logged(runs["gpt2"]))
    assert ours[-1] < ours[0] - 0.1, ours

    model = runs["ours"].model
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters() if "lora_" not in k)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_lm(client_model_dirs["ours"]), tmp_path / "adapter").eval()
    ids = tok(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.eval()(**ids).logits
        got = reloaded(**ids).logits
    assert not torch.allclose(expected, load_lm(client_model_dirs["ours"])(**ids).logits, atol=1e-3)  # it trained
    torch.testing.assert_close(got, expected)


def test_sft_packing_rows_wider_than_the_context_match_gpt2(client_model_dirs, tok, tmp_path):
    """`packing=True` (best-fit decreasing, padding-free): each batch is ONE row holding several
    examples back to back, wider than the model's context, with `position_ids` restarting at 0 for
    each example and no attention mask; attention must stay within each example."""
    assert all(len(tok(t + tok.eos_token).input_ids) <= CONTEXT for t in TEXTS)  # each example fits the context
    data = Dataset.from_dict({"text": TEXTS})
    runs = {
        n: sft(client_model_dirs[n], tok, tmp_path / n, data, packing=True, max_length=2 * CONTEXT,
               per_device_train_batch_size=2)
        for n in ("ours", "gpt2")
    }
    batch = next(iter(runs["ours"].get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] > CONTEXT, batch["input_ids"].shape
    assert "attention_mask" not in batch
    starts = (batch["position_ids"][0] == 0).sum().item()
    assert starts >= 4, batch["position_ids"]  # several examples in the row

    # The reference really separates the examples: its loss on the packed row is the loss of the
    # examples run one by one (predicted tokens only, as the collator masks each example's first).
    # transformers finds the examples from `position_ids` only without a cache, hence use_cache=False
    # (which SFTTrainer passes too).
    gpt2 = load_lm(client_model_dirs["gpt2"])
    with torch.no_grad():
        packed = gpt2(**batch, use_cache=False).loss.item()
        bounds = batch["position_ids"][0].eq(0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        total, count = 0.0, 0
        for a, b in zip(bounds, bounds[1:]):
            out = gpt2(input_ids=batch["input_ids"][:, a:b], labels=batch["labels"][:, a:b])
            n = int((batch["labels"][:, a + 1:b] != -100).sum())
            total, count = total + out.loss.item() * n, count + n
    assert packed == pytest.approx(total / count, rel=1e-5)

    for trainer in runs.values():
        trainer.train()
    ours = logged(runs["ours"])
    assert_same_losses(ours, logged(runs["gpt2"]))
    assert ours[-1] < ours[0] - 0.5, ours


def test_dpo_matches_gpt2(client_model_dirs, tok, tmp_path):
    data = Dataset.from_list(PREFERENCES)
    runs = {}
    for n in ("ours", "gpt2"):
        args = DPOConfig(**common_args(tmp_path / n, beta=0.1, max_length=CONTEXT))
        runs[n] = DPOTrainer(
            model=load_lm(client_model_dirs[n]), ref_model=load_lm(client_model_dirs[n]), args=args,
            train_dataset=data, processing_class=tok,
        )
    for trainer in runs.values():
        trainer.train()
    # Rewards are beta x (policy - reference) log-probabilities of whole answers (about -60).
    for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
        assert logged(runs["ours"], key) == pytest.approx(logged(runs["gpt2"], key), rel=RTOL, abs=ATOL), key
    margins, losses = logged(runs["ours"], "rewards/margins"), logged(runs["ours"])
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert losses[0] == pytest.approx(0.6931472, abs=1e-6)  # -log sigmoid(0)
    assert margins[-1] > 0.5 and losses[-1] < losses[0] - 0.1, (margins, losses)


def test_reward_model_on_our_classification_head_matches_gpt2(client_model_dirs, tok, tmp_path):
    """RewardTrainer on GPTScratchForSequenceClassification and on GPT2ForSequenceClassification with
    the same body and score weights. Our head has a bias, GPT-2's none: it starts at zero, and a
    pairwise loss depends only on the difference of two rewards, in which it cancels."""
    data = Dataset.from_list([{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
                              for p in PREFERENCES])
    # TRL appends eos to each text and pads with the pad token; GPT-2's head takes the last token that
    # is not the pad id, ours the last attended one. With pad = eos (GPT-2's usual), GPT-2 would score
    # the token before the eos and ours the eos itself. A pad token of its own makes both score the eos.
    tok.pad_token = "<|pad|>"
    models = {
        "ours": AutoModelForSequenceClassification.from_pretrained(
            client_model_dirs["ours"], num_labels=1, trust_remote_code=True, dtype=torch.float32),
        "gpt2": GPT2ForSequenceClassification.from_pretrained(client_model_dirs["gpt2"], num_labels=1, dtype=torch.float32),
    }
    assert isinstance(models["ours"], GPTScratchForSequenceClassification)
    with torch.no_grad():
        models["gpt2"].score.weight.copy_(models["ours"].score.weight)
        models["ours"].score.bias.zero_()
    runs = {}
    for n, model in models.items():
        args = RewardConfig(**common_args(tmp_path / n, max_length=CONTEXT))
        runs[n] = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    for trainer in runs.values():
        trainer.train()
    for key in ("loss", "margin", "accuracy"):
        assert logged(runs["ours"], key) == pytest.approx(logged(runs["gpt2"], key), rel=RTOL, abs=ATOL), key
    losses, margins = logged(runs["ours"]), logged(runs["ours"], "margin")
    assert losses[-1] < losses[0] - 0.05 and margins[-1] > margins[0] + 0.1, (losses, margins)
