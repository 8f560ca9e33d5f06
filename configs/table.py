"""The training options of this project: what each is, its default, its help text and the values it allows.

`CORE_GROUPS` holds the options of the engine and the run, grouped as ``python main.py --help`` lists them; the
parts (losses, embedding heads, weighting rules, methods) declare the options they read next to their code and
`all_groups` / `all_options` collect them into their groups, read when called so that a part registered since is
in them.  Values naming a part (a dataset, a loss, a head, an optimiser, a weighting rule, a method) and the keys
of ``clip_arch``, ``gmm`` and ``loss_weights`` are checked against the registries of datasets/, model/ and solver/,
which solver/build.py gives (configs/parts.py), read when first needed.  `RUNTIME_OPTIONS` are those a resumed run
may change.

The machinery (Option, the rules, the parser, YAML files) is utils/options/; reading a run's config from these
options is configs/reading.py.
"""
from __future__ import annotations

from dataclasses import fields

from utils.options import (AT_LEAST_0, AT_LEAST_1, POSITIVE, Device, Keys, NameList, OneOf, Option, OptionError,
                           Range)

from .parts import parts


# ------------------------------------------------------------------ rules that read the project's registries
class LossNames:
    """loss_names: '+'-separated registered losses and labels (model/losses parse_loss_names)."""

    def __call__(self, value):
        try:
            parts().parse_loss_names(value)
        except ValueError as e:
            raise OptionError(str(e)) from None
        return value

    def describe(self) -> str:
        return f"losses: {', '.join(parts().losses)}; {parts().label_rule}"


def _clip_fields() -> dict:
    return {f.name: (int, Range(lo=1)) for f in fields(parts().clip_config) if f.name not in CLIP_SET_ELSEWHERE}


def _gmm_fields() -> dict:
    return {k: (type(v), Range(lo=1) if isinstance(v, int) else Range(lo=0))
            for k, v in parts().gmm_settings(0.0, "").items()}


def _loss_weight_keys() -> dict:
    # rda_<loss>: ICL's term on (image, RDA caption) pairs (solver/objective.py weighted_loss)
    return {key: (float, Range(lo=0)) for name in parts().losses for key in (name, f"rda_{name}")}


def _datasets():
    return parts().datasets


def _heads():
    return list(parts().embeddings)


def _precisions():
    from utils.device import PRECISIONS      # imports torch: only when a precision is checked
    return ("auto", *PRECISIONS)


def _optimizers():
    return parts().optimizers


def _weightings():
    return parts().weightings


def methods():
    """The registered training methods (solver/methods/)."""
    return parts().methods


def _declaring_registries() -> dict[str, dict]:
    """Where options are declared next to the code that reads them: {--help group: {the option that chooses the
    parts: their registry, whose entries carry `options = {name: Option}`}} (a loss's temperature, a head's size,
    a weighting rule's constants, a method's own)."""
    return {"model": {"embeddings": parts().embeddings, "loss_names": parts().losses},
            "robust training (RDE)": {"weighting": _weightings(), "method": methods()}}


def chosen_parts(cfg: dict) -> dict[str, list[str]]:
    """{option that chooses parts: the parts it chooses in `cfg`}: the heads, the losses trained, the weighting
    rule (while the division runs) and the method."""
    return {"embeddings": list(cfg["embeddings"]), "loss_names": parts().parse_loss_names(cfg["loss_names"]),
            "weighting": [cfg["weighting"]] if cfg["division"] else [], "method": [cfg["method"]]}


def unused_options(cfg: dict, names) -> dict[str, str]:
    """{name: why} for each of `names` that only parts `cfg` does not use declare: 'is read only by weighting rule
    'alr' (solver/weighting/), which this run does not use (weighting: ccd)'."""
    chosen, readers = chosen_parts(cfg), {}
    for registries in _declaring_registries().values():
        for chooser, registry in registries.items():
            for entry, cls in registry.items():
                for name in getattr(cls, "options", None) or {}:
                    readers.setdefault(name, []).append((chooser, registry, entry))
    unused = {}
    for name in names:
        by = readers.get(name, [])
        if by and not any(entry in chosen[chooser] for chooser, _, entry in by):
            choosers = dict.fromkeys(chooser for chooser, _, _ in by)
            kinds: dict = {}            # weighting 'alr' or 'alr_release'
            for _, registry, entry in by:
                kinds.setdefault(registry.kind, []).append(repr(entry))
            unused[name] = (f"is read only by {', '.join(f'{k} ' + ' or '.join(e) for k, e in kinds.items())} "
                            f"({', '.join(dict.fromkeys(r.folder for _, r, _ in by))}), which this run does not "
                            f"use ({', '.join(_choice(cfg, c) for c in choosers)})")
    return unused


def _choice(cfg: dict, chooser: str) -> str:
    if chooser == "weighting" and not cfg["division"]:
        return f"weighting: {cfg['weighting']} with division: false"
    value = cfg[chooser]
    return f"{chooser}: {' '.join(value) if isinstance(value, list) else value}"


# CLIPConfig fields that other options set (model/clip/__init__.py build_clip)
CLIP_SET_ELSEWHERE = {"image_size": "img_size", "stride": "stride_size", "context_length": "text_length"}


# the options of the engine and the run; the parts' own options join their groups (_declaring_registries)
CORE_GROUPS: dict[str, dict[str, Option]] = {
    "run": {
        "name": Option("RDE", "run name, part of the run folder's name"),
        "output_dir": Option("logs", "runs go to OUTPUT_DIR/DATASET_NAME/TIME_NAME unless --run_dir is given"),
        "run_dir": Option("", "exact run folder (default: made from output_dir, dataset_name, time and name)"),
        "resume": Option("", "a run folder: continue that run from its last.pth with its saved config"),
        "overwrite": Option(False, "start a new training in a --run_dir that already holds one (its checkpoints and "
                                   "logs are deleted)"),
        "seed": Option(1, "seed for initialisation, data order, augmentation and the division coin", AT_LEAST_0),
        "device": Option("auto", "auto (cuda when available), cpu, cuda, cuda:1 ...", Device()),
        "precision": Option("auto", "autocast dtype with fp32 master weights; auto = bf16 on CUDA, fp32 on CPU",
                            OneOf(names=_precisions)),
        "compile": Option(False, "torch.compile the training forward (first steps are slow while it compiles)"),
        "log_period": Option(50, "iterations between progress-bar loss updates", AT_LEAST_1),
        "eval_period": Option(1, "epochs between evaluations", AT_LEAST_1),
        "eval_rows": Option("fusion", "evaluation rows: fusion (each embedding of each model, each model's mean, the "
                                      "mean of everything; the best epoch by that last row) or embedding (3RTPR's "
                                      "rebuild: each embedding of each model, then each embedding averaged over the "
                                      "models; the best epoch by the better of those)", OneOf("fusion", "embedding")),
        "val_dataset": Option("test", "split used for evaluation during training", OneOf("test", "val")),
    },
    "data": {
        "dataset_name": Option("CUHK-PEDES", "dataset (SYNTH-PEDES is generated on first use)", OneOf(names=_datasets)),
        "root_dir": Option("data", "folder holding the dataset folders"),
        "anno_path": Option("", "annotation JSON to use instead of the default names (absolute or relative to the "
                                "dataset folder)"),
        "img_size": Option([384, 128], "image height and width", AT_LEAST_1),
        "stride_size": Option(16, "patch-embedding stride", AT_LEAST_1),
        "text_length": Option(77, "caption length in tokens (168 for UFine6926)", Range(lo=3)),
        "img_aug": Option(True, "image augmentation: flip, pad+crop, random erasing"),
        "txt_aug": Option(True, "RDE's token masking / replacement / deletion"),
        "txt_aug_rates": Option([0.2, 0.6, 0.2], "txt_aug: the probability that a token is picked, then that a "
                                                 "picked one is masked and that it is replaced (the rest are "
                                                 "deleted): RDE 0.2, 0.6, 0.2; 3RTPR's rebuild 0.2, 0.5, 0.2",
                                Range(lo=0, hi=1)),
        "batch_size": Option(64, "training batch size (per process)", AT_LEAST_1),
        "test_batch_size": Option(512, "batch size for feature extraction", AT_LEAST_1),
        "num_workers": Option(8, "data-loading worker processes", AT_LEAST_0),
        "image_cache": Option(True, "decode and resize each image once, into a uint8 file the loaders memory-map "
                                    "(datasets/image_cache/; built on first use); false: decode JPEGs every read"),
        "image_cache_dir": Option("", "folder for the image caches (default: DATASET_FOLDER/.cache, or "
                                      "~/.cache/reid-images when the dataset folder is read-only)"),
    },
    "noisy correspondence (RDE)": {
        "noisy_rate": Option(0.0, "fraction of training captions shuffled among themselves",
                             Range(lo=0, hi=1, hi_open=True)),
        "noisy_file": Option("", "permutation .npy (RDE's files load as they are); default "
                                 "ROOT_DIR/noiseindex/DATASET_RATE.npy, created if missing"),
    },
    "model": {
        "method": Option("rde", "training method (registry in solver/methods): rde, twins (3RTPR), recommended, "
                                "...; a method may change other options' defaults, which the config file overrides",
                         OneOf(names=methods)),
        "twin": Option(False, "train reciprocal twin models (two independent models sharing the division) and fuse "
                              "them at test time"),
        "pretrain_choice": Option("ViT-B/16", "CLIP weights: ViT-B/16 (~/.cache/clip/ViT-B-16.pt), a path to a "
                                              "checkpoint, or random"),
        "clip_arch": Option({}, "CLIPConfig fields for a random CLIP (pretrain_choice: random), e.g. "
                                "{vision_width: 128}",
                            Keys("a CLIP architecture field (model/clip.py CLIPConfig)", _clip_fields,
                                 CLIP_SET_ELSEWHERE)),
        "embeddings": Option(["bge", "tse"], "embeddings trained and fused at test time (registry in "
                                             "model/embeddings)", NameList("head", _heads)),
        "loss_embeddings": Option([], "the embeddings the losses train and the division reads (default []: all of "
                                      "embeddings); the others are only evaluated (3RTPR's rebuild: fused; its "
                                      "BGE row is evaluated, not trained)", NameList("head", _heads, empty=True)),
        "freeze_patch_projection": Option(False, "leave CLIP's patch projection (visual.conv1) untrained, as "
                                                 "3RTPR's rebuild does (IRRA, RDE and ICL train it)"),
        "pretrain_path": Option("", "ReID-pretrained CLIP checkpoint (e.g. MLLM4Text-ReID) loaded instead of "
                                    "pretrain_choice; RDE/ICL users write '+pre' in loss_names for this"),
        "loss_names": Option("TAL", "'+'-separated losses (registry in model/losses) and labels, as in RDE",
                             LossNames()),
        "primary_loss": Option("", "the loss the division listens to and ICL's RDA term trains; default: the first "
                                   "of loss_names"),
        "loss_weights": Option({}, "per-loss weights, e.g. {SDM: 1.0, ID: 0.5}, rda_TAL for ICL's RDA term; missing "
                                   "names weigh 1",
                               Keys("a registered loss or rda_<loss> (model/losses)", _loss_weight_keys)),
    },
    "robust training (RDE)": {
        "division": Option(True, "per-epoch clean/noisy division (CCD); off trains on every pair with weight 1"),
        "weighting": Option("ccd", "how the division becomes per-sample weights (solver/weighting/, one file each): "
                                   "ccd (RDE, 0/1 + coin) or alr (3RTPR, soft)", OneOf(names=_weightings)),
        "published_eval_mode": Option(False, "ICL's (and RDE's first release's) quirk: train in eval mode after the "
                                             "division pass (changes BatchNorm in the heads); RDE's code since "
                                             "October 2024 trains in train mode"),
        "use_rda": Option(True, "ICL: when annotations carry diversity_captions, add TAL on (image, RDA caption) "
                                "weighted max(0.1, 1 - 0.03 epoch)"),
        "division_read": Option("augmented", "what the division pass reads: augmented (as published: the training "
                                             "pipeline's augmented batches, their in-batch negatives; twins score "
                                             "each model on the other's view) or clean (each pair once, no "
                                             "augmentation, like a test set)", OneOf("augmented", "clean")),
        "gmm": Option({}, "GaussianMixture settings; default chosen from noisy_rate and dataset "
                          "(solver/division.py gmm_settings)",
                      Keys("a mixture setting", _gmm_fields)),
        "gmm_tight_under_noise": Option(True, "the mixture's tight settings also for noisy_rate above 0.4 (RDE); "
                                              "false: on RSTPReid only, as 3RTPR's rebuild"),
    },
    "optimisation": {
        "optimizer": Option("Adam", "optimiser", OneOf(names=_optimizers)),
        "lr": Option(1e-5, "learning rate of the CLIP backbone", AT_LEAST_0),
        "head_lr": Option(1e-3, "learning rate of RDE-style new heads (TSE, fused), biases included", AT_LEAST_0),
        "lr_factor": Option(5.0, "IRRA-style new modules (ID classifier) train at lr x this", AT_LEAST_0),
        "icl_text_position_lr": Option(False, "ICL's rule: the text position embedding trains at lr x lr_factor "
                                              "when text_length is not 77 (RDE's and 3RTPR's code have no such "
                                              "rule; configs/icl/* switch it on)"),
        "bias_lr_factor": Option(2.0, "parameters whose name contains 'bias' train at lr x this, without weight "
                                      "decay", AT_LEAST_0),
        "weight_decay": Option(4e-5, "weight decay (none for biases)", AT_LEAST_0),
        "head_weight_decay": Option(True, "RDE-style heads (TSE, fused) keep the weight decay of the rule before "
                                          "(weights decay, biases not); false: none at all, as 3RTPR's rebuild "
                                          "(its head groups give Adam no weight_decay, so its default 0)"),
        "betas": Option([0.9, 0.999], "Adam betas", Range(lo=0, hi=1, hi_open=True)),
        "eps": Option(1e-3, "Adam epsilon, 1e-3 as IRRA, RDE and ICL pass it (it shapes every step: gradients are "
                            "far below it)", POSITIVE),
        "num_epoch": Option(60, "training epochs: the learning-rate schedule's length", AT_LEAST_1),
        "stop_epoch": Option(0, "stop after this epoch (or num_epoch, the earlier), the schedule still spanning "
                                "num_epoch (0: at num_epoch; 3RTPR's rebuild: 40 on RSTPReid)", AT_LEAST_0),
        "stop_epoch_noisy": Option(0, "stop_epoch under simulated noise (noisy_rate > 0; 0: stop_epoch; 3RTPR's "
                                      "rebuild: 45, RSTPReid 40)", AT_LEAST_0),
        "warmup_epochs": Option(5, "linear warm-up epochs", AT_LEAST_0),
        "warmup_factor": Option(0.1, "warm-up starts at this fraction of the learning rate", Range(lo=0, hi=1)),
        "target_lr": Option(0.0, "cosine schedule's final learning rate", AT_LEAST_0),
    },
}


def all_groups() -> dict[str, dict[str, Option]]:
    """CORE_GROUPS with every registered part's declared options in its group.  An option two parts read (TAL's
    and TRL's tau) is declared once and shared: two different declarations of one name are refused."""
    groups = {title: dict(group) for title, group in CORE_GROUPS.items()}
    declared_by: dict[str, str] = {}
    for title, registries in _declaring_registries().items():
        for registry in registries.values():
            for entry, cls in registry.items():
                for name, option in getattr(cls, "options", {}).items():
                    where = f"{registry.kind} {entry!r} ({registry.folder})"
                    known = next((g[name] for g in groups.values() if name in g), None)
                    if known is not None and known is not option:
                        raise TypeError(f"option {name!r} of {where} is already declared"
                                        f"{' by ' + declared_by[name] if name in declared_by else ' in configs/table.py'}"
                                        "; declare it once and let both parts read it")
                    groups[title][name] = option
                    declared_by.setdefault(name, where)
    return groups


def all_options() -> dict[str, Option]:
    return {k: option for group in all_groups().values() for k, option in group.items()}


# options renamed since runs and configs were written, {old name: new name}: a config file, a run's configs.yaml,
# a checkpoint or the command line that says the old name is read as the new one, with a warning line
RENAMED = {
    "embed_dim": "tse_dim",     # TSE's output size, which beside clip_arch's embed_dim (CLIP's own) read as the same
}

# methods that have become weighting rules (solver/weighting/), {old method: the options it stood for}: a config, a
# run's configs.yaml, a checkpoint or the command line that says `method: soft_clean` is read as `method: rde,
# weighting: soft_clean` (and the twins co_teaching trained), with a warning line
METHODS_NOW_RULES = {
    "soft_clean": {"weighting": "soft_clean"},
    "co_teaching": {"weighting": "co_teaching", "twin": True},
}

# what may change when a run is resumed: where the data is and how fast it is read, not what is trained
RUNTIME_OPTIONS = ("resume", "run_dir", "overwrite", "root_dir", "device", "num_workers", "log_period", "output_dir",
                   "image_cache", "image_cache_dir")
