"""Scale out on CPU (gloo, two processes): the Accelerate config files in recipes/accelerate/,
recipes/pretrain.py under torchrun and accelerate launch (both ranks train, replicas end
identical, the result equals one process given the same global batch, the saved model reloads),
FSDP2 sharding of the model with torch's `fully_shard`, DeepSpeed ZeRO-2/3 when installed, and
recipes/classify.py under torchrun.

What is exactly checkable: the two DDP replicas are bitwise identical (each rank writes a
sha256 of its weights), torchrun and accelerate launch give bitwise the same model (same
seeds, same sharding of the data), and the two-process model equals a one-process run with the
same global batch within float tolerance (the gradient all-reduce sums in another order).
"""

import hashlib
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hf_gpt_scratch
import hf_gpt_scratch.tokenization
from hf_gpt_scratch.tokenization import train_bpe_tokenizer

from conftest import RECIPES, REPO, needs_verdict, run_command

PRETRAIN = RECIPES / "pretrain.py"
CLASSIFY = RECIPES / "classify.py"
CONFIGS = RECIPES / "accelerate"
TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.0"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]



def run(cmd, timeout=300, **env):
    """A launcher command, one thread per process (two processes share the machine's cores)."""
    return run_command(cmd, timeout=timeout, **{"OMP_NUM_THREADS": 1, **env})


# A recipe run unchanged, plus a callback that writes each rank's weight hash at the end of training
# (patched into hf_gpt_scratch.training.callbacks.default_callbacks before the recipe imports it).
HASH_WRAPPER = textwrap.dedent(
    """
    import hashlib, json, os, runpy, sys
    from pathlib import Path
    from transformers import TrainerCallback
    import hf_gpt_scratch.training.callbacks as callbacks

    class WeightHash(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            rank = int(os.environ.get("RANK", "0"))
            out = Path(os.environ["HASH_DIR"]) / f"rank{rank}.json"
            out.write_text(json.dumps({"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                       "step": state.global_step, "sha256": digest.hexdigest()}))

    original = callbacks.default_callbacks
    callbacks.default_callbacks = lambda: original() + [WeightHash()]
    recipe = sys.argv[1]
    sys.argv = [recipe] + sys.argv[2:]
    runpy.run_path(recipe, run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def bpe_dir(verdict_bpe_dir):
    return verdict_bpe_dir


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
    path = tmp_path_factory.mktemp("wrapper") / "with_weight_hash.py"
    path.write_text(HASH_WRAPPER)
    return path


def pretrain_args(bpe_dir, out, batch):
    return [
        "--tokenizer_name", bpe_dir, "--config_overrides", TINY, "--block_size", 32,
        "--max_steps", 4, "--per_device_train_batch_size", batch, "--learning_rate", 5e-3,
        "--logging_steps", 2, "--eval_steps", 2, "--per_device_eval_batch_size", 4, "--max_eval_samples", 8,
        "--disable_tqdm", "true", "--max_new_tokens", 4, "--output_dir", out,
    ]


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------


def _launch_env(name):
    """The environment `accelerate launch --config_file recipes/accelerate/NAME.yaml` gives the
    training processes (what Accelerate's plugins read), without launching anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config.keys())
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_config_files_are_the_expected_ones():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["ddp.yaml", "ddp_multinode.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp2.yaml"]


@pytest.mark.parametrize("name", ["ddp", "ddp_multinode", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_config_file_parses(name):
    from accelerate.commands.config import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # unknown top-level keys raise here
    assert config.compute_environment.value == "LOCAL_MACHINE" and config.mixed_precision == "no"
    args, env = _launch_env(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    if name == "ddp":
        assert config.distributed_type.value == "MULTI_GPU" and args.multi_gpu
        assert (config.num_machines, config.num_processes) == (1, 2) and int(args.nproc_per_node) == 2
    if name == "ddp_multinode":
        assert config.distributed_type.value == "MULTI_GPU" and config.num_machines == 2
        assert config.main_process_ip and config.main_process_port
        assert int(args.nproc_per_node) == config.num_processes // config.num_machines == 8


def test_fsdp2_config_builds_the_plugin_for_our_model():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    _, env = _launch_env("fsdp2")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.transformer_cls_names_to_wrap == ["TransformerBlock"]
    model = hf_gpt_scratch.GPTScratchForCausalLM(hf_gpt_scratch.GPTScratchConfig(
        vocab_size=97, context_length=16, emb_dim=16, n_heads=2, n_layers=2))
    assert plugin.transformer_cls_names_to_wrap == list(model._no_split_modules)
    # Accelerate's FSDP2 wrap policy picks exactly the transformer blocks as units (then the model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [name for name, module in model.named_modules() if policy(module)]
    assert wrapped == ["model.trf_blocks.0", "model.trf_blocks.1"]
    # the final save switches to a full state dict (save_final_model), which the plugin accepts
    plugin.set_state_dict_type("FULL_STATE_DICT")
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_build_the_plugin(stage):
    from accelerate.utils import DeepSpeedPlugin

    _, env = _launch_env(f"deepspeed_zero{stage}")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    # batch sizes, accumulation and clipping are left to the recipe's flags
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert plugin.deepspeed_config[key] == "auto"
    # ZeRO-3 gathers the full weights for the final save (model.safetensors loadable by from_pretrained)
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


# --------------------------------------------------------------------------------------------
# DDP: torchrun and accelerate launch
# --------------------------------------------------------------------------------------------


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _check_ddp_run(out, hashes):
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["train_steps"] == 4
    # both ranks trained: tokens are summed over the processes, 4 steps x 2 ranks x 2 blocks x 32
    assert results["num_input_tokens_seen"] == 4 * 2 * 2 * 32
    assert math.isfinite(results["eval_loss"]) and results["eval_loss"] < results["initial_eval_loss"]
    ranks = [json.loads((hashes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [4, 4]
    assert ranks[0]["sha256"] == ranks[1]["sha256"], "the DDP replicas differ"
    # the saved model is rank 0's replica, reloads with the Auto classes, and holds no pickle
    model = AutoModelForCausalLM.from_pretrained(out)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["sha256"]
    assert not (out / "training_args.bin").exists() and (out / "training_args.json").is_file()
    return results


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, bpe_dir, wrapper):
    """pretrain.py under torchrun, under accelerate launch with ddp.yaml (and its flags), and in
    one process with the same global batch (4 = 2 processes x 2)."""
    root = tmp_path_factory.mktemp("ddp")
    outs = {}
    for name, launcher in (
        ("torchrun", TORCHRUN),
        ("accelerate", [*ACCELERATE, "--config_file", CONFIGS / "ddp.yaml", "--multi_gpu", "--num_processes", 2,
                        "--mixed_precision", "no"]),
    ):
        hashes = root / f"{name}_hashes"
        hashes.mkdir()
        out = root / name
        proc = run([*launcher, wrapper, PRETRAIN, *pretrain_args(bpe_dir, out, batch=2)], HASH_DIR=hashes)
        outs[name] = (out, hashes, proc)
    single = root / "single"
    run([sys.executable, PRETRAIN, *pretrain_args(bpe_dir, single, batch=4)])
    outs["single"] = (single, None, None)
    return outs


@pytest.mark.slow
@needs_verdict
def test_pretrain_under_torchrun(ddp_runs):
    out, hashes, proc = ddp_runs["torchrun"]
    _check_ddp_run(out, hashes)
    # reports come from rank 0 only
    assert proc.stdout.count("***** train metrics *****") == 1


@pytest.mark.slow
@needs_verdict
def test_pretrain_under_accelerate_launch_with_ddp_config(ddp_runs):
    out, hashes, proc = ddp_runs["accelerate"]
    _check_ddp_run(out, hashes)
    assert proc.stdout.count("***** train metrics *****") == 1
    # same seeds, same split of the data: bitwise the model torchrun gave
    torchrun = _weights(ddp_runs["torchrun"][0])
    assert all(torch.equal(torchrun[k], v) for k, v in _weights(out).items())


@pytest.mark.slow
@needs_verdict
def test_two_processes_equal_one_process_with_the_same_global_batch(ddp_runs):
    ddp, single = _weights(ddp_runs["torchrun"][0]), _weights(ddp_runs["single"][0])
    assert set(ddp) == set(single)
    worst = max((ddp[k] - single[k]).abs().max().item() for k in ddp)
    assert worst < 1e-5, worst
    history = lambda out: [(e["step"], e["loss"]) for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    ddp_losses, single_losses = history(ddp_runs["torchrun"][0]), history(ddp_runs["single"][0])
    assert [s for s, _ in ddp_losses] == [s for s, _ in single_losses] == [2, 4]
    for (_, a), (_, b) in zip(ddp_losses, single_losses):
        assert a == pytest.approx(b, rel=1e-5)


# --------------------------------------------------------------------------------------------
# FSDP2
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp2_shards_trains_and_gathers(tmp_path):
    run([*TORCHRUN, REPO / "tests" / "fsdp2_check.py", tmp_path], timeout=300)
    shards = [json.loads((tmp_path / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0].keys() == shards[1].keys() and len(shards[0]) > 10
    for name, info in shards[0].items():
        other = shards[1][name]
        # every parameter is a DTensor sharded on dim 0 over the two ranks: each holds about half
        assert info["dtensor"] and other["dtensor"], name
        assert info["placements"] == other["placements"] == ["S(0)"], name
        assert info["local_numel"] + other["local_numel"] == info["full_numel"], name
        assert abs(info["local_numel"] - other["local_numel"]) <= info["full_numel"] // max(1, info["full_numel"] ** 0.5), name
    blocks = [n for n in shards[0] if ".trf_blocks.0." in n]
    assert sum(shards[0][n]["local_numel"] for n in blocks) * 2 == sum(shards[0][n]["full_numel"] for n in blocks)

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2
    # the same updates as one process: losses and the gathered full state dict agree
    assert report["losses"] == pytest.approx(report["reference_losses"], rel=1e-5)
    assert report["weights_moved"] > 1e-3  # the steps changed the weights ...
    assert report["max_abs_diff"] < 1e-5, report  # ... identically, within float tolerance
    # the gathered state dict, saved with save_pretrained, reloads and computes the same logits
    reference = load_file(str(tmp_path / "reference.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(report["gathered_dir"]).eval()
    with torch.no_grad():
        logits = model(input_ids=reference["input_ids"]).logits
    torch.testing.assert_close(logits, reference["logits"], atol=1e-4, rtol=1e-4)

    # a sharded (SHARDED_STATE_DICT) checkpoint becomes safetensors with `accelerate merge-weights`
    merged = tmp_path / "merged"
    run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "merge-weights",
         tmp_path / "pytorch_model_fsdp_0", merged])
    merged_weights = load_file(str(merged / "model.safetensors"))
    gathered = load_file(str(Path(report["gathered_dir"]) / "model.safetensors"))
    assert merged_weights.keys() == gathered.keys()
    assert all(torch.equal(merged_weights[k], gathered[k]) for k in gathered)


# --------------------------------------------------------------------------------------------
# DeepSpeed (only where it is installed)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_from_init(tmp_path_factory, bpe_dir):
    """A saved initial model (ZeRO-3 initialises a model from scratch in its own way), and
    pretrain.py trained from it under torchrun: the DDP reference for DeepSpeed."""
    root = tmp_path_factory.mktemp("ddp_from_init")
    init = root / "init"
    tokenizer = hf_gpt_scratch.tokenization.load_tokenizer(str(bpe_dir), trust_remote_code=False)
    torch.manual_seed(0)
    config = hf_gpt_scratch.GPTScratchConfig(vocab_size=len(tokenizer), context_length=64, emb_dim=32, n_heads=2,
                                             n_layers=2, drop_rate=0.0, pad_token_id=tokenizer.pad_token_id)
    hf_gpt_scratch.GPTScratchForCausalLM(config).save_pretrained(init)
    tokenizer.save_pretrained(init)
    out = root / "ddp"
    run([*TORCHRUN, PRETRAIN, "--model_name_or_path", init, *pretrain_args(bpe_dir, out, batch=2)[4:]])
    return init, out


@pytest.mark.slow
@needs_verdict
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_train(stage, tmp_path, request):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    init, ddp_out = request.getfixturevalue("ddp_from_init")
    out = tmp_path / f"zero{stage}"
    proc = run([*ACCELERATE, "--config_file", CONFIGS / f"deepspeed_zero{stage}.yaml", PRETRAIN,
                "--model_name_or_path", init, *pretrain_args(None, out, batch=2)[4:],
                "--save_strategy", "steps", "--save_steps", 2], timeout=600)
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["num_input_tokens_seen"] == 4 * 2 * 2 * 32
    assert math.isfinite(results["eval_loss"]) and results["eval_loss"] < results["initial_eval_loss"]
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own (sharded) checkpoint
    model = AutoModelForCausalLM.from_pretrained(out)  # full weights in safetensors
    assert sum(p.numel() for p in model.parameters()) == results["num_parameters"]
    assert proc.stdout.count("***** train metrics *****") == 1
    # the same training as DDP from the same weights with the same flags (ZeRO shards the states,
    # not the maths)
    ddp, zero = _weights(ddp_out), _weights(out)
    assert set(ddp) == set(zero)
    worst = max((ddp[k] - zero[k]).abs().max().item() for k in ddp)
    assert worst < 1e-5, worst


# --------------------------------------------------------------------------------------------
# classify under torchrun
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_classify_under_torchrun(tmp_path, wrapper):
    if not CLASSIFY.is_file():
        pytest.skip("recipes/classify.py is not there yet")
    rows = [("ham", "ok see you at home later"), ("spam", "WIN a FREE prize now! Text WIN to 80082"),
            ("ham", "are you coming to the party tonight"), ("spam", "URGENT! You have won a 1000 cash award")] * 8
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"{label},{text}\n" for label, text in rows))
    tokenizer = train_bpe_tokenizer([t for _, t in rows], vocab_size=300)
    clm = tmp_path / "clm"
    config = hf_gpt_scratch.GPTScratchConfig(vocab_size=len(tokenizer), context_length=64, emb_dim=32, n_heads=2,
                                             n_layers=2, drop_rate=0.0, pad_token_id=tokenizer.pad_token_id)
    hf_gpt_scratch.GPTScratchForCausalLM(config).save_pretrained(clm)
    tokenizer.save_pretrained(clm)
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    out = tmp_path / "out"
    run([*TORCHRUN, wrapper, CLASSIFY, "--model_name_or_path", clm, "--train_file", train,
         "--max_steps", 3, "--per_device_train_batch_size", 2, "--logging_steps", 1, "--disable_tqdm", "true",
         "--output_dir", out], HASH_DIR=hashes)
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["train_steps"] == 3
    ranks = [json.loads((hashes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"] and [r["step"] for r in ranks] == [3, 3]
    from transformers import AutoModelForSequenceClassification

    assert isinstance(AutoModelForSequenceClassification.from_pretrained(out), hf_gpt_scratch.GPTScratchForSequenceClassification)
