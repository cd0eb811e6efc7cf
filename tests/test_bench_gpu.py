"""Smoke test of benchmarks/bench_gpu.py on the CPU (tiny shape, no compile): every section runs and
writes complete JSON, greedy tokens of ours and GPT-2 agree in fp32, and the synchronisation counter
counts what it should. No timing assertions: speed is the benchmark's business."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import finite_positive, load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    return load_script(BENCH, "hf_gpt_scratch_bench_gpu")


@pytest.mark.slow  # the whole device script end to end on CPU
def test_bench_gpu_tiny_cpu_writes_complete_results(bench_gpu, tmp_path):
    bench_gpu.main(["--device", "cpu", "--shape", "tiny", "--skip_compile", "--output_dir", str(tmp_path),
                    "--rounds", "1", "--gen_rounds", "1", "--max_batch", "4"])
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.md").read_text().startswith("# hf_gpt_scratch GPU benchmark")
    assert result["errors"] == [] and result["skipped"] == []
    env = result["environment"]
    assert env["torch"] and env["transformers"] and env["device"] == "cpu"
    assert "6*N" in result["mfu_formula"]
    assert result["parity"]["ours_vs_gpt2_fp32"] < 1e-4  # identical weights

    # greedy tokens in fp32: the same model, the same tokens
    tokens = result["fp32_tokens"]
    assert tokens["rows"] == 4 and tokens["rows_equal"] == 4 and tokens["token_match_fraction"] == 1.0

    train = result["train"]
    assert [s["batch_size"] for s in train["search"]] == [4] and train["best_batch"] == 4
    assert [(r["mode"], r["batch_size"]) for r in train["runs"]] == [("eager", 2), ("eager", 4)]
    for run in train["runs"]:
        assert run["tokens_per_step"] == run["batch_size"] * 32
        assert set(run["contenders"]) == {"ours", "gpt2"}
        for name, c in run["contenders"].items():
            for key in ("tokens_per_s_median", "step_ms_median", "ratio_vs_gpt2", "paired_ratio_median",
                        "mfu_measured_mm", "static_gib", "loss_last"):
                assert finite_positive(c[key]), (name, key, c[key])
            assert len(c["step_s"]) == 1

    gen = result["generate"]["runs"]
    assert [(r["mode"], r["batch_size"]) for r in gen] == [("dynamic", 1), ("dynamic", 4), ("static", 1), ("static", 4)]
    for run in gen:
        assert run["new_tokens"] == 16 and set(run["contenders"]) == {"ours", "gpt2"}
        assert run["same_tokens"]["rows"] == run["batch_size"]
        for c in run["contenders"].values():
            assert finite_positive(c["new_tokens_per_s_median"]) and finite_positive(c["ratio_vs_gpt2"])

    syncs = result["syncs"]
    for cache in ("dynamic", "static"):
        assert set(syncs["forward_decode"][cache]) == {"ours", "gpt2"}
    for name in ("ours", "gpt2"):
        per_token = syncs["generate_per_token"]["dynamic"][name]["dispatch"]
        # generate's stopping check reads a tensor on the host once per token, for every model
        assert per_token["per_token"] >= 1
        assert syncs["train_step"][name]["dispatch"]["total"] >= 0

    profiles = result["profiles"]
    assert {"training step, eager, batch 4", "decode step, forward alone, DynamicCache, batch 1"} <= set(profiles)
    for by_model in profiles.values():
        for p in by_model.values():
            assert p["top"] and (tmp_path / p["file"]).is_file()
    assert result["goals"] and all("met" in g for g in result["goals"])


def test_sync_recorder_counts_host_reads_and_cuda_warnings(bench_gpu, monkeypatch):
    x = torch.arange(6.0)
    rec = bench_gpu.SyncRecorder("ours", torch.device("cpu"))
    with rec():
        x.argmax()  # stays on the device: no sync
        x.sum().item()
        int(x.max())
        x.nonzero()
        x[x > 2]  # boolean indexing
    summary = rec.summary(steps=2)["dispatch"]
    assert summary["total"] == 4 and summary["per_step"] == 2
    assert summary["in_model_forward_per_step"] == 0 and summary["in_our_code_per_step"] == 0
    assert all("test_bench_gpu.py" in site for site in summary["sites"])

    # the CUDA path: each sync-debug warning is recorded with its source line (no GPU needed to check the hook)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    rec = bench_gpu.SyncRecorder("ours", torch.device("cuda"), dispatch=False)
    with rec():
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    summary = rec.summary(steps=1)
    assert set(summary) == {"cuda"} and summary["cuda"]["total"] == 1
    assert "test_bench_gpu.py" in next(iter(summary["cuda"]["sites"]))


def test_batch_search_stops_at_out_of_memory_and_compile_timeout_fires(bench_gpu, monkeypatch):
    shape = bench_gpu.bench.SHAPES["tiny"]
    M = bench_gpu.build(shape, 0, torch.device("cpu"), torch.bfloat16)
    real_step = bench_gpu.make_step

    def step_that_runs_out_of_memory_for_gpt2(model, opt, x, device):
        step = real_step(model, opt, x, device)
        if type(model).__name__ == "GPT2LMHeadModel":
            def step():
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return step

    monkeypatch.setattr(bench_gpu, "make_step", step_that_runs_out_of_memory_for_gpt2)
    res = bench_gpu.try_batch(M, shape, 4, torch.device("cpu"))
    assert res["fits"] is False and res["failed"] == "gpt2" and res["error"] == "OutOfMemoryError"

    with pytest.raises(bench_gpu.CompileTimeout):
        with bench_gpu.time_limit(0.2):
            while True:
                pass
