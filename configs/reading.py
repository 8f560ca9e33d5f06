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
(`cross_problems`).  Options are spelled out in full (no abbreviations).
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
from .table import RENAMED, RUNTIME_OPTIONS, all_groups, all_options, methods

# the command that lists every option, named in messages
LISTING = "python main.py --help"


def current_names(values: dict, source: str | None = None) -> dict:
    """`values` with the options renamed since (RENAMED) under their current names, in their place.  With `source`
    (where the values were read), one warning line names them; both names at once is an error."""
    old = [k for k in values if k in RENAMED]
    if not old:
        return values
    both = [k for k in old if RENAMED[k] in values]
    if both:
        raise SystemExit(f"{source}: " + "; ".join(f"{k} and {RENAMED[k]} are one option ({k} is its old name): give "
                                                   f"{RENAMED[k]} only" for k in both))
    if source is not None:
        logging.getLogger("reid").warning("%s: %s", source, "; ".join(
            f"option {k} is now called {RENAMED[k]}, read as {RENAMED[k]}" for k in old))
    return {RENAMED.get(k, k): v for k, v in values.items()}


def check_all(values: dict, source: str) -> dict:
    """Every value typed and checked; SystemExit naming each bad one with `source` (a file, the command line)."""
    return machinery.check_all(current_names(values, source), source, all_options(), LISTING)


def load_yaml(path: str) -> dict:
    """The options of a YAML file (a --config or a run's configs.yaml, with its _BASE_), typed and checked."""
    return machinery.load_yaml(path, all_options(), LISTING, current_names)


def build_parser() -> argparse.ArgumentParser:
    """main.py's command line: --config and every option, in its --help group; an old name (RENAMED) is still
    taken, unlisted, typed as the new one (parse_args reads it as the new one, with a warning)."""
    parser = machinery.build_parser(all_groups(), "Train a text-to-image person re-identification model.", LISTING)
    options = all_options()
    for old, new in RENAMED.items():     # scalar options so far: one value, typed and checked by the new option
        parser.add_argument(f"--{old}", type=_checked_by(options[new]), default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
    return parser


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
    if (cfg["pretrain_path"] or cfg["pretrain_choice"]) in ("", "random"):     # a random CLIP (build_clip)
        try:
            parts().clip_config(**cfg["clip_arch"], image_size=tuple(cfg["img_size"]), stride=cfg["stride_size"],
                                context_length=cfg["text_length"])
        except ValueError as e:
            problems.append(f"clip_arch {cfg['clip_arch']} with img_size {cfg['img_size']}, stride_size "
                            f"{cfg['stride_size']}: {e}")
    return problems


def resolve(cli: dict, file_values: dict, source: str = "options") -> EasyDict:
    """defaults < the method's defaults < file_values < cli, every value checked, and the options checked against
    each other; `source` says where they came from in messages."""
    cli, file_values = current_names(cli, source), current_names(file_values, source)
    cfg = defaults()
    method = cli.get("method", file_values.get("method", cfg["method"]))
    if method in methods():        # a method's own defaults, under the file and the command line
        cfg.update(methods()[method].defaults)
    cfg.update(file_values)
    cfg.update(cli)
    cfg = check_all(json.loads(json.dumps(cfg)), source)       # deep copy; plain types only
    problems = cross_problems(cfg)
    if problems:
        raise SystemExit(f"{source}: " + "\n  ".join(problems))
    return EasyDict(cfg)


def config_conflicts(saved: dict, given: dict) -> list[str]:
    """'name (run: a, given: b)' for every option of `given` whose value differs from `saved` (or from the
    default where `saved` lacks it), runtime options aside."""
    options = all_options()
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists, int vs float 1 vs 1.0 stay apart)
    return [f"{k} (run: {saved.get(k, options[k].default)!r}, given: {v!r})" for k, v in given.items()
            if k in options and k not in RUNTIME_OPTIONS and plain(v) != plain(saved.get(k, options[k].default))]


def parse_args(argv=None) -> EasyDict:
    """Options for main.py.  With --resume RUN_DIR the run's saved configs.yaml is the configuration: options
    that would change it are refused, by name."""
    args = current_names(vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv)), "the command line")
    config_file = args.pop("config")
    if not args.get("resume"):
        return resolve(args, load_yaml(config_file) if config_file else {},
                       f"options of {config_file} and the command line" if config_file else "options")
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
    return resolve(args, saved, f"options of {saved_file}")
