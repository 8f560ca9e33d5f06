"""3RTPR's release recipe (configs/3rtpr_release/) side by side with its authors' rebuilt code: every piece here runs
our code on the inputs of tests/release_inputs.py and compares it with the values the rebuild's own code gave on the
same inputs (ADNgrup/TPR-UET at commit 88a49fb, folder 3RTPR/: model/layer.py, losses/objectives.py,
processor/ccd.py, processor/processor.py, solver/, utils/metrics.py, datasets/bases.py; run on a CPU, fp32, its
`cuda` replaced by `cpu`, outside this repository, which holds none of its code).  Our side is built from the
release configs themselves, so that a changed constant of the recipe (fused_ratio, fused_image_tokens, alr_k,
alr_mu, gmm_tight_under_noise, head_lr, head_weight_decay, eps, warmup, stop_epoch, eval_after, txt_aug_rates, ...) fails here.

Largest differences measured (one CPU, default kernels and ATEN_CPU_CAPABILITY=avx2 alike), what each tolerance
allows: the fused features 8e-5 on values up to 3300 (sums) and 5 (coordinates); the SDM per-sample loss 2e-6;
ALR's grid 1e-7; the division's mu 5e-8 and its weights 6e-7, its votes equal; the optimiser's settings equal; one
training step's updates 3e-6 relative (the biases ahead of BatchNorm, whose true gradient is 0, move by 1e-7 on both
sides); the evaluation's metrics equal, its similarities 3e-6.

Where the rebuild draws at random (its mixtures are unseeded, the twin it reads is random.choice) the reference
fixed the draw (the twin) or checked that five draws agree (the mixtures, numpy seeds 0-4).
"""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from configs import load_yaml, resolve
from datasets.text_aug import augment_token_list
from evaluation.evaluator import ROWS, Evaluator
from model import similarities
from model.embeddings import build_embedding
from model.losses import build_loss, parse_loss_names
from solver.build import build_engine
from solver.division import alr_weights, votes_from_probability
from solver.objective import weighted_loss
from solver.optimizer import parameter_settings
from solver.weighting import WEIGHTINGS
from tests import release_inputs as inputs
from tests.helpers import ROOT, TINY_ARCH
from utils.epochs import final_epoch
from utils.metrics import rank_metrics

COMMIT = "ADNgrup/TPR-UET 88a49fb (3RTPR/)"
# CLIP the rebuild's heads accept: its fused heads read 512-wide tokens (hard-coded), its attention one head per 64
ARCH_512 = dict(embed_dim=512, vision_width=64, vision_layers=1, vision_heads=1, text_width=64, text_layers=1,
                text_heads=1)

# what the rebuild's code gave on tests/release_inputs.py (COMMIT), compacted: per-row statistics of features
# (sum, norm, coordinates 0, 1, D/4 - 1, D/2, D - 1), per-parameter (lr, weight decay), update norms, metrics
REFERENCE = {'fused_image_all': [[3280.471753, 88.265595, 1.407726, 1.433211, 1.999935, 2.217531, 0.611724],
                     [3289.845659, 87.066635, 1.687879, 1.535113, 1.112721, 2.359021, 0.125641],
                     [3302.170251, 88.18708, 3.135856, 0.752671, 0.011761, -0.231106, 2.087523],
                     [3162.122218, 86.339464, 0.276634, -0.633832, 1.008093, 0.467119, 0.397251]],
 'fused_image_selected': [[2585.778106, 76.38411, 0.811718, 1.348538, 1.773712, 1.364467, -0.322548],
                          [2577.588428, 74.911916, 1.450289, 1.395308, 0.773519, 2.054365, -0.797559],
                          [2578.135348, 75.903126, 2.478575, 0.379144, 0.008769, -0.951383, 1.929457],
                          [2439.885484, 74.298916, 0.130466, -1.142404, 0.68439, 0.32867, 0.261526]],
 'fused_text': [[1714.264686, 64.736332, 1.250612, -0.332706, 1.863945, -0.46082, 0.304737],
                [2106.011635, 70.68932, 2.370357, 3.229862, 0.885717, 1.88407, 1.13404],
                [2066.656957, 67.544658, 0.381313, 1.904056, 1.555842, 2.561945, -0.519724],
                [1052.110627, 55.928208, 0.3238, 0.182797, 0.417131, 1.035055, -1.146482],
                [2084.797089, 69.087711, 2.666938, 1.667706, 4.796453, 0.646802, 0.925536],
                [2081.8946, 69.669246, 3.13626, 0.309381, 3.011607, 0.466684, -1.682291],
                [2078.909625, 68.927804, 1.528738, 0.846613, 1.16719, 1.705823, 1.686667],
                [28.876643, 53.615082, -0.850784, 2.453567, 1.821649, 0.396502, 0.582781]],
 'sdm_per_sample': [20.041861, 28.107956, 24.264383, 22.521515, 21.090363, 22.777939, 31.770412, 18.909683],
 'sdm_batch_loss': 10.552888,
 'alr_grid': [[0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
              [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 4.54e-05, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0],
              [3e-07, 0.0005528, 0.0758583, 0.5, 0.7772998, 0.9770225, 1.0, 1.0, 1.0],
              [0.001271, 0.0344452, 0.2476638, 0.5, 0.6354235, 0.8411309, 0.9655548, 1.0, 1.0]],
 'split_prob_noisy': [10, 130, 160],
 'division': {'rstp_twin_a': {'clean_votes': [280, 280],
                              'clean_index_sum': [55689, 55689],
                              'super_clean': 280,
                              'mu': 0.2874739,
                              'weight_sum': 386.06815,
                              'below_one': 113,
                              'weights_head': [1.0, 1.0, 1.0, 0.984304, 1.0, 1.0, 0.98845, 0.95682, 1.0, 0.938721,
                                               1.0, 1.0],
                              'label_hat_sum': 400.0},
              'cuhk_twin_b': {'clean_votes': [278, 278],
                              'clean_index_sum': [55424, 55424],
                              'super_clean': 278,
                              'mu': 0.0678177,
                              'weight_sum': 393.23853,
                              'below_one': 26,
                              'weights_head': [1.0, 1.0, 1.0, 0.985973, 1.0, 1.0, 1.0, 0.766883, 1.0, 1.0, 1.0,
                                               1.0],
                              'label_hat_sum': 400.0},
              'cuhk_both': {'clean_votes': [280, 278],
                            'clean_index_sum': [55689, 55424],
                            'super_clean': 276,
                            'mu': 0.3372006,
                            'weight_sum': 384.16595,
                            'below_one': 119,
                            'weights_head': [1.0, 1.0, 0.987904, 0.899508, 1.0, 1.0, 0.971504, 0.808518, 1.0,
                                             0.947071, 1.0, 1.0],
                            'label_hat_sum': 400.0},
              'cuhk_both_mean': {'clean_votes': [280, 278],
                                 'clean_index_sum': [55689, 55424],
                                 'super_clean': 276,
                                 'mu': 0.5236787,
                                 'weight_sum': 372.51801,
                                 'below_one': 258,
                                 'weights_head': [0.993071, 1.0, 0.944534, 0.80397, 0.984125, 1.0, 0.906566,
                                                  0.716566, 1.0, 0.864983, 0.992607, 0.989566],
                                 'label_hat_sum': 400.0},
              'cuhk_both_25': {'clean_votes': [280, 278],
                               'clean_index_sum': [55689, 55424],
                               'super_clean': 276,
                               'mu': 0.4821211,
                               'weight_sum': 375.3374,
                               'below_one': 191,
                               'weights_head': [1.0, 1.0, 0.95603, 0.822437, 0.988824, 1.0, 0.921888, 0.732519, 1.0,
                                                0.882612, 1.0, 0.992929],
                               'label_hat_sum': 400.0},
              'cuhk_both_30': {'clean_votes': [280, 278],
                               'clean_index_sum': [55689, 55424],
                               'super_clean': 276,
                               'mu': 0.487546,
                               'weight_sum': 374.94092,
                               'below_one': 205,
                               'weights_head': [1.0, 1.0, 0.954567, 0.819932, 0.988259, 1.0, 0.919888, 0.730317,
                                                1.0, 0.880266, 1.0, 0.992532],
                               'label_hat_sum': 400.0},
              'cuhk_both_75': {'clean_votes': [280, 278],
                               'clean_index_sum': [55689, 55424],
                               'super_clean': 276,
                               'mu': 0.5718922,
                               'weight_sum': 369.14322,
                               'below_one': 331,
                               'weights_head': [0.989507, 0.993132, 0.930598, 0.784539, 0.977667, 0.990547,
                                                0.889026, 0.70042, 0.990341, 0.84563, 0.988867, 0.984759],
                               'label_hat_sum': 400.0},
              'rstp_both_disjoint': {'clean_votes': [280, 120],
                                     'clean_index_sum': [55689, 24111],
                                     'super_clean': 400,
                                     'mu': -0.0162864,
                                     'weight_sum': 400.0,
                                     'below_one': 0,
                                     'weights_head': [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                                     'label_hat_sum': 400.0},
              'rstp_overlap': {'clean_votes': [299, 299],
                               'clean_index_sum': [60905, 60905],
                               'super_clean': 299,
                               'mu': -0.0771447,
                               'weight_sum': 400.0,
                               'below_one': 0,
                               'weights_head': [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                               'label_hat_sum': 400.0},
              'cuhk_overlap': {'clean_votes': [316, 316],
                               'clean_index_sum': [63918, 63918],
                               'super_clean': 316,
                               'mu': -0.0771447,
                               'weight_sum': 400.0,
                               'below_one': 0,
                               'weights_head': [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                               'label_hat_sum': 400.0},
              'icfg_overlap': {'clean_votes': [316, 316],
                               'clean_index_sum': [63918, 63918],
                               'super_clean': 316,
                               'mu': -0.0771447,
                               'weight_sum': 400.0,
                               'below_one': 0,
                               'weights_head': [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                               'label_hat_sum': 400.0}},
 'optimizer': {'backbone.positional_embedding': [1e-05, 4e-05],
               'backbone.text_projection': [1e-05, 4e-05],
               'backbone.visual.class_embedding': [1e-05, 4e-05],
               'backbone.visual.positional_embedding': [1e-05, 4e-05],
               'backbone.visual.proj': [1e-05, 4e-05],
               'backbone.visual.ln_pre.weight': [1e-05, 4e-05],
               'backbone.visual.ln_pre.bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.attn.in_proj_weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.attn.in_proj_bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.attn.out_proj.weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.attn.out_proj.bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.ln_1.weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.ln_1.bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.mlp.c_fc.weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.mlp.c_fc.bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.mlp.c_proj.weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.mlp.c_proj.bias': [2e-05, 0.0],
               'backbone.visual.transformer.resblocks.0.ln_2.weight': [1e-05, 4e-05],
               'backbone.visual.transformer.resblocks.0.ln_2.bias': [2e-05, 0.0],
               'backbone.visual.ln_post.weight': [1e-05, 4e-05],
               'backbone.visual.ln_post.bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.attn.in_proj_weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.attn.in_proj_bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.attn.out_proj.weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.attn.out_proj.bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.ln_1.weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.ln_1.bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.mlp.c_fc.weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.mlp.c_fc.bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.mlp.c_proj.weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.mlp.c_proj.bias': [2e-05, 0.0],
               'backbone.transformer.resblocks.0.ln_2.weight': [1e-05, 4e-05],
               'backbone.transformer.resblocks.0.ln_2.bias': [2e-05, 0.0],
               'backbone.token_embedding.weight': [1e-05, 4e-05],
               'backbone.ln_final.weight': [1e-05, 4e-05],
               'backbone.ln_final.bias': [2e-05, 0.0],
               'embeddings.fused.image_global.weight': [0.001, 0.0],
               'embeddings.fused.image_global.bias': [0.001, 0.0],
               'embeddings.fused.image_local.fc1.weight': [0.001, 0.0],
               'embeddings.fused.image_local.fc1.bias': [0.001, 0.0],
               'embeddings.fused.image_local.fc2.weight': [0.001, 0.0],
               'embeddings.fused.image_local.fc2.bias': [0.001, 0.0],
               'embeddings.fused.image_local.bn.weight': [0.001, 0.0],
               'embeddings.fused.image_local.bn.bias': [0.001, 0.0],
               'embeddings.fused.text_global.weight': [0.001, 0.0],
               'embeddings.fused.text_global.bias': [0.001, 0.0],
               'embeddings.fused.text_local.fc1.weight': [0.001, 0.0],
               'embeddings.fused.text_local.fc1.bias': [0.001, 0.0],
               'embeddings.fused.text_local.fc2.weight': [0.001, 0.0],
               'embeddings.fused.text_local.fc2.bias': [0.001, 0.0],
               'embeddings.fused.text_local.bn.weight': [0.001, 0.0],
               'embeddings.fused.text_local.bn.bias': [0.001, 0.0]},
 'not_ours': ['mask_token', 'ttselection.mlp.bns.1.bias', 'ttselection.mlp.bns.1.weight',
              'vtselection.mlp.bns.1.bias', 'vtselection.mlp.bns.1.weight'],
 'step_loss': [6.808812, 7.026784],
 'step_update_norms': {'backbone.positional_embedding': 5.6367e-05,
                       'backbone.text_projection': 0.000152483,
                       'backbone.visual.class_embedding': 7.91991e-06,
                       'backbone.visual.positional_embedding': 5.04831e-05,
                       'backbone.visual.proj': 0.000140285,
                       'backbone.visual.ln_pre.weight': 7.13814e-06,
                       'backbone.visual.ln_pre.bias': 1.47038e-05,
                       'backbone.visual.transformer.resblocks.0.attn.in_proj_weight': 7.6645e-05,
                       'backbone.visual.transformer.resblocks.0.attn.in_proj_bias': 1.83164e-05,
                       'backbone.visual.transformer.resblocks.0.attn.out_proj.weight': 4.61848e-05,
                       'backbone.visual.transformer.resblocks.0.attn.out_proj.bias': 1.4252e-05,
                       'backbone.visual.transformer.resblocks.0.ln_1.weight': 6.32961e-06,
                       'backbone.visual.transformer.resblocks.0.ln_1.bias': 1.40733e-05,
                       'backbone.visual.transformer.resblocks.0.mlp.c_fc.weight': 9.44252e-05,
                       'backbone.visual.transformer.resblocks.0.mlp.c_fc.bias': 2.36094e-05,
                       'backbone.visual.transformer.resblocks.0.mlp.c_proj.weight': 0.000103803,
                       'backbone.visual.transformer.resblocks.0.mlp.c_proj.bias': 1.39422e-05,
                       'backbone.visual.transformer.resblocks.0.ln_2.weight': 6.70837e-06,
                       'backbone.visual.transformer.resblocks.0.ln_2.bias': 1.33595e-05,
                       'backbone.visual.ln_post.weight': 7.04243e-06,
                       'backbone.visual.ln_post.bias': 1.39241e-05,
                       'backbone.transformer.resblocks.0.attn.in_proj_weight': 0.000103896,
                       'backbone.transformer.resblocks.0.attn.in_proj_bias': 2.16056e-05,
                       'backbone.transformer.resblocks.0.attn.out_proj.weight': 6.02421e-05,
                       'backbone.transformer.resblocks.0.attn.out_proj.bias': 1.55808e-05,
                       'backbone.transformer.resblocks.0.ln_1.weight': 7.6007e-06,
                       'backbone.transformer.resblocks.0.ln_1.bias': 1.56895e-05,
                       'backbone.transformer.resblocks.0.mlp.c_fc.weight': 0.000111244,
                       'backbone.transformer.resblocks.0.mlp.c_fc.bias': 2.85105e-05,
                       'backbone.transformer.resblocks.0.mlp.c_proj.weight': 0.000115428,
                       'backbone.transformer.resblocks.0.mlp.c_proj.bias': 1.52077e-05,
                       'backbone.transformer.resblocks.0.ln_2.weight': 7.51846e-06,
                       'backbone.transformer.resblocks.0.ln_2.bias': 1.4989e-05,
                       'backbone.token_embedding.weight': 8.85267e-05,
                       'backbone.ln_final.weight': 7.5477e-06,
                       'backbone.ln_final.bias': 1.52174e-05,
                       'embeddings.fused.image_global.weight': 0.0559294,
                       'embeddings.fused.image_global.bias': 0.00276197,
                       'embeddings.fused.image_local.fc1.weight': 0.0490614,
                       'embeddings.fused.image_local.fc1.bias': 1.50552e-07,
                       'embeddings.fused.image_local.fc2.weight': 0.0775907,
                       'embeddings.fused.image_local.fc2.bias': 0.00276197,
                       'embeddings.fused.image_local.bn.weight': 0.00212332,
                       'embeddings.fused.image_local.bn.bias': 0.00209056,
                       'embeddings.fused.text_global.weight': 0.0650515,
                       'embeddings.fused.text_global.bias': 0.00245943,
                       'embeddings.fused.text_local.fc1.weight': 0.0520469,
                       'embeddings.fused.text_local.fc1.bias': 1.10753e-07,
                       'embeddings.fused.text_local.fc2.weight': 0.0786705,
                       'embeddings.fused.text_local.fc2.bias': 0.00245943,
                       'embeddings.fused.text_local.bn.weight': 0.00223627,
                       'embeddings.fused.text_local.bn.bias': 0.00214387},
 'step_update_norm_model2': 0.149158,
 'eval_rows': {'model1/GE': [66.6667, 100.0, 100.0, 65.9458, 54.0675],
               'model1/FS': [58.3333, 100.0, 100.0, 60.2119, 50.748],
               'model2/GE': [50.0, 100.0, 100.0, 62.6726, 53.9331],
               'model2/FS': [41.6667, 91.6667, 100.0, 59.3155, 55.5159],
               'GE': [66.6667, 100.0, 100.0, 73.0922, 64.9976],
               'FS': [66.6667, 100.0, 100.0, 67.1825, 53.3929]},
 'eval_top1': {'model1': 66.66667175292969, 'model2': 50.0, 'ensemble': 66.66667175292969},
 'eval_sims': {'GE': [2.53113,
                      [0.067045, -0.016075, -0.058698, 0.008748, -0.039392, 0.063239, -0.01896, -0.015757, 0.008482,
                       0.063566, -0.054518, -0.040161]],
               'FS': [0.66422,
                      [-0.030328, 0.044088, 0.008737, -0.0087, 0.002552, 0.028536, -0.014707, -0.028529, 0.022345,
                       -0.080405, 0.005338, -0.034112]]},
 'lr_schedule': {1: [1e-06, 0.0001],
                 2: [2.8e-06, 0.00028],
                 5: [8.2e-06, 0.00082],
                 6: [1e-05, 0.001],
                 7: [9.991846e-06, 0.0009991846],
                 21: [8.274304e-06, 0.0008274304],
                 40: [3.185961e-06, 0.0003185961],
                 41: [2.922925e-06, 0.0002922925],
                 60: [8.15448e-09, 8.15448e-07]},
 'epochs': {'CUHK-PEDES 0.0': [60, 11],
            'CUHK-PEDES 0.5': [45, 11],
            'ICFG-PEDES 0.0': [60, 11],
            'ICFG-PEDES 0.5': [45, 11],
            'RSTPReid 0.0': [40, 6],
            'RSTPReid 0.5': [40, 6]},
 'adam': {'betas': [0.9, 0.999], 'eps': 0.001, 'weight_decay': 0},
 'text_masking': {'kept': 0.79831, 'masked': 0.10111, 'replaced': 0.04028, 'deleted': 0.06029}}


def release(dataset: str = "rstp", **options):
    """configs/3rtpr_release/DATASET.yaml resolved, with `options` on top."""
    return resolve(options, load_yaml(f"{ROOT}/configs/3rtpr_release/{dataset}.yaml"))


def engine(dataset: str = "rstp", arch=TINY_ARCH, **options):
    """The release recipe's engine (no data) on a random CLIP of `arch`."""
    cfg = release(dataset, pretrain_choice="random", clip_arch=arch, device="cpu",
                  **({"fused_dim": 16, "img_size": [32, 16], "text_length": 16} if arch is TINY_ARCH else {}),
                  **options)
    return build_engine(cfg, num_classes=5)


def stats(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double()
    cols = [0, 1, x.shape[1] // 4 - 1, x.shape[1] // 2, x.shape[1] - 1]
    return np.array([[float(r.sum()), float(r.norm()), *[float(r[c]) for c in cols]] for r in x])


# ---------------------------------------------------------------- the fused head and SDM
@pytest.mark.parametrize("image_tokens", ["all", "selected"])
def test_fused_features_are_the_rebuilds(image_tokens):
    """`all` is the rebuild's code (its default here); `selected` is what its comment says (the rebuild's own
    forward with its overwriting line fixed, run there)."""
    cfg = release()
    head = build_embedding("fused", cfg if image_tokens == cfg.fused_image_tokens else
                           release(fused_image_tokens=image_tokens), 512)
    inputs.fill_parameters(head, "embeddings.fused.")
    head.train()
    image = head.encode_image(inputs.seeded((4, 193, 512), 1), inputs.attention(4, 193, 2))
    assert np.allclose(stats(image), REFERENCE[f"fused_image_{image_tokens}"], rtol=1e-5, atol=2e-4)
    text = head.encode_text(inputs.seeded((8, 77, 512), 3), inputs.attention(8, 77, 4, causal=True),
                            inputs.captions())
    assert np.allclose(stats(text), REFERENCE["fused_text"], rtol=1e-5, atol=2e-4)


def test_the_default_image_tokens_are_the_rebuilds_code():
    assert release().fused_image_tokens == "all"
    assert resolve({}, load_yaml(f"{ROOT}/configs/3rtpr/rstp.yaml")).fused_image_tokens == "selected"


def test_sdm_per_sample_and_the_batch_loss_are_the_rebuilds():
    cfg = release()
    name = parse_loss_names(cfg.loss_names)[0]
    sdm = build_loss(name, cfg, dim=2048, num_classes=5)
    per_sample = sdm(inputs.seeded((8, 2048), 21), inputs.seeded((8, 2048), 22), torch.tensor(inputs.PIDS))
    assert np.allclose(per_sample.numpy(), REFERENCE["sdm_per_sample"], rtol=1e-6, atol=1e-5)
    # the rebuild: sum(w * loss * label) / (sum(label) + 1e-8) with every label 1: the weighted mean
    weights = torch.rand(8, generator=torch.Generator().manual_seed(23))
    model = SimpleNamespace(losses={"fused": {name: sdm}}, primary_loss=name)
    loss, _ = weighted_loss(model, {("fused", name): per_sample}, weights, cfg.loss_weights)
    assert float(loss) == pytest.approx(REFERENCE["sdm_batch_loss"], rel=1e-6)


# ---------------------------------------------------------------- the division and ALR
def test_alr_weights_on_a_grid_with_negative_mu_are_the_rebuilds():
    cfg = release()
    form = WEIGHTINGS[cfg.weighting].form
    grid = np.array([alr_weights(inputs.ALR_S, mu, cfg.alr_k, form).numpy() for mu in inputs.ALR_MU])
    assert np.allclose(grid, REFERENCE["alr_grid"], atol=1e-6)
    # the paper reading differs below a negative mu: ~0 there, the rebuild 0.5
    paper = alr_weights(inputs.ALR_S, -0.3, cfg.alr_k, "paper")
    assert float(paper[0]) < 1e-6 and REFERENCE["alr_grid"][0][0] == 0.5


def test_the_split_fallback_is_the_rebuilds():
    """All clean posteriors above 0.5: the N // 100 + 1 lowest become noisy (its _split_prob)."""
    noisy = np.flatnonzero(~votes_from_probability(inputs.all_clean_probabilities()))
    assert noisy.tolist() == REFERENCE["split_prob_noisy"]


DIVISION_CASES = {        # case: (config, the twins read, options)
    "rstp_twin_a": ("rstp", "a", {}), "cuhk_twin_b": ("cuhk", "b", {}), "cuhk_both": ("cuhk", "ab", {}),
    "cuhk_both_mean": ("cuhk", "ab", {"alr_mu": "mean"}), "cuhk_both_25": ("cuhk", "ab", {"alr_mu": "p25"}),
    "cuhk_both_30": ("cuhk", "ab", {"alr_mu": "p30"}), "cuhk_both_75": ("cuhk", "ab", {"alr_mu": "p75"}),
    "rstp_both_disjoint": ("rstp", "ab", {}), "rstp_overlap": ("rstp", "a", {}),
    # the rebuild picks the mixture's settings by dataset alone: at 50% noise too (RDE would tighten them)
    "cuhk_overlap": ("cuhk", "a", {"noisy_rate": 0.5}), "icfg_overlap": ("icfg", "a", {"noisy_rate": 0.5}),
}


@pytest.mark.parametrize("case", DIVISION_CASES)
def test_the_division_is_the_rebuilds(case):
    """The twin drawn at random (a or b, forced in the rebuild) or both (its --ccd-a); the mixtures' votes, the
    super-clean set (the pairs with the most clean votes: all of them in the disjoint case, where every pair has
    one), mu by each statistic, and the weights.  The rebuild's coin changes nothing: every label ends 1."""
    dataset, read, options = DIVISION_CASES[case]
    loss_a, loss_b, sim_a, sim_b, noisy = inputs.division_inputs()
    if case.endswith("disjoint"):
        loss_b = (loss_a.max() + loss_a.min() - loss_a).astype(np.float32)     # twin b votes the opposite
    if case.endswith("overlap"):       # the mixture's settings decide: RSTPReid's tight ones, the others' loose
        loss_a = inputs.overlapping_losses()
    twins = {"a": ("model1/fused", loss_a, sim_a), "b": ("model2/fused", loss_b, sim_b)}
    signals = {twins[t][0]: twins[t][1] for t in read}
    positive_sim = sum(twins[t][2] for t in read) / len(read)
    e = engine(dataset, **options)
    e.data = SimpleNamespace(is_clean=~noisy, records=range(len(noisy)))
    division = e.fit_division(signals, positive_sim, epoch=1)
    weights = e.weigh(division).numpy()
    ref = REFERENCE["division"][case]
    votes = division.votes     # one twin read: the rebuild fits its one loss vector twice, alike here
    assert [int(v.sum()) for v in votes] == ref["clean_votes"][:len(read)]
    assert [int(np.flatnonzero(v).sum()) for v in votes] == ref["clean_index_sum"][:len(read)]
    assert int(e.weighting.reference(votes).sum()) == ref["super_clean"]
    assert float(e.weighting.mu(division)) == pytest.approx(ref["mu"], abs=1e-6)
    assert float(weights.sum()) == pytest.approx(ref["weight_sum"], abs=1e-3)
    assert int((weights < 1).sum()) == ref["below_one"]
    assert np.allclose(weights[:12], ref["weights_head"], atol=1e-5)
    assert ref["label_hat_sum"] == len(weights) and (weights > 0).all()      # nothing dropped, coin or not
    assert e.division_notes(division)[1]["mu"] == float(e.weighting.mu(division))   # in the epoch's metrics row


def test_the_twin_read_is_drawn_each_epoch_or_both():
    e = engine()
    drawn = [e.drawn_twins(epoch) for epoch in range(1, 41)]
    assert all(len(d) == 1 for d in drawn) and 10 <= sum(d == [0] for d in drawn) <= 30
    again = engine()
    assert drawn == [again.drawn_twins(epoch) for epoch in range(1, 41)]            # seeded: resumable
    assert engine(division_twin="both").drawn_twins(3) == [0, 1]


# ---------------------------------------------------------------- optimisation
def test_the_optimiser_sets_each_parameter_as_the_rebuild():
    """Per parameter (lr, weight decay): CLIP at lr 1e-5 with weight decay 4e-5, names holding "bias" at 2e-5 without;
    every parameter of the fused heads at lrx 1e-3 without weight decay; the patch projection not trained.  The
    rebuild also hands its optimiser a `mask_token` and a second BatchNorm per MLP that nothing reads."""
    model = engine(arch=ARCH_512).models[0]
    settings = parameter_settings(model, model_cfg := release(pretrain_choice="random", clip_arch=ARCH_512))
    assert set(settings) == set(REFERENCE["optimizer"])
    assert {n: list(v) for n, v in settings.items()} == pytest.approx(REFERENCE["optimizer"], rel=1e-12)
    assert not model.backbone.visual.conv1.weight.requires_grad and model_cfg.freeze_patch_projection
    adam = engine(arch=ARCH_512).optimizers[0].defaults       # the first step does not read betas: pinned here
    assert [list(adam["betas"]), adam["eps"]] == [REFERENCE["adam"]["betas"], REFERENCE["adam"]["eps"]]


def test_one_training_step_updates_the_weights_as_the_rebuild():
    """Both twins, each on its own view, the ALR weights of the batch, the warm-up's first learning rate: the
    loss of each twin and every parameter's update after one Adam step."""
    e = engine(arch=ARCH_512)
    for k, model in enumerate(e.models):
        inputs.fill_parameters(model, "model2/" if k else "")
        model.train()
    images, caption_ids, pids, weights = inputs.step_batch()
    batch = {"images": torch.stack(images, 1), "caption_ids": torch.stack(caption_ids, 1), "pid": pids}
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in e.models]
    loss, parts = e.train_step(batch, weights, epoch=1)
    assert [float(v) for v in parts.values()] == pytest.approx(REFERENCE["step_loss"], rel=1e-5)
    e.optimizer_step(loss)
    update = [{n: (p.detach() - before[k][n]).double().norm().item() for n, p in m.named_parameters()
               if p.requires_grad} for k, m in enumerate(e.models)]
    assert set(update[0]) == set(REFERENCE["step_update_norms"])
    for name, expected in REFERENCE["step_update_norms"].items():
        if expected < 1e-6:       # a bias ahead of BatchNorm: its gradient is 0 up to rounding, on both sides
            assert update[0][name] < 1e-6, name
        else:
            assert update[0][name] == pytest.approx(expected, rel=1e-4), name
    assert sum(v ** 2 for v in update[1].values()) ** 0.5 == pytest.approx(REFERENCE["step_update_norm_model2"],
                                                                         rel=1e-4)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_the_schedule_the_stop_and_the_evaluated_epochs_are_the_rebuilds():
    """A cosine over num_epoch 60 with 5 warm-up epochs, cut at 40 on RSTPReid and at 45 under noise; evaluated at
    epoch 1, then after 10 (RSTPReid 5)."""
    for dataset, name in (("cuhk", "CUHK-PEDES"), ("icfg", "ICFG-PEDES"), ("rstp", "RSTPReid")):
        for noisy_rate in (0.0, 0.5):
            e = engine(dataset, noisy_rate=noisy_rate)
            trained, first = REFERENCE["epochs"][f"{name} {noisy_rate}"]
            assert e.last_epoch == final_epoch(e.cfg) == trained
            assert [x for x in range(1, trained + 1) if e.evaluates(x)] == [1, *range(first, trained + 1)]
    e = engine()
    optimizer, scheduler = e.optimizers[0], e.schedulers[0]
    head_lr = next(g for g in optimizer.param_groups if any(n.startswith("embeddings.") for n in g["param_names"]))
    for epoch in range(1, 61):
        if epoch in REFERENCE["lr_schedule"]:
            expected = REFERENCE["lr_schedule"][epoch]
            assert [e.backbone_lr(), head_lr["lr"]] == pytest.approx(expected, rel=1e-6), epoch
        scheduler.step()


def test_caption_masking_edits_tokens_as_often_as_the_rebuilds():
    """--erpt 0.2: a token is picked 20% of the time, then masked 50%, replaced 20%, deleted 30% (RDE: 60 / 20 /
    20); the rebuild's own frequencies over 240,000 tokens, ours over 60,000."""
    rates, draw = release().txt_aug_rates, random.Random(0)
    counts = dict.fromkeys(REFERENCE["text_masking"], 0)
    caption = [49406, *range(1000, 1060), 49407] + [0] * 15
    trials = 1000
    for _ in range(trials):
        out = augment_token_list(caption, draw, rates)
        body = np.array(out[1:out.index(49407)])
        counts["masked"] += int((body == 49405).sum())
        kept = int(((body >= 1000) & (body < 1060)).sum())
        counts["kept"] += kept
        counts["replaced"] += len(body) - kept - int((body == 49405).sum())
        counts["deleted"] += 60 - len(body)
    for key, expected in REFERENCE["text_masking"].items():
        assert counts[key] / (60 * trials) == pytest.approx(expected, abs=0.006), key


# ---------------------------------------------------------------- evaluation
def test_the_evaluation_rows_and_the_checkpoints_row_are_the_rebuilds():
    """Rows GE (BGE) and FS (fused) of each twin and averaged over the twins (the rebuild sums them: the same
    ranking); the run is judged by the better of the two averaged rows, as the rebuild keeps its checkpoint."""
    cfg = release()
    per_model = []
    for k in range(2):
        feats = inputs.eval_features(k)
        per_model.append(similarities({e: g for e, (q, g) in feats.items()}, {e: q for e, (q, g) in feats.items()}))
    rows = ROWS[cfg.eval_rows](per_model)
    names = {"model1/BGE": "model1/GE", "model1/FUSED": "model1/FS", "model2/BGE": "model2/GE",
             "model2/FUSED": "model2/FS", "BGE": "GE", "FUSED": "FS"}
    assert list(rows) == list(names)
    results = {n: rank_metrics(s, torch.tensor(inputs.Q_PIDS), torch.tensor(inputs.G_PIDS)) for n, s in rows.items()}
    for name, theirs in names.items():
        ours = [results[name][m] for m in ("R1", "R5", "R10", "mAP", "mINP")]
        assert ours == pytest.approx(REFERENCE["eval_rows"][theirs], abs=1e-3), name
    for name, theirs in (("BGE", "GE"), ("FUSED", "FS")):
        total, first_row = REFERENCE["eval_sims"][theirs]
        assert float(2 * rows[name].sum()) == pytest.approx(total, abs=1e-4)
        assert (2 * rows[name][0]).tolist() == pytest.approx(first_row, abs=1e-5)
    headline = Evaluator(None, None, None, "cpu", rows=cfg.eval_rows).headline(results)
    assert headline in ("BGE", "FUSED") and results[headline]["R1"] == pytest.approx(REFERENCE["eval_top1"]["ensemble"])


# ---------------------------------------------------------------- the recipe end to end
def test_the_release_recipe_trains_twins_that_log_each_division(data_root, tmp_path):
    """configs/3rtpr_release/rstp.yaml through main.py on a synthetic set (a tiny random CLIP): the twins train,
    every pair at weight 1 before the division starts (division_warmup_epochs 1 here), then each epoch's division
    names the twin it read, its votes against the truth and mu; the evaluation has the rows GE and FS of each twin
    and averaged, and the run is judged by the better of the averaged two."""
    import main as train_main
    from tests.helpers import read_metrics, tiny_args

    run_dir = tmp_path / "run"
    train_main.main(tiny_args(data_root, run_dir, "--config", f"{ROOT}/configs/3rtpr_release/rstp.yaml",
                              "--fused_dim", "16", "--noisy_rate", "0.5", "--division_warmup_epochs", "1"))
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2] and not any(k.startswith("division/") for k in rows[0])
    assert all(r["eval_row"] in ("BGE", "FUSED") for r in rows)
    for r in rows[1:]:
        read = [k for k in r if k.endswith("/fused/clean_votes")]
        assert len(read) == 1 and f"{read[0][:-len('clean_votes')]}vote_noise_precision" in r      # one twin
        assert "division/mu" in r and r["division/mean_weight_noisy"] > 0                       # none dropped
        assert "loss/model2/fused_SDM" in r
    log = (run_dir / "train_log.txt").read_text()
    assert "(on model" in log and "ALR mu" in log and "model2/FUSED" in log and "starts after epoch 1" in log
