#!/usr/bin/env python
"""Benchmark `GPTScratchForCausalLM` against transformers' GPT-2 and the book's own `GPTModel`.

Everything runs in ONE process and the contenders are INTERLEAVED (round-robin: A, B, C, A, B, C,
...), so that a slow minute of a shared machine hits every contender alike; we report medians and
ratios against `transformers.GPT2LMHeadModel` (sdpa attention), which holds the SAME weights as our
model (GPT-2 is built at random, then converted with `hf_gpt_scratch.convert.gpt2_to_scratch`).

Measured per shape (see benchmarks/README.md for the details and the FLOP formula):

* training: tokens/s of forward + backward + AdamW step (float32, dropout 0), per-step timings
  after warmup -> median; peak memory of one training step (torch profiler allocation events);
  MFU against the float32 matmul rate measured in the same process, interleaved with the models.
* generation: greedy new tokens/s, batch 1, with and without a KV cache.
* optional: a `torch.compile`d copy of our model as a further training contender (`--compile`),
  `torch._dynamo.explain` of our forward (`--explain`), a cProfile of our `generate`
  (`--profile_generate`).

Usage::

    python benchmarks/bench.py                   # small + 124M shapes (~10-15 min on 2 cores)
    python benchmarks/bench.py --shapes small --rounds 2
    python benchmarks/bench.py --quick           # tiny shape, one round: a smoke test (seconds)

Writes `<output_dir>/bench.json` and `<output_dir>/bench.md`.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from hf_gpt_scratch.convert import gpt2_to_scratch  # noqa: E402

try:  # the book's code: optional (`pip install --no-deps llms-from-scratch`, as the Makefile does)
    import llms_from_scratch.ch04 as book_ch04
except Exception:  # pragma: no cover - depends on the environment
    book_ch04 = None

# ----------------------------------------------------------------------------- shapes

SHAPES: dict[str, dict] = {
    # --quick: milliseconds per step; exercises every code path.
    "tiny": dict(vocab_size=512, context_length=32, emb_dim=64, n_heads=4, n_layers=2, batch_size=2),
    # A book-sized model (chapter 5 trains 124M at context 256): many small matmuls, overhead shows.
    "small": dict(vocab_size=50257, context_length=256, emb_dim=384, n_heads=6, n_layers=6, batch_size=8),
    # GPT-2 small as OpenAI trained it.
    "124M": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, batch_size=1),
}
# Per-shape defaults: training rounds (one timed step per contender per round) and generation lengths.
SHAPE_DEFAULTS: dict[str, dict] = {
    "tiny": dict(rounds=1, gen_rounds=1, prompt_tokens=8, new_tokens=8, nocache_new_tokens=8),
    "small": dict(rounds=8, gen_rounds=7, prompt_tokens=32, new_tokens=128, nocache_new_tokens=32),
    "124M": dict(rounds=5, gen_rounds=5, prompt_tokens=32, new_tokens=128, nocache_new_tokens=32),
}

BASELINE = "gpt2"
FLOOR = "weights floor"  # generation bounds: see weight_streaming_floor, forward_loop, bare_decode
LOOP = "ours, no generate"
BARE = "bare torch decode"
FLOP_FORMULA = (
    "flops_per_token = 6*N + 12*n_layers*emb_dim*context_length (PaLM, appendix B: 6N + 12*L*H*Q*T); "
    "N = non-embedding parameters = n_layers*(12*emb_dim^2 + 13*emb_dim) + 2*emb_dim + emb_dim*vocab_size "
    "(the output head is a matmul and counts, even when tied; token/position embedding lookups do not)"
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


# ----------------------------------------------------------------------------- FLOPs


def flops_per_token(shape: dict) -> tuple[int, int]:
    """(N, flops per trained token): N non-embedding parameters incl. the output head, see FLOP_FORMULA."""
    L, E, V, T = shape["n_layers"], shape["emb_dim"], shape["vocab_size"], shape["context_length"]
    n = L * (12 * E * E + 13 * E) + 2 * E + E * V
    return n, 6 * n + 12 * L * E * T


# ----------------------------------------------------------------------------- models


def build_models(shape: dict, seed: int, with_book: bool) -> dict:
    """GPT-2 at random (sdpa, dropout 0), our model converted from it (identical weights, tied like
    GPT-2), and the book's GPTModel (ch04) holding the same weights (its output head is an untied
    copy of the embedding: the book's GPTModel has no weight tying)."""
    eos = shape["vocab_size"] - 1  # 50256 = <|endoftext|> for the real vocabulary
    gcfg = GPT2Config(
        vocab_size=shape["vocab_size"],
        n_positions=shape["context_length"],
        n_embd=shape["emb_dim"],
        n_layer=shape["n_layers"],
        n_head=shape["n_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(seed)
    gpt2 = GPT2LMHeadModel._from_config(gcfg, attn_implementation="sdpa")
    ours = gpt2_to_scratch(gpt2)
    ours.set_attn_implementation("sdpa")
    assert ours.config._attn_implementation == "sdpa" and gpt2.config._attn_implementation == "sdpa"
    assert ours.config.tie_word_embeddings and ours.config.drop_rate == 0.0
    models = {"ours": ours, "gpt2": gpt2}
    if with_book and book_ch04 is not None:
        book_cfg = {
            "vocab_size": shape["vocab_size"],
            "context_length": shape["context_length"],
            "emb_dim": shape["emb_dim"],
            "n_heads": shape["n_heads"],
            "n_layers": shape["n_layers"],
            "drop_rate": 0.0,
            "qkv_bias": True,
        }
        sd = book_state_dict(ours)
        book = book_ch04.GPTModel(book_cfg)
        result = book.load_state_dict(sd, strict=False)
        assert not result.unexpected_keys and all(k.endswith(".att.mask") for k in result.missing_keys), result
        models["book"] = book
        models["book_cfg"] = book_cfg
    for name, m in models.items():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return models


def book_state_dict(ours) -> dict[str, torch.Tensor]:
    """Our state dict in the book's names: no `model.` prefix, LayerNorm `scale`/`shift`, and an
    untied copy of the token embedding as `out_head.weight`."""
    sd = {}
    for key, value in ours.state_dict().items():
        if key == "out_head.weight":
            continue
        key = key.removeprefix("model.")
        if ".norm" in key or key.startswith("final_norm"):
            key = key.replace(".weight", ".scale").replace(".bias", ".shift")
        sd[key] = value.detach().clone()
    sd["out_head.weight"] = ours.model.tok_emb.weight.detach().clone()
    return sd


def unique_param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() dedups tied


@torch.no_grad()
def parity(models: dict, batch: torch.Tensor) -> dict:
    """Max |logit difference| against GPT-2 on a probe batch: shows the weights are identical."""
    ref = models["gpt2"](batch).logits
    out = {"ours_vs_gpt2": (models["ours"](batch).logits - ref).abs().max().item()}
    if "book" in models:
        out["book_vs_gpt2"] = (models["book"](batch) - ref).abs().max().item()
    return out


# ----------------------------------------------------------------------------- timing helpers


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def interleave(contenders: dict[str, Callable[[], object]], rounds: int, per_round: int, label: str) -> dict:
    """Round-robin: each round runs every contender `per_round` times, one after the other; the
    order rotates by one each round, so no contender always follows the same one.
    Returns {name: [seconds per call]}."""
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = contenders[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[name].append(dt)
        log(f"{label} round {r + 1}/{rounds}: " + ", ".join(f"{n} {ts[-1]:.3f}s" for n, ts in times.items()))
    return times


def matmul_fn(n: int, m: int, k: int) -> tuple[Callable[[], object], int]:
    a = torch.randn(n, k)
    b = torch.randn(k, m)
    out = torch.empty(n, m)
    return (lambda: torch.mm(a, b, out=out)), 2 * n * m * k


# ----------------------------------------------------------------------------- memory


def profiled_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of (bytes allocated - bytes freed) while `fn` runs, from the CPU allocator events that
    `torch.profiler` records with `profile_memory=True`: every tensor allocation and free, in time
    order, whichever thread (autograd's included) makes it. Memory that exists before `fn` (weights,
    optimizer states) is not counted; activations, gradients and temporaries are."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []

    def walk(ev):
        if type(ev.extra_fields).__name__ == "_ExtraFields_Allocation" and ev.extra_fields.device.type == "cpu":
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size))
        for child in ev.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    if not events:
        raise RuntimeError("torch.profiler recorded no allocation events; cannot measure memory")
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )


# ----------------------------------------------------------------------------- training


def make_train_steps(models: dict, batch_full: torch.Tensor, compile_ours: bool, lr: float) -> tuple[dict, dict]:
    """One closure per contender: forward + loss + backward + AdamW step + zero_grad(set_to_none).
    HF models get `labels = input_ids` (they shift internally), called as the Trainer calls them;
    the book's loss is the book's: cross_entropy(logits.flatten(0, 1), targets.flatten()) with
    targets = the inputs shifted by one (the batch carries one extra token for that).
    Returns ({name: step}, {name: {"opt", "losses", "model"}} plus "compiled_module" with --compile)."""
    x = batch_full[:, :-1].contiguous()  # [B, T]
    y = batch_full[:, 1:].contiguous()  # [B, T], the book's targets
    steps, state = {}, {}

    def hf_step(model, opt, losses):
        def step():
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())

        return step

    def book_step(model, opt, losses):
        def step():
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())

        return step

    train_models = {"ours": models["ours"], "gpt2": models["gpt2"]}
    if compile_ours:
        compiled_src = copy.deepcopy(models["ours"])  # same weights, tied (deepcopy keeps the tie)
        train_models["ours_compiled"] = torch.compile(compiled_src)
        state["compiled_module"] = compiled_src
    if "book" in models:
        train_models["book"] = models["book"]
    for name, model in train_models.items():
        model.train()
        params = (state["compiled_module"] if name == "ours_compiled" else model).parameters()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
        losses: list[float] = []
        make = book_step if name == "book" else hf_step
        steps[name] = make(model, opt, losses)
        state[name] = {"opt": opt, "losses": losses, "model": model}
    return steps, state


def bench_train(models: dict, shape: dict, args, rounds: int, mm_fns: dict) -> dict:
    B, T = shape["batch_size"], shape["context_length"]
    g = torch.Generator().manual_seed(args.seed + 1)
    batch_full = torch.randint(0, shape["vocab_size"] - 1, (B, T + 1), generator=g)
    tokens = B * T
    steps, state = make_train_steps(models, batch_full, args.compile, args.lr)
    res: dict = {"batch_size": B, "seq_len": T, "tokens_per_step": tokens, "contenders": {}}

    log(f"train: warmup {args.warmup} step(s) per contender")
    warm = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        warm[name] = time.perf_counter() - t0
        log(f"  warmup {name}: {warm[name]:.2f}s")

    mem = {}
    if not args.no_memory:
        log("train: peak memory of one step per contender (torch.profiler allocation events)")
        for name, step in steps.items():
            mem[name] = profiled_peak_bytes(step)
            log(f"  {name}: {mem[name] / 2**20:.1f} MiB")

    # The matmul rate is measured inside the same rounds, so MFU's denominator sees the same machine load.
    contenders = dict(steps)
    for key, (fn, _) in mm_fns.items():
        contenders[key] = fn
    log(f"train: {rounds} round(s) x {args.steps} step(s), interleaved: {', '.join(contenders)}")
    times = interleave(contenders, rounds, args.steps, "train")

    mm = {}
    for key, (_, flops) in mm_fns.items():
        rates = [flops / t for t in times.pop(key)]
        mm[key] = {"gflops_median": median(rates) / 1e9, "gflops_max": max(rates) / 1e9, "samples": len(rates)}
    peak_rate = mm["mm_square"]["gflops_median"] * 1e9
    n_flop, fpt = flops_per_token(shape)
    res["matmul"] = mm
    res["flops_per_token"] = fpt
    res["n_params_flops"] = n_flop

    base_tps = None
    for name, ts in times.items():
        tps = [tokens / t for t in ts]
        module = state["compiled_module"] if name == "ours_compiled" else state[name]["model"]
        opt = state[name]["opt"]
        entry = {
            "step_s": ts,
            "step_s_median": tokens / median(tps),  # consistent with tokens/s for an even count too
            "tokens_per_s": tps,
            "tokens_per_s_median": median(tps),
            "tokens_per_s_min": min(tps),
            "tokens_per_s_max": max(tps),
            "warmup_s": warm[name],
            "mfu": median(tps) * fpt / peak_rate,
            "achieved_gflops": median(tps) * fpt / 1e9,
            "n_params": sum(p.numel() for p in module.parameters()),
            "static_mb": (unique_param_bytes(module) + optimizer_state_bytes(opt)) / 2**20,
            "loss_first": state[name]["losses"][0],
            "loss_last": state[name]["losses"][-1],
        }
        if name in mem:
            entry["peak_step_mb"] = mem[name] / 2**20
        res["contenders"][name] = entry
        if name == BASELINE:
            base_tps = ts
    base = res["contenders"][BASELINE]
    for name, entry in res["contenders"].items():
        entry["ratio_vs_gpt2"] = entry["tokens_per_s_median"] / base["tokens_per_s_median"]
        # Same-round ratios (paired): robust to slow drifts of the machine's load.
        entry["paired_ratio_median"] = median([b / t for t, b in zip(times[name], base_tps)])
        if "peak_step_mb" in entry:
            entry["mem_ratio_vs_gpt2"] = entry["peak_step_mb"] / base["peak_step_mb"]
    for name in steps:
        model = state[name]["model"]
        (state["compiled_module"] if name == "ours_compiled" else model).eval()
    # Free optimizer states before the next shape / generation.
    for name in steps:
        state[name]["opt"].state.clear()
    if "compiled_module" in state:
        del state["compiled_module"]
        torch._dynamo.reset()
    return res


# ----------------------------------------------------------------------------- generation


def make_generators(models: dict, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> dict:
    """Greedy decoding of exactly `new_tokens` tokens, batch 1. HF: `.generate(do_sample=False,
    min_new_tokens=max_new_tokens)`; the book, without a cache only: its ch04 `generate_text_simple`
    (the KV-cache GPT of `llms_from_scratch.kv_cache` as installed fails on its first cached step:
    its causal mask slices the wrong axis)."""
    mask = torch.ones_like(prompt)
    eos = models["gpt2"].config.eos_token_id
    outs: dict[str, torch.Tensor] = {}

    def hf(name):
        model = models[name]

        def run():
            outs[name] = model.generate(
                prompt,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=eos,
            )

        return run

    gens = {"ours": hf("ours"), "gpt2": hf("gpt2")}
    if use_cache:
        gens[FLOOR] = weight_streaming_floor(models["ours"], new_tokens)
        for name, decode in ((LOOP, forward_loop), (BARE, bare_decode)):
            gens[name] = recorded(outs, name, decode(models["ours"], prompt, new_tokens))
    if not use_cache and "book" in models:
        model = models["book"]
        ctx = models["book_cfg"]["context_length"]

        def book_run():
            outs["book"] = book_ch04.generate_text_simple(model, prompt, new_tokens, ctx)

        gens["book"] = book_run
    return gens, outs


def weight_streaming_floor(model: torch.nn.Module, new_tokens: int) -> Callable[[], None]:
    """A bound, not a contender: per new token, only the matrix-vector products a cached decode step
    must do (every Linear of the model, the output head included, on one token), nothing else. At
    batch 1 these read every weight once per token, so their time is what any fp32 implementation
    must pay; `vs GPT-2` of this row is the largest speed-up generation can possibly reach here."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(1, 1, m.in_features) for m in linears}

    def run():
        with torch.no_grad():
            for _ in range(new_tokens):
                for m in linears:
                    F.linear(inputs[m.in_features], m.weight, m.bias)

    return run


def recorded(outs: dict, name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """`fn` that also stores its output as outs[name] (checked against GPT-2's tokens)."""

    def run():
        outs[name] = fn()

    return run


@torch.no_grad()
def greedy_loop(step, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding without `generate`: `step(ids, past_len)` returns next-token logits [1, V]."""
    ids, out, past = prompt, [prompt], 0
    for _ in range(new_tokens):
        logits = step(ids, past)
        past += ids.shape[1]
        ids = logits.argmax(-1, keepdim=True)  # [1, 1]
        out.append(ids)
    return torch.cat(out, dim=1)


def forward_loop(model, prompt: torch.Tensor, new_tokens: int) -> Callable[[], torch.Tensor]:
    """A bound, not a contender: our model's own forward with a DynamicCache in a plain greedy
    loop. Against `ours` (the same forward under `generate`) it measures what `generate` itself
    costs per token: logits processors, stopping criteria, input preparation."""

    def run():
        cache = DynamicCache(config=model.config)
        step = lambda ids, past: model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return greedy_loop(step, prompt, new_tokens)

    return run


def bare_decode(model, prompt: torch.Tensor, new_tokens: int) -> Callable[[], torch.Tensor]:
    """A bound, not a contender: the same math as our model written as bare torch functions on its
    weights (no modules, no transformers code, a list as KV cache) in a plain greedy loop: what an
    eager fp32 decode costs with no framework at all."""
    body, E = model.model, model.config.emb_dim
    H = model.config.n_heads
    W = lambda lin: (lin.weight, lin.bias)

    def run():
        keys, values = [None] * len(body.trf_blocks), [None] * len(body.trf_blocks)

        def step(ids, past):
            t = ids.shape[1]
            x = body.tok_emb.weight[ids] + body.pos_emb.weight[past:past + t]  # [1, T, E]
            for i, blk in enumerate(body.trf_blocks):
                a = blk.att
                h = F.layer_norm(x, (E,), blk.norm1.weight, blk.norm1.bias)
                q, k, v = (F.linear(h, *W(lin)).view(1, t, H, -1).transpose(1, 2) for lin in (a.W_query, a.W_key, a.W_value))
                if keys[i] is not None:
                    k, v = torch.cat([keys[i], k], 2), torch.cat([values[i], v], 2)
                keys[i], values[i] = k, v
                ctx = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1).transpose(1, 2).reshape(1, t, E)
                x = x + F.linear(ctx, *W(a.out_proj))
                h = F.layer_norm(x, (E,), blk.norm2.weight, blk.norm2.bias)
                ff = blk.ff.layers
                x = x + F.linear(F.gelu(F.linear(h, *W(ff[0])), approximate="tanh"), *W(ff[2]))
            x = F.layer_norm(x[:, -1], (E,), body.final_norm.weight, body.final_norm.bias)  # [1, E]
            return F.linear(x, model.out_head.weight)  # [1, V]

        return greedy_loop(step, prompt, new_tokens)

    return run


def bench_generate(models: dict, shape: dict, args, defaults: dict) -> dict:
    g = torch.Generator().manual_seed(args.seed + 2)
    prompt_len = args.prompt_tokens or defaults["prompt_tokens"]
    prompt = torch.randint(0, shape["vocab_size"] - 1, (1, prompt_len), generator=g)
    rounds = args.gen_rounds or defaults["gen_rounds"]
    res = {"prompt_tokens": prompt_len, "batch_size": 1, "rounds": rounds}
    for mode, use_cache, n_new in (
        ("cache", True, args.new_tokens or defaults["new_tokens"]),
        ("no_cache", False, args.nocache_new_tokens or defaults["nocache_new_tokens"]),
    ):
        if prompt_len + n_new > shape["context_length"]:
            n_new = shape["context_length"] - prompt_len
        gens, outs = make_generators(models, prompt, n_new, use_cache)
        log(f"generate ({mode}, {n_new} new tokens): warmup")
        for fn in gens.values():
            fn()
        lengths = {name: out.shape[1] - prompt_len for name, out in outs.items()}
        assert all(n == n_new for n in lengths.values()), f"not exactly {n_new} new tokens: {lengths}"
        ref = outs["gpt2"]
        match = {name: bool(torch.equal(out, ref)) for name, out in outs.items() if name != "gpt2"}
        times = interleave(gens, rounds, 1, f"generate {mode}")
        entry = {"new_tokens": n_new, "tokens_match_gpt2": match, "contenders": {}}
        base = median([n_new / t for t in times[BASELINE]])
        for name, ts in times.items():
            rates = [n_new / t for t in ts]
            entry["contenders"][name] = {
                "seconds": ts,
                "new_tokens_per_s_median": median(rates),
                "ms_per_token_median": 1000 / median(rates),  # = the median, not the mean, of rates
                "ratio_vs_gpt2": median(rates) / base,
                "paired_ratio_median": median([b / t for t, b in zip(ts, times[BASELINE])]),
            }
        if use_cache:
            ms = {name: c["ms_per_token_median"] for name, c in entry["contenders"].items()}
            # paired within each round: the same forward with and without `generate`, back to back
            generate_ms = median([1000 * (a - b) / n_new for a, b in zip(times["ours"], times[LOOP])])
            entry["bounds"] = {
                "generate_loop_ms_per_token": generate_ms,
                "bare_through_generate_ms_per_token": ms[BARE] + generate_ms,
                "bare_through_generate_ratio_vs_gpt2": ms[BASELINE] / (ms[BARE] + generate_ms),
            }
        res[mode] = entry
    return res


def profile_generate(models: dict, shape: dict, args, defaults: dict, out_dir: Path, shape_name: str) -> dict:
    """cProfile of our `.generate` (with cache): where the per-token time goes."""
    prompt_len = args.prompt_tokens or defaults["prompt_tokens"]
    n_new = min(args.new_tokens or defaults["new_tokens"], shape["context_length"] - prompt_len)
    prompt = torch.randint(0, shape["vocab_size"] - 1, (1, prompt_len), generator=torch.Generator().manual_seed(3))
    gens, _ = make_generators({"ours": models["ours"], "gpt2": models["gpt2"]}, prompt, n_new, True)
    gens["ours"]()  # warm
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    gens["ours"]()
    prof.disable()
    wall = time.perf_counter() - t0
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    text.write(f"cProfile of GPTScratchForCausalLM.generate, shape {shape_name}: prompt {prompt_len}, {n_new} new "
               f"tokens, {wall:.3f}s ({1000 * wall / n_new:.2f} ms/token under the profiler)\n\n")
    text.write("== by total time (self) ==\n")
    stats.sort_stats("tottime").print_stats(35)
    text.write("== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(50)
    path = out_dir / f"profile_generate_{shape_name}.txt"
    path.write_text(text.getvalue())
    log(f"wrote {path}")
    return {"file": path.name, "wall_s": wall, "ms_per_token": 1000 * wall / n_new}


# ----------------------------------------------------------------------------- explain


def explain(models: dict, shape: dict) -> dict:
    """torch._dynamo.explain of our forward, twice: the training forward (labels given) and a
    decode step of generation (one new token on top of a DynamicCache). Graphs and graph breaks."""

    def run(fn, label):
        torch._dynamo.reset()
        out = fn()
        reasons = []
        for r in out.break_reasons:
            where = ""
            if getattr(r, "user_stack", None):
                frame = r.user_stack[-1]
                where = f" ({Path(frame.filename).name}:{frame.lineno})"
            reasons.append(f"{r.reason}{where}")
        torch._dynamo.reset()
        res = {
            "graph_count": out.graph_count,
            "graph_break_count": out.graph_break_count,
            "op_count": out.op_count,
            "break_reasons": reasons,
        }
        log(f"explain {label}: {res['graph_count']} graph(s), {res['graph_break_count']} graph break(s)")
        for reason in reasons:
            log(f"  break: {reason}")
        return res

    model = copy.deepcopy(models["ours"])
    x = torch.randint(0, shape["vocab_size"] - 1, (1, min(16, shape["context_length"] - 1)))
    model.train()
    train = run(lambda: torch._dynamo.explain(model)(input_ids=x, labels=x), "training forward")
    model.eval()
    with torch.no_grad():
        cache = model(input_ids=x, use_cache=True).cache
        decode = run(lambda: torch._dynamo.explain(model)(input_ids=x[:, -1:], cache=cache, use_cache=True),
                     "decode step (DynamicCache)")
    return {"training_forward": train, "decode_step": decode}


# ----------------------------------------------------------------------------- report


def fmt(x, spec=".2f"):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# hf_gpt_scratch benchmark",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, CPU: {env['cpu_model']} "
        f"({env['cpu_count']} cores, {env['torch_num_threads']} torch threads), {env['date_utc']}.",
        f"Command: `{env['command']}`. One process, contenders interleaved round-robin; medians; "
        "ratios are vs `transformers.GPT2LMHeadModel` (sdpa) with identical weights.",
        "",
        f"FLOPs: {FLOP_FORMULA}. MFU = achieved FLOP/s / median fp32 `torch.mm` "
        f"{result['args']['matmul_size']}^2 rate measured in the same rounds.",
        "",
        "Peak MB: peak of (allocated - freed) bytes during one training step (torch.profiler allocation "
        "events): activations + gradients + temporaries, on top of the static MB (weights + AdamW states).",
        "",
    ]
    for shape_name, s in result["shapes"].items():
        cfg = s["shape"]
        lines += [
            f"## {shape_name}: emb {cfg['emb_dim']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, "
            f"context {cfg['context_length']}, vocab {cfg['vocab_size']}, batch {cfg['batch_size']}",
            "",
            f"Max |logit diff| vs GPT-2: " + ", ".join(f"{k} {v:.2e}" for k, v in s["parity"].items()) + ".",
            "",
        ]
        t = s.get("train")
        if t:
            mm = t["matmul"]
            lines += [
                f"Training (fp32, AdamW, {t['tokens_per_step']} tokens/step, {t['rounds']} round(s) x "
                f"{t['steps_per_round']} step(s) after {t['warmup']} warmup): "
                f"{t['flops_per_token'] / 1e6:.1f} MFLOP/token; matmul {mm['mm_square']['gflops_median']:.1f} "
                f"GFLOP/s ({result['args']['matmul_size']}^2), {mm['mm_model']['gflops_median']:.1f} GFLOP/s "
                f"(model-shaped {mm['mm_model']['shape']}).",
                "",
                "| contender | tokens/s (median) | min-max | vs GPT-2 | paired | step s | peak step MB | vs GPT-2 "
                "| static MB | MFU |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, c in t["contenders"].items():
                lines.append(
                    f"| {name} | {fmt(c['tokens_per_s_median'], '.0f')} | {fmt(c['tokens_per_s_min'], '.0f')}-"
                    f"{fmt(c['tokens_per_s_max'], '.0f')} | {fmt(c['ratio_vs_gpt2'], '.3f')} | "
                    f"{fmt(c['paired_ratio_median'], '.3f')} | {fmt(c['step_s_median'], '.3f')} | "
                    f"{fmt(c.get('peak_step_mb'), '.0f')} | {fmt(c.get('mem_ratio_vs_gpt2'), '.3f')} | "
                    f"{fmt(c['static_mb'], '.0f')} | {fmt(100 * c['mfu'], '.1f')}% |"
                )
            lines.append("")
        gen = s.get("generate")
        if gen:
            lines += [
                f"Generation (greedy, batch 1, prompt {gen['prompt_tokens']} tokens, {gen['rounds']} round(s)):",
                "",
                "| mode | contender | new tokens | new tokens/s (median) | ms/token | vs GPT-2 | paired "
                "| same tokens as GPT-2 |",
                "|---|---|---:|---:|---:|---:|---:|---|",
            ]
            for mode in ("cache", "no_cache"):
                e = gen[mode]
                for name, c in e["contenders"].items():
                    same = "-" if name in (BASELINE, FLOOR) else str(e["tokens_match_gpt2"].get(name))
                    lines.append(
                        f"| {mode} | {name} | {e['new_tokens']} | {fmt(c['new_tokens_per_s_median'], '.1f')} | "
                        f"{fmt(c['ms_per_token_median'], '.2f')} | {fmt(c['ratio_vs_gpt2'], '.3f')} | "
                        f"{fmt(c['paired_ratio_median'], '.3f')} | {same} |"
                    )
            b = gen["cache"].get("bounds")
            if b:
                lines += [
                    "",
                    f"Bounds (cache): `generate` itself costs {fmt(b['generate_loop_ms_per_token'])} ms/token "
                    f"(`ours` − `{LOOP}`, median over rounds: logits processors, stopping criteria, input preparation; the same for "
                    f"GPT-2). A model with no framework overhead at all (`{BARE}`) would generate at "
                    f"{fmt(b['bare_through_generate_ms_per_token'])} ms/token through `generate`, "
                    f"{fmt(b['bare_through_generate_ratio_vs_gpt2'], '.3f')}x GPT-2: the ceiling of removing "
                    "framework overhead from this math in eager fp32.",
                ]
            lines.append("")
        if "explain" in s:
            for label, e in (("training forward", s["explain"]["training_forward"]),
                             ("decode step with a DynamicCache", s["explain"]["decode_step"])):
                lines += [f"`torch._dynamo.explain`, our {label}: {e['graph_count']} graph(s), "
                          f"{e['graph_break_count']} graph break(s).", ""]
                lines += [f"- {r}" for r in e["break_reasons"]] + ([""] if e["break_reasons"] else [])
        if "profile_generate" in s:
            p = s["profile_generate"]
            lines += [f"cProfile of our generate: `{p['file']}` ({p['ms_per_token']:.2f} ms/token under cProfile).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["small", "124M"])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny shape, 1 round, short generation")
    p.add_argument("--rounds", type=int, default=None, help="training rounds (default per shape: small 8, 124M 5)")
    p.add_argument("--steps", type=int, default=1, help="timed training steps per contender per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps per contender first")
    p.add_argument("--gen_rounds", type=int, default=None, help="generation rounds (default: small 7, 124M 5)")
    p.add_argument("--prompt_tokens", type=int, default=None, help="generation prompt length (default 32)")
    p.add_argument("--new_tokens", type=int, default=None, help="new tokens with a cache (default 128)")
    p.add_argument("--nocache_new_tokens", type=int, default=None,
                   help="new tokens without a cache (default 32: quadratic cost, a reference only)")
    p.add_argument("--matmul_size", type=int, default=2048, help="square fp32 torch.mm for the MFU denominator")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no_book", action="store_true", help="skip the book's GPTModel contenders")
    p.add_argument("--no_train", action="store_true")
    p.add_argument("--no_generate", action="store_true")
    p.add_argument("--no_memory", action="store_true", help="skip the profiled memory step")
    p.add_argument("--compile", action="store_true", help="add a torch.compile'd copy of our model to training")
    p.add_argument("--explain", action="store_true", help="torch._dynamo.explain our forward (graphs, breaks)")
    p.add_argument("--profile_generate", action="store_true",
                   help="cProfile our generate (with cache); writes profile_generate_<shape>.txt")
    p.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes = ["tiny"]
        args.rounds = args.rounds or 1
        args.matmul_size = min(args.matmul_size, 256)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*generation flags.*")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    log(f"torch {env['torch']}, transformers {env['transformers']}, {env['cpu_model']}, "
        f"{env['cpu_count']} cores, {env['torch_num_threads']} threads")
    if book_ch04 is None and not args.no_book:
        log("llms_from_scratch not importable: the book's contenders are skipped")
    result = {
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "flop_formula": FLOP_FORMULA,
        "baseline": BASELINE,
        "shapes": {},
    }
    t_start = time.perf_counter()
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        defaults = SHAPE_DEFAULTS[shape_name]
        log(f"=== shape {shape_name}: {shape}")
        models = build_models(shape, args.seed, with_book=not args.no_book)
        probe = torch.randint(0, shape["vocab_size"] - 1, (1, min(64, shape["context_length"])),
                              generator=torch.Generator().manual_seed(args.seed))
        entry: dict = {"shape": shape, "parity": parity(models, probe)}
        log(f"parity (max |logit diff| vs GPT-2): {entry['parity']}")
        n_flop, fpt = flops_per_token(shape)
        entry["flops"] = {"n_params_nonembedding_incl_head": n_flop, "flops_per_token": fpt}
        if args.explain:
            entry["explain"] = explain(models, shape)
        # Generation first: all contenders still hold the identical initial weights (greedy tokens
        # then match), training changes them afterwards.
        if not args.no_generate:
            entry["generate"] = bench_generate(models, shape, args, defaults)
        if args.profile_generate:
            entry["profile_generate"] = profile_generate(models, shape, args, defaults, out_dir, shape_name)
        if not args.no_train:
            rounds = args.rounds or defaults["rounds"]
            n = args.matmul_size
            BT, E = shape["batch_size"] * shape["context_length"], shape["emb_dim"]
            mm_fns = {"mm_square": matmul_fn(n, n, n), "mm_model": matmul_fn(BT, 4 * E, E)}
            train = bench_train(models, shape, args, rounds, mm_fns)
            train["matmul"]["mm_square"]["shape"] = [n, n, n]
            train["matmul"]["mm_model"]["shape"] = [BT, 4 * E, E]
            train.update(rounds=rounds, steps_per_round=args.steps, warmup=args.warmup)
            entry["train"] = train
        result["shapes"][shape_name] = entry
        del models
    result["total_seconds"] = time.perf_counter() - t_start
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out_dir / "bench.md").write_text(md + "\n")
    print(md, flush=True)
    log(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'} in {result['total_seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
