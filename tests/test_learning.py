"""Does the method do what it is for?  Real trainings through main.py under simulated noisy correspondence, on a
synthetic set, from the tiny CLIP pretrained on other synthetic people (configs/synth.yaml), as every real recipe
starts from OpenAI's CLIP: with the division on, the model must find the permuted pairs and end better than with
it off.

Every floor comes from measured runs: bench/division_table.py at exactly these settings (this set, 5 epochs, the
same options; seeds 1, 2 and 3, 2026-12-06, torch 2.14.1, one thread), written next to each assertion as the
three seeds' values, with a margin below the worst seed for seed and kernel variance.  The tests train seed 1.
R1 is the mean of the last two epochs: over 200 queries one epoch's R1 moves by several points.  Each floor was
checked on other CPU kernels too: the tests themselves (seed 1, two threads, 2026-12-06) with this machine's
AVX-512 kernels, with ATen's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) and with every library's AVX2 kernels
(+ ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2), each with the synthetic CLIP built under those kernels, as
another CI machine builds its own: "kernels a / b / c" beside each assertion.  Regenerate the table with

    python bench/division_table.py --noise 0.0 0.5 0.8 --seeds 1 2 3 --variants off ccd-clean recommended soft_clean

Run alone with ``python -m pytest -m learning`` (.ci/run runs them as their own step).
"""
import pytest

import main as train_main
from bench.division_table import DATA, LEARNING_EPOCHS, VARIANTS, last_two
from tests.helpers import ROOT, read_metrics

pytestmark = [pytest.mark.learning, pytest.mark.slow]

DATA_SIZES = DATA          # conftest's data_root: the table's synthetic set (seed 0: no pretraining identity in it)
SEED = 1


@pytest.fixture(scope="module")
def train(data_root, tmp_path_factory):
    """train(noise, variant) -> metrics rows of that run; each run trains once per module."""
    runs = {}

    def run(noise: float, variant: str) -> list[dict]:
        if (noise, variant) not in runs:
            run_dir = tmp_path_factory.mktemp(f"noise{noise}_{variant}")
            train_main.main(["--config", f"{ROOT}/configs/synth.yaml", "--dataset_name", "CUHK-PEDES",
                             "--root_dir", data_root, "--run_dir", str(run_dir), "--num_epoch", str(LEARNING_EPOCHS),
                             "--noisy_rate", str(noise), "--seed", str(SEED), *VARIANTS[variant]])
            runs[noise, variant] = read_metrics(run_dir)
        return runs[noise, variant]
    return run


def r1(rows):
    return last_two(rows, "R1")


def last(rows, key):
    return rows[-1][key]


def test_at_50_percent_noise_the_division_beats_no_division(train):
    off, on = train(0.5, "off"), train(0.5, "ccd-clean")
    # R1 off 8.50 / 6.25 / 7.75, on 11.75 / 9.00 / 11.75: on - off 3.25 / 2.75 / 4.00 (kernels 4.00 / 3.50 / 3.00)
    assert r1(on) >= r1(off) + 1.5
    # mAP off 15.56 / 15.38 / 16.23, on 20.13 / 18.39 / 19.89: on - off 4.57 / 3.01 / 3.66 (kernels 4.60 / 4.22 / 5.19)
    assert last(on, "mAP") >= last(off, "mAP") + 1.5
    # of the pairs it drops at epoch 5, permuted 76.6 / 81.8 / 75.2% (chance 50; kernels 76.9 / 77.1 / 74.6); of the
    # permuted, dropped 37.1 / 39.1 / 36.5% (kernels 34.5 / 36.1 / 33.4): CCD drops where every signal agrees, and
    # by a coin where they disagree
    assert last(on, "division/noise_precision") >= 65
    assert last(on, "division/noise_recall") >= 28


def test_twins_reach_the_single_model(train):
    single = r1(train(0.5, "ccd-clean"))
    # twins with CCD (recommended: twins, CCD, clean read) R1 13.00 / 10.25 / 11.00, minus the single model's
    # +1.25 / +1.25 / -0.75 (kernels +0.75 / +0.50 / +0.75)
    assert r1(train(0.5, "recommended")) >= single - 2.5
    # 3RTPR's twins (ALR) are not trained here: ALR as published weighs permuted pairs 0.99-1.00 and trains about
    # as no division does (R1 minus no division's -1.00 / -0.25 / -1.25 at seeds 1-3; README, "ALR's settings,
    # measured").  tests/test_alr_settings.py holds what every ALR setting weighs on division reads recorded from
    # real runs, in seconds; this training took a minute of the learning step's six.


def test_soft_clean_learns_under_noise(train):
    off, soft = train(0.5, "off"), train(0.5, "soft_clean")
    # R1 11.50 / 10.25 / 9.50, minus no division's +3.00 / +4.00 / +1.75 (kernels +2.75 / +3.50 / +2.50); mAP
    # +4.52 / +3.71 / +3.11 (kernels +4.38 / +5.37 / +4.97)
    assert r1(soft) >= r1(off) + 0.5
    assert last(soft, "mAP") >= last(off, "mAP") + 1.5


def test_without_noise_the_recipe_reaches_its_floor(train):
    clean = train(0.0, "ccd-clean")
    # R1 10.50 / 10.50 / 10.00 (epoch 1: 9.5 / 7.5 / 9.0), kernels 11.00 / 8.25 / 10.25: the kernels move it
    # more than the seeds do (200 queries, the mean of the last two epochs), so the floor is 6, over two points
    # below the lowest (chance: 2); mAP 20.40 / 19.51 / 20.47 (kernels 21.06 / 20.43 / 20.69)
    assert r1(clean) >= 6.0
    assert last(clean, "mAP") >= 18.0


def test_at_80_percent_noise_the_division_finds_noise_but_does_not_reliably_help(train):
    """At 80% the division is precise but keeps most permuted pairs; after five epochs it ends below no division at
    two seeds of three and above at one: this pins by how much, so that a change making it worse is seen (and one
    making it better updates the numbers)."""
    off, on = train(0.8, "off"), train(0.8, "ccd-clean")
    # dropped pairs permuted 84.4 / 90.5 / 84.7% (81.9 at seed 1 from a CLIP pretrained with two threads instead
    # of one; kernels 81.9 / 87.5 / 86.8): above chance, 80, but not by much
    assert last(on, "division/noise_precision") >= 80
    # R1 off 8.75 / 7.00 / 4.00, on 5.75 / 3.00 / 8.25: on - off -3.00 / -4.00 / +4.25 (kernels -1.00 / -2.00 / -2.00)
    assert r1(on) >= r1(off) - 6.0
    # mAP on - off +0.65 / -0.66 / +3.36 (kernels +1.77 / +1.47 / +1.10)
    assert last(on, "mAP") >= last(off, "mAP") - 2.5
