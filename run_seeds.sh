#!/usr/bin/env bash
# One recipe over several seeds and noise rates, each run in its own folder (RDE's run_rde.sh loops over noise
# rates; the seeds give the report something to average), then the table beside the published numbers.
# Set the variables here or in the environment; arguments are passed on to main.py:
#   CONFIG=configs/rde/icfg.yaml SEEDS="1 2 3" NOISE_RATES="0.0 0.5" sh run_seeds.sh --root_dir /data
# A run folder that already has last.pth is continued with --resume (a finished one returns at once), so the
# script can be started again after a crash.  Every seed of a noise rate reads the same permutation file
# (ROOT_DIR/noiseindex/DATASET_RATE.npy, made by the first run if missing), as RDE's fixed noise files.
CONFIG=${CONFIG:-configs/rde/cuhk.yaml}
SEEDS=${SEEDS:-"1 2 3"}
NOISE_RATES=${NOISE_RATES:-"0.0 0.2 0.5 0.8"}
OUTPUT=${OUTPUT:-logs/seeds}
PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-}          # non-empty: print the commands only

# configs/rde/cuhk.yaml -> rde_cuhk: runs of other recipes can share OUTPUT
tag=$(basename "$(dirname "$CONFIG")")_$(basename "$CONFIG" .yaml)
[ "$(basename "$(dirname "$CONFIG")")" = configs ] && tag=$(basename "$CONFIG" .yaml)

run() {
    if [ -n "$DRY_RUN" ]; then echo "$@"; else "$@" || exit 1; fi
}

for noisy_rate in $NOISE_RATES; do
    for seed in $SEEDS; do
        run_dir=$OUTPUT/${tag}_n${noisy_rate}_s${seed}
        if [ -f "$run_dir/last.pth" ]; then
            run $PYTHON main.py --resume "$run_dir"
        else
            run $PYTHON main.py --config "$CONFIG" --noisy_rate "$noisy_rate" --seed "$seed" --run_dir "$run_dir" "$@"
        fi
    done
done
run $PYTHON -m reports.tables "$OUTPUT" --paper
