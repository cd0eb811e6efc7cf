"""The GPT-2 export in llama.cpp: config keys, then llama.cpp's own converter and runtime.

The end-to-end test needs two things nobody here wrote, and skips without them (as the DeepSpeed
tests do without deepspeed):

* llama.cpp's `convert_hf_to_gguf.py`, named by `LLAMA_CPP_CONVERTER` (a llama.cpp checkout, or the
  `vendor/llama.cpp/` of the llama-cpp-python source package; it uses the `gguf-py` next to it and
  this venv's torch, numpy and transformers);
* `llama_cpp` (`pip install llama-cpp-python`, compiled from source unless a wheel fits).

    LLAMA_CPP_CONVERTER=/path/to/llama.cpp/convert_hf_to_gguf.py pytest tests/test_gguf.py
"""

import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from hf_gpt_scratch.convert import scratch_to_gpt2
from hf_gpt_scratch.training.convert_cli import main
from hf_gpt_scratch.tokenization import GPT2_EOS_ID, gpt2_tokenizer

# The keys of OpenAI's config.json for openai-community/gpt2 (and gpt2-medium/-large/-xl), minus
# `task_specific_params` (a pipeline default of that release: sample, max_length 50, not a fact of a model).
OPENAI_GPT2_CONFIG_KEYS = {
    "activation_function", "architectures", "attn_pdrop", "bos_token_id", "embd_pdrop", "eos_token_id",
    "initializer_range", "layer_norm_epsilon", "model_type", "n_ctx", "n_embd", "n_head", "n_layer",
    "n_positions", "resid_pdrop", "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
    "summary_type", "summary_use_proj", "vocab_size",
}  # fmt: skip

CONTEXT = 256
NEW_TOKENS = 20
# Even in an f32 GGUF, ggml's CPU GELU looks its result up in an f16 table (GGML_GELU_FP16): on the
# test models (|logits| up to ~3) llama.cpp's logits differ from ours by up to 1.7e-3.
LOGIT_ATOL = 5e-3
PROMPTS = [
    "Every effort moves you",
    "I HAD always thought Jack Gisburn rather a cheap genius--",
    "Below is an instruction that describes a task.\n\n### Instruction:\nName 3 colors.\n\n### Response:\n",
    "  two  spaces, tabs\tand numbers 1234567 + 3.14!",
    "Unicode: café naïve — 東京 😀",
]


def tiny_bpe_model(tied: bool, qkv_bias: bool) -> GPTScratchForCausalLM:
    """A 2-layer model over the real GPT-2 BPE, every weight, norm and bias perturbed. Its logits are
    nearly flat, so greedy paths meet near-ties; with seed 7 our top-2 gap on this test's paths stays
    above 1.9e-3 (seed 3 has one of 3.8e-5, where llama.cpp picks the other token)."""
    config = GPTScratchConfig(
        vocab_size=50257, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
        qkv_bias=qkv_bias, tie_word_embeddings=tied, bos_token_id=GPT2_EOS_ID, eos_token_id=GPT2_EOS_ID,
    )  # fmt: skip
    model = GPTScratchForCausalLM(config)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def test_gpt2_export_config_has_openai_keys_and_n_ctx(tmp_path):
    small = GPTScratchForCausalLM(GPTScratchConfig(vocab_size=97, context_length=48, emb_dim=32, n_heads=4, n_layers=2))
    small.save_pretrained(tmp_path / "scratch")
    assert main(["--model_name_or_path", str(tmp_path / "scratch"), "--to", "gpt2", "--output_dir", str(tmp_path / "gpt2")]) == 0
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 48
    assert OPENAI_GPT2_CONFIG_KEYS - set(config) == set()
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert scratch_to_gpt2(small).config.n_ctx == 48  # in Python too


def _converter() -> Path:
    value = os.environ.get("LLAMA_CPP_CONVERTER")
    if not value:
        pytest.skip("set LLAMA_CPP_CONVERTER to llama.cpp's convert_hf_to_gguf.py to run this test")
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"LLAMA_CPP_CONVERTER={value} is not a file")
    return path


def _assert_same_greedy(theirs: list[int], ours: list[int], step_logits: torch.Tensor) -> None:
    """Equal tokens, unless they part where our two best logits are closer than llama.cpp's rounding
    (from there on both continuations are right). step_logits: [len(ours), vocab], ours at each step."""
    assert len(theirs) == len(ours)
    for t, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            best, second = step_logits[t].topk(2).values.tolist()
            assert best - second < 2 * LOGIT_ATOL, f"new token {t}: llama.cpp {a}, ours {b}, our top-2 gap {best - second:.2e}"
            return


@pytest.mark.slow
@pytest.mark.parametrize("tied, qkv_bias", [(False, False), (True, True)], ids=["book-untied", "gpt2-tied"])
def test_llama_cpp_runs_the_export_like_ours(tmp_path, tied, qkv_bias):
    converter = _converter()
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    model, tokenizer = tiny_bpe_model(tied, qkv_bias), gpt2_tokenizer()
    export, gguf = tmp_path / "gpt2", tmp_path / "model.gguf"
    scratch_to_gpt2(model).save_pretrained(export)
    tokenizer.save_pretrained(export)
    run = subprocess.run(
        [sys.executable, str(converter), str(export), "--outfile", str(gguf), "--outtype", "f32"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=CONTEXT, logits_all=True, verbose=False)
    assert llm.metadata["gpt2.context_length"] == str(CONTEXT)
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert llm.tokenize(prompt.encode()) == ids, prompt  # default add_bos: the GPT-2 vocab adds none
        with torch.no_grad():
            ours = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids) :].tolist()
            logits = model(torch.tensor([ids + ours])).logits[0]  # [len(ids) + NEW_TOKENS, vocab]
        theirs = list(islice(llm.generate(ids, temp=0.0, repeat_penalty=1.0), NEW_TOKENS))
        llm.reset()
        llm.eval(ids + ours)
        torch.testing.assert_close(torch.from_numpy(llm.scores[: len(logits)].copy()), logits, atol=LOGIT_ATOL, rtol=0)
        _assert_same_greedy(theirs, ours, logits[len(ids) - 1 : -1])
    llm.close()
