"""Weight conversion: transformers GPT-2 <-> GPTScratchForCausalLM, the book's GPTModel -> ours, and the CLI.

Every source model has all parameters perturbed (no LayerNorm is the identity, no bias is zero), so
a forgotten transpose, a swapped query/key or a dropped bias shows up in the logits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from hf_gpt_scratch.convert import (
    BOOK_MODEL_CONFIGS,
    book_config_from_preset,
    book_to_scratch,
    gpt2_to_scratch,
    load_book_checkpoint,
    scratch_to_gpt2,
)
from hf_gpt_scratch.training.convert_cli import main
from conftest import INSTALLED, recipe_env

V, C, E, H, L = 97, 16, 32, 4, 2
ATOL = 1e-5
BOOK_CFG = {"vocab_size": V, "context_length": C, "emb_dim": E, "n_heads": H, "n_layers": L, "drop_rate": 0.0}


def perturbed(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def tiny_gpt2(**overrides):
    kwargs = dict(
        vocab_size=V, n_positions=C, n_embd=E, n_head=H, n_layer=L, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-6,
    )
    kwargs.update(overrides)
    return perturbed(GPT2LMHeadModel(GPT2Config(**kwargs)))


def tiny_scratch(**overrides):
    kwargs = dict(vocab_size=V, context_length=C, emb_dim=E, n_heads=H, n_layers=L, drop_rate=0.0)
    kwargs.update(overrides)
    return perturbed(GPTScratchForCausalLM(GPTScratchConfig(**kwargs)))


def book_model(qkv_bias):
    from llms_from_scratch.ch04 import GPTModel

    return perturbed(GPTModel({**BOOK_CFG, "qkv_bias": qkv_bias}))


def ids(batch=2, length=10, seed=2):
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded():
    x = ids(2, 9)
    mask = torch.ones_like(x)
    x[0, :4], mask[0, :4] = 0, 0  # row 0: 4 pads, then 5 real tokens
    return x, mask


def logits(model, x, **kw):
    with torch.no_grad():
        return model(input_ids=x, **kw).logits


# ---------------------------------------------------------------- GPT-2 -> scratch


def test_gpt2_to_scratch_logits_and_config():
    gpt2 = tiny_gpt2()
    ours = gpt2_to_scratch(gpt2)
    assert type(ours) is GPTScratchForCausalLM and not ours.training
    cfg = ours.config
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (V, C, E, H, L)
    assert cfg.qkv_bias is True and cfg.tie_word_embeddings is True and cfg.layer_norm_eps == 1e-6
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)
    assert ours.out_head.weight is ours.model.tok_emb.weight
    assert cfg._attn_implementation == "sdpa"
    # a copy, not a view: training the converted model leaves GPT-2 alone
    assert ours.model.tok_emb.weight.data_ptr() != gpt2.transformer.wte.weight.data_ptr()
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)


def test_gpt2_to_scratch_eager_path_matches():
    gpt2 = tiny_gpt2()
    ours = gpt2_to_scratch(gpt2)
    ours.set_attn_implementation("eager")
    assert ours.config._attn_implementation == "eager"
    x, mask = left_padded()
    torch.testing.assert_close(logits(ours, x[1:]), logits(gpt2, x[1:]), atol=ATOL, rtol=ATOL)
    real = mask.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(
        logits(ours, x, attention_mask=mask)[real],
        logits(gpt2, x, attention_mask=mask, position_ids=positions)[real],
        atol=ATOL, rtol=ATOL,
    )


def test_gpt2_to_scratch_left_padding_and_greedy_generate():
    gpt2 = tiny_gpt2()
    ours = gpt2_to_scratch(gpt2)
    x, mask = left_padded()
    real = mask.bool()
    # GPT-2's forward numbers positions 0..T-1 whatever the mask; ours (like generate) counts real tokens
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours_logits = logits(ours, x, attention_mask=mask)
    torch.testing.assert_close(
        ours_logits[real], logits(gpt2, x, attention_mask=mask, position_ids=positions)[real], atol=ATOL, rtol=ATOL
    )
    # the padded row gives the same logits as the same tokens without padding
    torch.testing.assert_close(ours_logits[0, 4:], logits(ours, x[:1, 4:])[0], atol=ATOL, rtol=ATOL)

    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=7, pad_token_id=0)
    with torch.no_grad():
        ref = gpt2.generate(x, **kw)
        out = ours.generate(x, **kw)
    assert ref.shape == (2, 16)
    assert torch.equal(out, ref), (out, ref)


def test_scratch_to_gpt2_round_trip():
    gpt2 = tiny_gpt2()
    back = scratch_to_gpt2(gpt2_to_scratch(gpt2))
    assert type(back) is GPT2LMHeadModel and back.config.tie_word_embeddings is True
    assert back.lm_head.weight is back.transformer.wte.weight
    a, b = gpt2.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for field in ("n_positions", "n_embd", "n_head", "n_layer", "layer_norm_epsilon", "bos_token_id", "eos_token_id",
                  "pad_token_id", "resid_pdrop", "activation_function"):
        assert getattr(back.config, field) == getattr(gpt2.config, field), field
    x = ids()
    torch.testing.assert_close(logits(back, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)


def test_untied_gpt2_keeps_its_head_both_ways():
    gpt2 = tiny_gpt2(tie_word_embeddings=False)
    assert not torch.equal(gpt2.lm_head.weight, gpt2.transformer.wte.weight)
    ours = gpt2_to_scratch(gpt2)
    assert ours.config.tie_word_embeddings is False and ours.out_head.weight is not ours.model.tok_emb.weight
    torch.testing.assert_close(ours.out_head.weight, gpt2.lm_head.weight, atol=0, rtol=0)
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)


def test_export_untied_model_without_qkv_bias(tmp_path):
    ours = tiny_scratch(qkv_bias=False, tie_word_embeddings=False)  # the book's layout
    gpt2 = scratch_to_gpt2(ours)
    assert gpt2.config.tie_word_embeddings is False
    assert gpt2.lm_head.weight is not gpt2.transformer.wte.weight
    assert torch.all(gpt2.transformer.h[0].attn.c_attn.bias == 0)
    x = ids()
    torch.testing.assert_close(logits(gpt2, x), logits(ours, x), atol=ATOL, rtol=ATOL)
    # transformers 5 saves and reloads the separate head
    gpt2.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight is not reloaded.transformer.wte.weight
    torch.testing.assert_close(reloaded.lm_head.weight, ours.out_head.weight, atol=0, rtol=0)
    torch.testing.assert_close(logits(reloaded, x), logits(ours, x), atol=ATOL, rtol=ATOL)
    # and back: qkv biases become (zero) parameters, the logits stay
    again = gpt2_to_scratch(reloaded)
    assert again.config.qkv_bias is True and again.config.tie_word_embeddings is False
    torch.testing.assert_close(logits(again, x), logits(ours, x), atol=ATOL, rtol=ATOL)


def test_out_of_vocabulary_special_ids_are_dropped_with_a_warning():
    gpt2 = tiny_gpt2(bos_token_id=50256, eos_token_id=50256, pad_token_id=None)  # GPT-2's defaults, vocab 97
    with pytest.warns(UserWarning) as record:
        ours = gpt2_to_scratch(gpt2)
    messages = " ".join(str(w.message) for w in record)
    assert "bos_token_id=50256" in messages and "eos_token_id=50256" in messages
    assert ours.config.eos_token_id is None and ours.config.bos_token_id is None
    assert ours.generation_config.eos_token_id is None
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(activation_function="gelu"), "activation_function"),
        (dict(activation_function="relu"), "activation_function"),
        (dict(n_inner=64), "n_inner"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(scale_attn_weights=False), "scale_attn_weights"),
        (dict(add_cross_attention=True), "add_cross_attention"),
    ],
)
def test_gpt2_settings_we_cannot_represent_are_refused(overrides, name):
    with pytest.raises(ValueError, match=name):
        gpt2_to_scratch(tiny_gpt2(**overrides))


@pytest.mark.parametrize("overrides", [dict(activation_function="gelu_pytorch_tanh"), dict(n_inner=4 * E),
                                       dict(reorder_and_upcast_attn=True)])
def test_gpt2_settings_we_can_represent_are_accepted(overrides):
    gpt2 = tiny_gpt2(**overrides)
    x = ids()
    torch.testing.assert_close(logits(gpt2_to_scratch(gpt2), x), logits(gpt2, x), atol=ATOL, rtol=ATOL)


def test_wrong_model_type_is_refused():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        gpt2_to_scratch(tiny_scratch())
    with pytest.raises(TypeError, match="GPTScratchForCausalLM"):
        scratch_to_gpt2(tiny_gpt2())


# ---------------------------------------------------------------- the book's GPTModel -> scratch


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_to_scratch_logits_and_generate(qkv_bias):
    from llms_from_scratch.ch04 import generate_text_simple

    book = book_model(qkv_bias)
    sd = book.state_dict()
    assert any(k.endswith("att.mask") for k in sd)  # the buffers the conversion must skip
    ours = book_to_scratch(sd, {**BOOK_CFG, "qkv_bias": qkv_bias})
    cfg = ours.config
    assert cfg.qkv_bias is qkv_bias and cfg.tie_word_embeddings is False and cfg.drop_rate == 0.0
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (V, C, E, H, L)
    x = ids()
    with torch.no_grad():
        ref = book(x)
    torch.testing.assert_close(logits(ours, x), ref, atol=ATOL, rtol=ATOL)

    prompt = ids(1, 5, seed=3)
    expected = generate_text_simple(book, prompt, max_new_tokens=8, context_size=C)
    with torch.no_grad():
        out = ours.generate(prompt, do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(out, expected), (out, expected)


def test_book_gpt2_vocab_gets_endoftext_ids():
    cfg = {**BOOK_CFG, "vocab_size": 50257, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "qkv_bias": False}
    from llms_from_scratch.ch04 import GPTModel

    ours = book_to_scratch(GPTModel(cfg).state_dict(), cfg)
    assert ours.config.eos_token_id == 50256 and ours.config.bos_token_id == 50256


@pytest.mark.parametrize("wrap", ["plain", "chapter5", "compiled"])
def test_load_book_checkpoint(tmp_path, wrap):
    book = book_model(qkv_bias=False)
    sd = book.state_dict()
    if wrap == "chapter5":  # the book saves model and optimizer together
        opt = torch.optim.AdamW(book.parameters(), lr=1e-3)
        book(ids()).sum().backward()
        opt.step()
        book.eval()
        sd = book.state_dict()
        obj = {"model_state_dict": sd, "optimizer_state_dict": opt.state_dict()}
    elif wrap == "compiled":  # torch.compile'd model: every key starts with _orig_mod.
        obj = {f"_orig_mod.{k}": v for k, v in sd.items()}
    else:
        obj = sd
    path = tmp_path / "model.pth"
    torch.save(obj, path)
    ours = load_book_checkpoint(path, {**BOOK_CFG, "qkv_bias": False})
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(logits(ours, x), book(x), atol=ATOL, rtol=ATOL)


def test_corrupt_or_unsafe_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(book_model(qkv_bias=False).state_dict(), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_book_checkpoint(truncated, {**BOOK_CFG, "qkv_bias": False})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_book_checkpoint(garbage, {**BOOK_CFG, "qkv_bias": False})
    pickled = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # torch.save(model): refused by weights_only=True
    with pytest.raises(ValueError, match="state_dict"):
        load_book_checkpoint(pickled, {**BOOK_CFG, "qkv_bias": False})
    with pytest.raises(FileNotFoundError):
        load_book_checkpoint(tmp_path / "nope.pth", {**BOOK_CFG, "qkv_bias": False})


def _mismatch_error(sd, **cfg):
    with pytest.raises(ValueError) as err:
        book_to_scratch(sd, {**BOOK_CFG, "qkv_bias": False, **cfg})
    return str(err.value)


def test_book_state_dict_mismatches_name_the_keys():
    base = book_model(qkv_bias=False).state_dict()

    sd = dict(base)
    del sd["trf_blocks.1.ff.layers.2.bias"]
    msg = _mismatch_error(sd)
    assert "missing" in msg and "trf_blocks.1.ff.layers.2.bias" in msg

    sd = {**base, "trf_blocks.0.att.extra": torch.zeros(3)}
    msg = _mismatch_error(sd)
    assert "unexpected" in msg and "trf_blocks.0.att.extra" in msg

    sd = {**base, "final_norm.scale": torch.ones(E + 1)}
    msg = _mismatch_error(sd)
    assert "final_norm.scale" in msg and str((E + 1,)) in msg and str((E,)) in msg

    # a checkpoint with qkv biases read with qkv_bias=False: named and hinted
    msg = _mismatch_error(book_model(qkv_bias=True).state_dict())
    assert "trf_blocks.0.att.W_query.bias" in msg and "qkv_bias to true" in msg
    msg = _mismatch_error(base, qkv_bias=True)
    assert "missing" in msg and "trf_blocks.0.att.W_key.bias" in msg and "qkv_bias to false" in msg

    # one layer too few in the config
    msg = _mismatch_error(base, n_layers=1)
    assert "trf_blocks.1.norm1.scale" in msg

    with pytest.raises(ValueError, match="qkv_bias"):
        book_to_scratch(base, BOOK_CFG)  # the config lacks a key


def test_book_presets():
    assert BOOK_MODEL_CONFIGS["gpt2-medium (355M)"]["n_layers"] == 24
    assert book_config_from_preset("gpt2-small (124M)")["context_length"] == 1024
    # the book trains with 256 tokens and no qkv bias; OpenAI's weights have 1024 and qkv biases
    sd = {"pos_emb.weight": torch.empty(256, 768)}
    cfg = book_config_from_preset("gpt2-small (124M)", sd)
    assert cfg["context_length"] == 256 and cfg["qkv_bias"] is False and cfg["emb_dim"] == 768
    sd = {"pos_emb.weight": torch.empty(1024, 768), "trf_blocks.0.att.W_query.bias": torch.empty(768)}
    cfg = book_config_from_preset("gpt2-small (124M)", sd)
    assert cfg["context_length"] == 1024 and cfg["qkv_bias"] is True
    with pytest.raises(ValueError, match="gpt2-small"):
        book_config_from_preset("gpt2-tiny")


# ---------------------------------------------------------------- command line


def _tokenizer():
    from transformers import GPT2TokenizerFast

    vocab = {chr(ord("a") + i): i for i in range(26)}
    vocab["ab"] = 26
    return GPT2TokenizerFast(vocab=vocab, merges=[("a", "b")])


def test_cli_gpt2_to_scratch_and_back(tmp_path, capsys):
    gpt2 = tiny_gpt2()
    src, out, back = tmp_path / "gpt2", tmp_path / "scratch", tmp_path / "gpt2-again"
    gpt2.save_pretrained(src)
    _tokenizer().save_pretrained(src)

    assert main(["--model_name_or_path", str(src), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPTScratchForCausalLM" in printed and "Saved the tokenizer" in printed
    assert (out / "model.safetensors").exists() and (out / "modeling_gpt_scratch.py").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt_scratch"
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is GPTScratchForCausalLM
    x = ids()
    torch.testing.assert_close(logits(loaded, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("ab").input_ids == [26]

    assert main(["--model_name_or_path", str(out), "--to", "gpt2", "--output_dir", str(back)]) == 0
    exported = GPT2LMHeadModel.from_pretrained(back).eval()
    assert json.loads((back / "config.json").read_text())["model_type"] == "gpt2"
    torch.testing.assert_close(logits(exported, x), logits(gpt2, x), atol=ATOL, rtol=ATOL)
    assert (back / "tokenizer.json").exists()


def test_cli_book_checkpoint(tmp_path, capsys):
    book = book_model(qkv_bias=True)
    ckpt, cfg_file, out, out2 = tmp_path / "model.pth", tmp_path / "cfg.json", tmp_path / "out", tmp_path / "gpt2"
    torch.save({"model_state_dict": book.state_dict()}, ckpt)
    cfg_file.write_text(json.dumps({**BOOK_CFG, "qkv_bias": True}))
    argv = ["--book_checkpoint", str(ckpt), "--book_config", str(cfg_file)]
    assert main([*argv, "--output_dir", str(out)]) == 0
    assert "No tokenizer saved" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, x), book(x), atol=ATOL, rtol=ATOL)
    # straight to stock GPT-2, keeping the book's untied head
    assert main([*argv, "--to", "gpt2", "--output_dir", str(out2)]) == 0
    exported = GPT2LMHeadModel.from_pretrained(out2).eval()
    assert exported.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(logits(exported, x), book(x), atol=ATOL, rtol=ATOL)


def test_cli_errors_speak_to_the_user(tmp_path, capsys):
    gpt2_dir, out = tmp_path / "gpt2", tmp_path / "out"
    tiny_gpt2().save_pretrained(gpt2_dir)
    # exporting something that already is GPT-2
    assert main(["--model_name_or_path", str(gpt2_dir), "--to", "gpt2", "--output_dir", str(out)]) == 1
    assert "already GPT-2" in capsys.readouterr().err
    # refusing to overwrite a model
    assert main(["--model_name_or_path", str(gpt2_dir), "--output_dir", str(gpt2_dir)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    # a corrupt book checkpoint
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 10)
    assert main(["--book_checkpoint", str(bad), "--book_config", "gpt2-small (124M)", "--output_dir", str(out)]) == 1
    assert "bad.pth" in capsys.readouterr().err
    assert not out.exists()
    # argument errors
    with pytest.raises(SystemExit):
        main(["--book_checkpoint", str(bad), "--output_dir", str(out)])
    assert "--book_config" in capsys.readouterr().err


def test_cli_push_to_hub_pushes_model_code_and_card(tmp_path, monkeypatch, capsys):
    """--push_to_hub goes through hf_gpt_scratch.training.hub: exactly the model, its code and the card
    (the Hub client is replaced by tests/hub_recorder.py, which writes a hub-cache layout)."""
    import hub_recorder

    cache = tmp_path / "cache"
    hub_recorder.install(cache, setattr=monkeypatch.setattr)
    src = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(src)
    argv = ["--model_name_or_path", str(src), "--output_dir", str(tmp_path / "o"), "--push_to_hub",
            "--hub_model_id", "me/tiny-scratch"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # transformers 5 builds an empty GPT2Tokenizer for a folder without tokenizer files: not saved
    assert "No tokenizer saved" in out and "Pushed to https://huggingface.co/me/tiny-scratch" in out
    assert not (tmp_path / "o" / "tokenizer_config.json").exists()
    repo = cache / "models--me--tiny-scratch"
    snap = repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert sorted(p.name for p in snap.iterdir()) == [
        "README.md", "config.json", "configuration_gpt_scratch.py", "generation_config.json", "loss_gpt_scratch.py",
        "model.safetensors", "modeling_gpt_scratch.py",
    ]
    card = (snap / "README.md").read_text()
    assert "library_name: transformers" in card and "converted to `GPTScratchForCausalLM`" in card


def test_module_import_is_cheap_and_runs_as_script():
    code = (
        "import sys, runpy\n"
        "import hf_gpt_scratch.training.convert_cli\n"
        "assert 'llms_from_scratch' not in sys.modules\n"
        "assert 'transformers.models.gpt2.modeling_gpt2' not in sys.modules, 'GPT-2 imported eagerly'\n"
        "sys.argv = ['convert', '--help']\n"
        "runpy.run_module('hf_gpt_scratch.training.convert_cli', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=recipe_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--book_checkpoint" in proc.stdout and "--to" in proc.stdout


def test_console_script_runs():
    """`hf-gpt-scratch-convert` (pyproject's [project.scripts]) as pip installed it: in the venv for the
    editable install, in the target folder's bin/ under `make test-installed`."""
    bin_dir = Path(INSTALLED) / "bin" if INSTALLED else Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "hf-gpt-scratch-convert"), "--help"], capture_output=True, text=True,
                          env=recipe_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--book_checkpoint" in proc.stdout
