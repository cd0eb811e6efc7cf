"""`make demo` end to end in its --quick form (numbers meaningless, every step and file real)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_quick_runs_the_whole_journey(tmp_path, data_dir):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "hf_gpt_scratch.demo", "--quick", "--output_dir", str(out), "--data_dir", str(data_dir)],
        capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    expected = {
        "pretrain": {"val_loss", "val_perplexity", "train_tokens", "tokens_per_second"},
        "classify": {"val_accuracy", "test_accuracy", "test_f1", "baseline_tfidf_test_accuracy"},
        "instruct": {"test_loss_before", "test_loss_after", "rouge_l_before", "rouge_l_after"},
    }
    for step, keys in expected.items():
        assert set(summary[step]) == keys
        assert all(isinstance(v, (int, float)) and v == v for v in summary[step].values())
    assert 0.9 < summary["classify"]["baseline_tfidf_test_accuracy"] <= 1.0
    assert (out / "pretrain" / "loss.png").exists() and (out / "classify" / "confusion_matrix.png").exists()
    assert (out / "instruct" / "responses.json").exists()
    assert "summary:" in run.stdout
