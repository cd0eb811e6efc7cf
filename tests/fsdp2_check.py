"""FSDP2 sharding of GPTScratchForCausalLM on CPU over gloo; run by tests/test_distributed.py as

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp2_check.py OUT_DIR

Each rank builds the same model (same seed), applies torch's `fully_shard` to every
TransformerBlock (the model's `_no_split_modules`), then to the whole model, and trains STEPS AdamW
steps on its half of a global batch. Rank 0 also trains an unsharded copy on the whole global
batch (the single-process run with the same updates). Written to OUT_DIR:

- shards_rank{r}.json: per parameter, its placement and the size of this rank's local shard;
- pytorch_model_fsdp_0/: the sharded weights as Accelerate saves them in a checkpoint with
  SHARDED_STATE_DICT (torch.distributed.checkpoint), for `accelerate merge-weights`;
- report.json (rank 0): losses of both runs, the largest difference between the gathered full
  state dict and the single-process weights, and the folder of the gathered model saved with
  save_pretrained (safetensors) for the test to reload.
"""

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hf_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM

STEPS = 3
GLOBAL_BATCH = 4
SEQ = 16


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = GPTScratchConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    model = GPTScratchForCausalLM(config)
    reference = copy.deepcopy(model)  # the single-process model
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    full_numel = {name: p.numel() for name, p in model.named_parameters()}
    block_cls = {type(b).__name__ for b in model.model.trf_blocks}
    assert block_cls == set(model._no_split_modules), (block_cls, model._no_split_modules)

    for block in model.model.trf_blocks:
        fully_shard(block)
    fully_shard(model)

    shards = {}
    for name, p in model.named_parameters():
        is_dtensor = isinstance(p, DTensor)
        local = p.to_local() if is_dtensor else p
        shards[name] = {
            "dtensor": is_dtensor,
            "placements": [str(pl) for pl in p.placements] if is_dtensor else [],
            "local_numel": local.numel(),
            "full_numel": full_numel[name],
        }
    (out / f"shards_rank{rank}.json").write_text(json.dumps(shards, indent=1))

    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, config.vocab_size, (GLOBAL_BATCH, SEQ), generator=g) for _ in range(STEPS)]
    per_rank = GLOBAL_BATCH // world

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for ids in batches:
        local = ids[rank * per_rank : (rank + 1) * per_rank]
        loss = model(input_ids=local, labels=local).loss
        loss.backward()  # FSDP2 reduce-scatters the mean of the ranks' gradients
        opt.step()
        opt.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)

    # A sharded checkpoint as Accelerate writes one for fsdp_state_dict_type SHARDED_STATE_DICT
    # (accelerate.utils.save_fsdp_model): torch.distributed.checkpoint, every rank its shards.
    dcp.save({"model": get_model_state_dict(model)}, storage_writer=dcp.FileSystemWriter(str(out / "pytorch_model_fsdp_0")))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
        ref_losses = []
        reference.train()
        for ids in batches:
            loss = reference(input_ids=ids, labels=ids).loss
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad()
            ref_losses.append(loss.item())
        ref_state = reference.state_dict()
        assert set(full) == set(ref_state), sorted(set(full) ^ set(ref_state))
        diffs = {k: (full[k].float() - ref_state[k].float()).abs().max().item() for k in ref_state}
        moved = max((ref_state[k].float() - v.float()).abs().max().item() for k, v in initial.items())
        saved = out / "gathered"
        unsharded = GPTScratchForCausalLM(config)
        unsharded.load_state_dict(full, strict=True)
        unsharded.save_pretrained(saved)  # safetensors
        with torch.no_grad():
            reference.eval()
            save_file({"input_ids": batches[0], "logits": reference(input_ids=batches[0]).logits.contiguous()},
                      str(out / "reference.safetensors"))
        report = {
            "world_size": world,
            "losses": losses,
            "reference_losses": ref_losses,
            "max_abs_diff": max(diffs.values()),
            "worst_key": max(diffs, key=diffs.get),
            "weights_moved": moved,
            "gathered_dir": str(saved),
        }
        (out / "report.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
