"""Config machinery, with no option of its own, one module per concern:

    typed.py    a value as its option's type (text from the command line or YAML read too); OptionError
    rules.py    what an option allows beyond its type: OneOf, Range, Pattern, Device, NameList, Keys, and the
                shared ranges FRACTION, POSITIVE, AT_LEAST_0, AT_LEAST_1
    option.py   Option (default, help, rule) and checking values against options: check, check_all
    cli.py      the command-line parser built from groups of options: build_parser
    files.py    YAML files of options with fast-reid's ``_BASE_`` inheritance: read_mapping, load_yaml, save_config

Everything is imported from here (``from utils.options import Option, Range``).  It imports nothing of the
project but utils/registry.py.  The project's training options (their table, the registries their values are
checked against, how a run's config is resolved) are in configs/; the parts declare the options they read with
`Option` and the rules here (model/losses/common.py, model/embeddings/tse.py, solver/weighting/alr.py, ...).
"""
from .cli import build_parser
from .files import load_yaml, read_mapping, save_config
from .option import Option, check, check_all
from .rules import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Device, Keys, NameList, OneOf, Pattern, Range
from .typed import OptionError

__all__ = ["AT_LEAST_0", "AT_LEAST_1", "FRACTION", "POSITIVE", "Device", "Keys", "NameList", "OneOf", "Option",
           "OptionError", "Pattern", "Range", "build_parser", "check", "check_all", "load_yaml", "read_mapping",
           "save_config"]
