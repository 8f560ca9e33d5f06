"""LoRA fine-tuning of the MLLM on THI's localisation question (docs/METHOD.md §7.3), in the project:

    python -m thi.sft_data --run RUN_DIR --out SFT_DATA
    python -m thi.sft --data SFT_DATA --model_dir Qwen2-VL-7B-Instruct --out LORA_DIR
    python -m thi --run RUN_DIR --model_dir Qwen2-VL-7B-Instruct --lora LORA_DIR

ICL's recipe by default: LoRA rank 8, alpha 16 on the language model's attention and MLP projections (the
vision tower stays frozen), lr 5e-5, 2 epochs, batch 4 x gradient accumulation 16, cosine schedule with 10%
warm-up; bf16 on a GPU, fp32 on CPU.  The loss is the cross-entropy of the answer tokens only ("Yes"/"No" and
the end of turn): the prompt is context, not a target.  Prompts and images go through THI's own chat code
(mllm/backends/chat.py), so the model is trained on exactly the input THI shows it at inference.

LORA_DIR gets the final adapter (peft format: what --lora and python -m thi.merge_lora read), sft_args.json,
sft_log.txt, loss.jsonl (one line per optimizer step) and checkpoint-STEP/ folders (adapter, optimizer,
scheduler, step) every --save_steps and at the end; --resume continues from the last one.
A plain torch loop rather than transformers' Trainer: this repository's `datasets/` package shadows Hugging
Face's `datasets`, which Trainer inspects.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mllm.backends import DEFAULT_PIXELS, SYSTEM_PROMPT, Request
from mllm.backends.chat import processor_size, prompts_and_images
from mllm.backends.hf import disable_cudnn_attention
from utils.device import resolve_device, resolve_precision
from utils.logger import append_jsonl, setup_logger
from utils.progress import library_bars_follow_terminal, progress
from utils.safe_load import load as safe_load
from utils.safe_load import add_trust_flag, command
from .sft_data import DATA_FILE, IMAGE_TOKEN

# the language model's projections in Qwen2-VL; the vision tower (model.visual) is left out by name, since
# Qwen2.5-VL's vision MLP reuses gate/up/down_proj
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_TOWER = r".*\bvisual\b.*"
END_OF_TURN = "<|im_end|>"        # Qwen2-VL's chat template closes every turn with it; the answer includes it
IGNORE = -100                     # label of tokens without a loss (prompt, padding)
# what must not change when a run is resumed: the data order and the schedule follow from them
RESUME_KEYS = ("data", "model_dir", "lora_rank", "lora_alpha", "lora_dropout", "lr", "epochs", "max_steps",
               "batch_size", "grad_accum", "lr_scheduler", "warmup_ratio", "seed", "min_pixels", "max_pixels")


@dataclass(frozen=True)
class Example:
    request: Request
    answer: str


def read_examples(data: str) -> list[Example]:
    """The (question, answer) pairs of a thi.sft_data folder or file (LLaMA-Factory's sharegpt layout)."""
    path = os.path.join(data, DATA_FILE) if os.path.isdir(data) else data
    if not os.path.isfile(path):
        raise SystemExit(f"--data {data}: no {DATA_FILE} there; make it with python -m thi.sft_data")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    examples = []
    for i, record in enumerate(records):
        try:
            user, assistant = record["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            images = record.get("images") or []
            assert len(images) <= 1 and user["content"].startswith(IMAGE_TOKEN) == bool(images)
        except (KeyError, ValueError, TypeError, AssertionError):
            raise SystemExit(f"{path}: record {i} is not one user turn (with '{IMAGE_TOKEN}' first when it has an "
                             "image) and one assistant turn, in the sharegpt layout thi.sft_data writes") from None
        prompt = user["content"].removeprefix(IMAGE_TOKEN)
        examples.append(Example(Request(prompt, images[0] if images else None, record.get("system", SYSTEM_PROMPT)),
                                assistant["content"]))
    if not examples:
        raise SystemExit(f"{path}: no examples")
    return examples


class Encoder:
    """Examples -> model inputs: THI's chat prompt (up to the assistant header) + the answer and end of turn,
    labels on the answer tokens only, right padding."""

    def __init__(self, processor, min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS):
        self.processor, self.min_pixels, self.max_pixels = processor, min_pixels, max_pixels
        tok = processor.tokenizer
        self.end_id = tok.convert_tokens_to_ids(END_OF_TURN)
        if self.end_id is None or self.end_id == tok.unk_token_id:
            raise SystemExit(f"the tokenizer has no {END_OF_TURN} token: thi.sft expects a Qwen2-VL chat model")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.end_id

    def answer_ids(self, answer: str) -> list[int]:
        # tokenised apart from the prompt: the first label is then the very token THI's yes/no scorer reads
        # after the assistant header (mllm/backends/yes_no.py encodes "Yes" / "No" the same way)
        return self.processor.tokenizer.encode(answer, add_special_tokens=False) + [self.end_id]

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        texts, images = prompts_and_images(self.processor, [e.request for e in examples], self.min_pixels,
                                           self.max_pixels)
        rows, extra, pixels, grids = [], [], [], []
        for text, image, example in zip(texts, images, examples):
            # the processor's size range of THI's backends, which keeps the resized image: the same image tokens
            image_kwargs = {} if image is None else {"images": [image],
                                                     "size": processor_size(self.min_pixels, self.max_pixels)}
            enc = self.processor(text=[text], return_tensors="pt", **image_kwargs)
            prompt = enc["input_ids"][0].tolist()
            answer = self.answer_ids(example.answer)
            rows.append((prompt + answer, [IGNORE] * len(prompt) + answer))
            # other per-token inputs (mm_token_type_ids: which tokens are image tokens, for M-RoPE): 0 past
            # the prompt, as the answer and the padding are text
            extra.append({k: v[0].tolist() for k, v in enc.items()
                          if k not in ("input_ids", "attention_mask") and v.dim() == 2 and v.shape[1] == len(prompt)})
            if image is not None:
                pixels.append(enc["pixel_values"])
                grids.append(enc["image_grid_thw"])
        length = max(len(ids) for ids, _ in rows)

        def padded(seqs, value):
            return torch.tensor([seq + [value] * (length - len(seq)) for seq in seqs])

        batch = {"input_ids": padded([ids for ids, _ in rows], self.pad_id),
                 "attention_mask": padded([[1] * len(ids) for ids, _ in rows], 0),
                 "labels": padded([labels for _, labels in rows], IGNORE)}
        for key in extra[0]:
            batch[key] = padded([e[key] for e in extra], 0)
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.cat(grids)
        return batch


def answer_loss(model, batch: dict, device) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy of the answer tokens, their number); the caller divides, so that micro-batches
    of one accumulated step weigh each token equally."""
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits
    target = labels[:, 1:]                     # position t predicts token t + 1
    keep = target != IGNORE
    loss = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
    return loss, int(keep.sum())


@torch.no_grad()
def mean_answer_loss(model, encoder: Encoder, examples: list[Example], batch_size: int, device) -> float:
    """Mean answer-token loss of examples (eval mode), e.g. before and after training on a fixed set."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = answer_loss(model, encoder(examples[i:i + batch_size]), device)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def load_base(model_dir: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise SystemExit(f"--model_dir {model_dir}: no config.json there; expected a Qwen2-VL model folder")
    disable_cudnn_attention(device)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(device), processor


def add_lora(model, rank: int, alpha: int, dropout: float, targets=LORA_TARGETS):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        exclude_modules=VISION_TOWER, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ---- schedule, data order, checkpoints -------------------------------------------------------------------------

def steps_per_epoch(num_examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(num_examples / batch_size) / grad_accum)


def step_batches(num_examples: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of micro-batches of example indices: a permutation seeded by
    (seed, epoch), so that a resumed run sees the same order."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    micro = [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def checkpoints(out: str) -> list[tuple[int, str]]:
    """(step, folder) of the complete checkpoints in out, oldest first."""
    found = []
    for name in os.listdir(out) if os.path.isdir(out) else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and os.path.isfile(os.path.join(out, name, "state.pt")):
            found.append((int(m.group(1)), os.path.join(out, name)))
    return sorted(found)


def save_checkpoint(out: str, step: int, model, optimizer, scheduler, args: dict, keep: int) -> str:
    """checkpoint-STEP/: adapter + optimizer + scheduler + step + RNG, written under a temporary name and
    renamed, so that a kill mid-save leaves the previous checkpoint as the last complete one."""
    final = os.path.join(out, f"checkpoint-{step}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "args": args}, os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for _, old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: str, model, optimizer, scheduler, args: dict) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = safe_load(os.path.join(folder, "state.pt"), "LoRA training state")
    changed = [k for k in RESUME_KEYS if state["args"].get(k) != args.get(k)]
    if changed:
        before = state["args"]
        diffs = ", ".join(f"{k} was {before.get(k)!r}, now {args.get(k)!r}" for k in changed)
        raise SystemExit(f"--resume: {diffs}; resume with the options of the run in {folder}, or start a new --out")
    set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


def truncate_log(path: str, step: int) -> None:
    """Drop loss lines past `step`: steps a killed run logged after its last checkpoint are done again."""
    if not os.path.isfile(path):
        return
    def kept(line: str) -> bool:
        try:
            return json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):      # the partial last line of a killed write
            return False

    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if kept(line)]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


# ---- command line ----------------------------------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(prog="python -m thi.sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by python -m thi.sft_data (or its thi_sft.json)")
    p.add_argument("--model_dir", required=True, help="the base Qwen2-VL model folder")
    p.add_argument("--out", required=True, help="output folder: the adapter, checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora_rank", type=int, default=8)
    lora.add_argument("--lora_alpha", type=int, default=16)
    # LLaMA-Factory's default, which ICL trained with
    lora.add_argument("--lora_dropout", type=float, default=0.0)
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=5e-5)
    opt.add_argument("--epochs", type=int, default=2)
    opt.add_argument("--max_steps", type=int, help="stop after this many optimizer steps (default: the epochs')")
    opt.add_argument("--batch_size", type=int, default=4, help="examples per forward pass")
    opt.add_argument("--grad_accum", type=int, default=16, help="forward passes per optimizer step")
    opt.add_argument("--lr_scheduler", choices=["cosine", "linear", "constant_with_warmup"], default="cosine")
    opt.add_argument("--warmup_ratio", type=float, default=0.1, help="warm-up steps as a fraction of all steps")
    opt.add_argument("--weight_decay", type=float, default=0.0)
    opt.add_argument("--max_grad_norm", type=float, default=1.0)
    opt.add_argument("--seed", type=int, default=0, help="LoRA initialisation and data order")
    opt.add_argument("--gradient_checkpointing", action="store_true", help="less GPU memory, slower steps")
    p.add_argument("--save_steps", type=int, default=200, help="optimizer steps between checkpoints")
    p.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept (0: all)")
    p.add_argument("--log_steps", type=int, default=10, help="optimizer steps between log lines")
    p.add_argument("--eval_examples", type=int, default=64,
                   help="log the answer loss on this many fixed examples before and after training (0: skip)")
    p.add_argument("--min_pixels", type=int, default=DEFAULT_PIXELS, help="image size range, as given to THI")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_PIXELS)
    p.add_argument("--device", help="default: cuda if there is one")
    add_trust_flag(p)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on a GPU")
    args = p.parse_args(argv)
    for name in ("lora_rank", "epochs", "batch_size", "grad_accum", "save_steps", "log_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        p.error("--max_steps must be at least 1")
    return args


def main(argv=None) -> dict:
    """Trains; returns {'model': the peft model, 'step': last step, 'losses': [step loss], 'eval': {...}}."""
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return train(argv)


def train(argv: list[str]) -> dict:
    from transformers import get_scheduler

    args = parse(argv)
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
        found = checkpoints(args.out)
        if not found:
            raise SystemExit(f"--resume: no checkpoint-STEP folder in {args.out}")
        step = load_checkpoint(found[-1][1], model, optimizer, scheduler, saved_args)
        truncate_log(loss_log, step)
        log.info("resumed from %s (step %d of %d)", found[-1][1], step, total)
    elif os.path.exists(loss_log) or checkpoints(args.out):
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
            save_checkpoint(args.out, step, model, optimizer, scheduler, saved_args, args.save_total_limit)
    bar.close()

    model.save_pretrained(args.out)       # the adapter THI's --lora and thi.merge_lora read
    if probe:
        results["eval"]["after"] = mean_answer_loss(model, encoder, probe, args.batch_size, device)
        log.info("answer loss on %d fixed examples after training: %.4f", len(probe), results["eval"]["after"])
    log.info("adapter written to %s: python -m thi --run RUN_DIR --model_dir %s --lora %s", args.out,
             args.model_dir, args.out)
    return {"model": model, "processor": processor, "step": step, "losses": losses, **results}


if __name__ == "__main__":
    main()
