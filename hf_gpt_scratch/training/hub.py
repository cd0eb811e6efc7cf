"""Share a run on the Hugging Face Hub: the model card, and exactly the files worth pushing.

Users meet this module through `--push_to_hub` and `--hub_model_id org/name` of the recipes and of
the convert CLI. Tokens come from `hf auth login` or HF_TOKEN, never from a flag.

- `prepare_push(training_args)`, before the `Trainer` is built: switches the Trainer's own push off
  (it uploads the whole output folder: `training_args.bin`, a pickle, and checkpoints with optimizer
  states) and, on the main process, creates the repo, so a missing login fails before training.
- `write_model_card(output_dir, results, task, ...)`: README.md from the template `model_card.md`
  (package data) with `huggingface_hub.ModelCard.from_template`: the header is the run's
  `ModelCardData` (evaluation results as `EvalResult`s), the prose is in the template. A README.md
  that is not one of our cards (no `hf_gpt_scratch` tag) is never replaced.
- `push_run(output_dir, repo_id)`: one `HfApi.upload_folder` of exactly `pushed_files(output_dir)`,
  deleting everything else in the repo (`.gitattributes` stays), after a scan for Hugging Face
  tokens. When it fails, the error names the `hf upload` command that pushes the same files again.
- `finish_run(...)`, at the end of a recipe on the main process: the card, then the push.

LoRA runs push the merged model at the top (it loads without PEFT). The adapter goes to `adapter/`
only when its `base_model_name_or_path` (recorded by PEFT: the `--model_name_or_path` the run started
from) is a Hub repo, so that `PeftModel.from_pretrained(<that base>, repo, subfolder="adapter")` works
for anyone. A local base (a folder, a GPT-2 converted on the fly) exists only where the run trained:
an adapter naming it would load for nobody, so then the merged model alone is pushed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .faults import PICKLE_SUFFIXES, refuse_hub_token
from ..tokenization import TOKENIZER_SAVE_FILES

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("model_card.md")
CARD_TAG = "hf_gpt_scratch"  # every card we write carries it: a README.md without it is the user's
TOP_FILES = (
    "README.md", "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    *TOKENIZER_SAVE_FILES, "results.json", "responses.json",
)
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
# upload_folder's ignore_patterns: never pushed, whatever the list of files says.
NEVER = (*(f"*{suffix}" for suffix in PICKLE_SUFFIXES), "*checkpoint-*", "*training_args*",
         "*trainer_state*", "*optimizer*", "*scheduler*", "*rng_state*")
_TOKEN = re.compile(rb"(hf_|api_org_)[A-Za-z0-9]{30,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GPT2 = re.compile(r"^(openai-community/)?(distil)?gpt2(-\w+)?$")  # MIT-licensed weights


@dataclass
class HubTarget:
    """Where `finish_run` pushes: the repo id (namespace included), whether a new repo is private,
    and the branch (None: main)."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None


def _hub_id(name: Any) -> str | None:
    """`name` when it names a Hub repo (org/name) rather than a local folder."""
    if not name or Path(str(name)).expanduser().exists() or not _REPO_ID.match(str(name)):
        return None
    return str(name)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def create_repo(repo_id: str, private: bool | None = None) -> str:
    """Create `repo_id` if needed (the login's token); returns the full id (namespace included).
    Raises RuntimeError, with what to do, when the Hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        return HfApi().create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as err:
        raise RuntimeError(
            f"Could not create or reach the Hub repo {repo_id!r} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Log in first (`hf auth login`, or set HF_TOKEN in the environment) and check the network; "
            "HF_HUB_OFFLINE=1 blocks every upload."
        ) from err


def prepare_push(training_args) -> HubTarget | None:
    """Take `--push_to_hub` over from the Trainer; call it before building the `Trainer`.

    Returns None when nothing is to be pushed. Otherwise sets `training_args.push_to_hub = False`
    (the Trainer then pushes nothing, checkpoints included, whatever `hub_strategy` says), refuses
    `--hub_token` and a README.md in the output folder that is not our card, and on the main process
    creates the repo now. `--hub_model_id` defaults to the output folder's name, as in the Trainer."""
    from .arguments import is_main_process

    if not training_args.push_to_hub:
        return None
    refuse_hub_token(training_args)
    if training_args.hub_strategy in ("checkpoint", "all_checkpoints"):
        logger.warning("--hub_strategy %s is ignored: only the final model is pushed.", training_args.hub_strategy)
    training_args.push_to_hub = False
    out = Path(training_args.output_dir)
    _card_path(out)  # fail now, not after training
    target = HubTarget(training_args.hub_model_id or out.absolute().name, training_args.hub_private_repo,
                       training_args.hub_revision)
    if is_main_process():
        target.repo_id = create_repo(target.repo_id, private=target.private)
        logger.info("The run will be pushed to https://huggingface.co/%s", target.repo_id)
    return target


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------

_TASKS = {  # task: (pipeline tag, Auto class, task name in the model-index)
    "pretrain": ("text-generation", "AutoModelForCausalLM", "Causal language modeling"),
    "instruct": ("text-generation", "AutoModelForCausalLM", "Instruction following"),
    "classify": ("text-classification", "AutoModelForSequenceClassification", "Text classification"),
    "preference": ("text-generation", "AutoModelForCausalLM", "Preference tuning (DPO)"),
    "convert": ("text-generation", "AutoModelForCausalLM", None),
}
_METRICS = {  # task: the model-index entries, (results.json key, split, metric type, metric name)
    "pretrain": [("eval_loss", "validation", "loss", "Validation loss (nats per token)"),
                 ("perplexity", "validation", "perplexity", "Validation perplexity")],
    "classify": [(f"{prefix}_{metric}", split, metric, f"{split.capitalize()} {metric}")
                 for split, prefix in (("validation", "val"), ("test", "test"))
                 for metric in ("accuracy", "f1", "precision", "recall")],
    "instruct": [("rouge_l_after", "test", "rouge", "ROUGE-L of greedy responses"),
                 ("test_loss_after", "test", "loss", "Response loss (nats per token)")],
    "preference": [("test_reward_accuracy_after", "test", "accuracy", "Reward accuracy (chosen over rejected)"),
                   ("test_reward_margin_after", "test", "reward_margin", "Reward margin (chosen - rejected)"),
                   ("test_loss_after", "test", "loss", "DPO loss")],
    "convert": [],
}
_BOOK_DATA = {  # task: (dataset type, dataset name) of the book's data, the recipes' default
    "pretrain": ("the-verdict", "The Verdict (Edith Wharton, 1908)"),
    "classify": ("ucirvine/sms_spam", "SMS Spam Collection (UCI)"),
    "instruct": ("instruction-data", "Instruction data of the book (chapter 7)"),
    "preference": ("instruction-data-with-preference", "Preference data of the book (chapter 7, DPO)"),
}


def _fmt(value: Any) -> str:
    """A value for the card's tables: floats to 4 significant digits, ints with thousands separators."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_fmt, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(getattr(value, "value", value))  # the enums of TrainingArguments


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, metadata)."""
    with open(path, "rb") as f:
        return f.read(struct.unpack("<Q", f.read(8))[0])


def _hardware(training_args, world: int) -> str:
    import torch
    import transformers

    device = getattr(training_args, "device", torch.device("cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    return (f"{world} process{'es' if world > 1 else ''} on {name}; torch {torch.__version__}, "
            f"transformers {transformers.__version__}.")


def _adapter_base(output_dir: Path) -> str | None:
    """The Hub repo the run's LoRA adapter was trained on, or None (no adapter, or a local base)."""
    return _hub_id(_read_json(output_dir / "adapter" / "adapter_config.json").get("base_model_name_or_path"))


def model_card(output_dir: str | Path, results: Mapping[str, Any], task: str, training_args=None, model_args=None,
               data_args=None, repo_id: str | None = None):
    """The `huggingface_hub.ModelCard` of the run in `output_dir` (see `write_model_card`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if task not in _TASKS:
        raise ValueError(f"task must be one of {tuple(_TASKS)}, got {task!r}.")
    out = Path(output_dir)
    config = _read_json(out / "config.json")
    pipeline_tag, auto_class, task_name = _TASKS[task]
    repo_id = repo_id or out.absolute().name
    source = results.get("source") if task == "convert" else getattr(model_args, "model_name_or_path", None)
    dataset_type, dataset_name = _BOOK_DATA.get(task, ("unknown", "unknown"))
    book_data = not (getattr(data_args, "dataset_name", None) or getattr(data_args, "train_file", None))
    if getattr(data_args, "dataset_name", None):
        dataset_type = dataset_name = data_args.dataset_name
        if getattr(data_args, "dataset_config_name", None):
            dataset_name += f" ({data_args.dataset_config_name})"
    elif getattr(data_args, "train_file", None):
        dataset_type, dataset_name = Path(data_args.train_file).stem, Path(data_args.train_file).name
    eval_results = [
        EvalResult(task_type=pipeline_tag, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                   dataset_split=split, metric_type=metric, metric_name=name, metric_value=results[key])
        for key, split, metric, name in _METRICS[task]
        if isinstance(results.get(key), (int, float)) and math.isfinite(results[key])
    ]
    remote_code = bool(config.get("auto_map"))
    tags = [CARD_TAG, "gpt_scratch", "llms-from-scratch", *["custom_code"] * remote_code,
            *["gpt2"] * (config.get("model_type") == "gpt2"), pipeline_tag,
            *["peft", "lora"] * (out / ADAPTER_FILES[0]).is_file()]
    base_model = _hub_id(source)
    card_data = ModelCardData(
        license="mit" if task == "convert" and _GPT2.match(str(base_model)) else "apache-2.0",
        library_name="transformers", pipeline_tag=pipeline_tag, tags=tags, base_model=base_model,
        datasets=[dataset_type] if task != "convert" and _hub_id(dataset_type) else None,
        model_name=repo_id.split("/")[-1], eval_results=eval_results or None,
    )
    world = int(results.get("world_size") or getattr(training_args, "world_size", 1) or 1)
    n_params = sum(math.prod(info["shape"]) for path in sorted(out.glob("model*.safetensors"))
                   for name, info in json.loads(_safetensors_header(path)).items() if name != "__metadata__")
    return ModelCard.from_template(
        card_data, template_path=TEMPLATE, task=task, repo_id=repo_id, model_name=card_data.model_name,
        results=results, args=training_args, config=config, n_params=n_params, remote_code=remote_code,
        auto_class=auto_class, adapter_base=_adapter_base(out), source=source and Path(str(source)).name,
        dataset_name=dataset_name, book_data=book_data, world=world, hardware=_hardware(training_args, world),
        fmt=_fmt,
    )


def _card_path(output_dir: Path) -> Path:
    """output_dir/README.md; ValueError when a README.md is there that is not one of our cards."""
    from huggingface_hub import ModelCard

    path = output_dir / "README.md"
    if path.is_file() and CARD_TAG not in (ModelCard.load(path, ignore_metadata_errors=True).data.tags or []):
        raise ValueError(
            f"{path} is not a model card written by hf_gpt_scratch (its metadata has no {CARD_TAG!r} tag), so it is "
            "not replaced. Move it out of the output folder, or choose another --output_dir."
        )
    return path


def write_model_card(output_dir: str | Path, results: Mapping[str, Any], task: str = "pretrain", training_args=None,
                     model_args=None, data_args=None, repo_id: str | None = None) -> Path:
    """Write output_dir/README.md, the model card, filled from `results` (the run's results.json).

    `task` is the recipe ("pretrain", "classify", "instruct") or "convert": it decides the pipeline
    tag, the evaluation results and the results table. The recipe's parsed `training_args`,
    `model_args` and `data_args` (all optional) add hyperparameters, hardware, the starting
    checkpoint and the data; `repo_id` is the name in the snippets (default: the folder's name).
    Raises ValueError for an unknown task or a README.md there that is not our card."""
    path = _card_path(Path(output_dir))
    model_card(output_dir, results, task, training_args, model_args, data_args, repo_id).save(path)
    return path


# --------------------------------------------------------------------------------------------
# The push
# --------------------------------------------------------------------------------------------


def code_files(output_dir: str | Path) -> list[str]:
    """The `.py` files the folder's `auto_map` needs, with the sibling modules they import, as
    transformers' remote code loads them."""
    from transformers.dynamic_module_utils import get_relative_import_files

    out = Path(output_dir)
    refs = [ref for value in (_read_json(out / "config.json").get("auto_map") or {}).values()
            for ref in (value if isinstance(value, list) else [value]) if ref]
    found: set[str] = set()
    for path in {out / (ref.split("--")[-1].split(".")[0] + ".py") for ref in refs}:
        if path.is_file():
            found |= {path.name, *(Path(p).name for p in get_relative_import_files(path))}
    return sorted(found)


def pushed_files(output_dir: str | Path) -> list[str]:
    """What a push sends, relative to `output_dir`: the card, config, safetensors weights, the
    model's code, tokenizer files, PNG plots, results.json/responses.json, and `adapter/`'s config
    and weights when the adapter's base is a Hub repo (see the module docstring).

    Raises FileNotFoundError without README.md, config.json or safetensors weights (pickled
    `pytorch_model.bin` weights are never pushed), ValueError for an adapter without
    `adapter_model.safetensors`."""
    out = Path(output_dir)
    names = [name for name in TOP_FILES if (out / name).is_file()]
    names += sorted(p.name for p in [*out.glob("model-*-of-*.safetensors"), *out.glob("*.png")]) + code_files(out)
    missing = [name for name in ("README.md", "config.json") if name not in names]
    missing += [] if any(name.endswith(".safetensors") for name in names) else ["model.safetensors"]
    if missing:
        raise FileNotFoundError(f"{out} lacks {', '.join(missing)}: nothing to push (weights must be safetensors).")
    if (out / ADAPTER_FILES[0]).is_file():
        if not (out / ADAPTER_FILES[1]).is_file():
            raise ValueError(f"{out / 'adapter'} has no adapter_model.safetensors (pickled adapters are not pushed).")
        if _adapter_base(out):
            names += ADAPTER_FILES
        else:
            logger.warning("The LoRA adapter is not pushed: its base is not a Hub repo. The merged model is.")
    return names


def check_pushable(output_dir: str | Path, names: Sequence[str]) -> None:
    """Raise ValueError when a file holds the login's Hugging Face token or anything shaped like
    one (safetensors files: their header, where names and metadata are)."""
    from huggingface_hub import get_token

    token = (get_token() or "").encode()
    for name in names:
        path = Path(output_dir) / name
        data = _safetensors_header(path) if name.endswith(".safetensors") else path.read_bytes()
        if (token and token in data) or _TOKEN.search(data):
            raise ValueError(f"Refusing to push {name}: it contains what looks like a Hugging Face token.")


def upload_command(output_dir: str | Path, repo_id: str, names: Sequence[str], revision: str | None = None) -> str:
    """The `hf upload` command that sends what `push_run` sends (without the token scan)."""
    args = ["hf", "upload", repo_id, str(output_dir), ".", *(a for name in names for a in ("--include", name)),
            "--delete", "*", *(["--revision", revision] if revision else [])]
    return shlex.join(args)


def push_run(output_dir: str | Path, repo_id: str, private: bool | None = None, revision: str | None = None):
    """Push exactly `pushed_files(output_dir)` to `repo_id` in one commit and delete every other
    file of the branch (`.gitattributes` stays), so the repo mirrors the run. Returns the
    `CommitInfo`. Raises ValueError for a file holding a token (nothing is sent), RuntimeError,
    naming the `hf upload` command that retries, when the upload fails."""
    from huggingface_hub import HfApi

    out = Path(output_dir)
    names = pushed_files(out)
    check_pushable(out, names)
    api = HfApi()
    try:
        repo_id = create_repo(repo_id, private=private)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=out, revision=revision, allow_patterns=names, ignore_patterns=list(NEVER),
            delete_patterns="*", commit_message=f"Upload {out.name} with hf_gpt_scratch",
        )
    except Exception as err:
        raise RuntimeError(
            f"The run is saved in {out}, but pushing it to {repo_id} failed ({type(err).__name__}: {err}). "
            f"Push it again with:\n  {upload_command(out, repo_id, names, revision)}"
        ) from err
    logger.info("Pushed %d files to https://huggingface.co/%s (commit %s).", len(names), repo_id, info.oid)
    return info


def finish_run(output_dir: str | Path, results: Mapping[str, Any], task: str, training_args=None, model_args=None,
               data_args=None, target: HubTarget | None = None):
    """End of a recipe, on the main process: write the model card into `output_dir`, then push the
    run when `target` (from `prepare_push`) says so. Returns the push's `CommitInfo` or None.
    Without a push, a card that cannot be written is only a warning."""
    try:
        write_model_card(output_dir, results, task, training_args, model_args, data_args,
                         repo_id=target.repo_id if target else None)
    except Exception as err:
        if target is not None:
            raise
        logger.warning("No model card written (%s: %s).", type(err).__name__, err)
        return None
    if target is None:
        return None
    info = push_run(output_dir, target.repo_id, private=target.private, revision=target.revision)
    print(f"Pushed to https://huggingface.co/{target.repo_id} (commit {info.oid}).", flush=True)
    return info
