"""The project's training options and reading a run's config from them; the folder also holds the YAML recipes
(demo.yaml, rde/, 3rtpr/, icl/, recommended.yaml, examples/).

    table.py     the options: CORE_GROUPS (the engine's and the run's), the parts' declared options collected into
                 their --help groups (GROUPS, OPTIONS, read when used), the rules that check values against the
                 registries, RENAMED (old option names still read), RUNTIME_OPTIONS (what a resumed run may change)
    parts.py     the registries themselves (Parts), imported from datasets/, model/ and solver/ when first needed
    reading.py   a config from them: parse_args (main.py's command line, --config, --resume), build_parser,
                 load_yaml (a YAML file, checked, old option names read as their current ones), load_run_config (a
                 run folder's configs.yaml, as earlier versions wrote it too), resolve (defaults < the method's
                 defaults < file < command line; options of parts the run does not use refused), defaults,
                 check_all, cross_problems, primary_loss, config_conflicts, current_names

The machinery these use and parts declare their options with (Option, OneOf, Range, ..., save_config) is
utils/options/, which imports nothing of the project; `Option` is re-exported here for convenience.
"""
from utils.options import Option

from .parts import Parts
from .reading import (LISTING, build_parser, check_all, config_conflicts, cross_problems, current_names, defaults,
                      load_run_config, load_yaml, parse_args, primary_loss, resolve)
from .table import CLIP_SET_ELSEWHERE, CORE_GROUPS, RENAMED, RUNTIME_OPTIONS, all_groups, all_options

__all__ = ["CLIP_SET_ELSEWHERE", "CORE_GROUPS", "GROUPS", "LISTING", "OPTIONS", "Option", "Parts",
           "RENAMED", "RUNTIME_OPTIONS", "all_groups", "all_options", "build_parser", "check_all", "config_conflicts",
           "cross_problems", "current_names", "defaults", "load_run_config", "load_yaml", "parse_args",
           "primary_loss", "resolve"]


def __getattr__(name: str):
    # GROUPS and OPTIONS are read when used, so parts registered since (a new loss file) are in them
    if name == "GROUPS":
        return all_groups()
    if name == "OPTIONS":
        return all_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
