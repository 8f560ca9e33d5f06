import glob
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from configs import GROUPS, OPTIONS, build_parser, config_conflicts, current_names, defaults, parse_args
from model.embeddings import EMBEDDINGS
from model.losses import LOSSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_resolves(path):
    cfg = parse_args(["--config", path, "--batch_size", "3"])
    assert cfg.batch_size == 3                      # the command line wins over the file
    assert set(cfg) == set(OPTIONS)


def test_published_recipes_keep_the_published_defaults():
    rde = parse_args(["--config", os.path.join(REPO, "configs/rde/cuhk.yaml")])
    assert (rde.tau, rde.margin, rde.select_ratio, rde.tse_dim, rde.batch_size, rde.num_epoch) == \
        (0.015, 0.1, 0.3, 1024, 64, 60)
    assert (rde.lr, rde.head_lr, rde.weight_decay, rde.warmup_epochs) == (1e-5, 1e-3, 4e-5, 5)
    twins = parse_args(["--config", os.path.join(REPO, "configs/3rtpr/cuhk.yaml")])
    assert twins.twin and (twins.batch_size, twins.fused_ratio, twins.fused_dim, twins.alr_k) == (128, 0.2, 2048, 5)
    assert parse_args(["--config", os.path.join(REPO, "configs/rde/ufine.yaml")]).text_length == 168


def test_rde_style_flags():
    cfg = parse_args(["--img_aug", "--no-txt_aug", "--loss_names", "TAL+SDM+sr0.3", "--img_size", "256", "128",
                      "--loss_weights", "{SDM: 2}"])
    assert cfg.img_aug is True and cfg.txt_aug is False and cfg.img_size == [256, 128]
    assert cfg.loss_weights == {"SDM": 2}
    assert cfg.loss_names == "TAL+SDM+sr0.3"


# every mistake of issue 13, as typed on the command line or in a YAML file, and what the message must say (the
# registered losses and heads listed as registered: the examples' CMPM and avg among them)
LOSS_LIST, HEAD_LIST = ", ".join(LOSSES), ", ".join(EMBEDDINGS)
BAD = {
    "unknown loss": (["--loss_names", "TAL+SDMM"],
                     r"--loss_names: 'SDMM' in 'TAL\+SDMM' is neither a registered loss \(did you mean SDM\?\) nor a "
                     rf"label; losses: {LOSS_LIST} \(model/losses/\); a label holds one of \. = -"),
    "a loss's typo is no label": (["--loss_names", "TAL+InfoNCE2"],
                                  r"--loss_names: 'InfoNCE2' in 'TAL\+InfoNCE2' is neither a registered loss \(did you "
                                  r"mean InfoNCE\?\) nor a label"),
    "option of a part not used": (["--alr_k", "9"],
                                  r"--alr_k is read only by weighting 'alr' or 'alr_release' \(solver/weighting/\), "
                                  r"which this run does not use \(weighting: ccd\): drop it, or choose that part"),
    "option of another rule": (["--method", "twins", "--soft_clean_floor", "0.2"],
                               r"--soft_clean_floor is read only by weighting 'soft_clean' \(solver/weighting/\), "
                               r"which this run does not use \(weighting: alr\)"),
    "option of a method not used": (["--eval_after", "3"],
                                    r"--eval_after is read only by training method 'twins_release' "
                                    r"\(solver/methods/\), which this run does not use \(method: rde\)"),
    "option of a part the file does not use": ("weighting: ccd\nalr_k: 9",
                                               r"alr_k \(.*bad.yaml\) is read only by weighting 'alr' or "
                                               r"'alr_release'"),
    "unknown loss weight": ("loss_weights: {TAll: 2}",
                            rf"loss_weights: key 'TAll' is not a registered loss.*\(did you mean TAL\?\); keys: "
                            rf"{next(iter(LOSSES))}, "),
    "weight of a loss not trained": ("loss_weights: {SDM: 2}",
                                     r"loss_weights: 'SDM' is not trained by loss_names 'TAL'; its keys can be TAL, "
                                     r"rda_TAL"),
    "text for a number": ("num_epoch: three", r"num_epoch: 'three' is not an integer"),
    "abbreviation": (["--num_epo", "3"], r"unrecognized arguments: --num_epo 3; --num_epo: did you mean --num_epoch\?"),
    "weighting": (["--weighting", "cdd"],
                  # every registered rule, in name order (a new rule file adds its name here by itself)
                  r"--weighting: 'cdd' is not one of: alr, alr_release, ccd, (\w+, )*soft_clean(, \w+)* \(did you "
                  r"mean ccd\?\)"),
    "clip_arch key": ("clip_arch: {vision_widht: 64}",
                      r"clip_arch: key 'vision_widht' is not a CLIP architecture field.*\(did you mean vision_width\?\); "
                      r"keys: embed_dim"),
    "clip_arch value": ("clip_arch: {vision_width: 60, vision_heads: 7}",
                        r"clip_arch .*vision_width=60 is not divisible by vision_heads=7"),
    "gmm key": ("gmm: {max_iters: 5}", r"gmm: key 'max_iters' is not a mixture setting \(did you mean max_iter\?\); "
                                       r"keys: max_iter, tol, reg_covar"),
    "gmm value": (["--gmm", "{tol: -1}"], r"--gmm: key tol: -1.0 is out of range: >= 0"),
    "division_read value": (["--division_read", "augmneted"],
                            r"--division_read: 'augmneted' is not one of: augmented, clean \(did you mean augmented\?\)"),
    "division_read name": (["--divison_read", "clean"], r"--divison_read: did you mean --division_read\?"),
    "head": ("embeddings: [bge, tsee]", rf"embeddings: 'tsee' is not one of: {HEAD_LIST} \(did you mean tse\?\)"),
    "+pre without a file": (["--loss_names", "TAL+pre"], r"'\+pre' initialises CLIP .* give its file with --pretrain_path"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_config_stops_before_any_data_is_read(case, tmp_path, monkeypatch, capsys):
    import main as train_main
    import solver.data

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read")
    monkeypatch.setattr(solver.data, "build_dataset", no_data)
    given, message = BAD[case]
    argv = ["--root_dir", str(tmp_path / "data"), "--run_dir", str(tmp_path / "run"), "--pretrain_choice", "random"]
    if isinstance(given, str):
        (tmp_path / "bad.yaml").write_text(given + "\n")
        argv += ["--config", str(tmp_path / "bad.yaml")]
    else:
        argv += given
    with pytest.raises(SystemExit) as stop:
        train_main.main(argv)
    said = f"{stop.value.code}\n{capsys.readouterr().err}"     # argparse prints its message, a check raises it
    assert re.search(message, said), said
    if isinstance(given, str):
        assert str(tmp_path / "bad.yaml") in said               # the file is named
    assert not (tmp_path / "run").exists()


def test_labels_follow_an_explicit_rule_and_the_registry_drives_the_check(monkeypatch):
    """RDE's labels and ICL's +pre stay accepted; a loss registered later is accepted by name, with a weight."""
    from model.losses import LOSSES
    assert parse_args(["--loss_names", "TAL+sr0.3_tau0.015_margin0.1_n0.5"]).loss_names.startswith("TAL+sr0.3")
    assert parse_args(["--loss_names", "TAL+pre", "--pretrain_path", "p.pth"]).pretrain_path == "p.pth"
    with pytest.raises(SystemExit):
        parse_args(["--loss_names", "TAL+Mine"])
    monkeypatch.setitem(LOSSES._entries, "Mine", LOSSES["TAL"])
    cfg = parse_args(["--loss_names", "TAL+Mine", "--loss_weights", "{Mine: 0.5}"])
    assert cfg.loss_weights == {"Mine": 0.5}


def test_yaml_values_are_typed(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-4\nweighting: alr\nalr_k: 5\ngmm: {tol: 1e-2, max_iter: 10}\n"
                                     "embeddings: bge\nanno_path:\n")
    cfg = parse_args(["--config", str(tmp_path / "c.yaml")])
    # YAML reads 1e-4 (no dot) as text: it is a number here, as on the command line
    assert cfg.lr == 1e-4 and cfg.gmm == {"tol": 0.01, "max_iter": 10} and isinstance(cfg.alr_k, float)
    assert cfg.embeddings == ["bge"] and cfg.anno_path == ""


@pytest.fixture
def warnings_said(caplog):
    """The "reid" logger's warnings (caught at the root, unless a run has set the logger up not to propagate)."""
    import logging
    logger, propagate = logging.getLogger("reid"), logging.getLogger("reid").propagate
    logger.propagate = True
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    logger.propagate = propagate


def test_options_a_later_choice_leaves_unused_are_named_not_refused(warnings_said):
    """A recipe's option whose part a later layer (the command line, a file on its _BASE_) replaced: one warning."""
    cfg = parse_args(["--config", os.path.join(REPO, "configs/3rtpr/cuhk.yaml"), "--weighting", "ccd"])
    assert cfg.weighting == "ccd"
    said, = warnings_said()
    assert re.search(r"alr_k \(.*3rtpr/cuhk.yaml\) is read only by weighting 'alr'.*\(weighting: ccd\); alr_mu", said)
    parse_args(["--config", os.path.join(REPO, "configs/examples/avgpool.yaml")])
    assert re.search(r"tse_dim \(.*demo.yaml\) is read only by embedding head 'tse'", warnings_said()[-1])
    parse_args(["--config", os.path.join(REPO, "configs/3rtpr/cuhk.yaml")])       # its own parts: nothing to say
    assert len(warnings_said()) == 2


def test_an_old_run_folder_loads_with_one_warning_line(tmp_path, warnings_said):
    """What earlier versions accepted and this one refuses: a loss-name label of the old rule (dropped, also from
    the checkpoint's config when --resume compares them) and an option of a part the run did not use (kept)."""
    old = {**defaults(), "loss_names": "TAL+free_text", "alr_k": 9.0}
    (tmp_path / "configs.yaml").write_text(yaml.safe_dump(old))
    cfg = parse_args(["--resume", str(tmp_path)])
    assert (cfg.loss_names, cfg.alr_k, cfg.weighting) == ("TAL", 9.0, "ccd")
    said, = warnings_said()
    assert "'TAL+free_text' is read as 'TAL': 'free_text' were labels" in said
    assert "alr_k 9.0 is read only by weighting 'alr'" in said
    assert config_conflicts(old, {k: v for k, v in cfg.items() if k in old}) == []
    with pytest.raises(SystemExit):                             # a new run may not write it
        parse_args(["--loss_names", "TAL+free_text"])


@pytest.mark.parametrize("method, rule", [("soft_clean", "soft_clean"), ("co_teaching", "co_teaching")])
def test_a_method_that_became_a_weighting_rule_reads_as_that_rule(method, rule, tmp_path, warnings_said):
    """soft_clean and co_teaching were methods that bypassed `weighting` (a run folder of theirs says
    weighting: ccd, which they never read): an old run folder, an old config and the command line read them as
    the rule, with one warning line, and --resume finds the checkpoint's config equal to the folder's."""
    old = {**defaults(), "method": method, "weighting": "ccd", "twin": method == "co_teaching"}
    (tmp_path / "configs.yaml").write_text(yaml.safe_dump(old))
    cfg = parse_args(["--resume", str(tmp_path)])
    assert (cfg.method, cfg.weighting, cfg.twin) == ("rde", rule, method == "co_teaching")
    said, = warnings_said()
    assert f"method {method} is now the weighting rule {rule}, read as method: rde, weighting: {rule}" in said
    assert config_conflicts(current_names(old), {k: v for k, v in cfg.items() if k in old}) == []   # main.py's
    new = parse_args(["--method", method, "--noisy_rate", "0.5"])
    assert (new.method, new.weighting, new.twin) == ("rde", rule, method == "co_teaching")
    with pytest.raises(SystemExit, match=r"--alr_k is read only by weighting 'alr'"):
        parse_args(["--method", method, "--weighting", "alr", "--alr_k", "9"])    # its rule replaced alr's


def test_an_option_of_a_rule_is_refused_in_every_combination_that_does_not_choose_it():
    """Every method with every rule (and with the division off): an option that only rules other than the chosen
    one read is refused; the chosen rule's own are taken."""
    from configs import resolve
    from solver.methods import METHODS
    from solver.weighting import WEIGHTINGS
    declared = {name: set(getattr(cls, "options", None) or {}) for name, cls in WEIGHTINGS.items()}
    for method in METHODS:
        for rule in WEIGHTINGS:
            for division in (True, False):
                for option in set().union(*declared.values()):
                    given = {"method": method, "weighting": rule, "division": division,
                             option: OPTIONS[option].default}
                    if division and option in declared[rule]:
                        assert resolve(given, {})[option] == OPTIONS[option].default
                    else:
                        with pytest.raises(SystemExit, match=rf"--{option} is read only by weighting "):
                            resolve(given, {})


def test_a_saved_config_without_newer_options_resumes_with_their_defaults(tmp_path):
    saved = {k: v for k, v in defaults().items() if k not in ("division_read", "gmm", "use_rda")}
    (tmp_path / "configs.yaml").write_text(yaml.safe_dump(saved))
    cfg = parse_args(["--resume", str(tmp_path)])
    assert (cfg.division_read, cfg.gmm, cfg.use_rda, cfg.run_dir) == ("augmented", {}, True, str(tmp_path))


def test_help_lists_every_option_in_groups():
    text = build_parser().format_help()
    for name in OPTIONS:
        assert f"--{name} " in text or f"--{name}\n" in text, name
    for title in GROUPS:
        assert f"\n{title}:\n" in text, title


@pytest.mark.slow
def test_our_datasets_package_does_not_break_transformers_or_peft():
    """With the repo root first on sys.path, `import datasets` is ours; Hugging Face code must still work."""
    code = ("import datasets, transformers, peft, torch\n"
            "assert datasets.__file__.startswith(%r), datasets.__file__\n"
            "from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Trainer\n"
            "from peft import LoraConfig, get_peft_model\n"
            "cfg = Qwen2VLConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,\n"
            "    num_attention_heads=2, num_key_value_heads=1, vocab_size=300, rope_scaling={'type': 'mrope',\n"
            "    'mrope_section': [2, 3, 3]}), vision_config=dict(depth=1, embed_dim=32, hidden_size=32,\n"
            "    num_heads=2, mlp_ratio=2, in_chans=3, patch_size=14, spatial_merge_size=2))\n"
            "m = get_peft_model(Qwen2VLForConditionalGeneration(cfg), LoraConfig(r=2, target_modules=['q_proj']))\n"
            "out = m(input_ids=torch.tensor([[1, 2, 3]]))\n"
            "assert out.logits.shape[-1] == 300\n" % os.path.join(REPO, "datasets"))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_config_reads_in_a_fresh_interpreter_with_nothing_imported_first():
    """configs/ imports the registries it checks against itself: no command imports solver.build first, and
    `import configs` alone imports no torch (the registries come when a value is first checked)."""
    code = ("import sys\nimport configs\nassert 'torch' not in sys.modules\n"
            "cfg = configs.parse_args(['--config', 'configs/synth.yaml', '--weighting', 'alr', '--alr_k', '9'])\n"
            "assert (cfg.pretrain_choice, cfg.alr_k) == ('synthetic', 9.0), cfg\n"
            "assert 'solver.build' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_config_file_starts_from_its_base(tmp_path):
    """fast-reid's _BASE_: the base file is read first, relative to the file, and the file overrides it; a loop
    or a missing base is named."""
    from configs import load_yaml
    (tmp_path / "base.yaml").write_text("num_epoch: 3\nlr: 0.5\nname: base\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("_BASE_: ../base.yaml\nlr: 0.25\n")
    assert load_yaml(str(tmp_path / "sub" / "child.yaml")) == {"num_epoch": 3, "lr": 0.25, "name": "base"}
    (tmp_path / "base.yaml").write_text("_BASE_: sub/child.yaml\n")
    with pytest.raises(SystemExit, match="_BASE_ chain comes back"):
        load_yaml(str(tmp_path / "sub" / "child.yaml"))
    (tmp_path / "lost.yaml").write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(SystemExit, match=r"nowhere.yaml \(the _BASE_ of .*lost.yaml\)"):
        load_yaml(str(tmp_path / "lost.yaml"))


def test_the_machinery_reads_any_table_of_options(tmp_path):
    """utils/options/ holds no option of its own: the parser, the checks and YAML files work on the table they
    are given (configs/ gives them the training options)."""
    import utils.options as machinery
    groups = {"counts": {"n": machinery.Option(2, "a count", machinery.AT_LEAST_1)},
              "modes": {"mode": machinery.Option("a", "a mode", machinery.OneOf("a", "b")),
                        "names": machinery.Option(["x"], "names", machinery.NameList("name", lambda: ["x", "y"]))}}
    options = {k: o for group in groups.values() for k, o in group.items()}
    parser = machinery.build_parser(groups, "a tool", "tool --help")
    assert vars(parser.parse_args(["--n", "3", "--names", "y", "x"])) == {"config": "", "n": 3, "names": ["y", "x"]}
    text = parser.format_help()
    assert text.index("counts:") < text.index("a count; allowed: >= 1") < text.index("modes:") < text.index("a mode")
    with pytest.raises(SystemExit, match=r"unknown option 'nn' \(did you mean n\?\)\n  mode: 'c' is not one of: a, "
                                         r"b\n\(tool --help lists every option"):
        machinery.check_all({"nn": 1, "mode": "c"}, "here", options, "tool --help")
    with pytest.raises(SystemExit, match=r"names: \['x', 'x'\] names a name twice"):
        machinery.check_all({"names": ["x", "x"]}, "here", options, "tool --help")
    (tmp_path / "base.yaml").write_text("n: 4\nmode: b\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nn: 5\n")
    assert machinery.load_yaml(str(tmp_path / "child.yaml"), options, "tool --help") == {"n": 5, "mode": "b"}
    machinery.save_config({"n": 5, "names": ("x",)}, str(tmp_path / "saved.yaml"))
    assert machinery.load_yaml(str(tmp_path / "saved.yaml"), options, "tool --help") == {"n": 5, "names": ["x"]}


class _Lines(logging.Handler):
    """The messages the project's logger gets while it is attached."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("reid").addHandler(self)
        return self.lines

    def __exit__(self, *exc):
        logging.getLogger("reid").removeHandler(self)


def test_the_old_name_of_tse_dim_is_still_read_with_one_warning_line(tmp_path):
    """TSE's size was `embed_dim`, the name of CLIP's own output size in clip_arch: it is tse_dim now, and a
    config file, a run's configs.yaml (the same reader) or the command line that says embed_dim still works."""
    from configs import load_yaml, resolve
    old = tmp_path / "old.yaml"
    old.write_text("clip_arch: {embed_dim: 32}\nembed_dim: 64\nlr: 0.5\n")
    with _Lines() as lines:
        values = load_yaml(str(old))
    assert values == {"clip_arch": {"embed_dim": 32}, "tse_dim": 64, "lr": 0.5}    # in its place; clip_arch's kept
    assert lines == [f"config file {old}: option embed_dim is now called tse_dim, read as tse_dim"]
    with _Lines() as lines:
        cfg = parse_args(["--config", str(old), "--embed_dim", "96"])
    assert cfg.tse_dim == 96 and "embed_dim" not in cfg and cfg.clip_arch == {"embed_dim": 32}
    assert lines == ["the command line: option embed_dim is now called tse_dim, read as tse_dim",     # one per source
                     f"config file {old}: option embed_dim is now called tse_dim, read as tse_dim"]
    assert "--embed_dim" not in build_parser().format_help()                            # not listed
    assert resolve({"embed_dim": 80}, {}).tse_dim == 80                                  # code calling resolve
    child = tmp_path / "child.yaml"                  # an old base file under a new one: the child's value wins
    child.write_text("_BASE_: old.yaml\ntse_dim: 32\n")
    assert load_yaml(str(child))["tse_dim"] == 32
    both = tmp_path / "both.yaml"
    both.write_text("embed_dim: 64\ntse_dim: 64\n")
    with pytest.raises(SystemExit, match="embed_dim and tse_dim are one option"):
        load_yaml(str(both))
