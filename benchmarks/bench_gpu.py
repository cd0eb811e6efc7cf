#!/usr/bin/env python
"""GPU benchmark (issue 14): `GPTScratchForCausalLM` against transformers' `GPT2LMHeadModel` (sdpa) on one
CUDA device, in ONE process, with the SAME weights (GPT-2 built at random, converted with
`hf_gpt_scratch.convert.gpt2_to_scratch`), contenders interleaved round-robin, medians.

Sections, in the order they run (each one writes `gpu.json` and `gpu.md` again, so a run cut short by
`--time_budget_s` or a timeout still leaves everything measured so far):

* `parity`, `matmul`: max |logit diff| vs GPT-2 (fp32); the measured dense bf16 `torch.mm` rate.
* `syncs`: device-to-host synchronisations per decode step (our forward alone, and per generated
  token inside `generate`) and per training step, with the source line of each; `tokens`: greedy
  tokens of ours vs GPT-2 in fp32 (TF32 off) - they must be identical.
* `train`: forward + backward + fused AdamW step under bf16 autocast (fp32 master weights), tokens/s
  and peak memory, at batch 8 and at the largest batch that fits both models (doubling up to
  `--max_batch`); MFU against the GPU's dense bf16 peak and against the measured matmul rate.
* `profile`: torch.profiler of one eager training step and of decode steps: where the time goes.
* `generate`: greedy, `--new_tokens` new tokens, at each `--gen_batches`: dynamic cache (eager), then
  static cache + `torch.compile` (transformers compiles the decode step itself on CUDA:
  `cache_implementation="static"` with the default `CompileConfig`, mode "reduce-overhead").
* `train_compile`: the training step of `torch.compile(model)`, best batch first, then batch 8.
  Compiled parts run last, interleaved by priority: static generation at batch 1, compiled training
  at the best batch, static generation at batch 32, compiled training at batch 8; each starts only if
  its estimate (ESTIMATE_S) fits in what is left of `--time_budget_s`, and a first compiled call is
  abandoned after `--compile_timeout_s` (never much past the budget).

Usage::

    python benchmarks/bench_gpu.py --device cuda --output_dir OUT --time_budget_s 420
    python benchmarks/bench_gpu.py --device cpu --shape tiny --skip_compile --output_dir /tmp/x  # smoke test

Writes `<output_dir>/gpu.json` (every sample, the environment), `<output_dir>/gpu.md` (the tables) and
`<output_dir>/profile_*.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench.py, next to this file
import bench  # noqa: E402  (also puts the repository root on sys.path)

import torch  # noqa: E402
import transformers  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import CompileConfig, DynamicCache, StaticCache  # noqa: E402

REPO = bench.REPO
BASELINE = "gpt2"
MODELS = ("ours", "gpt2")
TRAIN_RATIO_GOAL, MFU_GOAL, GEN_B1_GOAL, GEN_B32_GOAL = 1.15, 0.45, 1.10, 1.00

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the longest
# matching key wins ("H200 NVL" before "H200"). --peak_tflops overrides.
DENSE_BF16_PEAK_TFLOPS = {
    "H200 NVL": 835.0,
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
}
MFU_FORMULA = (
    "MFU = tokens/s * flops_per_token / peak; flops_per_token = 6*N + 12*n_layers*emb_dim*context_length "
    "(PaLM appendix B: 6N + 12*L*H*Q*T), N = n_layers*(12*emb_dim^2 + 13*emb_dim) + 2*emb_dim + emb_dim*vocab_size "
    "(non-embedding parameters plus the output head, which is a matmul even when tied)"
)

# Per-shape settings. 124M: GPT-2 small at context 1024; tiny: a smoke test of every code path.
SETTINGS = {
    "124M": dict(train_batches=[8], max_batch=64, gen_batches=[1, 32], prompt_tokens=32, new_tokens=128,
                 sync_tokens=(8, 40), matmul_size=8192, rounds=5, steps=2, warmup=2, gen_rounds=5),
    "tiny": dict(train_batches=[2], max_batch=8, gen_batches=[1, 4], prompt_tokens=8, new_tokens=16,
                 sync_tokens=(4, 12), matmul_size=256, rounds=2, steps=1, warmup=1, gen_rounds=2),
}
# Rough cost of each optional item on an H200 (seconds, compile included): an item starts only if that
# much of --time_budget_s is left. Zero for the tiny shape.
ESTIMATE_S = {"train": 60, "profile": 20, "generate_dynamic": 30, "generate_static": 100, "train_compile": 120}


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- environment


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except Exception:  # pragma: no cover - depends on the machine
        return None


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": bench.cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "c_compiler": shutil.which("gcc") or shutil.which("cc"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=props.total_memory / 2**30,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            nvidia_smi=_run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,"
                             "clocks.max.sm", "--format=csv,noheader"]),
        )
    return env


def datasheet_peak(env: dict, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"--peak_tflops {override}"
    name = env.get("gpu") or ""
    for key in sorted(DENSE_BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            tf = DENSE_BF16_PEAK_TFLOPS[key]
            return tf * 1e12, f"{key} data sheet, dense bf16: {tf:g} TFLOP/s"
    return None, f"no data-sheet peak known for {name or env['device']!r}"


# ----------------------------------------------------------------------------- small helpers


class Budget:
    """Wall-clock budget of the run: optional items start only if their estimate still fits."""

    def __init__(self, seconds: float, scale: float):
        self.t0, self.seconds, self.scale = time.perf_counter(), seconds, scale

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, item: str) -> bool:
        return ESTIMATE_S.get(item, 0) * self.scale <= self.left()

    def compile_limit(self, seconds: float) -> float:
        """A first compiled call may take `seconds`, but not much past the end of the budget."""
        return max(20.0, min(seconds, self.left() + 30.0)) if self.scale else seconds


class CompileTimeout(BaseException):
    """Raised by SIGALRM in a compile that runs too long (a BaseException: dynamo must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise CompileTimeout(f"still compiling after {seconds:.0f}s (--compile_timeout_s)")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def paired(times: dict[str, list[float]], name: str) -> float:
    """Median over same-round pairs of (GPT-2 time / this contender's time)."""
    return bench.median([b / t for t, b in zip(times[name], times[BASELINE])])


def dynamo_counters() -> dict:
    c = torch._dynamo.utils.counters
    return {
        "graph_breaks": sum(c["graph_break"].values()),
        "graph_break_reasons": dict(Counter({k[:200]: v for k, v in c["graph_break"].items()}).most_common(5)),
        "unique_graphs": c["stats"].get("unique_graphs", 0),
        "cudagraph_skips": c["inductor"].get("cudagraph_skips", 0),
    }


def raise_recompile_limits() -> None:
    """Every module's `__call__` shares one code object, so the compiled training steps and decode
    steps of two models at several batch sizes all count against one recompile limit (8 by default,
    beyond which dynamo silently runs eagerly)."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
            break


# ----------------------------------------------------------------------------- synchronisation counting

# aten ops that make the host wait for the device on CUDA (the tensor's value is needed on the host).
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "equal", "_unique2", "unique_dim",
            "unique_consecutive", "histc"}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
MODEL_FILES = {"ours": ("modeling_gpt_scratch.py", "loss_gpt_scratch.py"), "gpt2": ("modeling_gpt2.py",)}
_SKIP_FILES = ("warnings.py", "contextlib.py", "threading.py")


def _owner(filename: str) -> str:
    if f"{os.sep}hf_gpt_scratch{os.sep}" in filename:
        return "ours"
    if f"{os.sep}transformers{os.sep}" in filename:
        return "transformers"
    if filename == __file__:
        return "benchmark"
    return "other"


def _short(filename: str) -> str:
    for marker in (f"{os.sep}hf_gpt_scratch{os.sep}", f"{os.sep}transformers{os.sep}"):
        if marker in filename:
            return marker.strip(os.sep) + "/" + filename.split(marker, 1)[1]
    return Path(filename).name


def locate(stack: list[traceback.FrameSummary], model: str) -> tuple[str, str, bool]:
    """(owner, 'file:line (function)', inside the model's own forward) of a synchronising op: the
    innermost frame outside torch and outside this counter."""
    frames = [f for f in stack if not f.filename.startswith(TORCH_DIR) and not f.filename.endswith(_SKIP_FILES)
              and not (f.filename == __file__ and f.name in ("__torch_dispatch__", "_hook", "_record"))]
    inside = any(Path(f.filename).name in MODEL_FILES.get(model, ()) for f in frames)
    if not frames:
        return "torch", "?", inside
    f = frames[-1]
    return _owner(f.filename), f"{_short(f.filename)}:{f.lineno} ({f.name})", inside


class SyncRecorder:
    """Counts synchronising ops while `fn` runs, two ways: (1) a TorchDispatchMode that sees every aten
    op (eager only; works on any device: the count is what CUDA would do, copies between devices
    excepted), (2) on CUDA, `torch.cuda.set_sync_debug_mode("warn")`, which warns on each real
    synchronisation; each warning's Python stack gives its source line."""

    def __init__(self, model: str, device: torch.device, dispatch: bool = True):
        self.model, self.device, self.dispatch = model, device, dispatch
        self.records: dict[str, list[tuple]] = {"dispatch": [], "cuda": []}

    def _record(self, kind: str, op: str):
        owner, where, inside = locate(traceback.extract_stack(), self.model)
        self.records[kind].append((op, owner, where, inside))

    @contextlib.contextmanager
    def __call__(self):
        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func._overloadpacket.__name__
                if name in SYNC_OPS or _is_sync_copy(name, args, kwargs) or _is_bool_index(name, args):
                    recorder._record("dispatch", name)
                return func(*args, **kwargs)

        with contextlib.ExitStack() as stack:
            if self.device.type == "cuda":
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("always")

                def _hook(message, category, filename, lineno, file=None, line=None):
                    if "synchroniz" in str(message):
                        recorder._record("cuda", "cuda sync")

                warnings.showwarning = _hook
                torch.cuda.set_sync_debug_mode("warn")
                stack.callback(torch.cuda.set_sync_debug_mode, "default")
            if self.dispatch:
                stack.enter_context(Mode())
            yield self

    def summary(self, steps: int) -> dict:
        out = {}
        for kind, recs in self.records.items():
            if kind == "cuda" and self.device.type != "cuda":
                continue
            if kind == "dispatch" and not self.dispatch:
                continue
            sites = Counter(f"{owner}: {where} [{op}]" for op, owner, where, _ in recs)
            out[kind] = {
                "total": len(recs),
                "per_step": len(recs) / steps,
                "in_model_forward_per_step": sum(inside for *_, inside in recs) / steps,
                "in_our_code_per_step": sum(owner == "ours" for _, owner, _, _ in recs) / steps,
                "sites": {k: v / steps for k, v in sites.most_common()},
            }
        return out


def _is_sync_copy(name: str, args, kwargs) -> bool:
    """A blocking copy between the CPU and an accelerator (the host waits for the stream)."""
    if name == "_to_copy" and args and isinstance(args[0], torch.Tensor):
        dst = kwargs.get("device")
        return dst is not None and torch.device(dst).type != args[0].device.type and not kwargs.get("non_blocking")
    if name == "copy_" and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return args[0].device.type != args[1].device.type and not non_blocking
    return False


def _is_bool_index(name: str, args) -> bool:
    """Indexing with a boolean mask runs nonzero() inside the kernel."""
    if name in ("index", "index_put", "index_put_") and len(args) >= 2 and isinstance(args[1], (list, tuple)):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return False


def _diff(a: dict, b: dict, n: int) -> dict:
    """Per-token sync counts from two generate calls of n1 and n1 + n new tokens: (b - a) / n."""
    out = {}
    for kind in b:
        sa, sb = a[kind]["sites"], b[kind]["sites"]
        sites = {k: sb.get(k, 0) - sa.get(k, 0) for k in set(sa) | set(sb)}
        out[kind] = {
            "per_token": (b[kind]["total"] - a[kind]["total"]) / n,
            "in_model_forward_per_token": (b[kind]["in_model_forward_per_step"] - a[kind]["in_model_forward_per_step"]) / n,
            "in_our_code_per_token": (b[kind]["in_our_code_per_step"] - a[kind]["in_our_code_per_step"]) / n,
            "sites_per_token": {k: v / n for k, v in sorted(sites.items(), key=lambda kv: -kv[1]) if v},
            "total_short_call": a[kind]["total"],
            "total_long_call": b[kind]["total"],
        }
    return out


# ----------------------------------------------------------------------------- models and inputs


def build(shape: dict, seed: int, device: torch.device, gen_dtype: torch.dtype) -> dict:
    """{"fp32": models, "gen": copies}: GPT-2 at random and ours converted from it (identical weights),
    on the device in fp32 (parity, the fp32 token check, then training: their weights change), and
    copies in `gen_dtype` for generation and the sync counts (eval mode, never trained)."""
    models = bench.build_models(shape, seed, with_book=False)
    out = {"fp32": {}, "gen": {}}
    for name in MODELS:
        out["fp32"][name] = models[name].to(device)
        out["gen"][name] = copy.deepcopy(out["fp32"][name]).to(gen_dtype).eval()
    return out


def prompts(shape: dict, batch: int, length: int, device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000 + batch)
    return torch.randint(0, shape["vocab_size"] - 1, (batch, length), generator=g).to(device)


def token_match(a: torch.Tensor, b: torch.Tensor, prompt_len: int) -> dict:
    a, b = a[:, prompt_len:].cpu(), b[:, prompt_len:].cpu()
    if a.shape != b.shape:
        return {"rows_equal": 0, "rows": a.shape[0], "token_match_fraction": 0.0, "shapes": [list(a.shape), list(b.shape)]}
    eq = a == b
    first = [int((~row).nonzero()[0]) if not row.all() else row.numel() for row in eq]
    return {
        "rows_equal": int(eq.all(1).sum()),
        "rows": a.shape[0],
        "token_match_fraction": eq.float().mean().item(),
        "first_divergence_median": bench.median(first),
    }


# ----------------------------------------------------------------------------- sections


def run_parity(M: dict, shape: dict, device) -> dict:
    probe = prompts(shape, 2, min(64, shape["context_length"]), device, 0)
    with torch.no_grad():
        ref = M["fp32"]["gpt2"](probe).logits
        return {"ours_vs_gpt2_fp32": (M["fp32"]["ours"](probe).logits - ref).abs().max().item()}


def run_matmul(device, n: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    reps = 20 if device.type == "cuda" else 3
    for _ in range(3):
        torch.mm(a, b)
    rates = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0))
    res = {"size": n, "dtype": "bfloat16", "tflops_median": bench.median(rates) / 1e12, "tflops_max": max(rates) / 1e12}
    log(f"matmul bf16 {n}^3: {res['tflops_median']:.1f} TFLOP/s (max {res['tflops_max']:.1f})")
    return res


@torch.no_grad()
def decode_setup(model, prompt: torch.Tensor, cache_kind: str, extra: int):
    """Prefill `prompt` into a fresh cache; returns (cache, next token [B, 1])."""
    if cache_kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + extra + 1)
    else:
        cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode_steps(model, cache, tok: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` plain decode steps of the model's forward (no generate): next token = argmax."""
    for _ in range(steps):
        tok = model(input_ids=tok, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
    return tok


def generate_fn(model, prompt: torch.Tensor, n_new: int, mode: str, device, compile_ok: bool) -> Callable:
    """Greedy generation of exactly n_new tokens. mode: "dynamic" (DynamicCache, eager), "static"
    (StaticCache; compiled by transformers when compile_ok, on CUDA by default)."""
    eos = model.config.eos_token_id
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, min_new_tokens=n_new,
                  do_sample=False, pad_token_id=eos)
    if mode == "static":
        kwargs["cache_implementation"] = "static"
        if compile_ok:
            cc = CompileConfig()  # the default: fullgraph=False, mode="reduce-overhead"
            if device.type != "cuda":
                cc._compile_all_devices = True  # transformers compiles on CUDA only unless told
            kwargs["compile_config"] = cc
        else:
            kwargs["disable_compile"] = True
    else:
        kwargs["disable_compile"] = True

    def run():
        with torch.no_grad():
            return model.generate(prompt, **kwargs)

    return run


def run_syncs(M: dict, shape: dict, S: dict, device) -> dict:
    """Synchronisations of decode steps (our forward alone, with a dynamic and a static cache), of a
    generated token inside `generate` (marginal: (count at n2 tokens - count at n1) / (n2 - n1)) and
    of an eager training step."""
    res: dict = {}
    attempt(res, "forward_decode", lambda: _syncs_forward_decode(M, shape, S, device))
    attempt(res, "generate_per_token", lambda: {"dynamic": _syncs_generate(M, shape, S, device)})
    attempt(res, "train_step", lambda: _syncs_train_step(M, shape, device))
    return res


def _syncs_forward_decode(M: dict, shape: dict, S: dict, device) -> dict:
    res: dict = {}
    P, steps = S["prompt_tokens"], 8
    prompt = prompts(shape, 1, P, device, 7)
    for cache_kind in ("dynamic", "static"):
        res[cache_kind] = {}
        for name in MODELS:
            model = M["gen"][name]
            cache, tok = decode_setup(model, prompt, cache_kind, steps + 1)
            decode_steps(model, cache, tok, 1)  # a first step outside the count (lazy inits)
            rec = SyncRecorder(name, device)
            with rec():
                decode_steps(model, cache, tok, steps)
            res[cache_kind][name] = rec.summary(steps)
            log(f"syncs, forward decode step ({cache_kind} cache), {name}: {_sync_line(res[cache_kind][name])}")
    return res


def _syncs_generate(M: dict, shape: dict, S: dict, device) -> dict:
    res: dict = {}
    n1, n2 = S["sync_tokens"]
    prompt = prompts(shape, 1, S["prompt_tokens"], device, 7)
    for name in MODELS:
        counts = []
        for n in (n1, n2):
            gen = generate_fn(M["gen"][name], prompt, n, "dynamic", device, False)
            gen()  # warm
            rec = SyncRecorder(name, device)
            with rec():
                gen()
            counts.append(rec.summary(1))
        res[name] = _diff(counts[0], counts[1], n2 - n1)
        log(f"syncs per generated token (dynamic cache, generate), {name}: {_sync_line(res[name], 'per_token')}")
    return res


def _syncs_train_step(M: dict, shape: dict, device) -> dict:
    res: dict = {}
    B = 1
    x = prompts(shape, B, shape["context_length"], device, 8)
    for name in MODELS:
        model = M["fp32"][name]
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model(input_ids=x, labels=x).loss.backward()  # warm
        model.zero_grad(set_to_none=True)
        rec = SyncRecorder(name, device)
        with rec():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        res[name] = rec.summary(1)
        log(f"syncs per training step (forward + backward, batch {B}), {name}: {_sync_line(res[name])}")
    return res


def _sync_line(entry: dict, key: str = "per_step") -> str:
    parts = []
    for kind, e in entry.items():
        inside = e.get("in_model_forward_per_step", e.get("in_model_forward_per_token"))
        parts.append(f"{kind}: {e[key]:.2f} ({inside:.2f} inside the model)")
    return "; ".join(parts)


def run_fp32_tokens(M: dict, shape: dict, S: dict, device) -> dict:
    """Greedy tokens of ours vs GPT-2 in fp32 (TF32 off), dynamic cache, the largest generation batch."""
    B, P, N = max(S["gen_batches"]), S["prompt_tokens"], S["new_tokens"]
    prompt = prompts(shape, B, P, device, 9)
    outs = {name: generate_fn(M["fp32"][name], prompt, N, "dynamic", device, False)() for name in MODELS}
    res = {"batch_size": B, "new_tokens": N, "dtype": "float32",
           "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
           **token_match(outs["ours"], outs["gpt2"], P)}
    log(f"fp32 greedy tokens, ours vs GPT-2, batch {B}: {res['rows_equal']}/{B} rows identical, "
        f"{100 * res['token_match_fraction']:.1f}% of tokens")
    return res


# ----------------------------------------------------------------------------- training


def make_step(model, opt, x, device) -> Callable[[], torch.Tensor]:
    """forward (bf16 autocast) + backward + AdamW step + zero_grad; called as the Trainer calls a
    causal LM (labels = input_ids, shifted inside). Returns the loss (no host sync)."""

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _adamw(module, device):
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.1, **fused)


def measured_step(step, device) -> tuple[float, int | None]:
    """(seconds, peak bytes above what was allocated before) of one step."""
    before = 0
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    return dt, peak


def try_batch(M: dict, shape: dict, B: int, device) -> dict:
    """One eager step of each model at batch B: {'fits': bool, 'peak_gib': {...}}."""
    x = prompts(shape, B, shape["context_length"], device, 11)
    res = {"batch_size": B, "fits": True, "peak_step_gib": {}}
    for name in MODELS:
        model = M["fp32"][name]
        model.train()
        opt = _adamw(model, device)
        failed = None
        try:
            _, peak = measured_step(make_step(model, opt, x, device), device)
            res["peak_step_gib"][name] = peak / 2**30 if peak is not None else None
        except Exception as exc:  # OOM: the batch does not fit
            if not is_oom(exc):
                raise
            failed = type(exc).__name__
        model.zero_grad(set_to_none=True)
        opt.state.clear()
        del opt
        free(device)
        if failed:
            res.update(fits=False, failed=name, error=failed)
            break
    return res


def run_train(M: dict, shape: dict, S: dict, B: int, mode: str, device, args, mm: dict, peak_flops: float | None,
              compile_limit: Callable[[], float] | None = None) -> dict:
    """Interleaved training steps of ours and GPT-2 at batch B; mode "eager" or "compile"."""
    T = shape["context_length"]
    x = prompts(shape, B, T, device, 12)
    tokens = B * T
    n_flop, fpt = bench.flops_per_token(shape)
    res: dict = {"mode": mode, "batch_size": B, "seq_len": T, "tokens_per_step": tokens, "contenders": {},
                 "errors": {}}
    steps, opts, modules = {}, {}, {}
    for name in MODELS:
        module = M["fp32"][name]
        module.train()
        model = module
        if mode == "compile":  # one wrapper per model, reused by later batches and the profile
            compiled = M.setdefault("compiled", {})
            if name not in compiled:
                compiled[name] = torch.compile(module)
            model = compiled[name]
        opts[name], modules[name] = _adamw(module, device), module
        steps[name] = make_step(model, opts[name], x, device)
    warm: dict[str, list[float]] = {}
    peaks: dict[str, int | None] = {}
    for name in list(steps):
        warm[name] = []
        torch._dynamo.utils.counters.clear()
        try:
            limit = compile_limit() if mode == "compile" and compile_limit else None
            for i in range(S["warmup"]):
                with time_limit(limit if i == 0 else None):
                    dt, peaks[name] = measured_step(steps[name], device)
                warm[name].append(dt)
            if mode == "compile":
                res.setdefault("dynamo", {})[name] = dynamo_counters()
            log(f"train {mode} b{B} warmup {name}: " + ", ".join(f"{t:.2f}s" for t in warm[name]))
        except (Exception, CompileTimeout) as exc:
            res["errors"][name] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            log(f"train {mode} b{B} {name} FAILED: {res['errors'][name][:300]}")
            del steps[name]
            modules[name].zero_grad(set_to_none=True)
            free(device)
    if not steps:
        return res
    timed = {name: (lambda s=s: (s(), sync(device))) for name, s in steps.items()}
    sync(device)
    times = bench.interleave(timed, S["rounds"], S["steps"], f"train {mode} b{B}")
    losses = {name: steps[name]().item() for name in steps}  # one more step: the loss after training
    for name, ts in times.items():
        tps = [tokens / t for t in ts]
        static = bench.unique_param_bytes(modules[name]) + bench.optimizer_state_bytes(opts[name])
        entry = {
            "step_s": ts,
            "step_ms_median": 1000 * tokens / bench.median(tps),
            "tokens_per_s": tps,
            "tokens_per_s_median": bench.median(tps),
            "tokens_per_s_min": min(tps),
            "tokens_per_s_max": max(tps),
            "warmup_s": warm[name],
            "static_gib": static / 2**30,
            "peak_step_gib": peaks[name] / 2**30 if peaks.get(name) is not None else None,
            "achieved_tflops": bench.median(tps) * fpt / 1e12,
            "mfu_datasheet": bench.median(tps) * fpt / peak_flops if peak_flops else None,
            "mfu_measured_mm": bench.median(tps) * fpt / (mm["tflops_median"] * 1e12) if mm else None,
            "loss_last": losses[name],
        }
        if entry["peak_step_gib"] is not None:
            entry["peak_total_gib"] = entry["peak_step_gib"] + entry["static_gib"]
        res["contenders"][name] = entry
    if BASELINE in times:
        base = res["contenders"][BASELINE]["tokens_per_s_median"]
        for name, entry in res["contenders"].items():
            entry["ratio_vs_gpt2"] = entry["tokens_per_s_median"] / base
            entry["paired_ratio_median"] = paired(times, name)
    res["flops_per_token"], res["n_params_flops"] = fpt, n_flop
    for name in MODELS:
        M["fp32"][name].zero_grad(set_to_none=True)
        M["fp32"][name].eval()
    opts.clear()
    free(device)
    line = ", ".join(f"{n} {c['tokens_per_s_median']:.0f} tok/s" + (f" (MFU {100 * c['mfu_datasheet']:.1f}%)" if c["mfu_datasheet"] else "")
                     for n, c in res["contenders"].items())
    log(f"train {mode} b{B}: {line}")
    return res


# ----------------------------------------------------------------------------- profiles


def _device_events(prof) -> list:
    return [e for e in prof.events() if e.device_type != torch.autograd.DeviceType.CPU]


def profile_summary(prof, steps: int, wall_s: float, device, path: Path, title: str) -> dict:
    """Top kernels by device time (CUDA) or top ops by self CPU time (CPU); kernel count, launches,
    synchronising runtime calls per step; the full table goes to `path`."""
    res: dict = {"file": path.name, "steps": steps, "wall_ms_per_step": 1000 * wall_s / steps}
    cpu_names = Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU:
            cpu_names[e.name] += 1
    res["runtime_calls_per_step"] = {
        k: cpu_names[k] / steps for k in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                                          "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
                                          "cudaMemcpyAsync") if cpu_names[k]
    }
    dev = _device_events(prof)
    if dev:
        total = Counter()
        count = Counter()
        for e in dev:
            total[e.name] += e.time_range.elapsed_us()
            count[e.name] += 1
        busy = sum(total.values())
        res["kernels_per_step"] = sum(count.values()) / steps
        res["gpu_busy_ms_per_step"] = busy / 1000 / steps
        res["gpu_busy_fraction"] = busy / 1e6 / wall_s if wall_s else None
        res["memcpy_dtoh_per_step"] = sum(v for k, v in count.items() if "DtoH" in k) / steps
        res["top"] = [{"name": k[:160], "ms_per_step": v / 1000 / steps, "share": v / busy, "calls_per_step": count[k] / steps}
                      for k, v in total.most_common(15)]
    else:
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        busy = sum(e.self_cpu_time_total for e in rows)
        res["top"] = [{"name": e.key[:160], "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                       "share": e.self_cpu_time_total / busy if busy else 0.0, "calls_per_step": e.count / steps}
                      for e in rows[:15]]
    sort_key = "self_device_time_total" if dev else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort_key, row_limit=40, max_name_column_width=90)
    except Exception as exc:  # a renamed sort key in another torch version
        table = f"(key_averages table failed: {exc})"
    text = [f"{title}: {steps} step(s), {res['wall_ms_per_step']:.2f} ms/step wall (without the profiler)", ""]
    if dev:
        text += [f"kernels per step: {res['kernels_per_step']:.1f}; GPU busy {res['gpu_busy_ms_per_step']:.2f} ms/step "
                 f"({100 * (res['gpu_busy_fraction'] or 0):.0f}% of the wall time); runtime calls per step: "
                 f"{res['runtime_calls_per_step']}", "", "Top kernels by device time:"]
        text += [f"  {t['share'] * 100:5.1f}%  {t['ms_per_step']:8.3f} ms  x{t['calls_per_step']:.0f}  {t['name']}" for t in res["top"]]
        text.append("")
    text.append(table)
    path.write_text("\n".join(text) + "\n")
    return res


def _profile(fn: Callable, steps: int, device) -> tuple:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    wall = time.perf_counter() - t0
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    return prof, wall


def run_profile_train(M: dict, shape: dict, S: dict, B: int, device, out_dir: Path, compiled: dict | None = None,
                      tag: str = "eager") -> dict:
    """torch.profiler of one training step per model (after a warm step), at batch B."""
    x = prompts(shape, B, shape["context_length"], device, 13)
    res = {}
    for name in MODELS:
        module = M["fp32"][name]
        module.train()
        model = compiled[name] if compiled else module
        opt = _adamw(module, device)
        step = make_step(model, opt, x, device)
        step()
        prof, wall = _profile(step, 1, device)
        res[name] = profile_summary(prof, 1, wall, device, out_dir / f"profile_train_{tag}_{name}_b{B}.txt",
                                    f"training step, {tag}, {name}, batch {B}")
        module.zero_grad(set_to_none=True)
        module.eval()
        del opt, prof
        free(device)
        top = res[name]["top"][:3]
        log(f"profile train {tag} {name} b{B}: " + "; ".join(f"{100 * t['share']:.0f}% {t['name'][:60]}" for t in top))
    return res


def run_profile_decode(M: dict, shape: dict, S: dict, device, out_dir: Path) -> dict:
    """torch.profiler of 8 plain decode steps (forward alone, dynamic cache, batch 1, generation dtype)."""
    prompt = prompts(shape, 1, S["prompt_tokens"], device, 14)
    res, steps = {}, 8
    for name in MODELS:
        model = M["gen"][name]
        cache, tok = decode_setup(model, prompt, "dynamic", 3 * steps + 2)
        decode_steps(model, cache, tok, 1)
        prof, wall = _profile(lambda: decode_steps(model, cache, tok, 1), steps, device)
        res[name] = profile_summary(prof, steps, wall, device, out_dir / f"profile_decode_{name}.txt",
                                    f"decode step (forward alone, DynamicCache, batch 1), {name}")
        log(f"profile decode {name}: {res[name]['wall_ms_per_step']:.2f} ms/step"
            + (f", {res[name]['kernels_per_step']:.0f} kernels/step, GPU busy {res[name]['gpu_busy_ms_per_step']:.2f} ms"
               if "kernels_per_step" in res[name] else ""))
    return res


# ----------------------------------------------------------------------------- generation


def run_generate(M: dict, shape: dict, S: dict, B: int, mode: str, device, args,
                 compile_limit: Callable[[], float] | None = None, out_dir: Path | None = None) -> dict:
    """Interleaved greedy generation of ours and GPT-2 at batch B; mode "dynamic" or "static"."""
    compile_ok = mode == "static" and not args.skip_compile
    label = "static_compile" if compile_ok else mode
    P, N = S["prompt_tokens"], S["new_tokens"]
    prompt = prompts(shape, B, P, device, 15)
    res: dict = {"mode": label, "batch_size": B, "prompt_tokens": P, "new_tokens": N, "contenders": {},
                 "errors": {}, "dtype": args.gen_dtype}
    fns, outs, warm = {}, {}, {}
    for name in MODELS:
        fn = generate_fn(M["gen"][name], prompt, N, mode, device, compile_ok)
        warm[name] = []
        torch._dynamo.utils.counters.clear()
        try:
            for i in range(2 if compile_ok else 1):  # compile, then record the CUDA graphs
                sync(device)
                t0 = time.perf_counter()
                with time_limit(compile_limit() if compile_ok and i == 0 and compile_limit else None):
                    outs[name] = fn()
                sync(device)
                warm[name].append(time.perf_counter() - t0)
            n_new = outs[name].shape[1] - P
            if n_new != N:
                raise RuntimeError(f"{name} generated {n_new} tokens, not {N}")
            fns[name] = fn
            if compile_ok:
                res.setdefault("dynamo", {})[name] = dynamo_counters()
            log(f"generate {label} b{B} warmup {name}: " + ", ".join(f"{t:.2f}s" for t in warm[name]))
        except (Exception, CompileTimeout) as exc:
            res["errors"][name] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            log(f"generate {label} b{B} {name} FAILED: {res['errors'][name][:300]}")
            free(device)
    if len(outs) == 2:
        res["same_tokens"] = token_match(outs["ours"], outs["gpt2"], P)
    if not fns:
        return res
    timed = {name: (lambda f=f: (f(), sync(device))) for name, f in fns.items()}
    sync(device)
    times = bench.interleave(timed, S["gen_rounds"], 1, f"generate {label} b{B}")
    for name, ts in times.items():
        rates = [B * N / t for t in ts]
        res["contenders"][name] = {
            "seconds": ts,
            "warmup_s": warm[name],
            "new_tokens_per_s_median": bench.median(rates),
            "ms_per_step_median": 1000 * bench.median(ts) / N,
        }
    if BASELINE in times:
        base = res["contenders"][BASELINE]["new_tokens_per_s_median"]
        for name, entry in res["contenders"].items():
            entry["ratio_vs_gpt2"] = entry["new_tokens_per_s_median"] / base
            entry["paired_ratio_median"] = paired(times, name)
    if B == min(S["gen_batches"]) and out_dir is not None:  # where a generated token's time goes
        attempt(res, "profile", lambda: profile_generate(M, prompt, min(16, N), mode, label, fns, device, compile_ok, out_dir))
    if compile_ok and device.type == "cuda" and B == min(S["gen_batches"]):
        attempt(res, "syncs_per_token", lambda: compiled_generate_syncs(M, shape, S, device))
    same = res.get("same_tokens", {})
    log(f"generate {label} b{B}: " + ", ".join(f"{n} {c['new_tokens_per_s_median']:.0f} tok/s" for n, c in res["contenders"].items())
        + (f"; same tokens: {same['rows_equal']}/{same['rows']} rows, {100 * same['token_match_fraction']:.1f}%" if same else ""))
    return res


def attempt(res: dict, key: str, fn: Callable[[], object]) -> None:
    """res[key] = fn(), or the error in res["errors"][key]: a failing extra keeps the measurements."""
    try:
        res[key] = fn()
    except Exception as exc:
        res.setdefault("errors", {})[key] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        log(f"{key} FAILED: {res['errors'][key][:300]}")
        traceback.print_exc()


def profile_generate(M: dict, prompt, n_prof: int, mode: str, label: str, fns: dict, device, compile_ok: bool,
                     out_dir: Path) -> dict:
    """torch.profiler of a short generate per model (a 16-token generate keeps the profiler's bookkeeping small;
    the same static cache size as the timed runs, so no recompile)."""
    res = {}
    for name in fns:
        fn = generate_fn(M["gen"][name], prompt, n_prof, mode, device, compile_ok)
        prof, wall = _profile(fn, 1, device)
        res[name] = profile_summary(
            prof, n_prof, wall, device, out_dir / f"profile_generate_{label}_{name}_b{prompt.shape[0]}.txt",
            f"generate ({label}, batch {prompt.shape[0]}, {n_prof} new tokens), {name}, per new token (prefill included)")
    return res


def compiled_generate_syncs(M: dict, shape: dict, S: dict, device) -> dict:
    """CUDA synchronisations per generated token of the compiled static-cache generate (the sync debug
    mode only: a dispatch mode would interfere with the compiled code)."""
    n1, n2 = S["sync_tokens"]
    prompt = prompts(shape, 1, S["prompt_tokens"], device, 16)
    res = {}
    for name in MODELS:
        counts = []
        for n in (n1, n2):
            fn = generate_fn(M["gen"][name], prompt, n, "static", device, True)
            fn()  # same cache size as the timed run (transformers keeps the largest): no recompile
            rec = SyncRecorder(name, device, dispatch=False)
            with rec():
                fn()
            counts.append(rec.summary(1))
        res[name] = _diff(counts[0], counts[1], n2 - n1)
        log(f"syncs per generated token (static cache + compile, generate), {name}: {_sync_line(res[name], 'per_token')}")
    return res


# ----------------------------------------------------------------------------- report


def f(x, spec=".2f"):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _reasons(d: dict) -> str:
    return "; ".join(f"{n}x {r.splitlines()[0][:120]}" for r, n in d["graph_break_reasons"].items())


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def goals(result: dict) -> list[dict]:
    """The issue's goals, each with the measured value and met / missed / not measured."""
    out = []
    train = result.get("train", {}).get("runs", [])
    best = result.get("train", {}).get("best_batch")
    for mode in ("eager", "compile"):
        run = next((r for r in train if r["mode"] == mode and r["batch_size"] == best), None)
        ours = run["contenders"].get("ours") if run else None
        ratio = ours.get("ratio_vs_gpt2") if ours else None
        mfu = ours.get("mfu_datasheet") if ours else None
        out.append({"goal": f"training {mode}, batch {best}: >= {TRAIN_RATIO_GOAL}x GPT-2 tokens/s", "value": ratio,
                    "met": None if ratio is None else ratio >= TRAIN_RATIO_GOAL})
        out.append({"goal": f"training {mode}, batch {best}: >= {100 * MFU_GOAL:.0f}% MFU (data-sheet peak)",
                    "value": mfu, "met": None if mfu is None else mfu >= MFU_GOAL})
    gen = result.get("generate", {}).get("runs", [])
    batches = sorted({r["batch_size"] for r in gen})
    for B, target in ((batches[0] if batches else 1, GEN_B1_GOAL), (batches[-1] if batches else 32, GEN_B32_GOAL)):
        run = next((r for r in gen if r["mode"] == "static_compile" and r["batch_size"] == B), None)
        ratio = run["contenders"].get("ours", {}).get("ratio_vs_gpt2") if run else None
        out.append({"goal": f"generation static cache + compile, batch {B}: >= {target}x GPT-2", "value": ratio,
                    "met": None if ratio is None else ratio >= target})
    syncs = result.get("syncs", {})
    fd = syncs.get("forward_decode", {}).get("dynamic", {}).get("ours", {})
    kind = "cuda" if "cuda" in fd else "dispatch"
    v = fd.get(kind, {}).get("in_model_forward_per_step")
    out.append({"goal": f"no sync per decode step of our own (forward alone, dynamic cache; {kind} count)", "value": v,
                "met": None if v is None else v == 0})
    for r in gen:
        s = r.get("syncs_per_token", {}).get("ours", {}).get("cuda")
        if s:
            out.append({"goal": "no sync per generated token inside our forward (static cache + compile)",
                        "value": s["in_model_forward_per_token"], "met": s["in_model_forward_per_token"] == 0})
    return out


def markdown(result: dict) -> str:
    env, a = result["environment"], result["args"]
    machine = env.get("gpu") or env["cpu_model"]
    lines = [
        "# hf_gpt_scratch GPU benchmark",
        "",
        f"{machine}" + (f" ({env['gpu_memory_gib']:.0f} GiB, sm {env['gpu_capability']}, CUDA {env['cuda']})" if env.get("gpu") else "")
        + f"; host {env['cpu_model']} ({env['cpu_count']} cores). torch {env['torch']}, transformers {env['transformers']}, "
        f"triton {env.get('triton')}, Python {env['python']}. {env['date_utc']}.",
    ]
    if env.get("nvidia_smi"):
        lines.append(f"nvidia-smi: `{env['nvidia_smi']}`.")
    lines += [
        f"Command: `{env['command']}`. Shape {a['shape']}; one process, ours and GPT-2 (`GPT2LMHeadModel`, sdpa) with "
        "identical weights, interleaved round-robin; medians; `vs GPT-2` = ratio of medians, `paired` = median "
        "of same-round ratios.",
        "",
        f"{MFU_FORMULA}: N = {result['flops']['n_params_nonembedding_incl_head'] / 1e6:.1f}M, "
        f"{result['flops']['flops_per_token'] / 1e6:.1f} MFLOP per token. Peak: {result.get('peak_source')}; "
        "also against the measured bf16 `torch.mm` rate "
        f"({f((result.get('matmul') or {}).get('tflops_median'), '.1f')} TFLOP/s, {(result.get('matmul') or {}).get('size')}^3).",
        "",
    ]
    if "parity" in result:
        lines += [f"Max |logit diff| ours vs GPT-2 (fp32): {result['parity']['ours_vs_gpt2_fp32']:.2e}.", ""]
    train = result.get("train")
    if train:
        lines += [
            "## Training (forward + backward + fused AdamW, bf16 autocast, fp32 weights)",
            "",
            f"Batch search (eager, doubling up to {result['settings']['max_batch']}): "
            + ", ".join(f"b{s['batch_size']} {'fits' if s['fits'] else 'OOM (' + s.get('failed', '') + ')'}" for s in train.get("search", []))
            + f"; best batch {train.get('best_batch')}. Peak step = max allocated during a step above what was allocated before "
            "it; total = that + the model's weights and AdamW states.",
            "",
            "| mode | batch | model | tokens/s | min-max | vs GPT-2 | paired | step ms | peak step GiB | peak total GiB "
            "| MFU (data sheet) | MFU (measured mm) | warmup s |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in train.get("runs", []):
            for name, c in r["contenders"].items():
                lines.append(
                    f"| {r['mode']} | {r['batch_size']} | {name} | {f(c['tokens_per_s_median'], '.0f')} | "
                    f"{f(c['tokens_per_s_min'], '.0f')}-{f(c['tokens_per_s_max'], '.0f')} | {f(c.get('ratio_vs_gpt2'), '.3f')} | "
                    f"{f(c.get('paired_ratio_median'), '.3f')} | {f(c['step_ms_median'], '.1f')} | {f(c['peak_step_gib'])} | "
                    f"{f(c.get('peak_total_gib'))} | {pct(c['mfu_datasheet'])} | {pct(c['mfu_measured_mm'])} | "
                    f"{' / '.join(f'{t:.1f}' for t in c['warmup_s'])} |"
                )
            for name, err in r.get("errors", {}).items():
                lines.append(f"| {r['mode']} | {r['batch_size']} | {name} | failed: {err[:150]} |||||||||| |")
        lines.append("")
        for r in train.get("runs", []):
            for name, d in r.get("dynamo", {}).items():
                lines.append(f"- compile b{r['batch_size']}, {name}: {d['unique_graphs']} graph(s), {d['graph_breaks']} graph "
                             "break(s)" + (f": {_reasons(d)}" if d["graph_breaks"] else ""))
        lines.append("")
    gen = result.get("generate")
    if gen:
        lines += [
            f"## Generation (greedy, {gen.get('dtype')} weights)",
            "",
            "| cache | batch | model | new tokens/s | ms/step | vs GPT-2 | paired | same tokens as GPT-2 | warmup s |",
            "|---|---:|---|---:|---:|---:|---:|---|---|",
        ]
        for r in gen.get("runs", []):
            s = r.get("same_tokens")
            same = f"{s['rows_equal']}/{s['rows']} rows, {100 * s['token_match_fraction']:.1f}%" if s else "n/a"
            for name, c in r["contenders"].items():
                lines.append(
                    f"| {r['mode']} | {r['batch_size']} | {name} | {f(c['new_tokens_per_s_median'], '.0f')} | "
                    f"{f(c['ms_per_step_median'])} | {f(c.get('ratio_vs_gpt2'), '.3f')} | {f(c.get('paired_ratio_median'), '.3f')} | "
                    f"{same if name == 'ours' else '-'} | {' / '.join(f'{t:.1f}' for t in c['warmup_s'])} |"
                )
            for name, err in r.get("errors", {}).items():
                lines.append(f"| {r['mode']} | {r['batch_size']} | {name} | failed: {err[:150]} |||||| |")
        lines.append("")
        if gen.get("runs"):
            r = gen["runs"][0]
            lines.append(f"Prompt {r['prompt_tokens']} random tokens, {r['new_tokens']} new tokens (min_new_tokens = "
                         "max_new_tokens), new tokens/s counts the whole batch. dynamic = `DynamicCache`, eager; "
                         "static_compile = `cache_implementation=\"static\"` and `compile_config=CompileConfig()` "
                         "(transformers compiles the decode step: mode reduce-overhead, CUDA graphs).")
        ft = result.get("fp32_tokens")
        if ft:
            lines.append(f"Same tokens in fp32 (TF32 {'on' if ft['tf32'] else 'off'}, dynamic cache, batch {ft['batch_size']}, "
                         f"{ft['new_tokens']} new tokens): {ft['rows_equal']}/{ft['rows']} rows identical, "
                         f"{100 * ft['token_match_fraction']:.1f}% of tokens.")
        for r in gen.get("runs", []):
            for name, d in r.get("dynamo", {}).items():
                lines.append(f"- static_compile b{r['batch_size']}, {name}: {d['unique_graphs']} graph(s), {d['graph_breaks']} "
                             f"graph break(s), {d['cudagraph_skips']} CUDA-graph skip(s)"
                             + (f": {_reasons(d)}" if d["graph_breaks"] else ""))
        lines.append("")
    syncs = result.get("syncs")
    if syncs:
        lines += ["## Synchronisations (device -> host waits)", "",
                  "`cuda`: `torch.cuda.set_sync_debug_mode(\"warn\")` warnings (CUDA only); `dispatch`: aten ops that "
                  "synchronise on CUDA (`.item()`/`int()`/`bool()` of a tensor, `nonzero`, boolean indexing, blocking "
                  "copies between devices), counted by a TorchDispatchMode (eager only). `inside model` = the "
                  "model's forward is on the stack.", "",
                  "| what | model | method | per step or token | inside model | in our code | sites (per step or token) |",
                  "|---|---|---|---:|---:|---:|---|"]
        rows = []
        for cache, d in syncs.get("forward_decode", {}).items():
            rows += [(f"decode step, forward alone, {cache} cache", n, e, "per_step") for n, e in d.items()]
        for mode, d in syncs.get("generate_per_token", {}).items():
            rows += [(f"generated token, generate, {mode} cache", n, e, "per_token") for n, e in d.items()]
        for r in (result.get("generate") or {}).get("runs", []):
            for n, e in r.get("syncs_per_token", {}).items():
                rows.append((f"generated token, generate, static cache + compile (b{r['batch_size']})", n, e, "per_token"))
        rows += [("training step (fwd + bwd, batch 1)", n, e, "per_step") for n, e in syncs.get("train_step", {}).items()]
        for what, name, e, key in rows:
            for kind, k in e.items():
                sfx = "step" if key == "per_step" else "token"
                sites = k["sites"] if key == "per_step" else k["sites_per_token"]
                site_text = "; ".join(f"{v:g}x {s}" for s, v in list(sites.items())[:4]) or "-"
                lines.append(f"| {what} | {name} | {kind} | {f(k[key])} | {f(k[f'in_model_forward_{key}'])} | "
                             f"{f(k[f'in_our_code_{key}'])} | {site_text} |")
        lines.append("")
    prof = dict(result.get("profiles") or {})
    for r in (gen or {}).get("runs", []):
        if r.get("profile"):
            prof[f"generate, {r['mode']}, batch {r['batch_size']} (per new token of a 16-token generate)"] = r["profile"]
    if prof:
        lines += ["## Profiles (where the time goes)", ""]
        for label, d in prof.items():
            for name, p in d.items():
                head = f"- {label}, {name}: {p['wall_ms_per_step']:.2f} ms/step wall"
                if "kernels_per_step" in p:
                    head += (f", {p['kernels_per_step']:.0f} kernels/step, GPU busy {p['gpu_busy_ms_per_step']:.2f} ms "
                             f"({100 * (p['gpu_busy_fraction'] or 0):.0f}%)")
                top = "; ".join(f"{100 * t['share']:.0f}% {t['name'][:70]}" for t in p["top"][:5])
                lines.append(f"{head}. Top: {top}. Full table: `{p['file']}`.")
        lines.append("")
    g = result.get("goals")
    if g:
        lines += ["## Goals", "", "| goal | measured | met |", "|---|---:|---|"]
        for item in g:
            v = item["value"]
            v = pct(v) if "MFU" in item["goal"] else f(v, ".3f")
            lines.append(f"| {item['goal']} | {v} | {'-' if item['met'] is None else ('yes' if item['met'] else 'NO')} |")
        lines.append("")
    if result.get("skipped") or result.get("errors") or (result.get("syncs") or {}).get("errors"):
        lines += ["## Skipped or failed", ""]
        lines += [f"- skipped {s['item']}: {s['reason']}" for s in result.get("skipped", [])]
        lines += [f"- error in {e['section']}: {e['error'][:300]}" for e in result.get("errors", [])]
        lines += [f"- error in syncs, {k}: {e[:300]}" for k, e in (result.get("syncs") or {}).get("errors", {}).items()]
        lines.append("")
    lines.append(f"Elapsed {result.get('elapsed_s', 0):.0f}s.")
    return "\n".join(lines)


def write(result: dict, out_dir: Path, budget: Budget) -> None:
    """gpu.json, then gpu.md; a bug in the report must not lose the measurements."""
    result["elapsed_s"] = budget.elapsed()
    try:
        result["goals"] = goals(result)
    except Exception as exc:
        result["goals"] = [{"goal": f"(goals failed: {type(exc).__name__}: {exc})", "value": None, "met": None}]
    (out_dir / "gpu.json").write_text(json.dumps(result, indent=2, default=str))
    try:
        (out_dir / "gpu.md").write_text(markdown(result) + "\n")
    except Exception:
        (out_dir / "gpu.md").write_text("markdown failed, see gpu.json:\n\n```\n" + traceback.format_exc() + "```\n")


# ----------------------------------------------------------------------------- main

SECTIONS = ("parity", "matmul", "syncs", "tokens", "train", "profile", "generate", "train_compile")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--shape", choices=list(SETTINGS), default="124M")
    p.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--time_budget_s", type=float, default=420.0,
                   help="optional items (see ESTIMATE_S) start only while this much wall time is not used up")
    p.add_argument("--compile_timeout_s", type=float, default=150.0,
                   help="abandon a contender whose first compiled step/generate runs longer (SIGALRM); "
                        "never much past the end of --time_budget_s")
    p.add_argument("--compile_train_batches", type=int, nargs="+", default=None,
                   help="batches of the compiled training runs, in order (default: the best batch, then --train_batches)")
    p.add_argument("--train_batches", type=int, nargs="+", default=None, help="fixed training batches (124M: 8)")
    p.add_argument("--max_batch", type=int, default=None, help="largest batch tried by the search (124M: 64)")
    p.add_argument("--gen_batches", type=int, nargs="+", default=None, help="generation batches (124M: 1 32)")
    p.add_argument("--new_tokens", type=int, default=None, help="new tokens per generate (124M: 128)")
    p.add_argument("--gen_dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--rounds", type=int, default=None, help="training rounds (124M: 5, x --steps per round)")
    p.add_argument("--gen_rounds", type=int, default=None, help="generation rounds (124M: 5)")
    p.add_argument("--skip_compile", action="store_true", help="no torch.compile: static cache runs eagerly")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak for MFU (default: data sheet)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False; use --device cpu")
    shape = bench.SHAPES[args.shape]
    S = dict(SETTINGS[args.shape])
    for key in ("train_batches", "max_batch", "gen_batches", "new_tokens", "rounds", "gen_rounds"):
        if getattr(args, key) is not None:
            S[key] = getattr(args, key)
    if S["prompt_tokens"] + max(S["new_tokens"], S["sync_tokens"][1]) > shape["context_length"]:
        raise ValueError(f"--new_tokens {S['new_tokens']}: prompt + new tokens exceed the context {shape['context_length']}")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.time_budget_s, 1.0 if (device.type == "cuda" and args.shape == "124M") else 0.0)
    warnings.filterwarnings("ignore", message=".*generation flags.*")
    raise_recompile_limits()
    if device.type == "cuda":
        torch._logging.set_logs(perf_hints=True, graph_breaks=True)  # CUDA-graph skips and graph breaks, in the log
    gen_dtype = getattr(torch, args.gen_dtype)

    env = environment(device)
    log(f"torch {env['torch']}, transformers {env['transformers']}, {env.get('gpu') or env['cpu_model']}, "
        f"C compiler {env['c_compiler']}, triton {env['triton']}")
    peak, peak_source = datasheet_peak(env, args.peak_tflops)
    result: dict = {
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in S.items()},
        "shape": shape,
        "flop_formula": bench.FLOP_FORMULA,
        "mfu_formula": MFU_FORMULA,
        "peak_bf16_flops": peak,
        "peak_source": peak_source,
        "goals_thresholds": {"train_ratio": TRAIN_RATIO_GOAL, "mfu": MFU_GOAL, "gen_b1": GEN_B1_GOAL, "gen_b32": GEN_B32_GOAL},
        "skipped": [],
        "errors": [],
    }
    on = set(args.sections)

    def section(name: str, fn: Callable[[], object], item: str | None = None):
        """Run one part; record an error instead of stopping; write the results after it."""
        if item and not budget.allows(item):
            reason = f"time budget: {budget.elapsed():.0f}s used of {args.time_budget_s:.0f}s, ~{ESTIMATE_S[item]}s needed"
            result["skipped"].append({"item": name, "reason": reason})
            log(f"skip {name}: {reason}")
            return None
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:
            result["errors"].append({"section": name, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()})
            log(f"ERROR in {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            free(device)
            return None
        finally:
            log(f"{name}: {time.perf_counter() - t0:.1f}s (total {budget.elapsed():.0f}s)")
            write(result, out_dir, budget)

    log(f"building models ({args.shape}) on {device}")
    M = build(shape, args.seed, device, gen_dtype)
    n_flop, fpt = bench.flops_per_token(shape)
    result["flops"] = {"n_params_nonembedding_incl_head": n_flop, "flops_per_token": fpt}
    def store(key: str, value) -> None:
        if value is not None:
            result[key] = value
            write(result, out_dir, budget)

    if "parity" in on:
        store("parity", section("parity", lambda: run_parity(M, shape, device)))
    if "matmul" in on:
        store("matmul", section("matmul", lambda: run_matmul(device, S["matmul_size"])))
    mm = result.get("matmul")
    if "syncs" in on:
        store("syncs", section("syncs", lambda: run_syncs(M, shape, S, device)))
    if "tokens" in on:
        store("fp32_tokens", section("tokens", lambda: run_fp32_tokens(M, shape, S, device)))

    train: dict = {"runs": [], "search": []}

    def batch_search():
        best = max(S["train_batches"])
        B = 16 if best < 16 and args.shape == "124M" else 2 * best
        while B <= S["max_batch"]:
            r = try_batch(M, shape, B, device)
            train["search"].append(r)
            log(f"batch {B}: {'fits' if r['fits'] else 'does not fit (' + r.get('failed', '') + ')'} {r['peak_step_gib']}")
            if not r["fits"]:
                break
            best, B = B, 2 * B
        train["best_batch"] = best
        return best

    if "train" in on or "train_compile" in on:
        result["train"] = train
        section("train batch search", batch_search, "train")
    best = train.get("best_batch") or max(S["train_batches"])
    train.setdefault("best_batch", best)
    batches = sorted(set(S["train_batches"]) | {best})
    if "train" in on:
        for B in batches:
            r = section(f"train eager b{B}", lambda B=B: run_train(M, shape, S, B, "eager", device, args, mm, peak), "train")
            if r:
                train["runs"].append(r)
                write(result, out_dir, budget)
    profiles: dict = {}
    if "profile" in on:
        result["profiles"] = profiles
        r = section("profile train eager", lambda: run_profile_train(M, shape, S, best, device, out_dir), "profile")
        if r:
            profiles[f"training step, eager, batch {best}"] = r
        r = section("profile decode", lambda: run_profile_decode(M, shape, S, device, out_dir), "profile")
        if r:
            profiles["decode step, forward alone, DynamicCache, batch 1"] = r
        write(result, out_dir, budget)

    gen: dict = {"runs": [], "dtype": args.gen_dtype}
    if "generate" in on:
        result["generate"] = gen
        for B in S["gen_batches"]:
            r = section(f"generate dynamic b{B}", lambda B=B: run_generate(M, shape, S, B, "dynamic", device, args, None, out_dir),
                        "generate_dynamic")
            if r:
                gen["runs"].append(r)
                write(result, out_dir, budget)

    def compile_limit() -> float:  # evaluated at each contender's first compiled call
        return budget.compile_limit(args.compile_timeout_s)

    def gen_static(B):
        r = section(f"generate static b{B}", lambda: run_generate(
            M, shape, S, B, "static", device, args, compile_limit, out_dir), "generate_static")
        if r:
            gen["runs"].append(r)
            write(result, out_dir, budget)

    def train_compiled(B):
        r = section(f"train compile b{B}", lambda: run_train(
            M, shape, S, B, "compile", device, args, mm, peak, compile_limit), "train_compile")
        if r:
            train["runs"].append(r)
            write(result, out_dir, budget)
        if r and B == best and "profile" in on and len(r["contenders"]) == 2:
            p = section("profile train compile", lambda: run_profile_train(M, shape, S, B, device, out_dir,
                                                                           M["compiled"], "compile"), "profile")
            if p:
                profiles[f"training step, torch.compile, batch {B}"] = p
                write(result, out_dir, budget)

    # The goals' measurements first: static cache (+ compile) at the first generation batch, compiled
    # training at the best batch; then the other generation batches and the other training batches
    # (--compile_train_batches replaces the training list).
    gen_order = S["gen_batches"] if "generate" in on else []
    train_order = (args.compile_train_batches or [best] + [b for b in batches if b != best]) \
        if "train_compile" in on and not args.skip_compile else []
    for B in gen_order[:1]:
        gen_static(B)
    for B in train_order[:1]:
        train_compiled(B)
    for B in gen_order[1:]:
        gen_static(B)
    for B in train_order[1:]:
        train_compiled(B)
    write(result, out_dir, budget)
    print((out_dir / "gpu.md").read_text(), flush=True)
    log(f"wrote {out_dir / 'gpu.json'} and {out_dir / 'gpu.md'} in {budget.elapsed():.0f}s")
    return result


if __name__ == "__main__":
    main()
