"""Smoke test of benchmarks/bench.py: the --quick run (tiny shape, one round) writes complete,
finite results. No timing assertions: speed is the benchmark's business, not the test suite's."""

import json
import math
from pathlib import Path

import pytest

from conftest import finite_positive, load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_bench_quick_writes_finite_results(tmp_path):
    pytest.importorskip("llms_from_scratch")
    bench = load_script(BENCH, "hf_gpt_scratch_bench")
    bench.main(["--quick", "--output_dir", str(tmp_path)])

    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# hf_gpt_scratch benchmark")
    env = result["environment"]
    for key in ("torch", "transformers", "cpu_model", "cpu_count", "torch_num_threads"):
        assert env[key], key
    assert "6*N" in result["flop_formula"]

    shape = result["shapes"]["tiny"]
    # identical weights in all three models
    assert shape["parity"]["ours_vs_gpt2"] < 1e-4 and shape["parity"]["book_vs_gpt2"] < 1e-4

    train = shape["train"]
    assert train["tokens_per_step"] == 2 * 32
    assert finite_positive(train["flops_per_token"])
    assert finite_positive(train["matmul"]["mm_square"]["gflops_median"])
    assert set(train["contenders"]) == {"ours", "gpt2", "book"}
    for name, c in train["contenders"].items():
        for key in ("tokens_per_s_median", "step_s_median", "ratio_vs_gpt2", "paired_ratio_median", "mfu",
                    "peak_step_mb", "mem_ratio_vs_gpt2", "static_mb", "loss_first"):
            assert finite_positive(c[key]), (name, key, c[key])
        assert len(c["step_s"]) == 1
    assert train["contenders"]["gpt2"]["ratio_vs_gpt2"] == 1.0
    # same model, same weights: the same parameter count for ours and GPT-2 (both tied)
    assert train["contenders"]["ours"]["n_params"] == train["contenders"]["gpt2"]["n_params"]

    gen = shape["generate"]
    assert set(gen["cache"]["contenders"]) == {"ours", "gpt2", "weights floor", "ours, no generate", "bare torch decode"}
    # the bounds decode the same tokens as GPT-2 (same weights, same math)
    assert gen["cache"]["tokens_match_gpt2"] == {"ours": True, "ours, no generate": True, "bare torch decode": True}
    # a sum with a difference of two timings (`generate`'s own cost): finite, but a loaded machine can
    # make it negative, so its sign is not a property of our code
    assert math.isfinite(gen["cache"]["bounds"]["bare_through_generate_ms_per_token"])
    assert set(gen["no_cache"]["contenders"]) == {"ours", "gpt2", "book"}
    for mode in ("cache", "no_cache"):
        assert gen[mode]["new_tokens"] == 8
        for name, c in gen[mode]["contenders"].items():
            for key in ("new_tokens_per_s_median", "ms_per_token_median", "ratio_vs_gpt2"):
                assert finite_positive(c[key]), (mode, name, key)
        assert all(isinstance(v, bool) for v in gen[mode]["tokens_match_gpt2"].values())
