"""lm-evaluation-harness scores the model as it scores stock GPT-2: `--model hf` with
`trust_remote_code=True` on a saved folder, and the same on its GPT-2 export, over the local tasks in
tests/lm_eval_tasks (multiple choice, rolling perplexity, greedy generation), compared item by item."""

import json
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
REPO = TASKS_DIR.parents[1]
TASKS = ["gpt_scratch_mc", "gpt_scratch_ppl", "gpt_scratch_gen"]
CONTEXT = 32  # the context_length of conftest's gpt2_pair_dirs
# A loglikelihood is a float32 sum of per-token log-probabilities (each about -10, rounding about
# 1e-6) over up to ~80 tokens: the two models agree to ~4e-8 relative here. 1e-6 relative is 10x
# float32's epsilon; a wrong position or mask moves them by whole nats.
REL, ABS = 1e-6, 1e-5


@pytest.fixture(scope="module")
def runs(gpt2_pair_dirs):
    """{name: simple_evaluate result} for "ours" and "gpt2", with per-item samples."""
    task_manager = TaskManager(include_path=str(TASKS_DIR))
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the task files name their data relative to the repository root
        for name, path in gpt2_pair_dirs.items():
            results[name] = lm_eval.simple_evaluate(
                model="hf",
                model_args=f"pretrained={path},trust_remote_code=True,dtype=float32",
                tasks=TASKS,
                task_manager=task_manager,
                batch_size=4,
                device="cpu",
                log_samples=True,
                bootstrap_iters=0,
            )
    return results


def samples(runs, task):
    ours, gpt2 = (sorted(runs[n]["samples"][task], key=lambda s: s["doc_id"]) for n in ("ours", "gpt2"))
    assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in gpt2]
    assert len(ours) == sum(1 for _ in open(TASKS_DIR / f"{task.removeprefix('gpt_scratch_')}.jsonl"))
    return list(zip(ours, gpt2))


def test_our_class_was_evaluated(runs, gpt2_pair_dirs):
    config = json.loads((gpt2_pair_dirs["ours"] / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt_scratch.GPTScratchForCausalLM"
    assert runs["ours"]["config"]["model_args"].startswith(f"pretrained={gpt2_pair_dirs['ours']}")


def test_multiple_choice_loglikelihoods_match_gpt2(runs):
    values = []
    for ours, gpt2 in samples(runs, "gpt_scratch_mc"):
        assert ours["arguments"] == gpt2["arguments"]
        (ll_ours, greedy_ours), (ll_gpt2, greedy_gpt2) = zip(*ours["filtered_resps"]), zip(*gpt2["filtered_resps"])
        assert list(ll_ours) == pytest.approx(list(ll_gpt2), rel=REL, abs=ABS)
        assert greedy_ours == greedy_gpt2
        values += ll_ours
    assert len(set(values)) == len(values)  # real scores, not a constant
    for metric in ("acc,none", "acc_norm,none"):
        assert runs["ours"]["results"]["gpt_scratch_mc"][metric] == runs["gpt2"]["results"]["gpt_scratch_mc"][metric]


def test_rolling_perplexity_matches_gpt2(runs, gpt2_pair_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_pair_dirs["ours"])
    for ours, gpt2 in samples(runs, "gpt_scratch_ppl"):
        # Each document spans several windows of the model's context: the rolling windows are tested.
        assert len(tok(ours["target"]).input_ids) > 2 * CONTEXT
        assert ours["filtered_resps"][0] == pytest.approx(gpt2["filtered_resps"][0], rel=REL, abs=ABS)
    res_ours, res_gpt2 = (runs[n]["results"]["gpt_scratch_ppl"] for n in ("ours", "gpt2"))
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert res_ours[metric] == pytest.approx(res_gpt2[metric], rel=REL), metric
    assert 1.0 < res_ours["byte_perplexity,none"] < 256.0


def test_generations_match_gpt2(runs):
    generations = []
    for ours, gpt2 in samples(runs, "gpt_scratch_gen"):
        assert ours["filtered_resps"] == gpt2["filtered_resps"]
        generations.append(ours["filtered_resps"][0])
    assert all(generations) and len(set(generations)) > 1, generations
    assert runs["ours"]["results"]["gpt_scratch_gen"] == runs["gpt2"]["results"]["gpt_scratch_gen"]
