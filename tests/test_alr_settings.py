"""ALR's settings, measured (issue 27): every mu statistic and k of bench/division_table.py's ALR_SETTINGS on the
last division read of real 3RTPR runs, recorded in tests/golden/alr_reads.json (each read: its votes, positive-pair
cosines and the truth, from both recipes' published setting trained at 50% noise, 5 epochs, on the learning tests'
synthetic set), weighed by the rule each run trains with (solver/weighting/alr.py: alr for configs/3rtpr, alr_release
for configs/3rtpr_release) through bench.division_table.weigh_read, as the bench's --replay_alr does.

The reads are recorded so that this costs no training: a read taken again from the same checkpoint moves its cosines
by 9e-8 and its mean weights by 1.2e-7 between AVX-512 and ATEN_CPU_CAPABILITY=avx2 (votes identical), and the
file's 6-digit cosines give the full read's mean weights to 4.5e-7 on both kernels; TOL is 20 times that.  A change
that moves these numbers regenerates the file in the same commit (it reads the run folders of the table):

    python bench/division_table.py --noise 0.5 --seeds 1 2 3 --variants 3rtpr-min release-min --replay_alr
    python tests/test_alr_settings.py --update
"""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:           # `python tests/test_alr_settings.py --update` puts tests/ first on the path
    sys.path.insert(0, ROOT)

from bench.division_table import ALR_SETTINGS, division_read, weigh_read  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "golden", "alr_reads.json")
RUNS = "logs/division_table/noise0.5_{variant}_seed{seed}"
RECORDED = [(variant, seed) for variant in ("3rtpr-min", "release-min") for seed in (1, 2, 3)]
TOL = 1e-5


def load_reads() -> dict[str, dict]:
    """{name: read} with votes and truth as lists of 0/1 again (the file keeps them as strings of digits)."""
    with open(GOLDEN) as f:
        reads = json.load(f)
    for read in reads.values():
        read["votes"] = [[int(c) for c in row] for row in read["votes"]]
        read["clean"] = [int(c) for c in read["clean"]]
    return reads


READS = {} if __name__ == "__main__" else load_reads()


@pytest.fixture(scope="module", params=sorted(READS))
def weighed(request):
    read = READS[request.param]
    return request.param, read, weigh_read(read)


def test_every_setting_weighs_as_measured(weighed):
    name, read, weights = weighed
    assert set(read["measured"]) == set(ALR_SETTINGS)
    for setting, measured in read["measured"].items():
        for key in ("mu", "weight_clean", "weight_noisy"):
            assert weights[setting][key] == pytest.approx(measured[key], abs=TOL), (name, setting, key)


def test_published_alr_weighs_permuted_pairs_as_clean_ones(weighed):
    # mu min, k 5 (both recipes): 3rtpr 0.9999 / 0.9992 (seed 1), release 1.00 / 1.00: mu is the lowest cosine of a
    # reference set that holds permuted pairs, so nearly every pair has s >= mu and weighs 1
    name, _, weights = weighed
    assert weights["min"]["weight_noisy"] >= 0.99, name
    assert weights["min"]["weight_clean"] - weights["min"]["weight_noisy"] <= 0.01, name


def test_no_setting_weighs_permuted_pairs_clearly_below_clean_ones(weighed):
    # below mu the weight is sigmoid(k s / mu) and s / mu of a permuted pair is still ~0.9 (the cosines of the
    # synthetic-pretrained CLIP sit in a narrow band), so no mu statistic or k of the table separates: the widest
    # gap, mean or p75 with k 2, is 0.06 (3rtpr, permuted 0.90) against CCD's 0.27 (0.89 / 0.62)
    name, _, weights = weighed
    for setting, w in weights.items():
        assert w["weight_noisy"] <= w["weight_clean"] + 1e-6, (name, setting)
        assert w["weight_clean"] - w["weight_noisy"] < 0.1, (name, setting)
        assert w["weight_noisy"] >= 0.8, (name, setting)


def test_a_smaller_k_widens_the_gap(weighed):
    # mean with k 8 / 5 / 2: 3rtpr 0.0002 / 0.004 / 0.06 (seed 1); a higher mu alone need not (3rtpr seed 2: min
    # 0.004, mean 0.002)
    name, _, weights = weighed

    def gap(setting):
        return weights[setting]["weight_clean"] - weights[setting]["weight_noisy"]
    assert gap("mean-k2") > gap("mean") > gap("mean-k8"), name
    assert gap("p75-k2") > gap("p75"), name


def update() -> None:
    reads = {}
    for variant, seed in RECORDED:
        run_dir = os.path.join(ROOT, RUNS.format(variant=variant, seed=seed))
        if not os.path.isdir(run_dir):
            print(f"{run_dir}: no such run, left out", file=sys.stderr)
            continue
        read = division_read(run_dir)
        reads[f"{variant}_seed{seed}"] = {
            **{k: read[k] for k in ("rule", "seed", "alr_k", "alr_mu", "epoch")},
            "measured": weigh_read(read),              # on the full-precision read
            "positive_sim": [round(s, 6) for s in read["positive_sim"]],
            "votes": ["".join(map(str, row)) for row in read["votes"]],
            "clean": "".join(map(str, read["clean"]))}
    with open(GOLDEN, "w") as f:
        json.dump(reads, f, indent=1)
    print(f"wrote {GOLDEN}: {', '.join(reads)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_alr_settings.py --update")
    update()
