"""Exact weight conversions (the same float32 numbers, re-arranged) between this model and
transformers' GPT-2 (`gpt2_to_scratch`, `scratch_to_gpt2`), and from the book's `GPTModel`
(`book_to_scratch`, `load_book_checkpoint`). Converted models are returned in eval mode.

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

# GPT-2 activations that are exactly the tanh approximation of GELU our feed-forward uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh")
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_QKV = ("W_query", "W_key", "W_value")
# GPTScratchConfig's field -> GPT2Config's (the dropout and qkv/tying fields are set apart).
_GPT2_CONFIG_NAMES = {
    "vocab_size": "vocab_size",
    "context_length": "n_positions",
    "emb_dim": "n_embd",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "layer_norm_eps": "layer_norm_epsilon",
    "initializer_range": "initializer_range",
}
# A block's modules: ours -> GPT-2's, and whether the weight is transposed (nn.Linear [out, in]
# against GPT-2's Conv1D [in, out]). Query, key and value are fused in GPT-2's `attn.c_attn`.
_GPT2_BLOCK_NAMES = (
    ("norm1", "ln_1", False),
    ("att.out_proj", "attn.c_proj", True),
    ("norm2", "ln_2", False),
    ("ff.layers.0", "mlp.c_fc", True),
    ("ff.layers.2", "mlp.c_proj", True),
)

# The book's chapter 5 `model_configs` on top of `GPT_CONFIG_124M`. `book_config_from_preset(name,
# state_dict)` reads `context_length` and `qkv_bias` from the checkpoint: the book trains with 256
# tokens and no qkv bias, OpenAI's weights loaded in chapter 5 have 1024 and qkv biases.
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


def _build(model_cls, config, state_dict: dict[str, torch.Tensor], source=None):
    """`model_cls(config)` holding exactly `state_dict` (tied heads re-tied), in eval mode, with the
    generation defaults of `source` (minus ids outside the vocabulary). Built on the meta device: a
    1.5B-parameter conversion spends nothing on a random initialisation that is thrown away."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with torch.device("meta"):
        model = model_cls(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    tied_targets = set(model.get_expanded_tied_weights_keys(all_submodels=True)) if tied else set()
    missing = [k for k in result.missing_keys if k not in tied_targets]
    if tied:
        model.tie_weights()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    missing += [k for k, t in tensors if t.is_meta and k not in missing]
    if missing or result.unexpected_keys:  # a bug here, not a user error: the mapping is out of date
        raise RuntimeError(
            f"hf_gpt_scratch.convert is out of date with {model_cls.__name__}: missing {missing}, "
            f"unexpected {result.unexpected_keys}."
        )
    if getattr(source, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(source.generation_config)
        for name in _SPECIAL_IDS:
            if not _in_vocabulary(getattr(model.generation_config, name, None), config.vocab_size):
                setattr(model.generation_config, name, None)
    return model.eval()


def _in_vocabulary(value, vocab_size: int) -> bool:
    """None, or an id (or list of ids) in [0, vocab_size)."""
    values = value if isinstance(value, list) else [value]
    return value is None or all(isinstance(v, int) and 0 <= v < vocab_size for v in values)


def _special_ids(config, source: str) -> dict:
    """bos/eos/pad ids of `config` that fit in its vocabulary; others are dropped with a warning."""
    ids = {}
    for name in _SPECIAL_IDS:
        ids[name] = getattr(config, name, None)
        if not _in_vocabulary(ids[name], config.vocab_size):
            warnings.warn(
                f"{source} has {name}={ids[name]!r}, outside its vocabulary of {config.vocab_size} tokens; "
                "it is not copied.",
                stacklevel=3,
            )
            ids[name] = None
    return ids


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


def _rename_gpt2(src: dict, sd: dict, n_layers: int, tied: bool, to_gpt2: bool, source: str) -> None:
    """Move every tensor left in `src` (the state dict being converted) into `sd` under its name on
    the other side, transposed where the layouts differ, as a copy. ValueError for a tensor neither
    side knows."""
    modules = [("model.final_norm", "transformer.ln_f", False)]
    for i in range(n_layers):
        for ours, gpt2, transposed in _GPT2_BLOCK_NAMES:
            modules.append((f"model.trf_blocks.{i}.{ours}", f"transformer.h.{i}.{gpt2}", transposed))
    names = [
        ("model.tok_emb.weight", "transformer.wte.weight", False),
        ("model.pos_emb.weight", "transformer.wpe.weight", False),
    ]
    for ours, gpt2, transposed in modules:
        names.append((f"{ours}.weight", f"{gpt2}.weight", transposed))
        names.append((f"{ours}.bias", f"{gpt2}.bias", False))
    if tied:  # one tensor with the embedding, rebuilt by tie_weights
        src.pop("out_head.weight" if to_gpt2 else "lm_head.weight", None)
    else:
        names.append(("out_head.weight", "lm_head.weight", False))
    for ours, gpt2, transposed in names:
        old, new = (ours, gpt2) if to_gpt2 else (gpt2, ours)
        tensor = src.pop(old).detach()
        sd[new] = tensor.t().contiguous() if transposed else tensor.clone()
    if src:
        raise ValueError(f"{source} has parameters this conversion does not know: {sorted(src)}.")


# ----------------------------------------------------------------------------- GPT-2 <-> scratch


def gpt2_to_scratch(model: GPT2LMHeadModel) -> GPTScratchForCausalLM:
    """Convert a transformers `GPT2LMHeadModel` into a `GPTScratchForCausalLM` with identical outputs.

    Query, key and value are split out of GPT-2's fused `c_attn` (so `qkv_bias=True`), `Conv1D`
    weights are transposed into `nn.Linear` layout; tying, sizes, epsilon, `resid_pdrop`, init
    range, special ids and the generation config are carried over. Raises ValueError for GPT-2
    settings this model cannot represent (`_check_gpt2_config`).
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
        **{ours: getattr(cfg, gpt2) for ours, gpt2 in _GPT2_CONFIG_NAMES.items()},
        drop_rate=float(cfg.resid_pdrop),
        qkv_bias=True,
        tie_word_embeddings=tied,
        **_special_ids(cfg, "The GPT-2 config"),
    )
    src = dict(model.state_dict())
    sd: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layer):
        weight = src.pop(f"transformer.h.{i}.attn.c_attn.weight").detach()  # [E, 3E]: query | key | value
        bias = src.pop(f"transformer.h.{i}.attn.c_attn.bias").detach()  # [3E]
        for name, w, b in zip(_QKV, weight.split(cfg.n_embd, dim=1), bias.split(cfg.n_embd)):
            sd[f"model.trf_blocks.{i}.att.{name}.weight"] = w.t().contiguous()
            sd[f"model.trf_blocks.{i}.att.{name}.bias"] = b.clone()
    _rename_gpt2(src, sd, cfg.n_layer, tied, to_gpt2=False, source="The GPT-2 model")
    return _build(GPTScratchForCausalLM, config, sd, source=model)


def scratch_to_gpt2(model: GPTScratchForCausalLM) -> GPT2LMHeadModel:
    """Convert a `GPTScratchForCausalLM` into a stock transformers `GPT2LMHeadModel` with identical outputs.

    Query, key and value are fused into `c_attn` (zero biases when `qkv_bias=False`), weights are
    transposed into `Conv1D` layout, an untied head stays untied (`lm_head` saved on its own).
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
        **{gpt2: getattr(cfg, ours) for ours, gpt2 in _GPT2_CONFIG_NAMES.items()},
        # Not a GPT2Config field, but OpenAI's config.json has it and llama.cpp's convert_hf_to_gguf.py
        # reads GPT-2's context length from it.
        n_ctx=cfg.context_length,
        resid_pdrop=cfg.drop_rate,
        embd_pdrop=cfg.drop_rate,
        attn_pdrop=cfg.drop_rate,
        tie_word_embeddings=tied,
        **_special_ids(cfg, "The model config"),
    )
    sd: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layers):
        weights = [src.pop(f"model.trf_blocks.{i}.att.{name}.weight").detach() for name in _QKV]
        if cfg.qkv_bias:
            biases = [src.pop(f"model.trf_blocks.{i}.att.{name}.bias").detach() for name in _QKV]
        else:
            biases = [weights[0].new_zeros(cfg.emb_dim)] * 3
        sd[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([w.t() for w in weights], dim=1)  # [E, 3E]
        sd[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(biases)
    _rename_gpt2(src, sd, cfg.n_layers, tied, to_gpt2=True, source="The model")
    return _build(GPT2LMHeadModel, config, sd, source=model)


# ----------------------------------------------------------------------------- the book's GPTModel


def _book_name(key: str) -> str:
    """The name of our parameter `key` in the book's GPTModel: no `model.` prefix, and LayerNorms
    hold `scale`/`shift` where ours hold `weight`/`bias`."""
    module, _, param = key.removeprefix("model.").rpartition(".")
    if module.endswith(("norm1", "norm2", "final_norm")):
        param = {"weight": "scale", "bias": "shift"}[param]
    return f"{module}.{param}"


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


def _book_config(book_config) -> GPTScratchConfig:
    """Our config for the book's config dict; its values are checked by GPTScratchConfig."""
    if not isinstance(book_config, Mapping):
        raise TypeError(f"book_config must be a dict like the book's GPT_CONFIG_124M, got {type(book_config).__name__}.")
    missing = [k for k in _BOOK_CONFIG_KEYS if k not in book_config]
    if missing:
        raise ValueError(
            f"book_config lacks {missing}; it needs the keys of the book's GPT_CONFIG_124M: {list(_BOOK_CONFIG_KEYS)}."
        )
    special = {}
    if book_config["vocab_size"] == _BOOK_BASE_CONFIG["vocab_size"]:  # the GPT-2 BPE
        special = {"bos_token_id": _GPT2_BPE_EOS, "eos_token_id": _GPT2_BPE_EOS}
    fields = {k: book_config[k] for k in _BOOK_CONFIG_KEYS}
    try:
        return GPTScratchConfig(
            **fields | {"drop_rate": float(fields["drop_rate"])},
            tie_word_embeddings=False,
            layer_norm_eps=1e-5,  # the book's LayerNorm hard-codes it
            **special,
        )
    except ValueError as err:
        raise ValueError(f"book_config: {err}") from None


def _book_key_hints(missing: list[str], unexpected: list[str], n_layers: int) -> list[str]:
    hints = []
    qkv_bias = (".att.W_query.bias", ".att.W_key.bias", ".att.W_value.bias")
    if any(k.endswith(qkv_bias) for k in unexpected):
        hints.append("the checkpoint has query/key/value biases: set qkv_bias to true")
    if any(k.endswith(qkv_bias) for k in missing):
        hints.append("the checkpoint has no query/key/value biases: set qkv_bias to false")
    layers = {int(k.split(".")[1]) for k in unexpected if k.startswith("trf_blocks.") and k.split(".")[1].isdigit()}
    if layers and max(layers) >= n_layers:
        hints.append(f"the checkpoint has more than n_layers={n_layers} blocks")
    if any(k.endswith((".norm1.weight", ".final_norm.weight")) or k == "final_norm.weight" for k in unexpected):
        hints.append(
            "LayerNorms named weight/bias suggest GPTModelFast or a transformers model, not the book's GPTModel"
        )
    return hints


def book_to_scratch(state_dict: Mapping[str, torch.Tensor], book_config: Mapping) -> GPTScratchForCausalLM:
    """Convert a `state_dict` of the book's `GPTModel` (`llms_from_scratch.ch04`) into a `GPTScratchForCausalLM`.

    `book_config`: the dict the book builds `GPTModel` from (keys `_BOOK_CONFIG_KEYS`; others are
    ignored). LayerNorm `scale`/`shift` become `weight`/`bias`, the attention `mask` buffers are
    dropped, the head stays untied; with the GPT-2 vocabulary (50257) bos/eos are 50256. Keys of
    `torch.compile` (`_orig_mod.`) or DDP (`module.`) wrappers are accepted.

    Raises ValueError listing every missing key, unexpected key and shape mismatch.
    """
    config = _book_config(book_config)
    sd = _strip_wrapper_prefix(state_dict)
    not_tensors = sorted(str(k) for k, t in sd.items() if not isinstance(t, torch.Tensor))
    if not_tensors:
        raise ValueError(f"The state dict holds entries that are not tensors: {not_tensors[:10]}.")
    sd = {k: t for k, t in sd.items() if not _is_book_mask(k)}
    with torch.device("meta"):
        ours = GPTScratchForCausalLM(config).state_dict()
    expected = {_book_name(k): tuple(t.shape) for k, t in ours.items()}
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
        hints = _book_key_hints(missing, unexpected, config.n_layers)
        if hints:
            lines.append("  hint: " + "; ".join(hints) + ".")
        raise ValueError("\n".join(lines))
    return _build(GPTScratchForCausalLM, config, {k: sd[_book_name(k)].detach().clone() for k in ours})


def book_config_from_preset(name: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict:
    """The book's config for a chapter 5 preset name (`"gpt2-small (124M)"`, ...); with a
    `state_dict`, its `context_length` and `qkv_bias` are read from it (see BOOK_MODEL_CONFIGS)."""
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
    """Load a `.pth` of the book's `GPTModel` (a state dict, or chapter 5's `{"model_state_dict": ...,
    "optimizer_state_dict": ...}`) as a `GPTScratchForCausalLM`. `book_config`: the book's config
    dict or a preset name of BOOK_MODEL_CONFIGS. Read with `torch.load(weights_only=True)`; an
    unreadable file raises ValueError."""
    state_dict = _read_pth(path)
    if isinstance(book_config, str):
        book_config = book_config_from_preset(book_config, state_dict)
    return book_to_scratch(state_dict, book_config)


if __name__ == "__main__":  # model cards pushed before the CLI moved still show this command
    raise SystemExit("error: the command line is now `python -m hf_gpt_scratch.training.convert_cli`.")
