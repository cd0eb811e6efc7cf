"""DeepSpeed ZeRO-3 with one process (gloo, DeepSpeed's CPU accelerator); run by
tests/test_fused_head.py as

    python tests/zero3_head_check.py OUT_JSON [tie]

Builds GPTScratchForCausalLM under `deepspeed.zero.Init` (every weight partitioned at creation: an
empty tensor outside its module's forward), loads the weights of an unpartitioned copy, takes one
training forward + backward through the DeepSpeed engine, and writes to OUT_JSON: whether the
fused head + loss ran (logits None), both losses, and the largest difference between each full
gradient (`deepspeed.utils.safe_get_full_grad`) and the unpartitioned model's. Nothing registers
`out_head.weight` with DeepSpeed.
"""

import json
import os
import sys
from pathlib import Path

import torch

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", DS_ACCELERATOR="cpu")
os.environ.setdefault("MASTER_PORT", "29517")

import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM  # noqa: E402


def main(out: Path, tie: bool) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    config = GPTScratchConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                              tie_word_embeddings=tie)
    torch.manual_seed(0)
    reference = GPTScratchForCausalLM(config).train()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randint(0, config.vocab_size, (2, 9))
    ref_out = reference(x, labels=x)
    ref_out.loss.backward()

    ds_config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
    _keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  (transformers sees ZeRO-3 while it lives)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = GPTScratchForCausalLM(config)
    partitioned = model.out_head.weight.numel() == 0  # outside the head's forward: no data
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        model.load_state_dict(reference.state_dict())
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    engine.train()
    outputs = engine(x, labels=x)
    engine.backward(outputs.loss)
    ref_grads = dict(reference.named_parameters())
    worst = max((safe_get_full_grad(p) - ref_grads[n].grad).abs().max().item() for n, p in engine.module.named_parameters())
    out.write_text(json.dumps({
        "partitioned": partitioned,
        "fused": outputs.logits is None,
        "loss": outputs.loss.item(),
        "reference_loss": ref_out.loss.item(),
        "max_grad_diff": worst,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "tie")
