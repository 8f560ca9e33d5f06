"""A small synthetic person re-id dataset, written in the real on-disk format of a chosen dataset.

Why: tests and the CPU demo need data that (a) goes through exactly the same
loading code as the real datasets and (b) is learnable by a tiny CLIP in a few
minutes, so that a working pipeline shows R1 far above chance. Each identity is
a distinct combination of visual attributes; its images are a drawn figure with
those attributes (plus jitter), and its captions are sentences built from the
same attributes, so the text really describes the image.

The format facts (file name, folder, id base, path key, splits) are read from
the dataset classes, so the synthetic files cannot drift from what the loaders expect.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from utils.files import write_json

from .bases import PersonDataset
from .cuhkpedes import CUHKPEDES
from .icfgpedes import ICFGPEDES
from .rstpreid import RSTPReid
from .ufine import UFine6926

logger = logging.getLogger(__name__)

FORMATS: dict[str, type[PersonDataset]] = {c.name: c for c in (CUHKPEDES, ICFGPEDES, RSTPReid, UFine6926)}

# ---- attribute vocabulary: name -> RGB -----------------------------------------------------
# Clothing colours are far apart in RGB so that a small model trained from scratch can tell them apart.
CLOTH_COLOURS = {
    "red": (200, 30, 30), "blue": (30, 60, 210), "green": (30, 150, 45), "yellow": (235, 215, 30),
    "black": (25, 25, 25), "white": (240, 240, 240), "purple": (130, 40, 165), "orange": (245, 130, 20),
}
HAIR_COLOURS = {"black": (20, 20, 20), "brown": (110, 62, 28), "blond": (228, 198, 112)}
SHOE_COLOURS = {"black": (20, 20, 20), "white": (240, 240, 240), "brown": (105, 60, 28), "red": (200, 30, 30)}
BAG_COLOURS = {"black": (25, 25, 25), "brown": (115, 70, 30), "red": (200, 30, 30),
               "blue": (30, 60, 210), "green": (30, 150, 45)}
SKIN_TONES = [(240, 200, 170), (205, 155, 115), (140, 95, 65)]  # not described in text; identity detail only
UPPER_TYPES = ("long", "short", "coat")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag")

# ---- attribute vocabulary: words (synonyms give the captions variety) -----------------------
NOUNS = {"man": ("man", "young man", "male", "guy", "gentleman"),
         "woman": ("woman", "young woman", "lady", "girl", "female")}
PRONOUNS = {"man": ("he", "his"), "woman": ("she", "her")}
UPPER_WORDS = {"long": ("long-sleeved shirt", "long-sleeve top", "sweater", "long-sleeved blouse"),
               "short": ("short-sleeved shirt", "t-shirt", "short-sleeve top", "tee"),
               "coat": ("coat", "jacket", "long coat", "overcoat")}
LOWER_WORDS = {"trousers": ("trousers", "pants", "long pants", "slacks"),
               "shorts": ("shorts", "short pants"),
               "skirt": ("skirt", "knee-length skirt")}
COLOUR_SYNONYMS = {"blond": ("blond", "blonde"), "purple": ("purple", "violet")}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# ---- identities -----------------------------------------------------------------------------
def _sample_identity(rng: random.Random) -> dict:
    gender = rng.choice(("man", "woman"))
    # Skirts only for women: keeps the text plausible and makes gender partly visible.
    lower_types = LOWER_TYPES if gender == "woman" else LOWER_TYPES[:2]
    bag = rng.choice(BAGS)
    return {
        "gender": gender,
        "upper_colour": rng.choice(list(CLOTH_COLOURS)), "upper_type": rng.choice(UPPER_TYPES),
        "lower_colour": rng.choice(list(CLOTH_COLOURS)), "lower_type": rng.choice(lower_types),
        "hair_length": rng.choice(("long", "short")), "hair_colour": rng.choice(list(HAIR_COLOURS)),
        "shoe_colour": rng.choice(list(SHOE_COLOURS)),
        "bag": bag, "bag_colour": rng.choice(list(BAG_COLOURS)) if bag != "none" else None,
        "skin": rng.randrange(len(SKIN_TONES)),
    }


def _sample_identities(n: int, rng: random.Random) -> list[dict]:
    """n identities with pairwise different described attributes (skin is not described)."""
    seen, out = set(), []
    while len(out) < n:
        ident = _sample_identity(rng)
        key = _identity_key(ident)
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


# Identities that SYNTH-PEDES may hold: make_synthetic draws its identities first, in order, from random.Random(seed),
# so any dataset of up to this many identities with the default seed holds some of these first ones.
RESERVED_IDENTITIES = 2000


def _identity_key(ident: dict) -> tuple:
    return tuple(v for k, v in ident.items() if k != "skin")


def pretraining_identities(n: int, seed: int = 1, reserved_seed: int = 0) -> list[dict]:
    """n identities for pretraining (pretraining/synthetic_clip.py), none of which is one of the RESERVED_IDENTITIES
    that make_synthetic(seed=reserved_seed) hands out: a model pretrained on them has never seen a SYNTH-PEDES
    person, train or test, as CLIP's web pretraining never saw CUHK-PEDES's."""
    reserved = {_identity_key(i) for i in _sample_identities(RESERVED_IDENTITIES, random.Random(reserved_seed))}
    rng, out = random.Random(f"pretraining-{seed}"), []
    while len(out) < n:
        ident = _sample_identity(rng)
        key = _identity_key(ident)
        if key not in reserved:
            reserved.add(key)
            out.append(ident)
    return out


# ---- captions -------------------------------------------------------------------------------
class _Phrases:
    """Noun phrases and attribute sentences for one identity, with random word choices."""

    def __init__(self, ident: dict, rng: random.Random):
        self.i, self.rng = ident, rng
        self.he, self.his = PRONOUNS[ident["gender"]]

    def colour(self, name: str) -> str:
        return self.rng.choice(COLOUR_SYNONYMS.get(name, (name,)))

    def noun(self) -> str:
        return self.rng.choice(NOUNS[self.i["gender"]])

    def subject(self) -> str:
        """How a sentence refers to the person: a pronoun or 'the <noun>'."""
        return self.rng.choice((self.he, self.he, "the " + self.noun()))

    def upper_np(self) -> str:
        return _a(f"{self.colour(self.i['upper_colour'])} {self.rng.choice(UPPER_WORDS[self.i['upper_type']])}")

    def lower_np(self) -> str:
        np_ = f"{self.colour(self.i['lower_colour'])} {self.rng.choice(LOWER_WORDS[self.i['lower_type']])}"
        return _a(np_) if self.i["lower_type"] == "skirt" else np_

    def hair_np(self) -> str:
        return f"{self.i['hair_length']} {self.colour(self.i['hair_colour'])} hair"

    def shoes_np(self) -> str:
        return f"{self.colour(self.i['shoe_colour'])} {self.rng.choice(('shoes', 'sneakers', 'shoes'))}"

    def bag_np(self) -> Optional[str]:
        if self.i["bag"] == "none":
            return None
        kind = "backpack" if self.i["bag"] == "backpack" else self.rng.choice(("handbag", "hand bag", "purse"))
        return _a(f"{self.colour(self.i['bag_colour'])} {kind}")

    # One sentence per attribute; also the RDA groups (each call gives one paraphrase).
    def sentence(self, attr: str) -> str:
        s, his, r = self.subject(), self.his, self.rng
        if attr == "person":
            t = r.choice(("this is {n}.", "the image shows {n}.", "{n} is walking.", "the pedestrian is {n}."))
            return _cap(t.format(n=_a(self.noun())))
        if attr == "upper":
            t = r.choice(("{s} wears {x}.", "{s} is wearing {x}.", "{s} is dressed in {x}.",
                          "on {his} upper body {s} wears {x}."))
            return _cap(t.format(s=s, his=his, x=self.upper_np()))
        if attr == "lower":
            t = r.choice(("{s} wears {x}.", "{s} has on {x}.", "{s} is wearing {x} on {his} lower body.",
                          "{his} lower body is covered by {x}."))
            return _cap(t.format(s=s, his=his, x=self.lower_np()))
        if attr == "hair":
            length, colour = self.i["hair_length"], self.colour(self.i["hair_colour"])
            t = r.choice(("{s} has {l} {c} hair.", "{his} hair is {c} and {l}.", "{his} {c} hair is {l}.",
                          "{s} has {c} hair that is {l}."))
            return _cap(t.format(s=s, his=his, l=length, c=colour))
        if attr == "shoes":
            t = r.choice(("{s} wears {x}.", "{his} feet are in {x}.", "{s} has {x} on."))
            return _cap(t.format(s=s, his=his, x=self.shoes_np()))
        if attr == "bag":
            bag = self.bag_np()
            if bag is None:
                t = r.choice(("{s} carries no bag.", "{s} is not carrying anything.", "{his} hands are empty."))
                return _cap(t.format(s=s, his=his))
            if self.i["bag"] == "backpack":
                t = r.choice(("{s} carries {x}.", "{s} has {x} on {his} back.", "{x} is on {his} back."))
            else:
                t = r.choice(("{s} carries {x}.", "{s} holds {x} in {his} hand.", "{x} hangs from {his} hand."))
            return _cap(t.format(s=s, his=his, x=bag))
        raise ValueError(attr)


ATTRIBUTES = ("person", "upper", "lower", "hair", "shoes", "bag")


def make_caption(ident: dict, rng: random.Random) -> str:
    """One caption for the identity, in one of two styles with random word order."""
    p = _Phrases(ident, rng)
    if rng.random() < 0.5:
        # One long sentence, then the leftovers as short sentences.
        clothes = [p.upper_np(), p.lower_np()]
        rng.shuffle(clothes)
        extras = [f"with {p.hair_np()}"]
        if p.bag_np() is not None:
            extras.append(f"carrying {p.bag_np()}")
        rng.shuffle(extras)
        head = f"{_a(p.noun())} wearing {clothes[0]} and {clothes[1]}, {' and '.join(extras)}."
        tail = [p.sentence("shoes")] + ([p.sentence("bag")] if ident["bag"] == "none" and rng.random() < 0.5 else [])
        return " ".join([_cap(head)] + tail)
    # Several short sentences: an opening that names the person, then the rest shuffled.
    opening = rng.choice((f"the {p.noun()} has {p.hair_np()}.", f"{_a(p.noun())} with {p.hair_np()}."))
    rest = [p.sentence(a) for a in ("upper", "lower", "shoes", "bag")]
    rng.shuffle(rest)
    return " ".join([_cap(opening)] + rest)


def make_diversity_groups(ident: dict, rng: random.Random) -> list[list[str]]:
    """RDA groups (docs/METHOD.md §1.3): one group per attribute sub-sentence, 2-3 paraphrases each."""
    p = _Phrases(ident, rng)
    groups = []
    for attr in ATTRIBUTES:
        group: list[str] = []
        size = rng.choice((2, 3))
        for _ in range(40):  # a few draws give `size` distinct paraphrases
            s = p.sentence(attr)
            if s not in group:
                group.append(s)
            if len(group) == size:
                break
        groups.append(group)
    return groups


# ---- drawing --------------------------------------------------------------------------------
def draw_person(ident: dict, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """The identity as a front-view figure on a noisy background, with per-image jitter.

    Coordinates are written for a 128x64 (HxW) canvas with the body centred at x=32
    and mapped to `size` with a random scale, shift and brightness.
    """
    H, W = size
    scale = rng.uniform(0.88, 1.05)
    dx, dy = rng.uniform(-4, 4), rng.uniform(-4, 4)
    kx, ky = W / 64 * scale, H / 128 * scale

    def pt(x, y):
        return ((x - 32) * kx + W / 2 + dx * W / 64, (y - 64) * ky + H / 2 + dy * H / 128)

    def box(x0, y0, x1, y1):
        (a, b), (c, d) = pt(x0, y0), pt(x1, y1)
        return (a, b, c, d)

    def poly(points):
        return [pt(x, y) for x, y in points]

    base = rng.uniform(70, 175) + rng.uniform(-25, 25, size=3)
    bg = np.clip(base + rng.normal(0, 14, size=(H, W, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)

    skin = SKIN_TONES[ident["skin"]]
    upper = CLOTH_COLOURS[ident["upper_colour"]]
    lower = CLOTH_COLOURS[ident["lower_colour"]]
    hair = HAIR_COLOURS[ident["hair_colour"]]
    shoes = SHOE_COLOURS[ident["shoe_colour"]]
    bag = BAG_COLOURS[ident["bag_colour"]] if ident["bag"] != "none" else None
    sh, wa = (12, 9) if ident["gender"] == "man" else (10, 8.5)  # shoulder / waist half-widths

    if ident["bag"] == "backpack":  # behind everything: sticks out beside the torso
        d.rectangle(box(32 - sh - 3, 25, 32 + sh + 3, 58), fill=bag)

    # Legs and lower garment.
    leg_colour = skin if ident["lower_type"] == "skirt" else lower
    for x0, x1 in ((32 - 8, 32 - 1), (32 + 1, 32 + 8)):
        d.rectangle(box(x0, 64, x1, 112), fill=skin)
        if ident["lower_type"] == "trousers":
            d.rectangle(box(x0, 64, x1, 112), fill=leg_colour)
        elif ident["lower_type"] == "shorts":
            d.rectangle(box(x0, 64, x1, 84), fill=leg_colour)
    if ident["lower_type"] == "skirt":
        d.polygon(poly([(32 - 9, 60), (32 + 9, 60), (32 + 14, 90), (32 - 14, 90)]), fill=lower)
    else:
        d.rectangle(box(32 - 9, 60, 32 + 9, 70), fill=lower)
    for x0, x1 in ((32 - 9, 32 - 1), (32 + 1, 32 + 9)):
        d.ellipse(box(x0, 110, x1, 117), fill=shoes)

    # Arms: sleeve colour down to the wrist (long / coat) or to the elbow (short).
    sleeve_end = 41 if ident["upper_type"] == "short" else 62
    for side in (-1, 1):
        xs, xw = 32 + side * (sh - 1), 32 + side * (sh + 4)
        d.polygon(poly([(xs - 2.5, 27), (xs + 2.5, 27), (xw + 2.5, 62), (xw - 2.5, 62)]), fill=skin)
        t = (sleeve_end - 27) / (62 - 27)
        xe = xs + (xw - xs) * t
        d.polygon(poly([(xs - 2.6, 27), (xs + 2.6, 27), (xe + 2.6, sleeve_end), (xe - 2.6, sleeve_end)]), fill=upper)
        d.ellipse(box(xw - 2.5, 61, xw + 2.5, 66), fill=skin)

    # Torso (a coat reaches over the hips, short enough to leave shorts visible, and has a dark
    # opening down the middle).
    bottom, half = (75, 11) if ident["upper_type"] == "coat" else (64, wa)
    d.polygon(poly([(32 - sh, 26), (32 + sh, 26), (32 + half, bottom), (32 - half, bottom)]), fill=upper)
    if ident["upper_type"] == "coat":
        dark = tuple(int(c * 0.55) for c in upper)
        d.line([pt(32, 28), pt(32, bottom)], fill=dark, width=max(1, round(1.5 * kx)))

    if ident["bag"] == "backpack":  # straps over the shoulders
        for side in (-1, 1):
            d.line([pt(32 + side * 6, 26), pt(32 + side * 7, 50)], fill=bag, width=max(1, round(2.5 * kx)))
    elif ident["bag"] == "handbag":  # hanging from the right hand
        xh = 32 + sh + 4
        d.rectangle(box(xh - 1, 64, xh + 8, 76), fill=bag)
        d.line([pt(xh, 64), pt(xh + 3, 60), pt(xh + 7, 64)], fill=bag, width=max(1, round(1.2 * kx)))

    # Neck, hair and head.
    d.rectangle(box(30, 22, 34, 27), fill=skin)
    if ident["hair_length"] == "long":
        d.polygon(poly([(24.5, 12), (39.5, 12), (41, 42), (23, 42)]), fill=hair)
    d.ellipse(box(25.5, 8.5, 38.5, 23.5), fill=skin)
    d.chord(box(25, 7.5, 39, 20), 180, 360, fill=hair)

    # Brightness jitter and a little sensor noise over the whole image.
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 3, size=(H, W, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ---- writing a dataset ----------------------------------------------------------------------
def make_synthetic(root_dir: str, fmt: str = "CUHK-PEDES", num_train_ids: int = 300, num_test_ids: int = 60,
                   num_val_ids: int = 20, images_per_id: int = 2, captions_per_image: int = 2,
                   image_size: tuple[int, int] = (128, 64), seed: int = 0, with_rda: bool = False,
                   dataset_dir: Optional[str] = None) -> str:
    """Write a synthetic dataset under root_dir/<dataset_dir>/ in the real format of `fmt`; return the annotation path.

    `fmt` is one of FORMATS; `dataset_dir` defaults to that dataset's folder (SYNTH-PEDES overrides it).
    Formats without a val split ignore num_val_ids. Deterministic for a given seed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    folder = os.path.join(os.path.abspath(root_dir), dataset_dir or spec.dataset_dir)
    image_root = os.path.join(folder, spec.image_dir)

    split_sizes = [("train", num_train_ids), ("val", num_val_ids), ("test", num_test_ids)]
    split_sizes = [(s, n) for s, n in split_sizes if s in spec.splits]
    text_rng = random.Random(seed)
    pixel_rng = np.random.default_rng(seed)
    identities = _sample_identities(sum(n for _, n in split_sizes), text_rng)

    records, next_id = [], 0
    for split, n in split_sizes:
        os.makedirs(os.path.join(image_root, split), exist_ok=True)
        for ident in identities[next_id:next_id + n]:
            pid = next_id + spec.id_base
            next_id += 1
            for k in range(images_per_id):
                rel = f"{split}/{pid}_{k}.jpg"
                draw_person(ident, image_size, pixel_rng).save(os.path.join(image_root, rel), quality=90)
                captions = [make_caption(ident, text_rng) for _ in range(captions_per_image)]
                record = {"id": pid, spec.path_key: rel, "captions": captions, "split": split}
                if with_rda and split == "train":
                    record["diversity_captions"] = [make_diversity_groups(ident, text_rng) for _ in captions]
                records.append(record)

    # Written last and atomically: an annotation file means the images are all there.
    anno_path = os.path.join(folder, spec.anno_names[0])
    write_json(anno_path, records, indent=None)
    logger.info("wrote synthetic %s (%d records) to %s", fmt, len(records), anno_path)
    return anno_path
