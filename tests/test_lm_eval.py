"""lm-evaluation-harness scores the model as it scores stock GPT-2: `--model hf` with
`trust_remote_code=True` on a saved folder, and the same on its GPT-2 export, over the local tasks in
tests/lm_eval_tasks (multiple choice, rolling perplexity, greedy generation), compared item by item."""

from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
REPO = TASKS_DIR.parents[1]
TASKS = ["gpt_scratch_mc", "gpt_scratch_ppl", "gpt_scratch_gen"]
CONTEXT = 32  # the context_length of conftest's client_model_dirs
# A loglikelihood is a float32 sum of per-token log-probabilities (each about -6) over up to ~100
# tokens: the two models agree to 1.2e-7 relative here (4e-6 absolute). 1e-6 relative is 10x
# float32's epsilon; a wrong position or mask moves them by whole nats.
REL, ABS = 1e-6, 1e-5


@pytest.fixture(scope="module")
def runs(client_model_dirs):
    """{name: simple_evaluate result} for "ours" and "gpt2", with per-item samples."""
    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the task files name their data relative to the repository root
        for name, path in client_model_dirs.items():
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
    data = TASKS_DIR / f"{task.removeprefix('gpt_scratch_')}.jsonl"
    assert len(ours) == len(data.read_text(encoding="utf-8").splitlines())
    return list(zip(ours, gpt2))


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


def test_rolling_perplexity_matches_gpt2(runs, client_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(client_model_dirs["ours"])
    for ours, gpt2 in samples(runs, "gpt_scratch_ppl"):
        # Each document is longer than the model's context: it is scored in rolling windows.
        assert len(tok(ours["target"]).input_ids) > CONTEXT
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
