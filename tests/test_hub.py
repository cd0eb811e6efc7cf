"""Hub push and pull, offline: the model card, the pushed file set, and loading by repo id.

The hub client is replaced from OUTSIDE the code under test: `tests/hub_recorder.py` is copied as
`sitecustomize.py` into a folder put first on PYTHONPATH of the recipe's subprocess, where it
patches `huggingface_hub.HfApi` to write each commit into a hub-cache layout. The later recipes
start from the pushed pretraining repo by its id; a fresh process in which `hf_gpt_scratch` cannot
be imported then loads the repos by id with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at that
cache: what a Hub user gets.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, recipe_env, run_command, tiny_config

from hf_gpt_scratch.training import hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_recorder  # noqa: E402

DATA = Path(os.environ["HF_GPT_SCRATCH_DATA"])
FAKE_TOKEN = "hf_FakeLoginTokenForTests0123456789abcdefXYZ"  # the "login" of the recipe processes
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CODE = {"configuration_gpt_scratch.py", "modeling_gpt_scratch.py", "loss_gpt_scratch.py"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json"}  # what the GPT-2 BPE tokenizer saves
MODEL = {"config.json", "generation_config.json", "model.safetensors"}
ADAPTER = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
RESULTS = {"all_results.json", "train_results.json", "eval_results.json", "test_results.json"}
PRETRAIN_FILES = MODEL | CODE | TOKENIZER | RESULTS - {"test_results.json"} | {"README.md", "loss.png",
                                                                              "samples.json"}
INSTRUCT_FILES = MODEL | CODE | TOKENIZER | ADAPTER | RESULTS | {"README.md", "loss.png", "responses.json"}
PREFERENCE_FILES = MODEL | CODE | TOKENIZER | RESULTS | {"README.md", "loss.png", "reward_margins.png",
                                                         "responses.json"}
CLASSIFY_FILES = ({"config.json", "model.safetensors"} | CODE | TOKENIZER | ADAPTER | RESULTS
                  | {"README.md", "loss.png", "accuracy.png", "confusion_matrix.png"})

TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=128,drop_rate=0.0"
# peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _snapshot(cache: Path, repo_id: str, revision: str = "main") -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    return repo / "snapshots" / (repo / "refs" / revision).read_text().strip()


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _calls(cache: Path) -> list[dict]:
    path = cache / "hub_calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_clean(folder: Path) -> None:
    """No pickles, training states, checkpoints or tokens anywhere under `folder`."""
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        assert not re.search(r"\.(bin|pt|pth|pkl|ckpt)$|(^|/)(checkpoint-|optimizer|scheduler|rng_state|training_args|"
                             r"trainer_state)", name), name
        if path.is_file():
            data = path.read_bytes()
            assert FAKE_TOKEN.encode() not in data and not TOKEN_RE.search(data), f"token in {name}"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """(cache, env): the recorded hub cache, and the environment of a process that pushes there
    (and loads the pushed repos from there)."""
    root = tmp_path_factory.mktemp("hub")
    (root / "site").mkdir()
    shutil.copy(Path(hub_recorder.__file__), root / "site" / "sitecustomize.py")
    cache = root / "cache"
    # the package as this process imports it: the installed one, or a checkout on PYTHONPATH
    pythonpath = os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")]))
    return cache, dict(PYTHONPATH=pythonpath, HUB_RECORDER_CACHE=cache, HF_HUB_CACHE=cache, HF_TOKEN=FAKE_TOKEN)


def _run(script: str, args: list, env: dict):
    return run_command([sys.executable, REPO / "recipes" / script, *args, "--disable_tqdm", "true"], timeout=300, **env)


@pytest.fixture(scope="module")
def pushed_runs(hub_cache, tmp_path_factory):
    """A tiny pretrain run (with checkpoints on disk, hub_strategy all_checkpoints, a private repo),
    then LoRA instruct and classify runs that start from the pushed repo by its id, all pushed."""
    if not (DATA / "the-verdict.txt").is_file() or not (DATA / "instruction-data.json").is_file():
        pytest.skip(f"book data not found in {DATA}")
    cache, env = hub_cache
    work = tmp_path_factory.mktemp("runs")
    pre = work / "pretrain"
    _run("pretrain.py", [
        "--tokenizer_name", "gpt2", "--config_overrides", TINY, "--block_size", 128, "--max_steps", 4,
        "--per_device_train_batch_size", 4, "--logging_steps", 2, "--eval_steps", 2, "--max_eval_samples", 4,
        "--max_new_tokens", 5, "--save_strategy", "steps", "--save_steps", 2, "--hub_strategy", "all_checkpoints",
        "--output_dir", pre, "--push_to_hub", "--hub_model_id", "org/tiny-pretrain", "--hub_private_repo", "true",
    ], env)
    ins = work / "instruct"
    _run("instruct.py", [
        "--model_name_or_path", "org/tiny-pretrain", "--output_dir", ins, "--max_train_samples", 16,
        "--max_eval_samples", 4, "--max_test_samples", 4, "--max_new_tokens", 6, "--max_steps", 3,
        "--per_device_train_batch_size", 4, "--eval_steps", 3, "--logging_steps", 1,
        "--push_to_hub", "--hub_model_id", "org/tiny-instruct",
    ], env)
    if (DATA / "instruction-data-with-preference.json").is_file():
        _run("preference.py", [
            "--model_name_or_path", "org/tiny-instruct", "--output_dir", work / "preference", "--use_lora", "false",
            "--max_train_samples", 8, "--max_eval_samples", 4, "--max_test_samples", 4, "--num_samples", 1,
            "--max_new_tokens", 4, "--max_steps", 2, "--per_device_train_batch_size", 4, "--eval_steps", 1,
            "--logging_steps", 1, "--push_to_hub", "--hub_model_id", "org/tiny-preference",
        ], env)
    if (DATA / "SMSSpamCollection.tsv").is_file():
        _run("classify.py", [
            "--model_name_or_path", "org/tiny-pretrain", "--output_dir", work / "classify", "--trainable", "lora",
            "--max_train_samples", 16, "--max_eval_samples", 8, "--max_test_samples", 8, "--max_steps", 2,
            "--per_device_train_batch_size", 4, "--logging_steps", 1, "--max_seq_length", 64,
            "--push_to_hub", "--hub_model_id", "org/tiny-classify",
        ], env)
    return cache, pre, ins


LOADER = r'''
import json, sys
sys.modules["hf_gpt_scratch"] = None  # a Hub user does not have the package
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, pipeline)
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftModel

pre, ins, gpt2, pre_dir = sys.argv[1:5]
out = {}
ids = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(0))

def logits(model):
    with torch.no_grad():
        return model(input_ids=ids).logits

config = AutoConfig.from_pretrained(pre, trust_remote_code=True)
out["config"] = [type(config).__name__, config.model_type, config.n_layers, config.emb_dim]
out["base"] = type(AutoModel.from_pretrained(pre, trust_remote_code=True)).__name__
lm = AutoModelForCausalLM.from_pretrained(pre, trust_remote_code=True).eval()
out["lm"] = type(lm).__name__
out["lm_module"] = type(lm).__module__
local = AutoModelForCausalLM.from_pretrained(pre_dir, trust_remote_code=True).eval()
out["lm_vs_local"] = (logits(lm) - logits(local)).abs().max().item()
clf = AutoModelForSequenceClassification.from_pretrained(pre, trust_remote_code=True, num_labels=3)
out["clf"] = [type(clf).__name__, clf.config.num_labels]
tok = AutoTokenizer.from_pretrained(pre, trust_remote_code=True)
out["tok"] = tok("Hello, world")["input_ids"]
gen = pipeline("text-generation", model=pre, trust_remote_code=True)
out["pre_generated"] = gen("Every effort moves you", max_new_tokens=5, do_sample=False)[0]["generated_text"]

merged = AutoModelForCausalLM.from_pretrained(ins, trust_remote_code=True).eval()
reference = logits(merged)
gen = pipeline("text-generation", model=ins, trust_remote_code=True)
out["ins_generated"] = gen("### Instruction:\nSay hi.\n\n### Response:\n", max_new_tokens=5, do_sample=False)[0]["generated_text"]
snap = snapshot_download(ins)
adapter_config = json.load(open(snap + "/adapter/adapter_config.json"))
out["adapter_config"] = {k: adapter_config[k] for k in ("base_model_name_or_path", "task_type")}
# 1. the cached adapter folder: PEFT loads the base from base_model_name_or_path by itself
peft1 = AutoPeftModelForCausalLM.from_pretrained(snap + "/adapter", trust_remote_code=True).eval()
out["peft_snapshot_type"] = type(peft1).__name__
out["peft_snapshot_vs_merged"] = (logits(peft1) - reference).abs().max().item()
# 2. the card's snippet: the base by its id, the adapter by repo id and subfolder. peft 0.21 offline looks
#    for <subfolder>/<subfolder>/adapter_model.safetensors in the cache (its online path is right): undo
#    that doubling only, to test the rest of the path.
base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"], trust_remote_code=True).eval()
out["base_vs_merged"] = (logits(base) - reference).abs().max().item()
import peft.utils.save_and_load as sl
_download = sl.hf_hub_download
def _fixed(repo_id, filename, *args, subfolder=None, **kwargs):
    if subfolder and filename.startswith(subfolder + "/"):
        filename = filename[len(subfolder) + 1:]
    return _download(repo_id, filename, *args, subfolder=subfolder, **kwargs)
sl.hf_hub_download = _fixed
peft2 = PeftModel.from_pretrained(base, ins, subfolder="adapter").eval()
out["peft_subfolder_vs_merged"] = (logits(peft2) - reference).abs().max().item()

# the classifier and its adapter (a SEQ_CLS LoRA with a trained copy of the head)
try:
    cls_snap = snapshot_download("org/tiny-classify")
except LocalEntryNotFoundError:
    cls_snap = None
if cls_snap:
    clf = AutoModelForSequenceClassification.from_pretrained("org/tiny-classify", trust_remote_code=True).eval()
    out["classify_labels"] = clf.config.id2label
    peft_clf = AutoPeftModelForSequenceClassification.from_pretrained(cls_snap + "/adapter", trust_remote_code=True).eval()
    out["classify_peft_vs_merged"] = (logits(peft_clf) - logits(clf)).abs().max().item()
    pred = pipeline("text-classification", model="org/tiny-classify", trust_remote_code=True)("WIN a prize now")
    out["classify_pipeline"] = pred[0]["label"]

# the GPT-2 export: no remote code at all
g = AutoModelForCausalLM.from_pretrained(gpt2).eval()
out["gpt2"] = [type(g).__name__, type(g).__module__]
out["gpt2_vs_pre"] = (logits(g) - logits(lm)).abs().max().item()
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def gpt2_export(pushed_runs, hub_cache, tmp_path_factory):
    """The pushed pretrain model exported with the convert CLI (--to gpt2, straight from the hub id) and pushed."""
    out = tmp_path_factory.mktemp("export") / "gpt2"
    run_command([sys.executable, "-m", "hf_gpt_scratch.training.convert_cli", "--model_name_or_path", "org/tiny-pretrain",
                 "--to", "gpt2", "--output_dir", out, "--push_to_hub", "--hub_model_id", "org/tiny-gpt2"],
                timeout=300, **hub_cache[1])
    return out


@pytest.fixture(scope="module")
def loaded(pushed_runs, gpt2_export, hub_cache, tmp_path_factory):
    cache, pre = hub_cache[0], pushed_runs[1]
    env = {k: v for k, v in recipe_env().items() if k not in ("PYTHONPATH", "HUB_RECORDER_CACHE", "HF_TOKEN")}
    env.update(HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp_path_factory.mktemp("modules")))
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, "org/tiny-pretrain", "org/tiny-instruct", "org/tiny-gpt2", str(pre)],
        cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1][len("RESULT"):])


# --------------------------------------------------------------------------------------------
# The pushed files
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_pretrain_pushes_exactly_the_expected_files(pushed_runs):
    cache, pre, _ = pushed_runs
    snap = _snapshot(cache, "org/tiny-pretrain")
    assert _tree(snap) == PRETRAIN_FILES
    # what was left out existed: checkpoints with optimizer states (hub_strategy all_checkpoints was asked)
    checkpoints = sorted(pre.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "optimizer.pt").is_file()
    assert (pre / "README.md").read_bytes() == (snap / "README.md").read_bytes()
    assert (snap / "loss.png").read_bytes()[:8] == PNG_MAGIC
    _assert_clean(snap)


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_instruct_pushes_merged_model_and_adapter_over_its_hub_base(pushed_runs):
    cache, _, ins = pushed_runs
    snap = _snapshot(cache, "org/tiny-instruct")
    assert _tree(snap) == INSTRUCT_FILES
    # the adapter names the real base, the repo the run started from, as PEFT recorded it
    assert json.loads((snap / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-pretrain"
    assert (snap / "adapter" / "adapter_config.json").read_bytes() == (ins / "adapter" / "adapter_config.json").read_bytes()
    _assert_clean(snap)


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_preference_pushes_the_tuned_model(pushed_runs):
    cache, _, _ = pushed_runs
    if not (cache / "models--org--tiny-preference").is_dir():
        pytest.skip("the preference data is not available")
    snap = _snapshot(cache, "org/tiny-preference")
    assert _tree(snap) == PREFERENCE_FILES
    assert "DPOTrainer" in (snap / "README.md").read_text() and (snap / "reward_margins.png").read_bytes()[:8] == PNG_MAGIC
    _assert_clean(snap)


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_classify_pushes_classifier_and_adapter(pushed_runs, loaded):
    cache, _, _ = pushed_runs
    if not (cache / "models--org--tiny-classify").is_dir():
        pytest.skip("the SMS data is not available")
    snap = _snapshot(cache, "org/tiny-classify")
    assert _tree(snap) == CLASSIFY_FILES
    config = json.loads((snap / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == "org/tiny-pretrain"
    _assert_clean(snap)
    assert loaded["classify_labels"] == {"0": "ham", "1": "spam"}
    assert loaded["classify_peft_vs_merged"] < 1e-4
    assert loaded["classify_pipeline"] in ("ham", "spam")


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_commits_and_repos(pushed_runs):
    cache, _, _ = pushed_runs
    calls = _calls(cache)
    commits = {}
    for call in calls:
        if call["call"] == "create_commit":
            commits.setdefault(call["repo_id"], []).append(call)
    # one commit per run: the Trainer's own push (the whole output_dir, checkpoints) never ran
    assert {repo: len(c) for repo, c in commits.items() if repo != "org/tiny-gpt2"} == {
        "org/tiny-pretrain": 1, "org/tiny-instruct": 1,
        **{repo: 1 for repo in ("org/tiny-classify", "org/tiny-preference") if repo in commits}}
    assert set(commits["org/tiny-instruct"][0]["added"]) == INSTRUCT_FILES
    assert not [c for c in calls if c["call"] == "create_branch"]
    # tokens come from the login: nobody passed one explicitly
    assert {c["token"] for c in calls} == {"None"}
    private = {c["repo_id"]: c["private"] for c in calls if c["call"] == "create_repo"}
    assert private["org/tiny-pretrain"] is True and private["org/tiny-instruct"] is None


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_cards_of_the_runs(pushed_runs):
    from huggingface_hub import ModelCard

    cache, _, _ = pushed_runs
    pre = ModelCard.load(_snapshot(cache, "org/tiny-pretrain") / "README.md")
    assert pre.data.license == "apache-2.0" and pre.data.library_name == "transformers"
    assert pre.data.pipeline_tag == "text-generation"
    assert {"hf_gpt_scratch", "gpt_scratch", "llms-from-scratch", "custom_code", "text-generation"} <= set(pre.data.tags)
    metrics = {r.metric_type: r.metric_value for r in pre.data.eval_results}
    results = json.loads((_snapshot(cache, "org/tiny-pretrain") / "all_results.json").read_text())
    assert metrics == {"loss": results["eval_loss"], "perplexity": results["perplexity"]}
    assert 'from_pretrained("org/tiny-pretrain", trust_remote_code=True)' in pre.text
    assert "## Intended use and limits" in pre.text and "| learning rate |" in pre.text

    ins = ModelCard.load(_snapshot(cache, "org/tiny-instruct") / "README.md")
    assert {"peft", "lora"} <= set(ins.data.tags) and ins.data.base_model == "org/tiny-pretrain"
    results = json.loads((_snapshot(cache, "org/tiny-instruct") / "all_results.json").read_text())
    by_type = {r.metric_type: (r.metric_value, r.dataset_split) for r in ins.data.eval_results}
    assert by_type == {"rouge": (results["rouge_l_after"], "test"), "loss": (results["test_loss_after"], "test")}
    assert 'PeftModel.from_pretrained(base, "org/tiny-instruct", subfolder="adapter")' in ins.text
    assert 'AutoModelForCausalLM.from_pretrained("org/tiny-pretrain", trust_remote_code=True)' in ins.text
    assert "| LoRA rank | 16 |" in ins.text


# --------------------------------------------------------------------------------------------
# Loading by repo id, without the package
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_every_head_and_the_tokenizer_load_from_the_hub(loaded):
    assert loaded["config"] == ["GPTScratchConfig", "gpt_scratch", 2, 32]
    assert loaded["base"] == "GPTScratchModel"
    assert loaded["lm"] == "GPTScratchForCausalLM"
    assert loaded["lm_module"].startswith("transformers_modules.")  # the shipped code, not the package
    assert loaded["lm_vs_local"] == 0.0
    assert loaded["clf"] == ["GPTScratchForSequenceClassification", 3]
    assert loaded["tok"] == [15496, 11, 995]


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_pipelines_generate(loaded):
    assert loaded["pre_generated"].startswith("Every effort moves you")
    assert len(loaded["pre_generated"]) > len("Every effort moves you")
    assert loaded["ins_generated"].startswith("### Instruction:")


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_the_adapter_loads_over_its_base(loaded):
    assert loaded["adapter_config"] == {"base_model_name_or_path": "org/tiny-pretrain", "task_type": "CAUSAL_LM"}
    assert loaded["peft_snapshot_type"] == "PeftModelForCausalLM"
    # the adapter is not a no-op, and the base + adapter is the merged model
    assert loaded["base_vs_merged"] > 1e-3
    for key in ("peft_snapshot_vs_merged", "peft_subfolder_vs_merged"):
        assert loaded[key] < 1e-4, (key, loaded[key])


@pytest.mark.slow  # four recipe runs pushed through the recorded hub (about a minute)
def test_gpt2_export_needs_no_remote_code(gpt2_export, hub_cache, loaded):
    from huggingface_hub import ModelCard

    snap = _snapshot(hub_cache[0], "org/tiny-gpt2")
    assert _tree(snap) == MODEL | TOKENIZER | {"README.md"}  # no .py files
    card = ModelCard.load(snap / "README.md")
    assert "custom_code" not in card.data.tags and "gpt2" in card.data.tags
    assert card.data.base_model == "org/tiny-pretrain"
    assert "trust_remote_code" not in card.text
    assert loaded["gpt2"] == ["GPT2LMHeadModel", "transformers.models.gpt2.modeling_gpt2"]
    assert loaded["gpt2_vs_pre"] < 1e-4


# --------------------------------------------------------------------------------------------
# Units: the card, the file selection, the safety checks, the flags
# --------------------------------------------------------------------------------------------


def _fake_run(folder: Path) -> Path:
    from hf_gpt_scratch import GPTScratchForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    GPTScratchForCausalLM(tiny_config()).save_pretrained(folder)
    return folder


CLASSIFY_RESULTS = {
    "trainable": "last_block", "trainable_parameters": 1234, "eval_accuracy": 0.91, "eval_f1": 0.9, "test_accuracy": 0.95, "test_f1": 0.949,
    "test_precision": 0.96, "test_recall": 0.94, "baseline_tfidf_test_accuracy": 0.97, "train_runtime": 75.5,
    "test_confusion_matrix": [[140, 10], [5, 145]], "label_names": ["ham", "spam"], "world_size": 1,
}
INSTRUCT_RESULTS = {
    "finetuning": "lora", "test_loss_before": 3.2, "test_loss_after": 1.1, "rouge_l_before": 0.05,
    "rouge_l_after": 0.41, "judge_model": "llama3", "judge_mean_score": 47.5, "lora_r": 8, "max_new_tokens": 64,
    "runtime": 4000.0,
}
PREFERENCE_RESULTS = {
    "finetuning": "full", "beta": 0.1, "loss_type": "sigmoid_norm", "test_loss_before": 0.6931, "test_loss_after": 0.61,
    "test_reward_margin_before": 0.0, "test_reward_margin_after": 0.4, "test_reward_accuracy_before": 0.0,
    "test_reward_accuracy_after": 0.75, "eval_reward_accuracy_after": 0.7, "n_train": 40, "n_validation": 5,
    "n_test": 4,
}
PRETRAIN_RESULTS = {"eval_loss": 3.75, "perplexity": math.exp(3.75), "initial_eval_loss": 10.9,
                    "num_input_tokens_seen": 1000,
                    "samples": [{"prompt": "Every effort", "completion": " moves you"}], "train_runtime": 12.5}


@pytest.mark.parametrize("task, results, metrics", [
    ("pretrain", PRETRAIN_RESULTS, {("validation", "loss"): "eval_loss", ("validation", "perplexity"): "perplexity"}),
    ("classify", CLASSIFY_RESULTS, {(split, m): f"{p}_{m}" 
                                    for split, p in (("validation", "eval"), ("test", "test"))
                                    for m in ("accuracy", "f1", "precision", "recall") if f"{p}_{m}" in CLASSIFY_RESULTS}),
    # an old results.json's judge score is not the recipe's (examples/judge.py writes responses_scored.json)
    ("instruct", INSTRUCT_RESULTS, {("test", "rouge"): "rouge_l_after", ("test", "loss"): "test_loss_after"}),
    ("preference", PREFERENCE_RESULTS, {("test", "accuracy"): "test_reward_accuracy_after", ("test", "loss"): "test_loss_after",
                                        ("test", "reward_margin"): "test_reward_margin_after"}),
])
def test_card_metadata_and_text(tmp_path, task, results, metrics):
    from huggingface_hub import ModelCard
    from transformers import TrainingArguments

    out = _fake_run(tmp_path / "run")
    args = TrainingArguments(output_dir=str(out), learning_rate=3e-4, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, seed=7, warmup_steps=0.1, report_to="none", use_cpu=True)
    card = ModelCard.load(hub.write_model_card(out, results, task, training_args=args, repo_id="org/card-test"))
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        key: results[name] for key, name in metrics.items()}
    assert card.data.model_name == "card-test" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == ("text-classification" if task == "classify" else "text-generation")
    text = card.text
    for section in ("## What the model is", "## How to use it", "## How it was trained", "## Results",
                    "## Intended use and limits", "| parameters | 32,512 |"):
        assert section in text
    assert "| learning rate | 0.0003 |" in text and "| effective batch size | 8 |" in text and "| seed | 7 |" in text
    assert "| warmup | 10% of the steps |" in text  # transformers 5: warmup_steps < 1 is a ratio
    assert "trust_remote_code=True" in text and '"org/card-test"' in text
    if task == "classify":
        assert "AutoModelForSequenceClassification" in text and "| test accuracy | 0.95 | 0.97 |" in text
        assert "| trained part | last_block |" in text and "| trainable parameters | 1,234 |" in text
    if task == "instruct":
        assert "| test ROUGE-L | 0.05 | 0.41 |" in text and "judge" not in text
    if task == "preference":
        assert "| test reward accuracy | 0 | 0.75 |" in text and "| validation reward accuracy | – | 0.7 |" in text
        assert "DPOTrainer" in text and "| DPO beta | 0.1 |" in text
        assert "preference tuning (DPO) work;" in text
        assert "Used in this run: 40 train, 5\nvalidation and 4 test entries." in text  # --max_*_samples show
    if task == "pretrain":
        assert "*Every effort* →  moves you" in text and "| validation loss before training | 10.9 |" in text


def test_a_users_readme_is_never_replaced(tmp_path, monkeypatch, caplog):
    from transformers import TrainingArguments

    out = _fake_run(tmp_path / "run")
    mine = "# My notes\n\nNot a model card.\n"
    (out / "README.md").write_text(mine)
    with pytest.raises(ValueError, match="not replaced"):
        hub.write_model_card(out, {}, "pretrain")
    assert hub.finish_run(out, {}, "pretrain") is None and "No model card written" in caplog.text
    hub_recorder.install(tmp_path / "cache", setattr=monkeypatch.setattr)
    with pytest.raises(ValueError, match="not replaced"):  # a push would publish it: refused before training
        hub.prepare_push(TrainingArguments(output_dir=str(out), push_to_hub=True, report_to="none"))
    assert (out / "README.md").read_text() == mine and not _calls(tmp_path / "cache")
    (out / "README.md").unlink()
    hub.write_model_card(out, {"eval_loss": 2.0}, "pretrain")
    hub.write_model_card(out, {"eval_loss": 1.5}, "pretrain")  # our own card is rewritten
    assert "| validation loss | 1.5 |" in (out / "README.md").read_text()


def test_pushed_files_leave_out_training_state_and_pickles(tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    out = _fake_run(tmp_path / "run")
    for name in ("README.md", "all_results.json", "train_results.json", "samples.json", "responses.json",
                 "tokenizer.json", "training_args.bin", "trainer_state.json", "optimizer.pt", "rng_state.pth",
                 "pytorch_model.bin", "results.json", "notes.txt", ".env", "my_script.py",
                 "checkpoint-5/model.safetensors", "runs/events.out"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("{}")
    (out / "loss.png").write_bytes(PNG_MAGIC)
    pushed = {"README.md", "all_results.json", "train_results.json", "samples.json", "responses.json",
              "loss.png", "tokenizer.json"}
    assert set(hub.pushed_files(out)) == MODEL | CODE | pushed
    # upload_folder's ignore_patterns drop every pickle, training state and checkpoint, listed or not
    junk = ["training_args.bin", "trainer_state.json", "optimizer.pt", "x/scheduler.pt", "rng_state_1.pth", "a.pkl",
            "checkpoint-5/model.safetensors", "adapter/checkpoint-2/adapter_config.json"]
    assert not list(filter_repo_objects(junk, ignore_patterns=list(hub.NEVER)))
    # an adapter: its safetensors weights only, and only over a base on the Hub
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_model.bin").write_text("x")
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        hub.pushed_files(out)
    (out / "adapter" / "adapter_model.safetensors").write_text("x")
    assert ADAPTER <= set(hub.pushed_files(out))
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    assert not ADAPTER & set(hub.pushed_files(out))  # a local base: the merged model only
    # no safetensors weights: nothing to push
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hub.pushed_files(out)


def test_files_with_tokens_are_refused(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_scratch"}')
    hub.check_pushable(tmp_path, ["config.json"])
    (tmp_path / "all_results.json").write_text(json.dumps({"note": "hf_" + "a" * 34}))
    with pytest.raises(ValueError, match="all_results.json: it contains what looks like a Hugging Face"):
        hub.check_pushable(tmp_path, ["config.json", "all_results.json"])
    monkeypatch.setenv("HF_TOKEN", "my-own-login-token-value")
    (tmp_path / "README.md").write_text("logged in as my-own-login-token-value")
    with pytest.raises(ValueError, match="README.md"):
        hub.check_pushable(tmp_path, ["README.md"])
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors", metadata={"note": "my-own-login-token-value"})
    with pytest.raises(ValueError, match="model.safetensors"):
        hub.check_pushable(tmp_path, ["model.safetensors"])


def test_prepare_push_takes_over_from_the_trainer(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    hub_recorder.install(tmp_path / "cache", setattr=monkeypatch.setattr)
    assert hub.prepare_push(TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none")) is None
    args = TrainingArguments(output_dir=str(tmp_path / "my-run"), push_to_hub=True, report_to="none",
                             hub_strategy="checkpoint")
    target = hub.prepare_push(args)
    assert args.push_to_hub is False  # the Trainer pushes nothing, checkpoints included
    assert target == f"{hub_recorder.DEFAULT_USER}/my-run"  # the output folder's name, login's namespace
    assert [c["call"] for c in _calls(tmp_path / "cache")] == ["create_repo"]  # created before training
    with pytest.raises(ValueError, match="hf auth login"):
        hub.prepare_push(TrainingArguments(output_dir=str(tmp_path / "o"), push_to_hub=True, hub_token="hf_secret",
                                           report_to="none"))


def test_push_mirrors_the_run_and_hf_upload_retries(tmp_path, monkeypatch, hub_cache):
    cache = tmp_path / "cache"
    hub_recorder.install(cache, setattr=monkeypatch.setattr)
    out = _fake_run(tmp_path / "run")
    hub.write_model_card(out, {"eval_loss": 2.5}, "pretrain")
    (out / "old.png").write_bytes(PNG_MAGIC)
    hub.push_run(out, "org/retry")
    assert "old.png" in _tree(_snapshot(cache, "org/retry"))
    (out / "old.png").unlink()
    hub.push_run(out, "org/retry")
    assert _tree(_snapshot(cache, "org/retry")) == MODEL | CODE | {"README.md"}
    assert [c["deleted"] for c in _calls(cache) if c["call"] == "create_commit"] == [[], ["old.png"]]
    hub.push_run(out, "org/retry", revision="dev")  # a branch: created, main untouched
    assert _snapshot(cache, "org/retry", "dev") != _snapshot(cache, "org/retry")
    # a failed upload names the `hf upload` command that pushes the same files; run it
    (out / "new.png").write_bytes(PNG_MAGIC)
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda self, **kwargs: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError") as info:
        hub.push_run(out, "org/retry")
    command = shlex.split(str(info.value).splitlines()[-1])
    assert command[:5] == ["hf", "upload", "org/retry", str(out), "."]
    env = recipe_env(**{**hub_cache[1], "HUB_RECORDER_CACHE": cache, "HF_HUB_CACHE": cache})
    subprocess.run([str(Path(sys.executable).parent / "hf"), *command[1:]], env=env, check=True, capture_output=True)
    assert _tree(_snapshot(cache, "org/retry")) == MODEL | CODE | {"README.md", "new.png"}
    # a folder without weights fails before anything is sent
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.push_run(tmp_path / "empty", "org/none")
    assert not (cache / "models--org--none").exists()


def test_the_wheel_ships_the_card_template(tmp_path):
    """`pip install .` (not editable) gives a package that writes cards: the template is package data."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(REPO / "hf_gpt_scratch", src / "hf_gpt_scratch", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]  # offline here
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, str(src), "-w", tmp_path / "wheel"], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    assert "hf_gpt_scratch/training/model_card.md" in zipfile.ZipFile(wheel).namelist()
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True, capture_output=True)
    out = _fake_run(tmp_path / "run")
    code = ("import hf_gpt_scratch.training.hub as hub, sys; assert hub.__file__.startswith(sys.argv[1]), hub.__file__; "
            "hub.write_model_card(sys.argv[2], {'eval_loss': 2.0}, 'pretrain')")
    env = {**recipe_env(), "PYTHONPATH": str(tmp_path / "site")}
    subprocess.run([sys.executable, "-c", code, tmp_path / "site", out], env=env, check=True, cwd=tmp_path)
    assert "| validation loss | 2 |" in (out / "README.md").read_text()
