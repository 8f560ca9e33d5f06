"""The command-line parser built from groups of options (`build_parser`): one --NAME per option, typed and checked
as a file's values are, no abbreviations, an unknown option named with the closest known one."""
from __future__ import annotations

import argparse

import yaml

from ..registry import closest
from .option import Option, check, fixed_length, item_kind
from .rules import NameList, OneOf
from .typed import OptionError, as_type


class _Parser(argparse.ArgumentParser):
    """Unknown options are named with the closest known one (no abbreviations: --num_epo is not --num_epoch)."""

    listing = "--help"    # the command that lists the options, named in the message

    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            known = [s for s in self._option_string_actions if s.startswith("--")]
            hints = [f"{a}: did you mean {closest(a, known)}?" for a in extra if a.startswith("-") and closest(a, known)]
            self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {h}" for h in hints)
                       + f" (options are spelled out in full: {self.listing} lists them)")
        return namespace


def _cli(option: Option, item: bool = False):
    """argparse type for `option` (for one item of a list option when `item`)."""

    def convert(text: str):
        try:
            if item:
                value = as_type(item_kind(option), text)
                allowed = option.allowed
                if isinstance(allowed, NameList):
                    return OneOf(names=allowed.names)(value)
                return allowed(value) if allowed is not None else value
            return check(yaml.safe_load(text) if isinstance(option.default, dict) else text, option)
        except (OptionError, yaml.YAMLError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _help(option: Option) -> str:
    rule = option.allowed.describe() if option.allowed is not None else ""
    text = f"{option.help}{f'; allowed: {rule}' if rule else ''} (default: {option.default})"
    return text.replace("%", "%%")


def build_parser(groups: dict[str, dict[str, Option]], description: str, listing: str) -> argparse.ArgumentParser:
    """`--config FILE` and one `--NAME` per option of `groups` ({--help group title: {name: Option}}), in their
    order; a boolean also takes `--no-NAME`.  Only the options given appear in the parsed namespace (so that they
    can override a file's).  `listing` (the command that lists the options) is named when an option is unknown."""
    p = _Parser(description=description, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.listing = listing
    p.add_argument("--config", default="", help="YAML file of options (command-line values override it)")
    for title, group in groups.items():
        g = p.add_argument_group(title)
        for name, option in group.items():
            # default=SUPPRESS: only values actually typed appear, so they can override the YAML file
            kw = dict(default=argparse.SUPPRESS, help=_help(option))
            if isinstance(option.allowed, OneOf):
                kw["choices"] = option.allowed.values
            if isinstance(option.default, bool):
                # `--img_aug` as in RDE's scripts, `--img_aug false` or `--no-img_aug` to switch off
                g.add_argument(f"--{name}", nargs="?", const=True, type=_cli(option), **kw)
                g.add_argument(f"--no-{name}", dest=name, action="store_false", default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            elif isinstance(option.default, list):
                if isinstance(option.allowed, NameList):
                    kw["choices"] = option.allowed.names()
                g.add_argument(f"--{name}", nargs=fixed_length(option) or "+", type=_cli(option, item=True), **kw)
            else:
                g.add_argument(f"--{name}", type=_cli(option), **kw)
    return p
