"""checkpoint-STEP/ folders (adapter, optimizer, scheduler, step, RNG) written atomically, found and read back for
--resume; the loss log cut back to the checkpoint's step."""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

from utils.safe_load import load as safe_load

# what must not change when a run is resumed: the data order and the schedule follow from them
RESUME_KEYS = ("data", "model_dir", "lora_rank", "lora_alpha", "lora_dropout", "lr", "epochs", "max_steps",
               "batch_size", "grad_accum", "lr_scheduler", "warmup_ratio", "seed", "min_pixels", "max_pixels")


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
