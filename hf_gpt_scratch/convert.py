"""Convert weights between this model, stock transformers GPT-2 and the book's own `GPTModel`.

* `gpt2_to_scratch(GPT2LMHeadModel)`: OpenAI's GPT-2 as loaded by transformers (e.g.
  `openai-community/gpt2`) becomes a `GPTScratchForCausalLM` with the same logits. GPT-2 stores its
  linear layers as `Conv1D` (weight `[in, out]`) and fuses query, key and value into `c_attn`; both
  are undone here.
* `scratch_to_gpt2(GPTScratchForCausalLM)`: the inverse, to run our checkpoints anywhere GPT-2 runs
  (vLLM, llama.cpp converters, ONNX exporters, ...). A model without query/key/value biases gets
  zero biases; an untied output head is kept (`tie_word_embeddings=False`).
* `book_to_scratch(state_dict, book_config)` and `load_book_checkpoint(path, book_config)`: a
  `state_dict` of the book's `llms_from_scratch.ch04.GPTModel` (chapters 4 to 7), e.g. the
  `model.pth` of chapter 5, becomes a `GPTScratchForCausalLM`. Parameter names are the book's, so
  only the LayerNorm `scale`/`shift` are renamed to `weight`/`bias`.

Every conversion is exact: the same float32 numbers, re-arranged. Converted models are returned in
eval mode, as `from_pretrained` returns them.

The command line is `hf_gpt_scratch.training.convert_cli` (also installed as `hf-gpt-scratch-convert`).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .configuration_gpt_scratch import GPTScratchConfig
from .modeling_gpt_scratch import GPTScratchForCausalLM

if TYPE_CHECKING:  # transformers' GPT-2 is imported only when a conversion needs it
    from transformers import GPT2LMHeadModel

__all__ = [
    "BOOK_MODEL_CONFIGS",
    "book_config_from_preset",
    "book_to_scratch",
    "gpt2_to_scratch",
    "load_book_checkpoint",
    "scratch_to_gpt2",
]

# GPT-2 activations that are exactly the tanh approximation of GELU our feed-forward uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh")

# The book's chapter 5 `model_configs`, on top of `GPT_CONFIG_124M` (vocab 50257, context 1024 as
# OpenAI trained them, dropout 0.1). `context_length` and `qkv_bias` of a preset are read from the
# checkpoint itself by `book_config_from_preset(name, state_dict)`: the book trains with 256 tokens and
# no qkv bias, but OpenAI's weights loaded in chapter 5 use 1024 and qkv biases.
_BOOK_BASE_CONFIG = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.1, "qkv_bias": False}
BOOK_MODEL_CONFIGS: dict[str, dict] = {
    "gpt2-small (124M)": {**_BOOK_BASE_CONFIG, "emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {**_BOOK_BASE_CONFIG, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {**_BOOK_BASE_CONFIG, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {**_BOOK_BASE_CONFIG, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
_BOOK_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")
_GPT2_BPE_EOS = 50256  # <|endoftext|> of the GPT-2 BPE (the book's tiktoken "gpt2")


# ----------------------------------------------------------------------------- helpers


def _build(model_cls, config, state_dict: dict[str, torch.Tensor]):
    """Instantiate `model_cls(config)` holding exactly `state_dict` (tied heads re-tied), in eval mode.

    The model is first built on the meta device, so a 1.5B-parameter conversion does not spend time
    and memory on a random initialisation that is thrown away."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with torch.device("meta"):
        model = model_cls(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    tied_targets = set(model.get_expanded_tied_weights_keys(all_submodels=True)) if tied else set()
    missing = [k for k in result.missing_keys if k not in tied_targets]
    if missing or result.unexpected_keys:  # a bug here, not a user error: the mapping is out of date
        raise RuntimeError(
            f"hf_gpt_scratch.convert is out of date with {model_cls.__name__}: missing {missing}, "
            f"unexpected {result.unexpected_keys}."
        )
    if tied:
        model.tie_weights()
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        # A tensor the state dict does not carry (e.g. a non-persistent buffer): build for real instead.
        model = model_cls(config)
        model.load_state_dict(state_dict, strict=not tied)
        if tied:
            model.tie_weights()
    return model.eval()


def _special_ids(config, vocab_size: int, source: str) -> dict:
    """bos/eos/pad ids of `config` that fit in the vocabulary; others are dropped with a warning."""
    ids = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(v, int) and 0 <= v < vocab_size for v in values):
            warnings.warn(
                f"{source} has {name}={value!r}, outside its vocabulary of {vocab_size} tokens; it is not copied.",
                stacklevel=3,
            )
            value = None
        ids[name] = value
    return ids


def _copy_generation_config(source, target) -> None:
    """Carry generation defaults over, minus special ids the target's config dropped as out of vocabulary."""
    generation_config = getattr(source, "generation_config", None)
    if generation_config is None or getattr(target, "generation_config", None) is None:
        return
    generation_config = copy.deepcopy(generation_config)
    vocab_size = target.config.vocab_size
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(generation_config, name, None)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(v, int) and 0 <= v < vocab_size for v in values):
            setattr(generation_config, name, None)
    target.generation_config = generation_config


def _check_gpt2_config(config) -> None:
    """Refuse GPT-2 settings that `GPTScratchForCausalLM` cannot represent, naming the setting."""
    problems = []
    activation = getattr(config, "activation_function", "gelu_new")
    if activation not in _TANH_GELUS:
        problems.append(
            f"activation_function={activation!r} (this model's feed-forward uses the tanh GELU: one of {_TANH_GELUS})"
        )
    n_inner = getattr(config, "n_inner", None)
    if n_inner is not None and n_inner != 4 * config.n_embd:
        problems.append(f"n_inner={n_inner} (this model's feed-forward is 4 * n_embd = {4 * config.n_embd} wide)")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True (attention scores are scaled by 1/sqrt(head_dim) only)")
    if not getattr(config, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (attention scores are always scaled by 1/sqrt(head_dim))")
    if getattr(config, "add_cross_attention", False):
        problems.append("add_cross_attention=True (this model is decoder-only, without cross-attention)")
    if problems:
        raise ValueError(
            "This GPT-2 cannot be converted to GPTScratchForCausalLM exactly: " + "; ".join(problems) + "."
        )


# ----------------------------------------------------------------------------- GPT-2 <-> scratch


def gpt2_to_scratch(model: GPT2LMHeadModel) -> GPTScratchForCausalLM:
    """Convert a transformers `GPT2LMHeadModel` into a `GPTScratchForCausalLM` with identical outputs.

    Query, key and value are split out of GPT-2's fused `c_attn` (so `qkv_bias=True`), every
    `Conv1D` weight is transposed into `nn.Linear` layout, and `tie_word_embeddings`, `n_positions`,
    `layer_norm_epsilon`, `resid_pdrop`, `initializer_range`, the special token ids and the
    generation config are carried over. Raises ValueError for GPT-2 settings this model cannot
    represent (another activation, `n_inner != 4 * n_embd`, `scale_attn_by_inverse_layer_idx`,
    `scale_attn_weights=False`, cross-attention).
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(model, GPT2LMHeadModel):
        raise TypeError(
            f"gpt2_to_scratch expects a transformers GPT2LMHeadModel, got {type(model).__name__}. "
            "Load one with GPT2LMHeadModel.from_pretrained(...)."
        )
    cfg = model.config
    _check_gpt2_config(cfg)
    if not (cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop):
        warnings.warn(
            f"GPT-2 has resid_pdrop={cfg.resid_pdrop}, embd_pdrop={cfg.embd_pdrop}, attn_pdrop={cfg.attn_pdrop}; "
            f"this model has one drop_rate and uses resid_pdrop={cfg.resid_pdrop} (inference is unaffected).",
            stacklevel=2,
        )
    tied = bool(getattr(cfg, "tie_word_embeddings", True))
    config = GPTScratchConfig(
        vocab_size=cfg.vocab_size,
        context_length=cfg.n_positions,
        emb_dim=cfg.n_embd,
        n_heads=cfg.n_head,
        n_layers=cfg.n_layer,
        drop_rate=float(cfg.resid_pdrop),
        qkv_bias=True,
        tie_word_embeddings=tied,
        layer_norm_eps=float(cfg.layer_norm_epsilon),
        initializer_range=float(cfg.initializer_range),
        **_special_ids(cfg, cfg.vocab_size, "The GPT-2 config"),
    )

    src = dict(model.state_dict())
    emb = cfg.n_embd
    sd: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        return src.pop(key).detach()

    def linear(dst: str, conv: str) -> None:  # Conv1D [in, out] -> nn.Linear [out, in]
        sd[f"{dst}.weight"] = take(f"{conv}.weight").t().contiguous()
        sd[f"{dst}.bias"] = take(f"{conv}.bias").clone()

    def norm(dst: str, ln: str) -> None:
        sd[f"{dst}.weight"] = take(f"{ln}.weight").clone()
        sd[f"{dst}.bias"] = take(f"{ln}.bias").clone()

    sd["model.tok_emb.weight"] = take("transformer.wte.weight").clone()
    sd["model.pos_emb.weight"] = take("transformer.wpe.weight").clone()
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}", f"model.trf_blocks.{i}"
        norm(f"{b}.norm1", f"{h}.ln_1")
        qkv_w = take(f"{h}.attn.c_attn.weight")  # [E, 3E], columns: query | key | value
        qkv_b = take(f"{h}.attn.c_attn.bias")  # [3E]
        for name, w, bias in zip(("W_query", "W_key", "W_value"), qkv_w.split(emb, dim=1), qkv_b.split(emb)):
            sd[f"{b}.att.{name}.weight"] = w.t().contiguous()
            sd[f"{b}.att.{name}.bias"] = bias.clone()
        linear(f"{b}.att.out_proj", f"{h}.attn.c_proj")
        norm(f"{b}.norm2", f"{h}.ln_2")
        linear(f"{b}.ff.layers.0", f"{h}.mlp.c_fc")
        linear(f"{b}.ff.layers.2", f"{h}.mlp.c_proj")
    norm("model.final_norm", "transformer.ln_f")
    head = src.pop("lm_head.weight", None)
    if not tied:
        if head is None:
            raise ValueError("The GPT-2 config says tie_word_embeddings=False but the model has no lm_head weight.")
        sd["out_head.weight"] = head.detach().clone()
    if src:
        raise ValueError(f"The GPT-2 model has parameters this conversion does not know: {sorted(src)}.")

    scratch = _build(GPTScratchForCausalLM, config, sd)
    _copy_generation_config(model, scratch)
    return scratch


def scratch_to_gpt2(model: GPTScratchForCausalLM) -> GPT2LMHeadModel:
    """Convert a `GPTScratchForCausalLM` into a stock transformers `GPT2LMHeadModel` with identical outputs.

    Query, key and value are fused into `c_attn` (zero biases when `qkv_bias=False`) and weights are
    transposed into `Conv1D` layout. An untied model (`tie_word_embeddings=False`, as the book's
    `GPTModel`) gives a GPT-2 with `tie_word_embeddings=False`, whose `lm_head` is saved and
    reloaded on its own. The config also carries `n_ctx` (= `n_positions`), as OpenAI's
    `config.json` does: llama.cpp's `convert_hf_to_gguf.py` reads GPT-2's context length from it.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not isinstance(model, GPTScratchForCausalLM):
        raise TypeError(f"scratch_to_gpt2 expects a GPTScratchForCausalLM, got {type(model).__name__}.")
    cfg = model.config
    tied = bool(cfg.tie_word_embeddings)
    src = dict(model.state_dict())
    if tied and not torch.equal(src["out_head.weight"], src["model.tok_emb.weight"]):
        raise ValueError("The config says tie_word_embeddings=True but out_head differs from tok_emb.")
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        # Not a GPT2Config field (transformers ignores it), but OpenAI's config.json has it and
        # llama.cpp's convert_hf_to_gguf.py reads its GPT-2 context length from it.
        n_ctx=cfg.context_length,
        n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=cfg.drop_rate,
        embd_pdrop=cfg.drop_rate,
        attn_pdrop=cfg.drop_rate,
        layer_norm_epsilon=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=tied,
        **_special_ids(cfg, cfg.vocab_size, "The model config"),
    )

    sd: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        return src.pop(key).detach()

    def conv(dst: str, lin: str) -> None:  # nn.Linear [out, in] -> Conv1D [in, out]
        sd[f"{dst}.weight"] = take(f"{lin}.weight").t().contiguous()
        sd[f"{dst}.bias"] = take(f"{lin}.bias").clone()

    def norm(dst: str, ln: str) -> None:
        sd[f"{dst}.weight"] = take(f"{ln}.weight").clone()
        sd[f"{dst}.bias"] = take(f"{ln}.bias").clone()

    sd["transformer.wte.weight"] = take("model.tok_emb.weight").clone()
    sd["transformer.wpe.weight"] = take("model.pos_emb.weight").clone()
    for i in range(cfg.n_layers):
        b, h = f"model.trf_blocks.{i}", f"transformer.h.{i}"
        norm(f"{h}.ln_1", f"{b}.norm1")
        weights = [take(f"{b}.att.{n}.weight") for n in ("W_query", "W_key", "W_value")]
        if cfg.qkv_bias:
            biases = [take(f"{b}.att.{n}.bias") for n in ("W_query", "W_key", "W_value")]
        else:
            biases = [weights[0].new_zeros(cfg.emb_dim)] * 3
        sd[f"{h}.attn.c_attn.weight"] = torch.cat([w.t() for w in weights], dim=1).contiguous()  # [E, 3E]
        sd[f"{h}.attn.c_attn.bias"] = torch.cat(biases).contiguous()
        conv(f"{h}.attn.c_proj", f"{b}.att.out_proj")
        norm(f"{h}.ln_2", f"{b}.norm2")
        conv(f"{h}.mlp.c_fc", f"{b}.ff.layers.0")
        conv(f"{h}.mlp.c_proj", f"{b}.ff.layers.2")
    norm("transformer.ln_f", "model.final_norm")
    head = take("out_head.weight")
    if not tied:
        sd["lm_head.weight"] = head.clone()
    if src:
        raise ValueError(f"The model has parameters this conversion does not know: {sorted(src)}.")

    gpt2 = _build(GPT2LMHeadModel, config, sd)
    _copy_generation_config(model, gpt2)
    return gpt2


# ----------------------------------------------------------------------------- the book's GPTModel


def _book_expected_shapes(book_config: Mapping) -> dict[str, tuple[int, ...]]:
    """Every key of a `llms_from_scratch.ch04.GPTModel(book_config).state_dict()` (its `att.mask`
    buffers aside) with its shape."""
    v, c, e = book_config["vocab_size"], book_config["context_length"], book_config["emb_dim"]
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (v, e), "pos_emb.weight": (c, e)}
    for i in range(book_config["n_layers"]):
        p = f"trf_blocks.{i}"
        for name in ("W_query", "W_key", "W_value"):
            shapes[f"{p}.att.{name}.weight"] = (e, e)
            if book_config["qkv_bias"]:
                shapes[f"{p}.att.{name}.bias"] = (e,)
        shapes[f"{p}.att.out_proj.weight"] = (e, e)
        shapes[f"{p}.att.out_proj.bias"] = (e,)
        shapes[f"{p}.ff.layers.0.weight"] = (4 * e, e)
        shapes[f"{p}.ff.layers.0.bias"] = (4 * e,)
        shapes[f"{p}.ff.layers.2.weight"] = (e, 4 * e)
        shapes[f"{p}.ff.layers.2.bias"] = (e,)
        for norm in ("norm1", "norm2"):
            shapes[f"{p}.{norm}.scale"] = (e,)
            shapes[f"{p}.{norm}.shift"] = (e,)
    shapes["final_norm.scale"] = (e,)
    shapes["final_norm.shift"] = (e,)
    shapes["out_head.weight"] = (v, e)
    return shapes


def _is_book_mask(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 4 and parts[0] == "trf_blocks" and parts[1].isdigit() and parts[2:] == ["att", "mask"]


def _strip_wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefix `torch.compile` (`_orig_mod.`) or DistributedDataParallel (`module.`) adds to every key."""
    sd = dict(state_dict)
    for prefix in ("_orig_mod.", "module."):
        while sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: t for k, t in sd.items()}
    return sd


def _check_book_config(book_config) -> dict:
    if not isinstance(book_config, Mapping):
        raise TypeError(f"book_config must be a dict like the book's GPT_CONFIG_124M, got {type(book_config).__name__}.")
    missing = [k for k in _BOOK_CONFIG_KEYS if k not in book_config]
    if missing:
        raise ValueError(
            f"book_config lacks {missing}; it needs the keys of the book's GPT_CONFIG_124M: {list(_BOOK_CONFIG_KEYS)}."
        )
    cfg = {k: book_config[k] for k in _BOOK_CONFIG_KEYS}
    for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] <= 0:
            raise ValueError(f"book_config[{name!r}] must be a positive integer, got {cfg[name]!r}.")
    if not isinstance(cfg["qkv_bias"], bool):
        raise ValueError(f"book_config['qkv_bias'] must be true or false, got {cfg['qkv_bias']!r}.")
    return cfg


def _book_key_hints(missing: list[str], unexpected: list[str], cfg: dict) -> list[str]:
    hints = []
    qkv_bias = (".att.W_query.bias", ".att.W_key.bias", ".att.W_value.bias")
    if any(k.endswith(qkv_bias) for k in unexpected):
        hints.append("the checkpoint has query/key/value biases: set qkv_bias to true")
    if any(k.endswith(qkv_bias) for k in missing):
        hints.append("the checkpoint has no query/key/value biases: set qkv_bias to false")
    layers = {int(k.split(".")[1]) for k in unexpected if k.startswith("trf_blocks.") and k.split(".")[1].isdigit()}
    if layers and max(layers) >= cfg["n_layers"]:
        hints.append(f"the checkpoint has more than n_layers={cfg['n_layers']} blocks")
    if any(k.endswith((".norm1.weight", ".final_norm.weight")) or k == "final_norm.weight" for k in unexpected):
        hints.append(
            "LayerNorms named weight/bias suggest GPTModelFast or a transformers model, not the book's GPTModel"
        )
    return hints


def book_to_scratch(state_dict: Mapping[str, torch.Tensor], book_config: Mapping) -> GPTScratchForCausalLM:
    """Convert a `state_dict` of the book's `GPTModel` (`llms_from_scratch.ch04`) into a `GPTScratchForCausalLM`.

    `book_config` is the dict the book builds `GPTModel` from (keys vocab_size, context_length,
    emb_dim, n_heads, n_layers, drop_rate, qkv_bias; others are ignored). The LayerNorms' `scale` and
    `shift` become `weight` and `bias`, the attention `mask` buffers are dropped, and the head stays
    untied as in the book. With the GPT-2 vocabulary (50257 tokens) bos/eos are `<|endoftext|>`
    (50256), as in GPT-2's config. Keys of `torch.compile` (`_orig_mod.`) or DDP (`module.`) wrappers
    are accepted.

    Raises ValueError listing every missing key, unexpected key and shape mismatch.
    """
    cfg = _check_book_config(book_config)
    sd = _strip_wrapper_prefix(state_dict)
    not_tensors = sorted(str(k) for k, t in sd.items() if not isinstance(t, torch.Tensor))
    if not_tensors:
        raise ValueError(f"The state dict holds entries that are not tensors: {not_tensors[:10]}.")
    sd = {k: t for k, t in sd.items() if not _is_book_mask(k)}
    expected = _book_expected_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)}, config {expected[k]}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        lines = ["The state dict does not match the book's GPTModel for this book_config:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        hints = _book_key_hints(missing, unexpected, cfg)
        if hints:
            lines.append("  hint: " + "; ".join(hints) + ".")
        raise ValueError("\n".join(lines))

    special = {}
    if cfg["vocab_size"] == _BOOK_BASE_CONFIG["vocab_size"]:
        special = {"bos_token_id": _GPT2_BPE_EOS, "eos_token_id": _GPT2_BPE_EOS}
    config = GPTScratchConfig(
        vocab_size=cfg["vocab_size"],
        context_length=cfg["context_length"],
        emb_dim=cfg["emb_dim"],
        n_heads=cfg["n_heads"],
        n_layers=cfg["n_layers"],
        drop_rate=float(cfg["drop_rate"]),
        qkv_bias=cfg["qkv_bias"],
        tie_word_embeddings=False,
        layer_norm_eps=1e-5,  # the book's LayerNorm hard-codes it
        **special,
    )
    renames = {".scale": ".weight", ".shift": ".bias"}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        new = key
        for old_suffix, new_suffix in renames.items():
            if new.endswith(old_suffix):
                new = new[: -len(old_suffix)] + new_suffix
        out[new if new.startswith("out_head.") else f"model.{new}"] = tensor.detach().clone()
    return _build(GPTScratchForCausalLM, config, out)


def book_config_from_preset(name: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict:
    """The book's config for a chapter 5 preset name (`"gpt2-small (124M)"`, ...).

    With a `state_dict`, `context_length` and `qkv_bias` are read from it, since the book uses both
    256 tokens without qkv bias (its own training) and 1024 tokens with qkv bias (OpenAI's weights)."""
    if name not in BOOK_MODEL_CONFIGS:
        raise ValueError(f"Unknown book model preset {name!r}; choose one of {list(BOOK_MODEL_CONFIGS)}.")
    cfg = dict(BOOK_MODEL_CONFIGS[name])
    if state_dict is not None:
        sd = _strip_wrapper_prefix(state_dict)
        pos = sd.get("pos_emb.weight")
        if isinstance(pos, torch.Tensor) and pos.ndim == 2:
            cfg["context_length"] = int(pos.shape[0])
        cfg["qkv_bias"] = "trf_blocks.0.att.W_query.bias" in sd
    return cfg


def _read_pth(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The model `state_dict` in a `.pth`, whether saved alone or inside a training checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt/truncated zip, pickled module, not a torch file, ...
        raise ValueError(
            f"Could not read {path} as a PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Expected a file written by torch.save(model.state_dict(), path) or torch.save({'model_state_dict': "
            "model.state_dict(), ...}, path); a whole pickled model (torch.save(model)) is not loaded for safety."
        ) from err
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(t, torch.Tensor) for t in obj.values()):
            return obj
        raise ValueError(
            f"{path} holds a dict with keys {sorted(map(str, obj))[:10]}, neither a state dict nor a checkpoint with "
            "a 'model_state_dict' entry."
        )
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")


def load_book_checkpoint(path: str | os.PathLike, book_config: Mapping | str) -> GPTScratchForCausalLM:
    """Load a `.pth` of the book's `GPTModel` (`torch.save(model.state_dict(), "model.pth")`, or chapter 5's
    `{"model_state_dict": ..., "optimizer_state_dict": ...}`) as a `GPTScratchForCausalLM`.

    `book_config` is the book's config dict, or a preset name of `BOOK_MODEL_CONFIGS`. The file is read
    with `torch.load(weights_only=True)`; an unreadable file raises ValueError."""
    state_dict = _read_pth(path)
    if isinstance(book_config, str):
        book_config = book_config_from_preset(book_config, state_dict)
    return book_to_scratch(state_dict, book_config)


if __name__ == "__main__":  # model cards pushed before the CLI moved still show this command
    raise SystemExit("error: the command line is now `python -m hf_gpt_scratch.training.convert_cli` (or hf-gpt-scratch-convert).")
