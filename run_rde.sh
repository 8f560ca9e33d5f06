#!/usr/bin/env bash
# RDE's published recipe (cf. RDE's run_rde.sh): edit the variables, then `sh run_rde.sh`.
root_dir=data                 # folder holding CUHK-PEDES/, ICFG-PEDES/, RSTPReid/, UFine6926/
DATASET_NAME=CUHK-PEDES       # CUHK-PEDES ICFG-PEDES RSTPReid UFine6926
noisy_rate=0.0                # 0.0 0.2 0.5 0.8
tau=0.015
margin=0.1
select_ratio=0.3
loss=TAL                      # TAL TRL InfoNCE SDM (a '+' part with one of . = - is a label, as the run tag below)
pretrain_choice=ViT-B/16      # ~/.cache/clip/ViT-B-16.pt, or a path to a checkpoint
noisy_file=${root_dir}/noiseindex/${DATASET_NAME}_${noisy_rate}.npy
anno_path=                    # e.g. RDA annotations; empty: the dataset's default file
text_length=77
if [ "$DATASET_NAME" = UFine6926 ]; then text_length=168; fi

CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python main.py \
    --name RDE \
    --dataset_name "$DATASET_NAME" \
    --root_dir "$root_dir" \
    ${anno_path:+--anno_path "$anno_path"} \
    --noisy_rate $noisy_rate \
    --noisy_file "$noisy_file" \
    --pretrain_choice "$pretrain_choice" \
    --img_aug --txt_aug \
    --batch_size 64 \
    --select_ratio $select_ratio \
    --tau $tau \
    --margin $margin \
    --text_length $text_length \
    --loss_names "${loss}+sr${select_ratio}_tau${tau}_margin${margin}_n${noisy_rate}" \
    --num_epoch 60 \
    --output_dir logs \
    "$@"
