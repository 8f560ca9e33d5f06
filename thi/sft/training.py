"""The training loop: a plain torch loop rather than transformers' Trainer, since this repository's `datasets/`
package shadows Hugging Face's `datasets`, which Trainer inspects.  The data order and the schedule are functions
of (seed, epoch), so a resumed run takes the steps the uninterrupted one would have."""
from __future__ import annotations

import json
import math
import os
import time

import torch

from utils.device import resolve_device, resolve_precision
from utils.logger import append_jsonl, setup_logger
from utils.progress import library_bars_follow_terminal, progress
from . import checkpointing
from .encoding import IGNORE, Encoder
from .examples import read_examples
from .lora import add_lora, load_base
from .loss import answer_loss, mean_answer_loss


def steps_per_epoch(num_examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(num_examples / batch_size) / grad_accum)


def step_batches(num_examples: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of micro-batches of example indices: a permutation seeded by
    (seed, epoch), so that a resumed run sees the same order."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    micro = [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def train(args) -> dict:
    """Trains with the parsed command line (cli.parse); returns {'model': the peft model, 'processor', 'step': last
    step, 'losses': [step loss], 'eval': {'before', 'after': mean answer loss on fixed examples}}."""
    from transformers import get_scheduler

    os.makedirs(args.out, exist_ok=True)
    log = setup_logger(args.out, name="thi", filename="sft_log.txt")
    library_bars_follow_terminal()
    saved_args = {**vars(args), "data": os.path.abspath(args.data), "model_dir": os.path.abspath(args.model_dir)}
    device = resolve_device(args.device or "auto")
    # the weights' dtype (no autocast here: the LoRA trains in the base model's precision)
    dtype = resolve_precision(args.precision, device) or torch.float32
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"

    examples = read_examples(args.data)
    torch.manual_seed(args.seed)                  # the LoRA initialisation
    model, processor = load_base(args.model_dir, device, dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    encoder = Encoder(processor, args.min_pixels, args.max_pixels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    per_epoch = steps_per_epoch(len(examples), args.batch_size, args.grad_accum)
    total = args.max_steps or per_epoch * args.epochs
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=round(args.warmup_ratio * total),
                              num_training_steps=total)
    log.info("LoRA SFT of %s on %d examples (%s): %d trainable parameters, %d steps of %d x %d, %s on %s",
             args.model_dir, len(examples), args.data, sum(p.numel() for p in trainable), total, args.batch_size,
             args.grad_accum, precision, device)

    loss_log = os.path.join(args.out, "loss.jsonl")
    step = 0
    if args.resume:
        found = checkpointing.checkpoints(args.out)
        if not found:
            raise SystemExit(f"--resume: no checkpoint-STEP folder in {args.out}")
        step = checkpointing.load_checkpoint(found[-1][1], model, optimizer, scheduler, saved_args)
        checkpointing.truncate_log(loss_log, step)
        log.info("resumed from %s (step %d of %d)", found[-1][1], step, total)
    elif os.path.exists(loss_log) or checkpointing.checkpoints(args.out):
        raise SystemExit(f"{args.out} holds a previous run: pass --resume to continue it, or choose a new --out")
    with open(os.path.join(args.out, "sft_args.json"), "w") as f:
        json.dump(saved_args, f, indent=1)

    probe = examples[:args.eval_examples]
    results = {"eval": {}}
    if probe and step == 0:
        results["eval"]["before"] = mean_answer_loss(model, encoder, probe, args.batch_size, device)
        log.info("answer loss on %d fixed examples before training: %.4f", len(probe), results["eval"]["before"])

    model.train()
    losses = []
    bar = progress(total=total, initial=step, desc="LoRA SFT", unit="step")
    started = time.time()
    while step < total:
        epoch, within = divmod(step, per_epoch)
        micro_batches = step_batches(len(examples), args.batch_size, args.grad_accum, args.seed, epoch)[within]
        batches = [encoder([examples[i] for i in mb]) for mb in micro_batches]
        tokens = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
        step_loss = 0.0
        for batch in batches:
            loss, _ = answer_loss(model, batch, device)
            (loss / tokens).backward()
            step_loss += loss.item() / tokens
        torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(step_loss)
        append_jsonl(loss_log, {"step": step, "epoch": epoch + (within + 1) / per_epoch, "loss": step_loss, "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if step % args.log_steps == 0:
            log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.3e  (%.1f s/step)", step, total,
                     epoch + (within + 1) / per_epoch, step_loss, lr, (time.time() - started) / len(losses))
        if step % args.save_steps == 0 or step == total:
            checkpointing.save_checkpoint(args.out, step, model, optimizer, scheduler, saved_args,
                                          args.save_total_limit)
    bar.close()

    model.save_pretrained(args.out)       # the adapter THI's --lora and thi.merge_lora read
    if probe:
        results["eval"]["after"] = mean_answer_loss(model, encoder, probe, args.batch_size, device)
        log.info("answer loss on %d fixed examples after training: %.4f", len(probe), results["eval"]["after"])
    log.info("adapter written to %s: python -m thi --run RUN_DIR --model_dir %s --lora %s", args.out,
             args.model_dir, args.out)
    return {"model": model, "processor": processor, "step": step, "losses": losses, **results}
