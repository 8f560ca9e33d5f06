import glob
import os
import subprocess
import sys

import pytest

from utils.options import OPTIONS, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_resolves(path):
    cfg = parse_args(["--config", path, "--batch_size", "3"])
    assert cfg.batch_size == 3                      # the command line wins over the file
    assert set(cfg) == set(OPTIONS)


def test_published_recipes_keep_the_published_defaults():
    rde = parse_args(["--config", os.path.join(REPO, "configs/rde/cuhk.yaml")])
    assert (rde.tau, rde.margin, rde.select_ratio, rde.embed_dim, rde.batch_size, rde.num_epoch) == \
        (0.015, 0.1, 0.3, 1024, 64, 60)
    assert (rde.lr, rde.head_lr, rde.weight_decay, rde.warmup_epochs) == (1e-5, 1e-3, 4e-5, 5)
    twins = parse_args(["--config", os.path.join(REPO, "configs/3rtpr/cuhk.yaml")])
    assert twins.twin and (twins.batch_size, twins.fused_ratio, twins.fused_dim, twins.alr_k) == (128, 0.2, 2048, 5)
    assert parse_args(["--config", os.path.join(REPO, "configs/rde/ufine.yaml")]).text_length == 168


def test_rde_style_flags():
    cfg = parse_args(["--img_aug", "--no-txt_aug", "--loss_names", "TAL+sr0.3", "--img_size", "256", "128",
                      "--loss_weights", "{SDM: 2}"])
    assert cfg.img_aug is True and cfg.txt_aug is False and cfg.img_size == [256, 128]
    assert cfg.loss_weights == {"SDM": 2}


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
