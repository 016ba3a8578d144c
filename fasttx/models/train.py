"""A small training loop: the ``tiny`` model learns the copy task.

    result = train_copy_task(steps=400, device="cuda", backend="triton")
    print(result.final_loss, result.exact_match)

Adam(0.9, 0.98, 1e-9) with the paper's learning rate
``factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``, gradient clipping, bf16
autocast on CUDA, and every kernel from the backend chosen with ``fasttx.use_backend``.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass, field

import torch

from fasttx.backends import record_selections, use_backend
from fasttx.models.config import TransformerConfig
from fasttx.models.seq2seq import Seq2SeqTransformer
from fasttx.models.tasks import CopyTask, evaluate_copy_task

__all__ = ["TrainResult", "noam_lr", "train_copy_task"]


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's schedule: linear warm-up for ``warmup`` steps, then step^-0.5 decay.

    Peaks at ``factor * (d_model * warmup)^-0.5`` on step ``warmup``; step counts from 1.
    """
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


@dataclass
class TrainResult:
    """What a run of :func:`train_copy_task` produced.

    final_loss: mean training loss over the last ``log_every`` steps; exact_match and
    token_accuracy: greedy decodes of fresh held-out sequences; tokens_per_second: target
    tokens trained on per second; backends: the backend each op ran on;
    examples: a few (source, decoded) token lists, without padding.
    """

    config: TransformerConfig
    steps: int
    final_loss: float
    exact_match: float
    token_accuracy: float
    seconds: float
    tokens_per_second: float
    device: str
    backends: dict[str, str]
    examples: list[tuple[list[int], list[int]]] = field(default_factory=list)
    model: Seq2SeqTransformer | None = field(default=None, repr=False)


def train_copy_task(config: TransformerConfig | None = None, *, steps: int = 400,
                    batch_size: int = 64, warmup: int = 100, lr_factor: float = 0.5,
                    clip_grad_norm: float = 1.0, seed: int = 0, device="cpu",
                    backend: str | None = None, progress: bool = True, log_every: int = 100,
                    eval_sequences: int = 256, num_examples: int = 3) -> TrainResult:
    """Trains a fresh model on the copy task and evaluates greedy decoding.

    Args:
        config: the model; default ``TransformerConfig.tiny()``.
        steps, batch_size: optimizer steps and sequences per step.
        warmup, lr_factor: the :func:`noam_lr` schedule.
        clip_grad_norm: max global gradient norm (0 disables clipping).
        seed: seeds the weights, the dropout and the training batches; evaluation uses
            sequences from another seed.
        device: "cpu", "cuda", ...; on CUDA the model trains under bf16 autocast.
        backend: "auto", "reference", "triton", "cuda", or None for the active default.
        progress: print a line every ``log_every`` steps.
    """
    config = TransformerConfig.tiny() if config is None else config
    device = torch.device(device)
    task = CopyTask.for_config(config)
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda index: noam_lr(index + 1, config.d_model, warmup, lr_factor))
    on_cuda = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda)

    batches = task.batches(batch_size, seed=seed, device=device)
    recent, tokens = collections.deque(maxlen=max(1, min(log_every, steps))), 0

    with (use_backend(backend) if backend is not None else contextlib.nullcontext(),
          record_selections() as backends):
        model.train()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            src, tgt = next(batches)
            with autocast():
                out = model.loss(src, tgt)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            scheduler.step()
            tokens += out.num_tokens
            recent.append(out.loss.detach())
            if progress and (step % log_every == 0 or step == steps):
                elapsed = time.perf_counter() - start
                print(f"step {step:5d}/{steps}  loss {torch.stack(list(recent)).mean():.4f}  "
                      f"lr {scheduler.get_last_lr()[0]:.2e}  {tokens / elapsed:,.0f} tok/s",
                      flush=True)
        if on_cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        final_loss = torch.stack(list(recent)).mean().item() if recent else float("nan")
        held_out_seed = seed + 1_000_003
        with autocast():  # the kernels that trained the model also decode
            accuracy = evaluate_copy_task(model, task, eval_sequences, seed=held_out_seed)
            examples = _examples(model, task, num_examples, held_out_seed + 1)

    return TrainResult(config=config, steps=steps, final_loss=final_loss,
                       exact_match=accuracy.exact_match,
                       token_accuracy=accuracy.token_accuracy, seconds=seconds,
                       tokens_per_second=tokens / max(seconds, 1e-9), device=str(device),
                       backends=dict(backends), examples=examples, model=model)


def _examples(model, task: CopyTask, count: int, seed: int):
    """``count`` (source, decoded) pairs of token lists, padding and bos removed."""
    if count <= 0:
        return []
    device = next(model.parameters()).device
    src, _ = task.sample(count, torch.Generator().manual_seed(seed), device)
    decoded = model.generate(src, max_new_tokens=src.shape[1] + 1)
    strip = (lambda row, pad=task.pad_id: [t for t in row.tolist() if t != pad])
    return [(strip(s), strip(d)[1:]) for s, d in zip(src, decoded, strict=True)]
