"""Next-token loss that never materialises the full [N, V] logits (a fused, chunked linear +
cross-entropy), used by `GPTScratchForCausalLM` while training.

The output head (E -> V = 50257) dominates a small GPT's training step: the logits, their softmax and
their gradient are three [N, V] float tensors, and on a CPU much of the step goes to mapping that
fresh memory. Here the head's forward and backward run together, chunk by chunk of rows, in one
reused buffer: per chunk the logits are computed, turned into their gradient (softmax - one-hot) in
place, and immediately multiplied back into the gradients of the hidden states and of the head
weight. The backward pass then only scales those stored gradients. The FLOPs are those of the plain
head (one matmul forward, two backward); the memory is one chunk of logits.

This file is shipped beside `modeling_gpt_scratch.py` for `trust_remote_code`; it imports only torch.
"""

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, num_items, chunk_rows: int):
        # hidden [N, E], weight [V, E], targets [N] (-100 = ignored), num_items: the loss divisor
        n = hidden.shape[0]
        scale = 1.0 / num_items
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        grad_weight = None  # [V, E] float32, written by the first chunk
        buffer = hidden.new_empty(min(chunk_rows, n), weight.shape[0], dtype=torch.float32)  # [C, V], reused
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk_rows):
            h, y = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            rows = torch.arange(h.shape[0], device=h.device)
            keep = y != -100
            y = y.clamp(min=0)
            logits = buffer[: h.shape[0]]
            if hidden.dtype == torch.float32:
                torch.mm(h, weight.t(), out=logits)  # [C, V]
            else:
                logits.copy_(torch.mm(h, weight.t()))
            # log-softmax in place: one fused kernel and no [C, V] temporaries (a row is fully
            # reduced before it is overwritten)
            log_probs = torch.log_softmax(logits, dim=-1, out=logits)  # [C, V]
            total -= (log_probs[rows, y] * keep).sum()
            if grad_hidden is None and not need_weight_grad:
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot; the per-row factor (0 on ignored rows,
            # else 1 / num_items) is applied on the [C, E] side, not on [C, V]
            grad = log_probs.exp_()
            grad[rows, y] -= 1.0
            row_scale = (keep * scale).to(hidden.dtype)[:, None]  # [C, 1]
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                chunk_grad = grad_hidden[start : start + chunk_rows]
                torch.mm(grad, weight, out=chunk_grad)  # [C, E]
                chunk_grad.mul_(row_scale)
            if need_weight_grad:
                if hidden.dtype == torch.float32:
                    scaled_h = h * row_scale  # [C, E]
                    if grad_weight is None:
                        grad_weight = torch.mm(grad.t(), scaled_h)  # [V, E]
                    else:
                        grad_weight.addmm_(grad.t(), scaled_h)
                else:  # bf16/fp16 matmul (as autocast's linear backward), summed over chunks in float32
                    chunk_weight_grad = torch.mm(grad.t(), h * row_scale)  # [V, E]
                    if grad_weight is None:
                        grad_weight = chunk_weight_grad.float()
                    else:
                        grad_weight += chunk_weight_grad
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden @ weight.T` against `labels`, exactly as transformers'
    `ForCausalLMLoss` (labels unshifted, -100 ignored, divided by `num_items_in_batch` when given),
    without the [N, V] logits. hidden [B, T, E], weight [V, E], labels [B, T].

    Under autocast the two matmuls run in the autocast dtype, as `nn.Linear` would (the softmax stays
    float32). `chunk_rows` (rows of logits per chunk) defaults to 256 on the CPU, where a small buffer
    stays in cache, and 4096 elsewhere, where large matmuls keep the GPU busy."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if chunk_rows is None:
        chunk_rows = 256 if device_type == "cpu" else 4096
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]  # [B, T]
    targets = shift_labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        num_items = (targets != -100).sum()
    else:
        num_items = torch.as_tensor(num_items_in_batch, device=hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, E]
    # ignored rows (last positions, masked prompts) are dropped on the CPU; elsewhere finding them is
    # a device-to-host sync, and under compile a data-dependent shape would break the graph
    if device_type == "cpu" and not torch.compiler.is_compiling():
        kept = (targets != -100).nonzero().squeeze(1)
        if kept.numel() < targets.numel():
            hidden, targets = hidden[kept], targets[kept]
    return _LinearCrossEntropy.apply(hidden, weight, targets, num_items, chunk_rows)
