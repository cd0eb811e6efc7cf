"""Share a run on the Hugging Face Hub: the model card, and exactly the files worth pushing.

The recipes (`recipes/pretrain.py`, `classify.py`, `instruct.py`) and the convert CLI call this
module; users meet it through two flags, `--push_to_hub` and `--hub_model_id org/name`.

- `prepare_push(training_args)`: before the `Trainer` is built. Takes the push over from the
  Trainer (whose own push uploads the whole output folder: `training_args.bin`, a pickle that
  holds the arguments, and checkpoints with optimizer states), refuses a token given as a flag
  (tokens come from `hf auth login` / `HF_TOKEN`, never from logged arguments) and creates the
  repo on the main process, so a missing login or network fails before training, not after.
- `write_model_card(output_dir, results, task, ...)`: README.md from the template `model_card.md`
  (Jinja2, via `huggingface_hub.ModelCard.from_template`), filled from the run's results.json,
  its training arguments and its config; Hugging Face metadata with a `model-index` of the
  evaluation results. The card is parsed back with `ModelCard` before it is written.
- `push_run(output_dir, repo_id, task)`: uploads exactly `expected_files(output_dir, task)` in one
  commit (two for a LoRA run, see below) (`HfApi.create_commit` with explicit operations) and deletes whatever else the repo's
  branch holds (`.gitattributes` excepted), so the repo mirrors the run. Files are checked
  before anything is sent: no pickles, no optimizer/scheduler/RNG states, no checkpoints, no
  Hugging Face token in any file.
- `finish_run(...)`: what a recipe calls at the end on the main process: the card, then the push.

What is pushed (`expected_files`): README.md, config.json, generation_config.json, the weights
(model.safetensors, or its shards and index), the model's code (the `.py` files `auto_map` needs),
the tokenizer files, the PNG plots, results.json (and responses.json for `instruct`). A LoRA run
(an `adapter/` folder in the output) also pushes `adapter/adapter_config.json` and
`adapter/adapter_model.safetensors`; the merged model stays at the top level.

How the adapter finds its base on the Hub. PEFT's `AutoPeftModelFor...from_pretrained(repo,
subfolder="adapter")` loads the base model from `base_model_name_or_path` with the same
`subfolder`, transformers applies an adapter it finds next to a model by itself, and remote code
is always fetched from the top of a revision: so the base cannot sit in another folder of the
commit that holds the merged model. The push is therefore two commits. The first holds only the
base model: at the top (config, weights, code) and again in `adapter/` (config, weights). The
second deletes `adapter/`'s base files and adds the adapter files, the merged model at the top and
everything else. The pushed `adapter_config.json` names the repo itself as
`base_model_name_or_path` and the first commit as `revision`, so
`AutoPeftModelForCausalLM.from_pretrained("org/name", subfolder="adapter", trust_remote_code=True)`
finds its base by itself, `AutoPeftModelForCausalLM.from_pretrained(snapshot_download("org/name")
+ "/adapter", ...)` too (the base at the top of the first commit), and
`AutoModelForCausalLM.from_pretrained("org/name", revision=<first commit>)` is the base alone.
(Offline, PEFT 0.21 looks for a subfolder's adapter weights at `<subfolder>/<subfolder>/...` in
the cache, so there only the snapshot form works.) The base is rebuilt from the run's files as
the merged weights minus the LoRA update (PEFT's own unmerge): the starting checkpoint up to float
rounding, exactly the model the adapter was saved against, whatever `--model_name_or_path` was (a
local folder, a converted GPT-2, a hub id).

Push a finished run folder again (e.g. after a network error) with
`python -m hf_gpt_scratch.hub runs/instruct --hub_model_id org/name`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

TASKS = ("pretrain", "classify", "instruct", "convert")
TEMPLATE_NAME = "model_card.md"
CARD_NAME = "README.md"
ADAPTER_DIR = "adapter"

# Files a run folder may push, by name (top level only).
CONFIG_FILES = ("config.json", "generation_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
RESULT_FILES = {
    "pretrain": ("results.json",),
    "classify": ("results.json",),
    "instruct": ("results.json", "responses.json"),
    "convert": ("results.json",),
}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Never pushed, whatever the folder holds (checked again on the final list).
_FORBIDDEN = re.compile(
    r"(^|/)(checkpoint-[^/]*|last-checkpoint|runs|wandb)(/|$)"
    r"|\.(bin|pt|pth|pkl|pickle|ckpt|npy|npz|joblib|h5|msgpack|tmp)$"
    r"|(^|/)(optimizer|scheduler|rng_state|training_args|trainer_state|scaler)[^/]*$"
    r"|(^|/)\.(?!gitattributes$)"
)
_TOKEN_PATTERNS = (re.compile(rb"hf_[A-Za-z0-9]{30,}"), re.compile(rb"api_org_[A-Za-z0-9]{30,}"))
_SCAN_LIMIT = 64 << 20  # files larger than this (weights) have only their header scanned


# --------------------------------------------------------------------------------------------
# Where the run goes
# --------------------------------------------------------------------------------------------


@dataclass
class HubTarget:
    """Where `finish_run` pushes: the repo id (with its namespace once the repo exists), whether a
    new repo is private, and the branch (None: main)."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None


def _is_main_process() -> bool:
    from .arguments import is_main_process

    return is_main_process()


def _is_local(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).expanduser().exists()


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_id(name: str | None) -> str | None:
    """`name` when it names a Hub repo (org/name) rather than a local folder."""
    if not name or _is_local(name) or not _REPO_ID.match(str(name)):
        return None
    return str(name)


def create_repo(repo_id: str, private: bool | None = None) -> str:
    """Create `repo_id` if needed (the login's token); returns the full id (namespace included)."""
    from huggingface_hub import HfApi

    try:
        url = HfApi().create_repo(repo_id, private=private, exist_ok=True)
    except Exception as err:
        raise RuntimeError(
            f"Could not create or reach the Hub repo {repo_id!r} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Log in first (`hf auth login`, or set HF_TOKEN in the environment) and check the network; "
            "HF_HUB_OFFLINE=1 blocks every upload."
        ) from err
    return url.repo_id


def prepare_push(training_args, output_dir: str | os.PathLike | None = None) -> HubTarget | None:
    """Take `--push_to_hub` over from the Trainer; call it before building the `Trainer`.

    Returns None when nothing is to be pushed. Otherwise sets `training_args.push_to_hub = False`
    (the Trainer then pushes nothing: neither checkpoints during training, whatever `hub_strategy`
    says, nor its output folder at the end), refuses `--hub_token` (log in instead), checks that
    the card template is available and, on the main process, creates the repo now so that a
    missing login or network fails before training. `--hub_model_id` defaults to the name of the
    output folder (in the login's namespace), as the Trainer does.
    """
    if not getattr(training_args, "push_to_hub", False):
        return None
    if getattr(training_args, "hub_token", None):
        raise ValueError(
            "--hub_token is not accepted: a token given as a flag ends up in logs and in the saved training "
            "arguments. Log in once with `hf auth login` (or set HF_TOKEN in the environment) instead."
        )
    from transformers.trainer_utils import HubStrategy

    strategy = getattr(training_args, "hub_strategy", HubStrategy.EVERY_SAVE)
    if strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        logger.warning("--hub_strategy %s is ignored: only the final model is pushed, never checkpoints.", strategy.value)
    training_args.push_to_hub = False
    find_template()  # fail now, not after training
    out = Path(output_dir or training_args.output_dir)
    repo_id = training_args.hub_model_id or out.absolute().name
    private = getattr(training_args, "hub_private_repo", None)
    revision = getattr(training_args, "hub_revision", None)
    if _is_main_process():
        repo_id = create_repo(repo_id, private=private)
        logger.info("The run will be pushed to https://huggingface.co/%s", repo_id)
    return HubTarget(repo_id=repo_id, private=private, revision=revision)


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------


def find_template(template_path: str | os.PathLike | None = None) -> Path:
    """The card template: `template_path`, else `model_card.md` at the top of the repository."""
    candidates = [Path(template_path)] if template_path else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / TEMPLATE_NAME, here / TEMPLATE_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No model card template: looked for {', '.join(map(str, candidates))}. Run from a checkout of hf_gpt_scratch "
        "(`pip install -e .`) or pass template_path."
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e9 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if hasattr(value, "value"):  # enums of TrainingArguments
        return str(value.value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float | None) -> str | None:
    if not _finite(seconds):
        return None
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def count_saved_parameters(output_dir: str | os.PathLike) -> int | None:
    """Parameters stored in the folder's safetensors weights (headers only; tied weights count once)."""
    out = Path(output_dir)
    files = [out / "model.safetensors"]
    index = out / "model.safetensors.index.json"
    if index.is_file():
        files = [out / name for name in sorted(set(_read_json(index).get("weight_map", {}).values()))]
    total = 0
    for path in files:
        if not path.is_file():
            return None
        for name, info in _safetensors_header(path).items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total


_TASK_INFO = {
    "pretrain": ("text-generation", "AutoModelForCausalLM", "AutoPeftModelForCausalLM", "Every effort moves you"),
    "convert": ("text-generation", "AutoModelForCausalLM", "AutoPeftModelForCausalLM", "Every effort moves you"),
    "instruct": (
        "text-generation",
        "AutoModelForCausalLM",
        "AutoPeftModelForCausalLM",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nRewrite the sentence using a simile.\n\n### Input:\nThe car is very fast."
        "\n\n### Response:\n",
    ),
    "classify": (
        "text-classification",
        "AutoModelForSequenceClassification",
        "AutoPeftModelForSequenceClassification",
        "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    ),
}

_BOOK_DATA = {
    # task: (eval dataset type, human name, hub datasets for the metadata, description)
    "pretrain": (
        "the-verdict",
        "The Verdict (Edith Wharton, 1908)",
        [],
        "`the-verdict.txt`, Edith Wharton's short story *The Verdict* (about 20,000 characters, public domain), "
        "the text of the book's chapters 2 and 5",
    ),
    "classify": (
        "ucirvine/sms_spam",
        "SMS Spam Collection (UCI)",
        ["ucirvine/sms_spam"],
        "the UCI SMS Spam Collection as in the book's chapter 6: ham undersampled to the 747 spam messages, "
        "split 70/10/20 with seed 123",
    ),
    "instruct": (
        "instruction-data",
        "Instruction data of the book (chapter 7)",
        [],
        "`instruction-data.json` of the book's chapter 7: 1,100 Alpaca-style instruction/input/output entries, "
        "split 85/10/5 (train/test/validation) as in the book",
    ),
}


def _data_info(task: str, data_args, results: Mapping) -> tuple[str, str, list[str], str]:
    """(dataset type, dataset name, hub datasets, description) of the run's data."""
    dataset_name = getattr(data_args, "dataset_name", None) if data_args is not None else None
    train_file = getattr(data_args, "train_file", None) if data_args is not None else None
    if dataset_name:
        config = getattr(data_args, "dataset_config_name", None)
        label = dataset_name + (f" ({config})" if config else "")
        return dataset_name, label, [dataset_name] if _hub_id(dataset_name) else [], f"the dataset `{label}`"
    if train_file:
        name = Path(train_file).name
        return Path(train_file).stem, name, [], f"the file `{name}`"
    if task in _BOOK_DATA:
        return _BOOK_DATA[task]
    return "unknown", "unknown", [], "not recorded"


def _eval_results(task: str, results: Mapping, dataset_type: str, dataset_name: str):
    """`EvalResult`s for the card's model-index (the tuned model's own numbers only)."""
    from huggingface_hub import EvalResult

    specs = []  # (results key, task type, task name, split, metric type, metric name)
    if task == "pretrain":
        specs = [
            ("eval_loss", "text-generation", "Causal language modeling", "validation", "loss",
             "Validation loss (nats per token)"),
            ("perplexity", "text-generation", "Causal language modeling", "validation", "perplexity",
             "Validation perplexity"),
        ]
    elif task == "classify":
        for split, prefix in (("validation", "val"), ("test", "test")):
            for metric in ("accuracy", "f1", "precision", "recall"):
                specs.append((f"{prefix}_{metric}", "text-classification", "Text classification", split, metric,
                              f"{split.capitalize()} {metric}"))
    elif task == "instruct":
        specs = [
            ("rouge_l_after", "text-generation", "Instruction following", "test", "rouge",
             "ROUGE-L of greedy responses"),
            ("test_loss_after", "text-generation", "Instruction following", "test", "loss",
             "Response loss (nats per token)"),
        ]
        if _finite(results.get("judge_mean_score")):
            judge = results.get("judge_model", "LLM")
            specs.append(("judge_mean_score", "text-generation", "Instruction following", "test", "judge-score",
                          f"{judge} judge score (0-100)"))
    out = []
    for key, task_type, task_name, split, metric_type, metric_name in specs:
        value = results.get(key)
        if _finite(value):
            out.append(EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                dataset_split=split, metric_type=metric_type, metric_name=metric_name, metric_value=value,
            ))
    return out


def _results_table(task: str, results: Mapping) -> tuple[list[str], list[list[str]], str | None]:
    rows: list[list[str]] = []
    note = None

    def get(key):
        value = results.get(key)
        return _fmt(value) if value is not None and (not isinstance(value, float) or math.isfinite(value)) else "–"

    if task == "pretrain":
        header = ["metric", "value"]
        for key, label in (
            ("initial_eval_loss", "validation loss before training"),
            ("eval_loss", "validation loss"),
            ("perplexity", "validation perplexity"),
            ("eval_train_loss", "training-set loss (eval mode)"),
            ("train_loss", "training loss (last logged)"),
            ("train_tokens", "training tokens seen"),
            ("tokens_per_second", "training tokens per second"),
        ):
            if key in results:
                rows.append([label, get(key)])
    elif task == "classify":
        header = ["metric", "this model", "TF-IDF + logistic regression"]
        for prefix, split in (("val", "validation"), ("test", "test")):
            for metric in ("accuracy", "precision", "recall", "f1"):
                if f"{prefix}_{metric}" in results:
                    rows.append([f"{split} {metric}", get(f"{prefix}_{metric}"), get(f"baseline_tfidf_{prefix}_{metric}")])
        if "test_confusion_matrix" in results and "label_names" in results:
            note = (f"Test confusion matrix (rows: true {', '.join(map(str, results['label_names']))}; columns: "
                    f"predicted): {results['test_confusion_matrix']}.")
    elif task == "instruct":
        header = ["metric (test split)", "before finetuning", "after finetuning"]
        for key, label in (("test_loss", "response loss"), ("rouge_l", "ROUGE-L")):
            if f"{key}_before" in results or f"{key}_after" in results:
                rows.append([label, get(f"{key}_before"), get(f"{key}_after")])
        if "judge_mean_score" in results:
            rows.append([f"{results.get('judge_model', 'LLM')} judge score (0-100)", "–", get("judge_mean_score")])
        if "eval_loss" in results:
            rows.append(["validation loss", get("initial_eval_loss"), get("eval_loss")])
        note = "Responses are greedy, at most {} new tokens; `responses.json` holds every test response.".format(
            results.get("max_new_tokens", "?"))
    else:  # convert
        header = ["check", "value"]
        if "max_logit_difference" in results:
            rows.append(["largest absolute logit difference to the source (random batch)", get("max_logit_difference")])
    return header, rows, note


def _hyperparameters(task: str, results: Mapping, training_args) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(name, value):
        if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
            rows.append((name, _fmt(value)))

    for key, label in (("finetuning", "finetuning"), ("trainable", "trainable parameters"), ("mask_prompt", "prompt masked in the loss")):
        if key in results:
            add(label, results[key])
    for key, label in (("lora_r", "LoRA rank"), ("lora_alpha", "LoRA alpha"), ("lora_dropout", "LoRA dropout"),
                       ("lora_target_modules", "LoRA target modules")):
        if key in results:
            add(label, results[key])
    if training_args is not None:
        a = training_args
        add("learning rate", a.learning_rate)
        add("schedule", a.lr_scheduler_type)
        if a.warmup_steps:
            add("warmup steps", a.warmup_steps)
        add("optimizer", f"{_fmt(a.optim)} (betas {a.adam_beta1}, {a.adam_beta2}, eps {a.adam_epsilon:g})")
        add("weight decay", a.weight_decay)
        add("batch size per device", a.per_device_train_batch_size)
        add("gradient accumulation", a.gradient_accumulation_steps)
        world = results.get("world_size", getattr(a, "world_size", 1))
        add("processes", world)
        add("effective batch size", a.per_device_train_batch_size * a.gradient_accumulation_steps * (world or 1))
        add("max gradient norm", a.max_grad_norm if a.max_grad_norm else "none (no clipping)")
        add("precision", "bf16 mixed" if a.bf16 else "fp16 mixed" if a.fp16 else "float32")
        add("seed", a.seed)
        if a.max_steps and a.max_steps > 0:
            add("max steps", a.max_steps)
        else:
            add("epochs (asked)", a.num_train_epochs)
    for key, label in (("train_steps", "optimizer steps"), ("epochs", "epochs (done)"), ("train_tokens", "tokens seen"),
                       ("block_size", "tokens per training sequence"), ("max_seq_length", "max sequence length")):
        if key in results:
            add(label, results[key])
    return rows


def _hardware(training_args, results: Mapping) -> str:
    import torch
    import transformers

    world = results.get("world_size", getattr(training_args, "world_size", 1) if training_args is not None else 1)
    device = None
    with contextlib.suppress(Exception):
        device = training_args.device if training_args is not None else None
    if device is not None and device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    elif device is not None and device.type not in ("cpu", "meta"):
        what = device.type.upper()
    else:
        what = f"CPU ({os.cpu_count()} cores{', ' + platform.machine() if platform.machine() else ''})"
    where = f"{world} process{'es' if world and world > 1 else ''} on {what}"
    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}."


def _training_time(results: Mapping) -> str:
    parts = []
    train = _duration(results.get("train_runtime"))
    if train:
        parts.append(f"{train} of training (evaluations during training included)")
    total = _duration(results.get("runtime"))
    if total:
        parts.append(f"{total} for the whole run (evaluation and generation included)")
    speed = results.get("tokens_per_second")
    if _finite(speed):
        parts.append(f"{_fmt(float(speed))} training tokens per second")
    return "; ".join(parts) + "." if parts else "Not recorded."


def _architecture(config: Mapping, n_params: int | None, task: str) -> list[tuple[str, str]]:
    rows = []
    model_type = config.get("model_type", "?")
    arch = ", ".join(config.get("architectures") or []) or "?"
    rows.append(("class", f"`{arch}` (model_type `{model_type}`)"))
    if n_params:
        rows.append(("parameters", _fmt(n_params)))
    for keys, label in (
        (("n_layers", "n_layer"), "transformer blocks"),
        (("n_heads", "n_head"), "attention heads"),
        (("emb_dim", "n_embd"), "embedding width"),
        (("context_length", "n_positions"), "context length (tokens)"),
        (("vocab_size",), "vocabulary"),
        (("tie_word_embeddings",), "output head tied to the token embedding"),
        (("qkv_bias",), "query/key/value biases"),
        (("drop_rate", "resid_pdrop"), "dropout"),
    ):
        for key in keys:
            if key in config:
                rows.append((label, _fmt(config[key])))
                break
    if task == "classify" and isinstance(config.get("id2label"), Mapping):
        labels = [config["id2label"][k] for k in sorted(config["id2label"], key=lambda k: int(k))]
        rows.append(("labels", ", ".join(map(str, labels))))
    return rows


def _source_name(model_args) -> tuple[str | None, str | None]:
    """(hub id or None, description) of the checkpoint the run started from."""
    path = getattr(model_args, "model_name_or_path", None) if model_args is not None else None
    if not path:
        return None, None
    hub = _hub_id(path)
    if hub:
        return hub, f"[`{hub}`](https://huggingface.co/{hub})"
    return None, f"a local checkpoint (`{Path(str(path)).name}`)"


def card_context(
    output_dir: str | os.PathLike,
    results: Mapping[str, Any],
    task: str,
    training_args=None,
    model_args=None,
    data_args=None,
    repo_id: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(`ModelCardData`, template variables) for `write_model_card`."""
    from huggingface_hub import ModelCardData

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    out = Path(output_dir)
    config = _read_json(out / "config.json")
    remote_code = bool(config.get("auto_map"))
    adapter = (out / ADAPTER_DIR / "adapter_config.json").is_file()
    pipeline_tag, auto_class, peft_auto_class, example = _TASK_INFO[task]
    repo_id = repo_id or out.absolute().name
    model_name = repo_id.split("/")[-1]
    dataset_type, dataset_name, datasets, data_description = _data_info(task, data_args, results)
    base_hub, base_text = _source_name(model_args)
    if task == "convert":
        source = results.get("source")
        base_hub = _hub_id(source)
        if base_hub:
            base_text = f"[`{base_hub}`](https://huggingface.co/{base_hub})"
        elif source:
            base_text = f"`{Path(str(source)).name}`"

    tags = ["gpt_scratch", "llms-from-scratch"]
    if remote_code:
        tags.append("custom_code")
    if config.get("model_type") == "gpt2":
        tags.append("gpt2")
    tags.append(pipeline_tag)
    if adapter:
        tags += ["peft", "lora"]

    n_params = count_saved_parameters(out)
    what = {
        "pretrain": "a GPT language model pretrained with next-token prediction",
        "instruct": "a GPT finetuned to follow instructions (Alpaca-style prompts)",
        "classify": "a GPT finetuned as a text classifier",
        "convert": "a GPT with converted weights",
    }[task]
    start = "trained from scratch" if task == "pretrain" and not base_text else (f"starting from {base_text}" if base_text else "")
    if task == "convert":
        summary = f"{what[0].upper() + what[1:]}: {results.get('conversion', 'converted')}" + (
            f" (source: {base_text})." if base_text else ".")
    else:
        summary = f"{what[0].upper() + what[1:]}{', ' + start if start else ''} on {dataset_name}."
    description = (
        "The GPT of Sebastian Raschka's *Build a Large Language Model (From Scratch)* (chapter 4: token and "
        "position embeddings, pre-LayerNorm transformer blocks with causal multi-head attention and a GELU "
        "feed-forward, a final LayerNorm and a linear output head), packaged as a Hugging Face transformers "
        "model by `hf_gpt_scratch`. "
        + {
            "pretrain": "This checkpoint is the book's chapter 5: next-token pretraining.",
            "instruct": "This checkpoint is the book's chapter 7: instruction finetuning; prompts use the book's "
            "Alpaca format and the answer follows `### Response:`.",
            "classify": "This checkpoint is the book's chapter 6: the output head is replaced by a classifier that "
            "reads the last real token's hidden state.",
            "convert": "This checkpoint was converted with `hf_gpt_scratch.convert` (exact, float32).",
        }[task]
    )
    if task == "convert":
        training_summary = "Not trained here: the weights are converted, number for number, from the source."
    else:
        recipe = {"pretrain": "recipes/pretrain.py", "instruct": "recipes/instruct.py", "classify": "recipes/classify.py"}[task]
        preset = results.get("preset")
        training_summary = (
            f"With `{recipe}` of `hf_gpt_scratch` (the transformers `Trainer`)"
            + (f", preset `{preset}`" if preset else "")
            + (f", {start}" if start else "")
            + "."
        )

    eval_results = _eval_results(task, results, dataset_type, dataset_name)
    header, rows, note = _results_table(task, results)
    samples = [s for s in results.get("samples", []) if isinstance(s, Mapping)][:5]
    intended = {
        "pretrain": "Learning and teaching how GPT-style models are built and trained; a starting point for "
        "finetuning (`recipes/classify.py`, `recipes/instruct.py`); experiments with small models.",
        "instruct": "Learning how instruction finetuning works; experiments with small instruction-following "
        "models. Prompt it in the book's Alpaca format (see above).",
        "classify": "Learning how a pretrained GPT becomes a classifier; experiments with spam filtering or the "
        "labels it was trained on.",
        "convert": "Running the same weights with the other class (inference, finetuning, export).",
    }[task]
    limitations = (
        "a small model trained on little data for teaching: its text is often wrong, repetitive or made up, and it "
        "inherits the biases of its training data. It is not evaluated for safety, factuality or fairness and must "
        "not be used for decisions about people or in production without your own evaluation. "
        + {
            "classify": "Predictions hold only for messages like the training data (English SMS).",
            "instruct": "Responses may sound confident and still be wrong.",
        }.get(task, "English only.")
    )

    # OpenAI's GPT-2 weights are MIT-licensed: a plain conversion keeps their license.
    license = "mit" if task == "convert" and re.match(r"^(openai-community/)?(distil)?gpt2(-\w+)?$", str(base_hub)) else "apache-2.0"
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=datasets or None,
        base_model=base_hub,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    variables = dict(
        license=license,
        model_name=model_name,
        repo_id=repo_id,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=datasets,
        base_model=base_hub,
        eval_results=eval_results,
        summary=summary,
        description=description,
        architecture=_architecture(config, n_params, task),
        remote_code=remote_code,
        gpt2_export=remote_code and pipeline_tag == "text-generation",
        auto_class=auto_class,
        example_input=example,
        adapter=adapter,
        peft_auto_class=peft_auto_class,
        training_summary=training_summary,
        data_description=data_description[0].upper() + data_description[1:] + ".",
        hyperparameters=_hyperparameters(task, results, training_args),
        trained=task != "convert",
        hardware=_hardware(training_args, results) if task != "convert" else None,
        training_time=_training_time(results) if task != "convert" else None,
        results_header=header,
        results_table=rows,
        results_note=note,
        samples=samples,
        intended_use=intended,
        limitations=limitations,
    )
    return card_data, variables


def render_model_card(card_data, variables: Mapping[str, Any], template_path: str | os.PathLike | None = None):
    """Fill the template; returns a `huggingface_hub.ModelCard` parsed from the filled text."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(card_data, template_path=str(find_template(template_path)), **variables)
    card = ModelCard(str(card))  # parse the YAML back: a broken header fails here, not on the Hub
    if card.data.get("license") != card_data.license or card.data.get("library_name") != "transformers":
        raise ValueError("The filled model card lost its license/library_name metadata.")
    return card


def write_model_card(
    output_dir: str | os.PathLike,
    results: Mapping[str, Any] | None = None,
    task: str = "pretrain",
    training_args=None,
    model_args=None,
    data_args=None,
    repo_id: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> Path:
    """Write output_dir/README.md, the model card, filled from `results` (default: results.json).

    `task` is the recipe ("pretrain", "classify", "instruct") or "convert"; it decides the pipeline
    tag, the evaluation results of the `model-index` and the results table. `training_args`,
    `model_args` and `data_args` (the recipe's parsed arguments, all optional) add hyperparameters,
    hardware, the starting checkpoint and the data; `repo_id` is the name in the loading snippets
    (default: the folder's name)."""
    out = Path(output_dir)
    if results is None:
        results = _read_json(out / "results.json")
    card_data, variables = card_context(out, results, task, training_args, model_args, data_args, repo_id)
    card = render_model_card(card_data, variables, template_path)
    path = out / CARD_NAME
    path.write_text(str(card), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# What to push
# --------------------------------------------------------------------------------------------


_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\b", re.MULTILINE)


def code_files(output_dir: str | os.PathLike) -> list[str]:
    """The `.py` files the folder's `auto_map` needs: the modules it names and, recursively, the
    sibling modules they import (`from .x import ...`), as transformers' remote code loads them."""
    out = Path(output_dir)
    config = _read_json(out / "config.json")
    refs = []
    for value in (config.get("auto_map") or {}).values():
        refs += value if isinstance(value, list) else [value]
    todo = [ref.split("--")[-1].split(".")[0] for ref in refs if isinstance(ref, str)]
    found: list[str] = []
    while todo:
        name = todo.pop()
        path = out / f"{name}.py"
        if f"{name}.py" in found or not path.is_file():
            continue
        found.append(f"{name}.py")
        todo += _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8"))
    return sorted(found)


def expected_files(output_dir: str | os.PathLike, task: str) -> dict[str, Path]:
    """`{path in the repo: local file}` of everything a run pushes (see the module docstring).

    Raises FileNotFoundError when the folder lacks the card, the config or safetensors weights
    (pickled `pytorch_model.bin` weights are never pushed), and ValueError for an adapter without
    `adapter_model.safetensors`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    out = Path(output_dir)
    allowed = set(CONFIG_FILES) | set(WEIGHT_FILES) | set(TOKENIZER_FILES) | set(RESULT_FILES[task]) | {CARD_NAME}
    allowed |= set(code_files(out))
    files: dict[str, Path] = {}
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        if not path.is_file():
            continue
        name = path.name
        if name in allowed or _SHARD.match(name) or name.endswith(".png"):
            files[name] = path
    missing = [name for name in ("config.json", CARD_NAME) if name not in files]
    if "model.safetensors" not in files and "model.safetensors.index.json" not in files:
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{out} lacks {', '.join(missing)}: nothing to push (weights must be safetensors).")
    adapter = out / ADAPTER_DIR
    if (adapter / "adapter_config.json").is_file():
        if not (adapter / "adapter_model.safetensors").is_file():
            raise ValueError(f"{adapter} has no adapter_model.safetensors (pickled adapters are not pushed).")
        for name in ADAPTER_FILES:
            files[f"{ADAPTER_DIR}/{name}"] = adapter / name
    return files


def _login_token() -> bytes | None:
    with contextlib.suppress(Exception):
        from huggingface_hub import get_token

        token = get_token()
        if token:
            return token.encode()
    return None


def check_pushable(files: Mapping[str, Path | bytes]) -> None:
    """Refuse pickles, training states, checkpoints and anything holding a Hugging Face token."""
    token = _login_token()
    for name, source in files.items():
        if _FORBIDDEN.search(name):
            raise ValueError(f"Refusing to push {name}: pickles, training states and checkpoints are never pushed.")
        if isinstance(source, bytes):
            data = source
        else:
            size = source.stat().st_size
            if size > _SCAN_LIMIT:
                if not name.endswith(".safetensors"):
                    raise ValueError(f"Refusing to push {name}: {size} bytes and not a safetensors file.")
                data = json.dumps(_safetensors_header(source)).encode()
            else:
                data = source.read_bytes()
        if (token and token in data) or any(p.search(data) for p in _TOKEN_PATTERNS):
            raise ValueError(f"Refusing to push {name}: it contains what looks like a Hugging Face token.")


def _adapter_base(output_dir: Path, folder: Path) -> dict[str, Path]:
    """Save the base model of the run's LoRA adapter into `folder` (merged weights minus the LoRA
    update, with PEFT's own unmerge); returns its files. The base is saved as the merged model's
    class and config (a causal LM, or a classifier for SEQ_CLS adapters)."""
    import torch
    from peft import PeftConfig, PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from . import GPTScratchConfig  # noqa: F401  (registers the Auto classes)

    adapter = output_dir / ADAPTER_DIR
    peft_config = PeftConfig.from_pretrained(str(adapter))
    task_type = str(getattr(peft_config, "task_type", "CAUSAL_LM") or "CAUSAL_LM")
    auto = AutoModelForSequenceClassification if task_type.endswith("SEQ_CLS") else AutoModelForCausalLM
    merged = auto.from_pretrained(str(output_dir), dtype="auto")
    model = PeftModel.from_pretrained(merged, str(adapter))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.merged_adapters = [name for name in module.active_adapters if name in module.lora_A]
                module.unmerge()
    base = model.unload()
    base.config.use_cache = True
    base.save_pretrained(str(folder))
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.name in CONFIG_FILES or p.name in WEIGHT_FILES or _SHARD.match(p.name) or p.suffix == ".py")
    }


def push_run(
    output_dir: str | os.PathLike,
    repo_id: str,
    task: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
):
    """Push the run in `output_dir` to `repo_id`: exactly `expected_files(output_dir, task)`.

    The repo is created if needed (the login's token: `hf auth login` or HF_TOKEN). Files of the
    branch that are not expected are deleted in the same commit (`.gitattributes` stays). A LoRA
    run takes two commits (the adapter's base model first, see the module docstring). Returns the
    last commit's `CommitInfo`."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    out = Path(output_dir)
    files: dict[str, Path | bytes] = dict(expected_files(out, task))
    check_pushable(files)
    api = HfApi()
    repo_id = create_repo(repo_id, private=private)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    remote = set(api.list_repo_files(repo_id, revision=revision))
    message = commit_message or f"{task} run: model, code, tokenizer, card, results"

    adapter_config = f"{ADAPTER_DIR}/adapter_config.json"
    with tempfile.TemporaryDirectory(prefix="hf_gpt_scratch_base_") as tmp:
        if adapter_config in files:
            # The base model, at the top (for revision=<this commit>) and in adapter/ (for
            # subfolder="adapter", which PEFT passes on to the base). Nothing else: the top of this
            # commit must load as the plain base (no adapter_config.json, no stale shards).
            saved = _adapter_base(out, Path(tmp))
            base: dict[str, Path] = {}
            for name, path in saved.items():
                base[name] = path
                if not name.endswith(".py"):  # transformers fetches remote code from the top only
                    base[f"{ADAPTER_DIR}/{name}"] = path
            check_pushable(base)
            stale = sorted(p for p in remote if p not in base and p != ".gitattributes")
            operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
            operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in base.items()]
            info = api.create_commit(
                repo_id, operations, revision=revision,
                commit_message="Base model of the LoRA adapter (the adapter's revision; also in adapter/)",
            )
            remote = set(base)
            config = json.loads(Path(files[adapter_config]).read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = repo_id
            config["revision"] = info.oid
            files[adapter_config] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
            check_pushable({adapter_config: files[adapter_config]})
            logger.info("Pushed the adapter's base model (commit %s).", info.oid)

        stale = sorted(p for p in remote if p not in files and p != ".gitattributes")
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
        for path, source in files.items():
            operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=source if isinstance(source, bytes) else str(source)))
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    logger.info("Pushed %d files to https://huggingface.co/%s (commit %s).", len(files), repo_id, info.oid)
    return info


def finish_run(
    output_dir: str | os.PathLike,
    results: Mapping[str, Any],
    task: str,
    training_args=None,
    model_args=None,
    data_args=None,
    target: HubTarget | None = None,
):
    """End of a recipe, on the main process: write the model card into `output_dir`, then push the
    run when `target` (from `prepare_push`) says so. Returns the push's `CommitInfo` or None.

    Without a push, a card that cannot be written is only a warning; a failed push raises
    RuntimeError after the run's files are saved, with the command that retries it."""
    out = Path(output_dir)
    repo_id = target.repo_id if target is not None else None
    try:
        write_model_card(out, results, task, training_args, model_args, data_args, repo_id=repo_id)
    except Exception as err:
        if target is not None:
            raise
        logger.warning("No model card written (%s: %s).", type(err).__name__, err)
        return None
    if target is None:
        return None
    try:
        info = push_run(out, target.repo_id, task, private=target.private, revision=target.revision)
    except Exception as err:
        retry = f"python -m hf_gpt_scratch.hub {out} --hub_model_id {target.repo_id} --task {task}"
        raise RuntimeError(f"The run is saved in {out} but pushing it to {target.repo_id} failed: {err}\n"
                           f"Retry with: {retry}") from err
    print(f"Pushed to https://huggingface.co/{target.repo_id} (commit {info.oid}).", flush=True)
    return info


# --------------------------------------------------------------------------------------------
# Command line: push a finished run folder
# --------------------------------------------------------------------------------------------


def guess_task(output_dir: str | os.PathLike) -> str:
    out = Path(output_dir)
    config = _read_json(out / "config.json")
    if any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return "classify"
    if (out / "responses.json").is_file():
        return "instruct"
    if (out / "results.json").is_file():
        return "pretrain"
    return "convert"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_gpt_scratch.hub",
        description="Push a finished run folder (a recipe's --output_dir) to the Hugging Face Hub: the model, its "
        "code, the tokenizer, the card, the plots and results, and a LoRA run's adapter. Log in first "
        "(`hf auth login`).",
    )
    parser.add_argument("output_dir")
    parser.add_argument("--hub_model_id", required=True, help="org/name (or name: your namespace)")
    parser.add_argument("--task", choices=TASKS, help="the recipe that made the folder (default: guessed)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--rewrite_card", action="store_true",
                        help="write README.md again from results.json (default: keep the run's card)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    missing = [name for name in ("config.json",) if not (out / name).is_file()]
    if not (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").is_file():
        missing.append("model.safetensors")
    if missing:
        print(f"error: {out} holds no model to push (no {', '.join(missing)}).", file=sys.stderr)
        return 1
    task = args.task or guess_task(out)
    try:
        repo_id = create_repo(args.hub_model_id, private=args.private or None)
        if args.rewrite_card or not (out / CARD_NAME).is_file():
            write_model_card(out, None, task, repo_id=repo_id)
        info = push_run(out, repo_id, task, private=args.private or None, revision=args.revision)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {out} ({task}) to https://huggingface.co/{repo_id} (commit {info.oid}).")
    return 0


__all__ = [
    "HubTarget",
    "TASKS",
    "card_context",
    "check_pushable",
    "code_files",
    "count_saved_parameters",
    "create_repo",
    "expected_files",
    "find_template",
    "finish_run",
    "guess_task",
    "prepare_push",
    "push_run",
    "render_model_card",
    "write_model_card",
]


if __name__ == "__main__":
    sys.exit(main())
