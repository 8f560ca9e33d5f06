"""A run's config, read from the training options (configs/table.py): the command line, YAML files and a resumed
run's ``configs.yaml``, resolved into one checked config.

Precedence: the options' defaults < the chosen method's defaults (``method:``) < the YAML file given with
``--config`` (and its ``_BASE_``) < the command line.  A run folder's ``configs.yaml`` holds the resolved result, so
``test.py --run`` and ``--resume`` rebuild the same thing (a saved config without an option added since gets its
default).  Names follow IRRA / RDE so that their commands keep working.

Values are checked when read, wherever they come from (the command line, a YAML file, a saved configs.yaml,
code calling `resolve`): a value of the wrong type, outside the allowed ones, an unknown key inside
``clip_arch`` / ``gmm`` / ``loss_weights``, or a loss or head that is not registered stops the run before any data
is read, naming the option, the value and what is allowed; so do options that do not fit together
(`cross_problems`) and options that only parts the run does not use read (`--alr_k` with ``weighting: ccd``;
`unused_given`).  Options are spelled out in full (no abbreviations).  A run folder written by an earlier version
is read with what this one would refuse named in one warning line (`load_run_config`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from easydict import EasyDict

from utils import options as machinery

from .parts import parts
from .table import METHODS_NOW_RULES, RENAMED, RUNTIME_OPTIONS, all_groups, all_options, methods, unused_options

log = logging.getLogger("reid")

# the command that lists every option, named in messages
LISTING = "python main.py --help"


def current_names(values: dict, source: str | None = None) -> dict:
    """`values` with the options renamed since (RENAMED) under their current names, in their place, and a method
    that has become a weighting rule (METHODS_NOW_RULES) read as that rule.  With `source` (where the values were
    read), one warning line names them; both names of an option at once is an error."""
    old = [k for k in values if k in RENAMED]
    both = [k for k in old if RENAMED[k] in values]
    if both:
        raise SystemExit(f"{source}: " + "; ".join(f"{k} and {RENAMED[k]} are one option ({k} is its old name): give "
                                                   f"{RENAMED[k]} only" for k in both))
    notes = [f"option {k} is now called {RENAMED[k]}, read as {RENAMED[k]}" for k in old]
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    method = values.get("method")
    if method in METHODS_NOW_RULES:     # the method bypassed `weighting`: its rule replaces whatever that said
        rule = METHODS_NOW_RULES[method]
        ignored = values.get("weighting", "ccd")
        notes.append(f"method {method} is now the weighting rule {rule['weighting']}, read as method: rde, "
                     + ", ".join(f"{k}: {str(v).lower()}" for k, v in rule.items())
                     + (f" (weighting: {ignored}, which that method never read, is dropped)"
                        if ignored not in ("ccd", rule["weighting"]) else ""))
        values = {**{k: v for k, v in rule.items() if k != "weighting"}, **values, "method": "rde",
                  "weighting": rule["weighting"]}
    if notes and source is not None:
        log.warning("%s: %s", source, "; ".join(notes))
    return values


def check_all(values: dict, source: str) -> dict:
    """Every value typed and checked; SystemExit naming each bad one with `source` (a file, the command line)."""
    return machinery.check_all(current_names(values, source), source, all_options(), LISTING)


def load_yaml(path: str, layers: list | None = None) -> dict:
    """The options of a YAML file (a --config, with its _BASE_; a run folder's configs.yaml is load_run_config's),
    typed and checked, old option names read as their current ones (current_names).  `layers`, when given, receives
    (file, its own options) of each file, base first (for `resolve`)."""
    return machinery.load_yaml(path, all_options(), LISTING, current_names, layers=layers)


def upgrade_saved(values: dict) -> tuple[dict, list[str]]:
    """A saved config (a run folder's configs.yaml, a checkpoint's) as this version reads it, and what that changed:
    loss-name parts that earlier versions read as labels and this one refuses are dropped (labels train nothing)."""
    if not isinstance(values.get("loss_names"), str):
        return values, []
    kept, dropped = parts().drop_old_labels(values["loss_names"])
    if not dropped:
        return values, []
    return {**values, "loss_names": kept}, [
        f"loss_names {values['loss_names']!r} is read as {kept!r}: {', '.join(map(repr, dropped))} were labels "
        "(earlier versions took any part with a digit or _ for one; now a label holds one of . = -)"]


def load_run_config(path: str) -> dict:
    """A run folder's configs.yaml (every option, as main.py resolved it), typed and checked as load_yaml does (old
    option names read as their current ones, with their own warning line: current_names).  What
    `resolve` refuses in a new config is named in one warning line here, not refused: old loss-name labels (an
    earlier version's; dropped, upgrade_saved) and options of parts the run does not use, set off their defaults
    (an earlier version's, or a recipe's that a later choice left unused; kept: they change nothing).  Give
    `resolve` what this returns with layers=[] (it is not checked for unused options again)."""
    values, notes = upgrade_saved(machinery.read_mapping(path))
    values = check_all(values, f"config file {path}")
    cfg, base = _layered(values, f"config file {path}")
    unused = unused_options(cfg, [k for k, v in values.items() if v != base.get(k)])
    if unused:
        notes.append("options of parts this run does not use (they change nothing): "
                     + "; ".join(f"{k} {values[k]!r} {why}" for k, why in unused.items()))
    if notes:
        log.warning("%s: %s", path, "; ".join(notes))
    return values


def build_parser() -> argparse.ArgumentParser:
    """main.py's command line: --config and every option, in its --help group; an old name (RENAMED) is still
    taken, unlisted, typed as the new one, and so is a method that is now a weighting rule (METHODS_NOW_RULES;
    parse_args reads them as the new ones, with a warning)."""
    parser = machinery.build_parser(all_groups(), "Train a text-to-image person re-identification model.", LISTING)
    options = all_options()
    for old, new in RENAMED.items():     # scalar options so far: one value, typed and checked by the new option
        parser.add_argument(f"--{old}", type=_checked_by(options[new]), default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
    method = parser._option_string_actions["--method"]
    method.type = _or_old_method(method.type)
    method.choices = [*method.choices, *METHODS_NOW_RULES]
    return parser


def _or_old_method(convert):
    return lambda text: text if text in METHODS_NOW_RULES else convert(text)


def _checked_by(option: machinery.Option):
    def convert(text: str):
        try:
            return machinery.check(text, option)
        except machinery.OptionError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def defaults() -> dict:
    return {k: option.default for k, option in all_options().items()}


def primary_loss(cfg: dict) -> str:
    """The loss the division listens to and the RDA term trains: primary_loss, or the first of loss_names."""
    return cfg["primary_loss"] or parts().parse_loss_names(cfg["loss_names"])[0]


def cross_problems(cfg: dict) -> list[str]:
    """What is wrong between options (each fine on its own)."""
    problems = []
    if "pre" in cfg["loss_names"].split("+") and not cfg["pretrain_path"]:
        problems.append(f"loss_names {cfg['loss_names']!r}: '+pre' initialises CLIP from a ReID-pretrained "
                        "checkpoint: give its file with --pretrain_path")
    losses = parts().parse_loss_names(cfg["loss_names"])
    if cfg["primary_loss"] and cfg["primary_loss"] not in losses:
        problems.append(f"primary_loss {cfg['primary_loss']!r} is not trained: loss_names {cfg['loss_names']!r} "
                        f"trains {', '.join(losses)}")
    trained = losses + [f"rda_{primary_loss(cfg)}"]       # the RDA term trains the primary loss
    for key in cfg["loss_weights"]:
        if key not in trained:
            problems.append(f"loss_weights: {key!r} is not trained by loss_names {cfg['loss_names']!r}; its keys "
                            f"can be {', '.join(trained)} (add the loss to loss_names or drop the weight)")
    outside = [e for e in cfg["loss_embeddings"] if e not in cfg["embeddings"]]
    if outside:
        problems.append(f"loss_embeddings {cfg['loss_embeddings']}: {', '.join(outside)} not among embeddings "
                        f"{cfg['embeddings']} (the losses train a subset of the model's embeddings)")
    if sum(cfg["txt_aug_rates"][1:]) > 1:
        problems.append(f"txt_aug_rates {cfg['txt_aug_rates']}: a picked token's mask and replace probabilities "
                        "add up to more than 1")
    if (cfg["pretrain_path"] or cfg["pretrain_choice"]) in ("", "random"):     # a random CLIP (build_clip)
        try:
            parts().clip_config(**cfg["clip_arch"], image_size=tuple(cfg["img_size"]), stride=cfg["stride_size"],
                                context_length=cfg["text_length"])
        except ValueError as e:
            problems.append(f"clip_arch {cfg['clip_arch']} with img_size {cfg['img_size']}, stride_size "
                            f"{cfg['stride_size']}: {e}")
    return problems


def _layered(values: dict, source: str = "options") -> tuple[dict, dict]:
    """(defaults < the method's defaults < values, checked; the first two: what `values` does not give)."""
    base = defaults()
    method = values.get("method", base["method"])
    if method in methods():        # a method's own defaults, under the file and the command line
        base.update(methods()[method].defaults)
    return check_all(json.loads(json.dumps({**base, **values})), source), base     # deep copy; plain types only


def unused_given(cfg: dict, cli: dict, layers: list) -> tuple[list[str], list[str]]:
    """(refused, noted): options given on the command line or in a file layer that only parts `cfg` does not use
    read, each with why.  The command line's are refused, and a file's where its own layer (with its bases) does
    not use that part either (weighting: ccd beside alr_k: 9); a file's option that a later layer or the command
    line left unused (configs/rde/cuhk.yaml's tau under --loss_names InfoNCE) is noted instead."""
    unused = unused_options(cfg, {*cli, *(k for _, own in layers for k in own)})
    refused = [f"--{k} {why}" for k, why in unused.items() if k in cli]
    noted, so_far = [], {}
    for i, (path, own) in enumerate(layers):
        so_far.update(own)
        last = [k for k in own if k in unused and k not in cli and not any(k in o for _, o in layers[i + 1:])]
        unused_here = unused_options(_layered(so_far)[0], last) if last else {}
        for k in last:
            (refused if k in unused_here else noted).append(f"{k} ({path}) {unused[k]}")
    return refused, noted


def resolve(cli: dict, file_values: dict, source: str = "options", layers: list | None = None) -> EasyDict:
    """defaults < the method's defaults < file_values < cli, every value checked, the options checked against each
    other and against the parts that read them (`unused_given`); `source` says where they came from in messages.

    layers: the files file_values was read from, [(file, its own options)] base first, as load_yaml(path, layers)
    gives them; None: file_values is one layer; []: file_values is a resolved config (a run folder's, read by
    load_run_config), whose options are not checked for use again.  Old option names (RENAMED) are read as their
    current ones (current_names)."""
    cli, file_values = current_names(cli, source), current_names(file_values, source)
    cfg, _ = _layered({**file_values, **cli}, source)
    problems = cross_problems(cfg)
    refused, noted = unused_given(cfg, cli, [(source, file_values)] if layers is None else layers)
    problems += [f"{p}: drop it, or choose that part" for p in refused]
    if problems:
        raise SystemExit(f"{source}: " + "\n  ".join(problems))
    if noted:
        log.warning("%s: left unused by a later choice of parts (they change nothing): %s", source, "; ".join(noted))
    return EasyDict(cfg)


def config_conflicts(saved: dict, given: dict) -> list[str]:
    """'name (run: a, given: b)' for every option of `given` whose value differs from `saved` (or from the
    default where `saved` lacks it), runtime options aside."""
    options, saved = all_options(), upgrade_saved(saved)[0]   # read as load_run_config reads it
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists, int vs float 1 vs 1.0 stay apart)
    return [f"{k} (run: {saved.get(k, options[k].default)!r}, given: {v!r})" for k, v in given.items()
            if k in options and k not in RUNTIME_OPTIONS and plain(v) != plain(saved.get(k, options[k].default))]


def parse_args(argv=None) -> EasyDict:
    """Options for main.py.  With --resume RUN_DIR the run's saved configs.yaml is the configuration: options
    that would change it are refused, by name."""
    args = current_names(vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv)), "the command line")
    config_file = args.pop("config")
    if not args.get("resume"):
        layers = []
        return resolve(args, load_yaml(config_file, layers) if config_file else {},
                       f"options of {config_file} and the command line" if config_file else "options", layers)
    run = args["resume"]
    saved_file = os.path.join(run, "configs.yaml")
    if not os.path.isfile(saved_file):
        raise SystemExit(f"--resume {run}: no configs.yaml there; is it a run folder made by main.py?")
    if config_file:
        raise SystemExit(f"--resume {run} continues the run with its own configs.yaml; drop --config {config_file} "
                         "(to train with other options, start a new run)")
    saved = load_run_config(saved_file)
    conflicts = config_conflicts(saved, args)
    if conflicts:
        raise SystemExit(f"--resume {run}: these options differ from the run's configs.yaml: {'; '.join(conflicts)}. "
                         f"A resumed run keeps its configuration; only {', '.join(RUNTIME_OPTIONS[3:])} may change")
    args["run_dir"] = run
    return resolve(args, saved, f"options of {saved_file}", layers=[])
