"""Torch datasets and DataLoader builders for training, the per-epoch division pass and evaluation.

    tokens.py           captions to token ids, each caption of a split once (tokenize_all), and how many
                        the text length cuts (captions_cut)
    seeds.py            the seed of one sample's augmentation draws, from (seed, epoch, stream, sample)
    torch_datasets.py   TrainPairs (+ EpochDraws, its keys), GalleryImages, ImageFolderList, CaptionList
    build.py            the loaders over them: build_train_loader, build_eval_loaders (PreparingLoader)
"""
from utils.images import ImageDecodeError, read_image      # the loaders' error and reader, named here too

from .build import PreparingLoader, build_eval_loaders, build_train_loader
from .seeds import sample_seed, sample_seeds
from .tokens import captions_cut, tokenize_all
from .torch_datasets import CaptionList, EpochDraws, GalleryImages, ImageFolderList, TrainPairs

__all__ = ["CaptionList", "EpochDraws", "GalleryImages", "ImageDecodeError", "ImageFolderList", "PreparingLoader",
           "TrainPairs", "build_eval_loaders", "build_train_loader", "captions_cut", "read_image", "sample_seed",
           "sample_seeds", "tokenize_all"]
