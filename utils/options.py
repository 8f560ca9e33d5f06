"""Every training option, its default and its meaning, in one place.

Precedence: these defaults < the YAML file given with ``--config`` < the command line.  A run folder's
``configs.yaml`` holds the resolved result, so ``test.py --run`` and ``--resume`` rebuild the same thing.
Names follow IRRA / RDE so that their commands keep working.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import yaml
from easydict import EasyDict

# name: (default, help).  The type of the default decides how the command line parses the value.
OPTIONS: dict[str, tuple[object, str]] = {
    # run
    "name": ("RDE", "run name, part of the run folder's name"),
    "output_dir": ("logs", "runs go to OUTPUT_DIR/DATASET_NAME/TIME_NAME unless --run_dir is given"),
    "run_dir": ("", "exact run folder (default: made from output_dir, dataset_name, time and name)"),
    "resume": ("", "a run folder: continue that run from its last.pth with its saved config"),
    "overwrite": (False, "start a new training in a --run_dir that already holds one (its checkpoints and logs "
                         "are deleted)"),
    "seed": (1, "seed for initialisation, data order, augmentation and the division coin"),
    "device": ("auto", "auto (cuda when available), cpu, cuda, cuda:1 ..."),
    "precision": ("auto", "fp32, bf16 or fp16 (autocast with fp32 master weights); auto = bf16 on CUDA, fp32 on CPU"),
    "compile": (False, "torch.compile the training forward (first steps are slow while it compiles)"),
    "log_period": (50, "iterations between progress-bar loss updates"),
    "eval_period": (1, "epochs between evaluations"),
    "val_dataset": ("test", "split used for evaluation during training: test or val"),
    # data
    "dataset_name": ("CUHK-PEDES", "CUHK-PEDES, ICFG-PEDES, RSTPReid, UFine6926 or SYNTH-PEDES (generated on first use)"),
    "root_dir": ("data", "folder holding the dataset folders"),
    "anno_path": ("", "annotation JSON to use instead of the default names (absolute or relative to the dataset folder)"),
    "img_size": ([384, 128], "image height and width"),
    "stride_size": (16, "patch-embedding stride"),
    "text_length": (77, "caption length in tokens (168 for UFine6926)"),
    "img_aug": (True, "image augmentation: flip, pad+crop, random erasing"),
    "txt_aug": (True, "RDE's token masking / replacement / deletion"),
    "batch_size": (64, "training batch size (per process)"),
    "test_batch_size": (512, "batch size for feature extraction"),
    "num_workers": (8, "data-loading worker processes"),
    # noisy correspondence (RDE)
    "noisy_rate": (0.0, "fraction of training captions shuffled among themselves"),
    "noisy_file": ("", "permutation .npy (RDE's files load as they are); default ROOT_DIR/noiseindex/DATASET_RATE.npy, created if missing"),
    # model
    "twin": (False, "train reciprocal twin models (two independent models sharing the division) and fuse them at test time"),
    "pretrain_choice": ("ViT-B/16", "CLIP weights: ViT-B/16 (~/.cache/clip/ViT-B-16.pt), a path to a checkpoint, or random"),
    "clip_arch": ({}, "CLIPConfig fields for a random CLIP (pretrain_choice: random), e.g. {vision_width: 128}"),
    "embeddings": (["bge", "tse"], "embeddings trained and fused at test time (registry in model/embeddings)"),
    "select_ratio": (0.3, "TSE: fraction of tokens selected"),
    "embed_dim": (1024, "TSE output dimension"),
    "fused_ratio": (0.2, "fused embedding (3RTPR): fraction of tokens selected"),
    "fused_dim": (2048, "fused embedding (3RTPR): output dimension D"),
    "pretrain_path": ("", "ReID-pretrained CLIP checkpoint (e.g. MLLM4Text-ReID) loaded instead of pretrain_choice; "
                          "RDE/ICL users write '+pre' in loss_names for this"),
    "loss_names": ("TAL", "'+'-separated losses (TAL, TRL, InfoNCE, SDM, ID); other parts are free text, as in RDE"),
    "tau": (0.015, "TAL / TRL temperature"),
    "margin": (0.1, "TAL / TRL margin"),
    "logit_scale": (50.0, "SDM / InfoNCE logit scale (1 / temperature 0.02)"),
    "loss_weights": ({}, "per-loss weights, e.g. {SDM: 1.0, ID: 0.5}; missing names weigh 1"),
    # robust training (RDE)
    "division": (True, "per-epoch clean/noisy division (CCD); off trains on every pair with weight 1"),
    "weighting": ("ccd", "how the division becomes per-sample weights: ccd (RDE, 0/1 + coin) or alr (3RTPR, soft)"),
    "alr_k": (5.0, "ALR: w = sigmoid(k s / mu) below mu (3RTPR: 5, 8 under synthetic noise)"),
    "alr_mu": ("min", "ALR: mu statistic over the consensus-clean set: min, mean or pNN (percentile, e.g. p5)"),
    "published_eval_mode": (False, "ICL's (and RDE's first release's) quirk: train in eval mode after the "
                                   "division pass (changes BatchNorm in the heads); RDE's code since October "
                                   "2024 trains in train mode"),
    "use_rda": (True, "ICL: when annotations carry diversity_captions, add TAL on (image, RDA caption) "
                         "weighted max(0.1, 1 - 0.03 epoch)"),
    "division_read": ("augmented", "what the division pass reads: augmented (as published: the training pipeline's "
                                   "augmented batches, their in-batch negatives; twins score each model on the "
                                   "other's view) or clean (each pair once, no augmentation, like a test set)"),
    "gmm": ({}, "GaussianMixture settings max_iter/tol/reg_covar; default chosen from noisy_rate and dataset"),
    # optimisation
    "optimizer": ("Adam", "Adam or AdamW"),
    "lr": (1e-5, "learning rate of the CLIP backbone"),
    "head_lr": (1e-3, "learning rate of RDE-style new heads (TSE, fused), biases included"),
    "lr_factor": (5.0, "IRRA-style new modules (ID classifier) train at lr x this; so does the text position "
                       "embedding when text_length is not 77 (ICL)"),
    "bias_lr_factor": (2.0, "parameters whose name contains 'bias' train at lr x this, without weight decay"),
    "weight_decay": (4e-5, "weight decay (none for biases)"),
    "betas": ([0.9, 0.999], "Adam betas"),
    "eps": (1e-3, "Adam epsilon, 1e-3 as IRRA, RDE and ICL pass it (it shapes every step: gradients are far "
                  "below it)"),
    "num_epoch": (60, "training epochs"),
    "warmup_epochs": (5, "linear warm-up epochs"),
    "warmup_factor": (0.1, "warm-up starts at this fraction of the learning rate"),
    "target_lr": (0.0, "cosine schedule's final learning rate"),
}


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _structured(v: str):
    """dict / list values on the command line are YAML (or JSON): --loss_weights '{SDM: 1, ID: 0.5}'."""
    return yaml.safe_load(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a text-to-image person re-identification model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="", help="YAML file of options (command-line values override it)")
    for name, (default, help_) in OPTIONS.items():
        # default=SUPPRESS: only values actually typed appear, so they can override the YAML file
        kw = dict(default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        if isinstance(default, bool):
            # `--img_aug` as in RDE's scripts, `--img_aug false` or `--no-img_aug` to switch off
            p.add_argument(f"--{name}", nargs="?", const=True, type=_str2bool, **kw)
            p.add_argument(f"--no-{name}", dest=name, action="store_false", default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
        elif isinstance(default, list):
            p.add_argument(f"--{name}", nargs="+", type=type(default[0]), **kw)
        elif isinstance(default, dict):
            p.add_argument(f"--{name}", type=_structured, **kw)
        else:
            p.add_argument(f"--{name}", type=type(default), **kw)
    return p


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SystemExit(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping of option: value")
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"config file {path}: unknown option(s) {unknown}; see `python main.py --help`")
    return data


def resolve(cli: dict, file_values: dict) -> EasyDict:
    cfg = {k: v for k, (v, _) in OPTIONS.items()}
    cfg.update(file_values)
    cfg.update(cli)
    return EasyDict(json.loads(json.dumps(cfg)))  # deep copy; plain types only


# what may change when a run is resumed: where the data is and how fast it is read, not what is trained
RUNTIME_OPTIONS = ("resume", "run_dir", "overwrite", "root_dir", "device", "num_workers", "log_period", "output_dir")


def config_conflicts(saved: dict, given: dict) -> list[str]:
    """'name (run: a, given: b)' for every option of `given` whose value differs from `saved` (or from the
    default where `saved` lacks it), runtime options aside."""
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists, int vs float 1 vs 1.0 stay apart)
    return [f"{k} (run: {saved.get(k, OPTIONS[k][0])!r}, given: {v!r})" for k, v in given.items()
            if k in OPTIONS and k not in RUNTIME_OPTIONS and plain(v) != plain(saved.get(k, OPTIONS[k][0]))]


def parse_args(argv=None) -> EasyDict:
    """Options for main.py.  With --resume RUN_DIR the run's saved configs.yaml is the configuration: options
    that would change it are refused, by name."""
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    config_file = args.pop("config")
    if not args.get("resume"):
        return resolve(args, load_yaml(config_file) if config_file else {})
    run = args["resume"]
    saved_file = os.path.join(run, "configs.yaml")
    if not os.path.isfile(saved_file):
        raise SystemExit(f"--resume {run}: no configs.yaml there; is it a run folder made by main.py?")
    if config_file:
        raise SystemExit(f"--resume {run} continues the run with its own configs.yaml; drop --config {config_file} "
                         "(to train with other options, start a new run)")
    saved = load_yaml(saved_file)
    conflicts = config_conflicts(saved, args)
    if conflicts:
        raise SystemExit(f"--resume {run}: these options differ from the run's configs.yaml: {'; '.join(conflicts)}. "
                         f"A resumed run keeps its configuration; only {', '.join(RUNTIME_OPTIONS[3:])} may change")
    args["run_dir"] = run
    return resolve(args, saved)


def save_config(cfg: dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(dict(json.loads(json.dumps(cfg))), f, sort_keys=False)
