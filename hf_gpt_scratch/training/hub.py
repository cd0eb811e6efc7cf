"""Share a run on the Hub (`--push_to_hub`; the token from `hf auth login` or HF_TOKEN, never a flag): the
model card (`model_card.md` via `ModelCard.from_template`, never over a user's README.md), then one
`HfApi.upload_folder` of exactly the files worth pushing, after a token scan. LoRA: docs/hub.md."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

from .faults import PICKLE_SUFFIXES, refuse_hub_token
from ..tokenization import TOKENIZER_SAVE_FILES

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("model_card.md")
CARD_TAG = "hf_gpt_scratch"  # every card we write carries it: a README.md without it is the user's
TOP_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
             "model.safetensors.index.json", *TOKENIZER_SAVE_FILES, "all_results.json", "train_results.json",
             "eval_results.json", "test_results.json", "samples.json", "responses.json")
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
# upload_folder's ignore_patterns: never pushed, whatever the list of files says.
NEVER = (*(f"*{suffix}" for suffix in PICKLE_SUFFIXES), "*checkpoint-*", "*training_args*",
         "*trainer_state*", "*optimizer*", "*scheduler*", "*rng_state*")
_TOKEN = re.compile(rb"(hf_|api_org_)[A-Za-z0-9]{30,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GPT2 = re.compile(r"^(openai-community/)?(distil)?gpt2(-\w+)?$")  # MIT-licensed weights


def _hub_id(name: Any) -> str | None:
    name = str(name or "")
    return name if _REPO_ID.match(name) and not Path(name).expanduser().exists() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(struct.unpack("<Q", f.read(8))[0])


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


def prepare_push(training_args) -> str | None:
    """Before the `Trainer` is built: None without `--push_to_hub`, else the full repo id (default: the
    folder's name). Turns the Trainer's own push off (it sends pickles and checkpoints), refuses
    `--hub_token` and a README.md not ours, and creates the repo now: a missing login fails early."""
    if not training_args.push_to_hub:
        return None
    refuse_hub_token(training_args)
    if training_args.hub_strategy in ("checkpoint", "all_checkpoints"):
        logger.warning("--hub_strategy %s is ignored: only the final model is pushed.", training_args.hub_strategy)
    training_args.push_to_hub = False
    out = Path(training_args.output_dir)
    _card_path(out)  # fail now, not after training
    repo_id = training_args.hub_model_id or out.absolute().name
    if training_args.process_index == 0:  # (global rank 0)
        repo_id = create_repo(repo_id, private=training_args.hub_private_repo)
        logger.info("The run will be pushed to https://huggingface.co/%s", repo_id)
    return repo_id


_TASKS = {  # task: pipeline tag, task name in the model-index, the book's data (the default): type, name
    "pretrain": ("text-generation", "Causal language modeling", "the-verdict",
                 "The Verdict (Edith Wharton, 1908)"),
    "instruct": ("text-generation", "Instruction following", "instruction-data",
                 "Instruction data of the book (chapter 7)"),
    "classify": ("text-classification", "Text classification", "ucirvine/sms_spam",
                 "SMS Spam Collection (UCI)"),
    "preference": ("text-generation", "Preference tuning (DPO)", "instruction-data-with-preference",
                   "Preference data of the book (chapter 7, DPO)"),
    "convert": ("text-generation", None, "unknown", "unknown"),
}
_METRICS = {  # task: the model-index entries, (all_results.json key, split, metric type, metric name)
    "pretrain": [("eval_loss", "validation", "loss", "Validation loss (nats per token)"),
                 ("perplexity", "validation", "perplexity", "Validation perplexity")],
    "classify": [(f"{prefix}_{metric}", split, metric, f"{split.capitalize()} {metric}")
                 for split, prefix in (("validation", "eval"), ("test", "test"))
                 for metric in ("accuracy", "f1", "precision", "recall")],
    "instruct": [("rouge_l_after", "test", "rouge", "ROUGE-L of greedy responses"),
                 ("test_loss_after", "test", "loss", "Response loss (nats per token)")],
    "preference": [("test_reward_accuracy_after", "test", "accuracy", "Reward accuracy (chosen over rejected)"),
                   ("test_reward_margin_after", "test", "reward_margin", "Reward margin (chosen - rejected)"),
                   ("test_loss_after", "test", "loss", "DPO loss")],
}


def _card_path(output_dir: Path) -> Path:
    from huggingface_hub import ModelCard

    path = output_dir / "README.md"
    if path.is_file() and CARD_TAG not in (ModelCard.load(path, ignore_metadata_errors=True).data.tags or []):
        raise ValueError(
            f"{path} is not a model card written by hf_gpt_scratch (its metadata has no {CARD_TAG!r} tag), "
            "so it is not replaced. Move it out of the output folder, or choose another --output_dir."
        )
    return path


def write_model_card(output_dir: str | Path, results: Mapping[str, Any], task: str = "pretrain",
                     training_args=None, model_args=None, data_args=None, repo_id: str | None = None) -> Path:
    """Write output_dir/README.md, the run's card: `task` (a recipe's name, or "convert") picks the tag and
    the results (all_results.json; non-finite left out); the parsed arguments (optional) add hyperparameters,
    hardware, start and data; `repo_id` names the model. ValueError: unknown task, a README.md not ours."""
    import torch
    import transformers
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if task not in _TASKS:
        raise ValueError(f"task must be one of {tuple(_TASKS)}, got {task!r}.")
    out = Path(output_dir)
    path = _card_path(out)
    config, adapter = _read_json(out / "config.json"), _read_json(out / ADAPTER_FILES[0])
    results = {k: v for k, v in results.items() if not isinstance(v, float) or math.isfinite(v)}
    pipeline_tag, task_name, dataset_type, dataset_name = _TASKS[task]
    repo_id = repo_id or out.absolute().name
    source = results.get("source") if task == "convert" else getattr(model_args, "model_name_or_path", None)
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
        for key, split, metric, name in _METRICS.get(task, []) if isinstance(results.get(key), (int, float))
    ]
    remote_code = bool(config.get("auto_map"))
    tags = [CARD_TAG, "gpt_scratch", "llms-from-scratch", *["custom_code"] * remote_code,
            *["gpt2"] * (config.get("model_type") == "gpt2"), pipeline_tag,
            *["peft", "lora"] * bool(adapter)]
    base_model = _hub_id(source)
    card_data = ModelCardData(
        license="mit" if task == "convert" and _GPT2.match(str(base_model)) else "apache-2.0",
        library_name="transformers", pipeline_tag=pipeline_tag, tags=tags, base_model=base_model,
        datasets=[dataset_type] if task != "convert" and _hub_id(dataset_type) else None,
        model_name=repo_id.split("/")[-1], eval_results=eval_results or None,
    )
    world = int(results.get("world_size") or getattr(training_args, "world_size", 1) or 1)
    n_params = sum(math.prod(info["shape"]) for file in sorted(out.glob("model*.safetensors"))
                   for name, info in json.loads(_safetensors_header(file)).items() if name != "__metadata__")
    device = getattr(training_args, "device", torch.device("cpu"))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    ModelCard.from_template(
        card_data, template_path=TEMPLATE, task=task, repo_id=repo_id, model_name=card_data.model_name,
        results=results, args=training_args, config=config, n_params=n_params, remote_code=remote_code,
        adapter=adapter, adapter_base=_hub_id(adapter.get("base_model_name_or_path")),
        source=source and Path(str(source)).name, dataset_name=dataset_name,
        book_data=book_data, world=world, hardware=hardware,
        versions=f"torch {torch.__version__}, transformers {transformers.__version__}",
    ).save(path)
    return path


def pushed_files(output_dir: str | Path) -> list[str]:
    """What a push sends, relative to `output_dir`: card, config, safetensors weights, the model's code,
    tokenizer, PNG plots, {train,eval,test,all}_results.json, samples.json, responses.json, `adapter/` over
    a Hub base. FileNotFoundError without README.md, config.json or weights; ValueError: a pickled adapter."""
    from transformers.dynamic_module_utils import get_relative_import_files

    out = Path(output_dir)
    names = [name for name in TOP_FILES if (out / name).is_file()]
    names += sorted(p.name for p in [*out.glob("model-*-of-*.safetensors"), *out.glob("*.png")])
    # the model's code: the modules of config.json's auto_map and the sibling modules they import
    refs = [ref for value in (_read_json(out / "config.json").get("auto_map") or {}).values()
            for ref in (value if isinstance(value, list) else [value]) if ref]
    code: set[str] = set()
    for path in {out / (ref.split("--")[-1].split(".")[0] + ".py") for ref in refs}:
        if path.is_file():
            code |= {path.name, *(Path(p).name for p in get_relative_import_files(path))}
    names += sorted(code)
    missing = [name for name in ("README.md", "config.json") if name not in names]
    missing += [] if any(name.endswith(".safetensors") for name in names) else ["model.safetensors"]
    if missing:
        raise FileNotFoundError(f"{out} lacks {', '.join(missing)}: nothing to push (weights must be safetensors).")
    if (out / ADAPTER_FILES[0]).is_file():
        if not (out / ADAPTER_FILES[1]).is_file():
            raise ValueError(f"{out / 'adapter'} has no adapter_model.safetensors (pickled adapters are not pushed).")
        if _hub_id(_read_json(out / ADAPTER_FILES[0]).get("base_model_name_or_path")):
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
    """Push exactly `pushed_files(output_dir)` to `repo_id` in one commit that deletes every other
    file of the branch (`.gitattributes` stays). Returns the `CommitInfo`. Raises ValueError for a
    file holding a token (nothing is sent), RuntimeError naming the `hf upload` retry when it fails."""
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
    return info


def finish_run(output_dir: str | Path, results: Mapping[str, Any], task: str, training_args=None, model_args=None,
               data_args=None, repo_id: str | None = None):
    """End of a recipe, on the main process: the model card, then the push to `repo_id` (from
    `prepare_push`; `--hub_private_repo`, `--hub_revision` apply) if any. Returns the push's
    `CommitInfo` or None. Without a push, a card that cannot be written is only a warning."""
    try:
        write_model_card(output_dir, results, task, training_args, model_args, data_args, repo_id=repo_id)
    except Exception as err:
        if repo_id is not None:
            raise
        logger.warning("No model card written (%s: %s).", type(err).__name__, err)
    if repo_id is None:
        return None
    # (convert passes no training arguments: it created the repo itself, private or not)
    info = push_run(output_dir, repo_id, getattr(training_args, "hub_private_repo", None),
                    getattr(training_args, "hub_revision", None))
    print(f"Pushed to https://huggingface.co/{repo_id} (commit {info.oid}).", flush=True)
    return info
