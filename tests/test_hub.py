"""Hub push and pull, offline: the model card, the pushed file set, and loading by repo id.

The hub client is replaced from OUTSIDE the code under test: `tests/hub_recorder.py` is copied as
`sitecustomize.py` into a folder put first on PYTHONPATH of the recipe's subprocess, where it
patches `huggingface_hub.HfApi` to write each commit into a hub-cache layout. A fresh process in
which `hf_gpt_scratch` cannot be imported then loads the repos by id with HF_HUB_OFFLINE=1 and
HF_HUB_CACHE pointing at that cache: what a Hub user gets.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_gpt_scratch  # noqa: F401
from hf_gpt_scratch import hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_recorder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HF_GPT_SCRATCH_DATA", ROOT.parent / "shared" / "data"))
FAKE_TOKEN = "hf_FakeLoginTokenForTests0123456789abcdefXYZ"  # the "login" of the recipe processes
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CODE = {"configuration_gpt_scratch.py", "modeling_gpt_scratch.py", "loss_gpt_scratch.py"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json"}  # what the GPT-2 BPE tokenizer saves
MODEL = {"config.json", "generation_config.json", "model.safetensors"}
PRETRAIN_FILES = MODEL | CODE | TOKENIZER | {"README.md", "loss.png", "results.json"}
INSTRUCT_FILES = (
    MODEL | CODE | TOKENIZER
    | {"README.md", "loss.png", "results.json", "responses.json", "adapter/adapter_config.json",
       "adapter/adapter_model.safetensors"}
)
BASE_FILES = MODEL | CODE | {"adapter/config.json", "adapter/generation_config.json", "adapter/model.safetensors"}
CLASSIFY_FILES = (
    {"config.json", "model.safetensors"} | CODE | TOKENIZER
    | {"README.md", "loss.png", "accuracy.png", "confusion_matrix.png", "results.json", "adapter/adapter_config.json",
       "adapter/adapter_model.safetensors"}
)

TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=128,drop_rate=0.0"
# peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _snapshot(cache: Path, repo_id: str, revision: str = "main") -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else (repo / "refs" / revision).read_text().strip()
    return repo / "snapshots" / sha


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _calls(cache: Path) -> list[dict]:
    path = cache / "hub_calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_clean(folder: Path) -> None:
    """No pickles, training states, checkpoints or tokens anywhere under `folder`."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        assert not re.search(r"\.(bin|pt|pth|pkl|ckpt)$", name), name
        assert not re.search(r"(^|/)(checkpoint-|optimizer|scheduler|rng_state|training_args|trainer_state)", name), name
        data = path.read_bytes()
        assert FAKE_TOKEN.encode() not in data and not TOKEN_RE.search(data), f"token in {name}"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """(cache, env): the recorded hub cache and the environment of a recipe process that pushes there."""
    root = tmp_path_factory.mktemp("hub")
    site = root / "site"
    site.mkdir()
    shutil.copy(Path(hub_recorder.__file__), site / "sitecustomize.py")
    cache = root / "cache"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HUB_RECORDER_CACHE=str(cache),
        HF_TOKEN=FAKE_TOKEN,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_GPT_SCRATCH_DATA=str(DATA),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
    )
    return cache, env


def _run(script: str, args: list, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "recipes" / script), *map(str, args), "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def pushed_runs(hub_cache, tmp_path_factory):
    """A tiny pretrain run (with checkpoints on disk, hub_strategy all_checkpoints, a private repo)
    and a LoRA instruct run on top of it, both with --push_to_hub."""
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
        "--model_name_or_path", pre, "--output_dir", ins, "--max_train_samples", 16, "--max_eval_samples", 4,
        "--max_test_samples", 4, "--max_new_tokens", 6, "--max_steps", 3, "--per_device_train_batch_size", 4,
        "--eval_steps", 3, "--logging_steps", 1,
        "--push_to_hub", "--hub_model_id", "org/tiny-instruct",
    ], env)
    cls = work / "classify"
    if (ROOT / "recipes" / "classify.py").is_file() and (DATA / "SMSSpamCollection.tsv").is_file():
        _run("classify.py", [
            "--model_name_or_path", pre, "--output_dir", cls, "--trainable", "lora", "--max_train_samples", 16,
            "--max_eval_samples", 8, "--max_test_samples", 8, "--max_steps", 2, "--per_device_train_batch_size", 4,
            "--logging_steps", 1, "--max_seq_length", 64, "--push_to_hub", "--hub_model_id", "org/tiny-classify",
        ], env)
    return cache, pre, ins


LOADER = r'''
import json, sys
sys.modules["hf_gpt_scratch"] = None  # a Hub user does not have the package
import torch
from huggingface_hub import snapshot_download
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, GPT2LMHeadModel, pipeline)
from peft import AutoPeftModelForCausalLM, PeftModel

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
out["adapter_config"] = {k: adapter_config[k] for k in ("base_model_name_or_path", "revision", "task_type")}
# 1. the cached folder (works offline with peft as it is)
peft1 = AutoPeftModelForCausalLM.from_pretrained(snap + "/adapter", trust_remote_code=True).eval()
out["peft_snapshot_type"] = type(peft1).__name__
out["peft_snapshot_vs_merged"] = (logits(peft1) - reference).abs().max().item()
# 2. the base alone at the adapter's revision, then PeftModel
base = AutoModelForCausalLM.from_pretrained(ins, revision=adapter_config["revision"], trust_remote_code=True).eval()
original = AutoModelForCausalLM.from_pretrained(pre_dir, trust_remote_code=True).eval()
out["base_vs_original"] = max((a - b).abs().max().item() for a, b in zip(base.state_dict().values(), original.state_dict().values()))
out["base_vs_merged"] = (logits(base) - reference).abs().max().item()
peft2 = PeftModel.from_pretrained(base, snap + "/adapter").eval()
out["peftmodel_vs_merged"] = (logits(peft2) - reference).abs().max().item()
# 3. the one-liner on the repo id. peft 0.21 offline looks for <subfolder>/<subfolder>/adapter_model.safetensors
#    in the cache (its online path is right): undo that doubling only, to test the rest of the path.
import peft.utils.save_and_load as sl
_download = sl.hf_hub_download
def _fixed(repo_id, filename, *args, subfolder=None, **kwargs):
    if subfolder and filename.startswith(subfolder + "/"):
        filename = filename[len(subfolder) + 1:]
    return _download(repo_id, filename, *args, subfolder=subfolder, **kwargs)
sl.hf_hub_download = _fixed
peft3 = AutoPeftModelForCausalLM.from_pretrained(ins, subfolder="adapter", trust_remote_code=True).eval()
out["peft_subfolder_vs_merged"] = (logits(peft3) - reference).abs().max().item()

# the classifier and its adapter (a SEQ_CLS LoRA with a trained copy of the head)
from huggingface_hub.errors import LocalEntryNotFoundError
from peft import AutoPeftModelForSequenceClassification
try:
    cls_snap = snapshot_download("org/tiny-classify")
except LocalEntryNotFoundError:
    cls_snap = None
if cls_snap:
    clf = AutoModelForSequenceClassification.from_pretrained("org/tiny-classify", trust_remote_code=True).eval()
    out["classify_labels"] = clf.config.id2label
    with torch.no_grad():
        ref = clf(input_ids=ids).logits
        peft_clf = AutoPeftModelForSequenceClassification.from_pretrained(cls_snap + "/adapter", trust_remote_code=True).eval()
        out["classify_peft_vs_merged"] = (peft_clf(input_ids=ids).logits - ref).abs().max().item()
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
    cache, env = hub_cache
    out = tmp_path_factory.mktemp("export") / "gpt2"
    cmd = [sys.executable, "-m", "hf_gpt_scratch.convert", "--model_name_or_path", "org/tiny-pretrain", "--to", "gpt2",
           "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "org/tiny-gpt2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, HF_HUB_CACHE=str(cache)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def loaded(pushed_runs, gpt2_export, hub_cache, tmp_path_factory):
    cache, _ = hub_cache
    _, pre, _ = pushed_runs
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HUB_RECORDER_CACHE", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_MODULES_CACHE=str(tmp_path_factory.mktemp("modules")), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, "org/tiny-pretrain", "org/tiny-instruct", "org/tiny-gpt2", str(pre)],
        cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


# --------------------------------------------------------------------------------------------
# The pushed files
# --------------------------------------------------------------------------------------------


def test_pretrain_pushes_exactly_the_expected_files(pushed_runs):
    cache, pre, _ = pushed_runs
    snap = _snapshot(cache, "org/tiny-pretrain")
    assert _tree(snap) == PRETRAIN_FILES
    # what was left out existed: checkpoints with optimizer states (hub_strategy all_checkpoints was asked)
    checkpoints = sorted(p.name for p in pre.glob("checkpoint-*"))
    assert checkpoints, "the run should have written checkpoints"
    assert any((pre / checkpoints[-1] / name).is_file() for name in ("optimizer.pt", "scheduler.pt"))
    assert (pre / "README.md").read_bytes() == (snap / "README.md").read_bytes()
    assert (snap / "loss.png").read_bytes()[:8] == PNG_MAGIC
    _assert_clean(snap)


def test_instruct_pushes_merged_model_adapter_and_base(pushed_runs):
    cache, _, ins = pushed_runs
    snap = _snapshot(cache, "org/tiny-instruct")
    assert _tree(snap) == INSTRUCT_FILES
    config = json.loads((snap / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-instruct"
    base = _snapshot(cache, "org/tiny-instruct", config["revision"])
    assert _tree(base) == BASE_FILES  # the base model, at the top and in adapter/, nothing else
    # the local adapter config is untouched (it names the local base folder)
    assert json.loads((ins / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] != "org/tiny-instruct"
    for folder in (snap, base):
        _assert_clean(folder)


def test_classify_pushes_classifier_and_adapter(pushed_runs, loaded):
    cache, _, _ = pushed_runs
    if not (cache / "models--org--tiny-classify").is_dir():
        pytest.skip("recipes/classify.py or the SMS data is not available")
    snap = _snapshot(cache, "org/tiny-classify")
    assert _tree(snap) == CLASSIFY_FILES
    config = json.loads((snap / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == "org/tiny-classify"
    assert _tree(_snapshot(cache, "org/tiny-classify", config["revision"])) == (BASE_FILES - {
        "generation_config.json", "adapter/generation_config.json"})
    _assert_clean(snap)
    assert loaded["classify_labels"] == {"0": "ham", "1": "spam"}
    assert loaded["classify_peft_vs_merged"] < 1e-4
    assert loaded["classify_pipeline"] in ("ham", "spam")


def test_commits_and_repos(pushed_runs):
    cache, _, _ = pushed_runs
    calls = _calls(cache)
    # the Trainer's own push (upload_folder of the whole output_dir, checkpoints) never ran
    assert not [c for c in calls if c["call"] in ("upload_folder", "create_branch")]
    commits = {}
    for call in calls:
        if call["call"] == "create_commit":
            commits.setdefault(call["repo_id"], []).append(call)
    assert len(commits["org/tiny-pretrain"]) == 1 and len(commits["org/tiny-instruct"]) == 2
    base_commit, final = commits["org/tiny-instruct"]
    assert final["parent"] == base_commit["sha"]
    assert set(final["deleted"]) == {"adapter/config.json", "adapter/generation_config.json", "adapter/model.safetensors"}
    # tokens come from the login: nobody passed one explicitly
    assert {c["token"] for c in calls} == {"None"}
    private = {c["repo_id"]: c["private"] for c in calls if c["call"] == "create_repo"}
    assert private["org/tiny-pretrain"] is True and private["org/tiny-instruct"] is None


def test_cards_of_the_runs(pushed_runs):
    from huggingface_hub import ModelCard

    cache, _, _ = pushed_runs
    pre = ModelCard.load(_snapshot(cache, "org/tiny-pretrain") / "README.md")
    assert pre.data.license == "apache-2.0" and pre.data.library_name == "transformers"
    assert pre.data.pipeline_tag == "text-generation"
    assert {"gpt_scratch", "llms-from-scratch", "custom_code", "text-generation"} <= set(pre.data.tags)
    metrics = {r.metric_type: r.metric_value for r in pre.data.eval_results}
    results = json.loads((_snapshot(cache, "org/tiny-pretrain") / "results.json").read_text())
    assert metrics == {"loss": results["eval_loss"], "perplexity": results["perplexity"]}
    assert 'from_pretrained("org/tiny-pretrain", trust_remote_code=True)' in pre.text
    assert "## Intended use and limits" in pre.text and "| learning rate |" in pre.text

    ins = ModelCard.load(_snapshot(cache, "org/tiny-instruct") / "README.md")
    assert {"peft", "lora"} <= set(ins.data.tags)
    results = json.loads((_snapshot(cache, "org/tiny-instruct") / "results.json").read_text())
    by_type = {r.metric_type: (r.metric_value, r.dataset_split) for r in ins.data.eval_results}
    assert by_type == {"rouge": (results["rouge_l_after"], "test"), "loss": (results["test_loss_after"], "test")}
    assert 'subfolder="adapter"' in ins.text and "| LoRA rank | 16 |" in ins.text


# --------------------------------------------------------------------------------------------
# Loading by repo id, without the package
# --------------------------------------------------------------------------------------------


def test_every_head_and_the_tokenizer_load_from_the_hub(loaded):
    assert loaded["config"] == ["GPTScratchConfig", "gpt_scratch", 2, 32]
    assert loaded["base"] == "GPTScratchModel"
    assert loaded["lm"] == "GPTScratchForCausalLM"
    assert loaded["lm_module"].startswith("transformers_modules.")  # the shipped code, not the package
    assert loaded["lm_vs_local"] == 0.0
    assert loaded["clf"] == ["GPTScratchForSequenceClassification", 3]
    assert loaded["tok"] == [15496, 11, 995]


def test_pipelines_generate(loaded):
    assert loaded["pre_generated"].startswith("Every effort moves you")
    assert len(loaded["pre_generated"]) > len("Every effort moves you")
    assert loaded["ins_generated"].startswith("### Instruction:")


def test_the_adapter_loads_over_its_base(loaded):
    assert loaded["adapter_config"]["base_model_name_or_path"] == "org/tiny-instruct"
    assert re.fullmatch(r"[0-9a-f]{40}", loaded["adapter_config"]["revision"])
    assert loaded["adapter_config"]["task_type"] == "CAUSAL_LM"
    assert loaded["peft_snapshot_type"] == "PeftModelForCausalLM"
    # the adapter is not a no-op, and the base + adapter is the merged model
    assert loaded["base_vs_merged"] > 1e-3
    for key in ("peft_snapshot_vs_merged", "peftmodel_vs_merged", "peft_subfolder_vs_merged"):
        assert loaded[key] < 1e-4, (key, loaded[key])
    # the pushed base is the model the run started from (merged minus the update: float rounding)
    assert loaded["base_vs_original"] < 1e-5


def test_gpt2_export_needs_no_remote_code(gpt2_export, hub_cache, loaded):
    from huggingface_hub import ModelCard

    cache, _ = hub_cache
    snap = _snapshot(cache, "org/tiny-gpt2")
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


def _fake_run(folder: Path, config) -> Path:
    from hf_gpt_scratch import GPTScratchForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    GPTScratchForCausalLM(config).save_pretrained(folder)
    return folder


CLASSIFY_RESULTS = {
    "trainable": "last_block", "val_accuracy": 0.91, "val_f1": 0.9, "test_accuracy": 0.95, "test_f1": 0.949,
    "test_precision": 0.96, "test_recall": 0.94, "baseline_tfidf_test_accuracy": 0.97, "train_runtime": 75.5,
    "test_confusion_matrix": [[140, 10], [5, 145]], "label_names": ["ham", "spam"], "world_size": 1,
}
INSTRUCT_RESULTS = {
    "finetuning": "lora", "test_loss_before": 3.2, "test_loss_after": 1.1, "rouge_l_before": 0.05,
    "rouge_l_after": 0.41, "judge_model": "llama3", "judge_mean_score": 47.5, "lora_r": 8, "max_new_tokens": 64,
    "runtime": 4000.0,
}


@pytest.mark.parametrize("task, results", [
    ("pretrain", {"eval_loss": 3.75, "perplexity": math.exp(3.75), "initial_eval_loss": 10.9, "train_tokens": 1000,
                  "samples": [{"prompt": "Every effort", "completion": " moves you"}], "train_runtime": 12.5}),
    ("classify", CLASSIFY_RESULTS),
    ("instruct", INSTRUCT_RESULTS),
])
def test_card_parses_and_eval_results_round_trip(tmp_path, task, results):
    from huggingface_hub import ModelCard
    from transformers import TrainingArguments

    from conftest import tiny_config

    out = _fake_run(tmp_path / "run", tiny_config())
    args = TrainingArguments(output_dir=str(tmp_path / "run"), learning_rate=3e-4, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, seed=7, report_to="none", use_cpu=True)
    path = hub.write_model_card(out, results, task, training_args=args, repo_id="org/card-test")
    card = ModelCard.load(path)
    expected = hub._eval_results(task, results, *hub._data_info(task, None, results)[:2])
    assert expected and card.data.eval_results == expected
    for result in card.data.eval_results:
        assert result.metric_value == results[{
            ("loss", "pretrain"): "eval_loss", ("perplexity", "pretrain"): "perplexity",
            ("rouge", "instruct"): "rouge_l_after", ("loss", "instruct"): "test_loss_after",
            ("judge-score", "instruct"): "judge_mean_score",
        }.get((result.metric_type, task), f"{'val' if result.dataset_split == 'validation' else 'test'}_{result.metric_type}")]
    assert card.data.model_name == "card-test" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == ("text-classification" if task == "classify" else "text-generation")
    text = card.text
    for section in ("## What the model is", "## How to use it", "## How it was trained", "## Results",
                    "## Intended use and limits"):
        assert section in text
    assert "| learning rate | 0.0003 |" in text and "| effective batch size | 8 |" in text and "| seed | 7 |" in text
    assert "trust_remote_code=True" in text and '"org/card-test"' in text
    if task == "classify":
        assert "AutoModelForSequenceClassification" in text and "| test accuracy | 0.95 | 0.97 |" in text
    if task == "instruct":
        assert "| ROUGE-L | 0.05 | 0.41 |" in text
    # the card survives a save/load cycle unchanged
    card.save(tmp_path / "again.md")
    assert ModelCard.load(tmp_path / "again.md").data.eval_results == expected


def test_eval_results_round_trip_through_yaml():
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = [
        EvalResult(task_type="text-generation", dataset_type="the-verdict", dataset_name="The Verdict",
                   dataset_split="validation", metric_type="loss", metric_name="Validation loss", metric_value=3.14159),
        EvalResult(task_type="text-generation", dataset_type="the-verdict", dataset_name="The Verdict",
                   dataset_split="validation", metric_type="perplexity", metric_value=23.1406),
    ]
    data = ModelCardData(model_name="m", license="apache-2.0", library_name="transformers", eval_results=results)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n# m\n")
    assert card.data.eval_results == results


def test_expected_files_leave_out_training_state_and_pickles(tmp_path):
    from conftest import tiny_config

    out = _fake_run(tmp_path / "run", tiny_config())
    (out / "README.md").write_text("---\nlicense: apache-2.0\n---\n# x\n")
    (out / "results.json").write_text("{}")
    (out / "responses.json").write_text("[]")
    (out / "loss.png").write_bytes(PNG_MAGIC)
    (out / "tokenizer.json").write_text("{}")
    for junk in ("training_args.bin", "trainer_state.json", "optimizer.pt", "pytorch_model.bin", "rng_state.pth",
                 "all_results.json", "notes.txt", ".env", "my_script.py"):
        (out / junk).write_text("x")
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_text("x")
    (out / "runs").mkdir()
    (out / "runs" / "events.out").write_text("x")
    files = hub.expected_files(out, "pretrain")
    assert set(files) == MODEL | CODE | {"README.md", "results.json", "loss.png", "tokenizer.json"}
    assert "responses.json" in hub.expected_files(out, "instruct")
    # an adapter: only its config and safetensors weights
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "adapter" / "adapter_model.bin").write_text("x")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        hub.expected_files(out, "instruct")
    (out / "adapter" / "adapter_model.safetensors").write_text("x")
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(hub.expected_files(out, "instruct"))
    # no safetensors weights: nothing to push
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hub.expected_files(out, "pretrain")


def test_files_with_tokens_or_pickles_are_refused(tmp_path, monkeypatch):
    good = tmp_path / "config.json"
    good.write_text('{"model_type": "gpt_scratch"}')
    hub.check_pushable({"config.json": good})
    leaked = tmp_path / "results.json"
    leaked.write_text(json.dumps({"note": "hf_" + "a" * 34}))
    with pytest.raises(ValueError, match="token"):
        hub.check_pushable({"results.json": leaked})
    monkeypatch.setenv("HF_TOKEN", "my-own-login-token-value")
    mine = tmp_path / "README.md"
    mine.write_text("logged in as my-own-login-token-value")
    with pytest.raises(ValueError, match="token"):
        hub.check_pushable({"README.md": mine})
    for name in ("training_args.bin", "optimizer.pt", "checkpoint-2/model.safetensors", "x.pkl"):
        with pytest.raises(ValueError, match="never pushed"):
            hub.check_pushable({name: b"{}"})


def test_prepare_push_takes_over_from_the_trainer(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    hub_recorder.install(tmp_path / "cache", setattr=monkeypatch.setattr)
    assert hub.prepare_push(TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none")) is None
    args = TrainingArguments(output_dir=str(tmp_path / "my-run"), push_to_hub=True, report_to="none",
                             hub_strategy="checkpoint")
    target = hub.prepare_push(args)
    assert args.push_to_hub is False  # the Trainer pushes nothing, checkpoints included
    assert target.repo_id == f"{hub_recorder.DEFAULT_USER}/my-run"  # the output folder's name, login's namespace
    assert [c["call"] for c in _calls(tmp_path / "cache")] == ["create_repo"]  # created before training
    with pytest.raises(ValueError, match="hf auth login"):
        hub.prepare_push(TrainingArguments(output_dir=str(tmp_path / "o"), push_to_hub=True, hub_token="hf_secret",
                                           report_to="none"))


def test_push_replaces_stale_files_and_the_cli_retries(tmp_path, monkeypatch, capsys):
    from conftest import tiny_config

    cache = tmp_path / "cache"
    hub_recorder.install(cache, setattr=monkeypatch.setattr)
    out = _fake_run(tmp_path / "run", tiny_config())
    (out / "results.json").write_text(json.dumps({"eval_loss": 2.5, "perplexity": math.exp(2.5)}))
    (out / "old.png").write_bytes(PNG_MAGIC)
    assert hub.main([str(out), "--hub_model_id", "org/retry"]) == 0
    assert "Pushed" in capsys.readouterr().out
    assert "old.png" in _tree(_snapshot(cache, "org/retry"))
    (out / "old.png").unlink()
    assert hub.main([str(out), "--hub_model_id", "org/retry", "--task", "pretrain"]) == 0
    assert _tree(_snapshot(cache, "org/retry")) == MODEL | CODE | {"README.md", "results.json"}
    commits = [c for c in _calls(cache) if c["call"] == "create_commit"]
    assert commits[-1]["deleted"] == ["old.png"]
    # a folder without weights fails cleanly
    empty = tmp_path / "empty"
    empty.mkdir()
    assert hub.main([str(empty), "--hub_model_id", "org/none"]) == 1
    assert "config.json" in capsys.readouterr().err
    assert not (empty / "README.md").exists() and not (cache / "models--org--none").exists()
