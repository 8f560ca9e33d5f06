"""ICL's RDA captions and the LoRA SFT of THI's MLLM: RDA through a scripted backend (every step, the fall-backs,
the resume) and once through a tiny random Qwen2-VL; training on RDA's output; the SFT data checked against a
brute-force ranking; a few SFT steps, the adapter through save / load / merge, and --resume."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

import main as train_main
from datasets import build_dataset
from datasets.loaders import read_image
from datasets.transforms import build_transforms
from inference.runs import load_run
from rda import cli as rda_cli
from rda.pipeline import augment
from mllm.backends import SYSTEM_PROMPT, make_backend
from mllm.vqa import AGGREGATION_PROMPT, VQA_PROMPT
from tests.tiny_qwen2vl import build_tiny_qwen2vl
from thi import merge_lora, sft, sft_data
from thi.prompts import localisation_prompt
from utils.tokenizer import tokenize_one

TINY_CLIP = dict(embed_dim=32, vision_width=32, vision_layers=1, vision_heads=2,
                 text_width=32, text_layers=1, text_heads=2)
PIXELS = ["--min_pixels", "3136", "--max_pixels", "3136"]   # 56 x 56: 4 visual tokens per image
VQA_REPLY = "1. male\n2. short black hair\n7. yes, dark glasses\n13. walking"


class ScriptedMLLM:
    """The backend interface (model_id, yes_probability, generate) with replies written by rule: VQA answers for
    an image, the caption plus one sentence for an aggregation, the sentences as a numbered list for a
    decomposition, numbered variants for a rewrite.  `mangle` maps a caption to a broken reply at one step."""
    model_id = "scripted"

    def __init__(self, mangle=None):
        self.mangle, self.requests = mangle or {}, []

    def yes_probability(self, requests):
        raise AssertionError("RDA asks no yes/no question")

    def generate(self, requests, max_new_tokens):
        self.requests += requests
        return [self.reply(r) for r in requests]

    def broken(self, step, text):
        return next((reply for (caption, s), reply in self.mangle.items() if s == step and caption in text), None)

    def reply(self, r):
        if r.image is not None:
            assert r.prompt == VQA_PROMPT
            return VQA_REPLY
        if r.prompt.startswith(AGGREGATION_PROMPT.split("{")[0]):
            caption = r.prompt.split("Description: ")[1].split("\nAnswers:")[0]
            assert "- gender: male" in r.prompt and "- glasses: yes, dark glasses" in r.prompt
            found = self.broken("aggregation", caption)
            return found if found is not None else f"Description: {caption} He wears dark glasses."
        if r.prompt.startswith("Split the description"):
            text = r.prompt.split("Description: ")[1]
            found = self.broken("decomposition", text)
            if found is not None:
                return found
            sentences = [s.strip().rstrip(".") + "." for s in text.split(". ") if s.strip()]
            return "Here are the sentences:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
        assert r.prompt.startswith("Rewrite the sentence"), r.prompt
        sentence = r.prompt.split("Sentence: ")[1]
        found = self.broken("rewriting", sentence)
        m = int(re.search(r"in (\d+) different ways", r.prompt).group(1))
        return found if found is not None else "\n".join(f"{k}) Put another way ({k}), {sentence.lower()}"
                                                         for k in range(1, m + 1))


# data_root's (conftest.py): 10 identities x 2 images: 18 images of other identities per caption, of which the 10
# hardest are a choice
DATA_SIZES = dict(num_train_ids=10, num_test_ids=3, num_val_ids=2, seed=5)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen")), seed=0, favour="Yes")


def run_rda(monkeypatch, backend, out, *data):
    monkeypatch.setattr(rda_cli, "backend_from_args", lambda args: backend)
    return rda_cli.main([*data, "--model_dir", "unused", "--out", str(out), "--m", "2", "--batch_size", "8"])


def data_args(data_root):
    return ["--dataset_name", "CUHK-PEDES", "--root_dir", data_root]


@pytest.fixture(scope="module")
def rda_out(data_root, tmp_path_factory):
    """RDA annotations of the whole training set through the scripted backend, one caption's decomposition
    mangled; returns (path, backend, summary)."""
    mangled = build_dataset("CUHK-PEDES", data_root).train[3].caption
    backend = ScriptedMLLM({(mangled, "decomposition"): mangled})      # the text back: one group only
    out = tmp_path_factory.mktemp("rda") / "rda.json"
    with pytest.MonkeyPatch.context() as mp:
        summary = run_rda(mp, backend, out, *data_args(data_root))
    return out, backend, summary


@pytest.fixture(scope="module")
def rda_run(rda_out, data_root, tmp_path_factory):
    """A tiny run trained on the RDA annotations (its model ranks the SFT negatives)."""
    out = rda_out[0]
    run_dir = tmp_path_factory.mktemp("run") / "run"
    train_main.main(["--dataset_name", "CUHK-PEDES", "--root_dir", data_root, "--anno_path", str(out),
                     "--run_dir", str(run_dir), "--pretrain_choice", "random", "--clip_arch", json.dumps(TINY_CLIP),
                     "--img_size", "64", "32", "--text_length", "40", "--tse_dim", "48", "--batch_size", "8",
                     "--test_batch_size", "32", "--num_workers", "0", "--num_epoch", "1", "--warmup_epochs", "1",
                     "--division", "false"])
    return str(run_dir)


# ---- RDA ---------------------------------------------------------------------------------------------------------

def test_rda_writes_loadable_annotations_and_training_uses_them(rda_out, rda_run, data_root):
    out, backend, summary = rda_out
    plain = build_dataset("CUHK-PEDES", data_root)
    ds = build_dataset("CUHK-PEDES", data_root, anno_path=str(out))
    assert ds.has_rda and len(ds.train) == len(plain.train) == 40
    assert [r.caption for r in ds.train] == [r.caption for r in plain.train]
    assert ds.test.captions == plain.test.captions and ds.val.captions == plain.val.captions
    # every record of every split is written; only the training ones carry diversity_captions
    written = json.loads(out.read_text())
    assert all(("diversity_captions" in r) == (r["split"] == "train") for r in written)

    assert summary["processed"] == summary["train_captions"] == 40
    assert summary["augmented"] == 39 and summary["reasons"] == {"decomposition: one group only": 1}
    for k, rec in enumerate(ds.train):
        if k == 3:
            assert rec.diversity == rec.caption              # the mangled one keeps its caption
            continue
        # groups: the caption's sentences plus the VQA's, each [sentence, 2 rewrites]
        sentences = [g[0] for g in rec.diversity]
        assert " ".join(sentences) == rec.caption + " He wears dark glasses."
        assert all(len(g) == 3 and g[1].startswith("Put another way (1), ") for g in rec.diversity)
    # one VQA per image, not per caption
    assert sum(r.image is not None for r in backend.requests) == ds.num_train_images == 20
    # ICL's RDA term was trained
    with open(f"{rda_run}/metrics.jsonl") as f:
        record = json.loads(f.readline())
    assert record["loss/bge_rda_TAL"] > 0 and record["loss/tse_rda_TAL"] > 0


def test_rda_resumes_from_its_cache_and_limit(rda_out, data_root, monkeypatch, tmp_path):
    out, first_backend, _ = rda_out
    before = json.loads(out.read_text())
    again = ScriptedMLLM(first_backend.mangle)
    run_rda(monkeypatch, again, out, *data_args(data_root))
    assert again.requests == []                             # every answer came from OUT.cache.jsonl
    assert json.loads(out.read_text()) == before
    assert (out.parent / "rda.cache.jsonl").is_file() and (out.parent / "rda.details.jsonl").is_file()

    limited = tmp_path / "limited.json"
    backend = ScriptedMLLM()
    config = tmp_path / "config.yaml"           # a training config names the dataset
    config.write_text(f"dataset_name: CUHK-PEDES\nroot_dir: {data_root}\nnum_epoch: 3\n")
    summary = run_rda(monkeypatch, backend, limited, "--config", str(config), "--limit", "5")
    assert summary["processed"] == 5 and summary["augmented"] == 5
    ds = build_dataset("CUHK-PEDES", data_root, anno_path=str(limited))
    assert all(isinstance(r.diversity, list) for r in ds.train[:5])
    assert all(r.diversity == r.caption for r in ds.train[5:])
    assert {r.image for r in backend.requests if r.image} == {r.img_path for r in ds.train[:5]}


def test_rda_shards_then_merge_equal_one_process(rda_out, data_root, monkeypatch, tmp_path):
    """--shard K/N: each process asks about every N-th caption into its own cache; the merge asks nothing."""
    out, first_backend, summary = rda_out
    sharded = tmp_path / "sharded.json"
    shards = [ScriptedMLLM(first_backend.mangle) for _ in range(3)]
    for k, backend in enumerate(shards):
        assert run_rda(monkeypatch, backend, sharded, *data_args(data_root), "--shard", f"{k}/3")["processed"] \
            == len(range(k, 40, 3))
    assert not sharded.exists()                                   # a shard writes answers, not annotations
    asked = [{r.prompt for r in b.requests if r.image is None and "Description: " in r.prompt} for b in shards]
    assert all(a and not a & b for a, b in zip(asked, asked[1:] + asked[:1]))   # disjoint work
    assert sorted(p.name for p in tmp_path.glob("sharded.cache.shard*")) == \
        [f"sharded.cache.shard{k}-of-3.jsonl" for k in range(3)]
    assert sorted(p.name for p in tmp_path.glob("sharded.log.shard*")) == \
        [f"sharded.log.shard{k}-of-3.txt" for k in range(3)]          # a log each: no interleaved lines
    merge = ScriptedMLLM(first_backend.mangle)
    assert run_rda(monkeypatch, merge, sharded, *data_args(data_root)) == summary
    assert merge.requests == []
    assert json.loads(sharded.read_text()) == json.loads(out.read_text())


CAPTIONS = ["A man in a red coat. He carries a black bag.", "A woman in a blue skirt. She has long hair.",
            "A girl in a green top. She wears white shoes."]


@pytest.mark.parametrize("step, reply, reason", [
    ("aggregation", "", "aggregation: empty answer"),
    ("aggregation", "A man in a red coat " + "and a red coat " * 60, "aggregation: runaway length"),
    ("decomposition", "", "decomposition: empty answer"),
    ("decomposition", "A man in a red coat and a black bag.", "decomposition: one group only"),
    ("decomposition", "Sure! Here it is:\n**\n---", "decomposition: no parse"),
    ("decomposition", "\n".join(f"{i}. He carries black bag number {i}." for i in range(1, 30)),
     "decomposition: runaway length"),
    ("decomposition", "Sure, I can do that for you!\nLet me know if you want more.", "decomposition: no parse"),
    ("rewriting", "I cannot rewrite that", "rewriting: no paraphrase parsed"),
])
def test_mangled_replies_fall_back_to_the_caption(step, reply, reason):
    # rewriting: every sub-sentence of caption 0 gets the broken reply (its sentences are all in CAPTIONS[0])
    keys = [CAPTIONS[0]] if step != "rewriting" else ["A man in a red coat.", "He carries a black bag.",
                                                      "He wears dark glasses."]
    backend = ScriptedMLLM({(k, step): reply for k in keys})
    pairs = augment(CAPTIONS, ["a.jpg", "b.jpg", "c.jpg"], lambda reqs: backend.generate(reqs, 64), m=2)
    assert pairs[0].error == reason and pairs[0].entry == CAPTIONS[0]
    assert all(p.error is None and len(p.entry) == 3 for p in pairs[1:])
    if step == "rewriting":     # caption 2 shares the dark-glasses sentence: that group alone, the rest rewritten
        assert pairs[1].bare == 1 and [len(g) for g in pairs[1].entry] == [3, 3, 1]


def test_rda_through_a_tiny_qwen2vl(data_root, tiny_qwen, tmp_path):
    """The real backend path once: a random model's replies are no list, so both captions fall back."""
    out = tmp_path / "tiny.json"
    summary = rda_cli.main(["--dataset_name", "CUHK-PEDES", "--root_dir", data_root, "--model_dir", tiny_qwen,
                            "--out", str(out), "--limit", "2", "--max_new_tokens", "6", *PIXELS])
    assert summary["processed"] == 2 and summary["augmented"] + summary["fell_back"] == 2
    ds = build_dataset("CUHK-PEDES", data_root, anno_path=str(out))
    details = [json.loads(line) for line in (tmp_path / "tiny.details.jsonl").read_text().splitlines()]
    assert [d["index"] for d in details] == [0, 1] and all(d["enriched"] or d["error"] for d in details)
    assert [r.diversity for r in ds.train] == [d.get("groups") or d["caption"] for d in details] + \
        [r.caption for r in ds.train[2:]]


# ---- SFT data ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_dir(rda_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_data")
    samples = sft_data.main(["--run", rda_run, "--out", str(out), "--negatives_per_positive", "2", "--chunk", "7"])
    return out, samples


def brute_force_top10(run_dir):
    """The 10 most similar images of other identities per training caption, straight from the model: every
    image and caption encoded one by one, BGE and TSE cosine similarities averaged."""
    run = load_run(run_dir)
    run.load_weights("best")
    model, cfg, train = run.models[0], run.cfg, run.dataset.train
    images = {r.image_id: (r.img_path, r.pid) for r in train}
    transform = build_transforms(tuple(cfg.img_size), is_train=False)
    with torch.no_grad():
        img = [model.encode_image(transform(read_image(images[i][0]))[None]) for i in range(len(images))]
        txt = [model.encode_text(tokenize_one(r.caption, cfg.text_length)[None]) for r in train]
    top = []
    for r, t in zip(train, txt):
        sims = [sum(F.cosine_similarity(t[e], im[e]).item() for e in t) / len(t) for im in img]
        others = [i for i in range(len(images)) if images[i][1] != r.pid]
        top.append(set(sorted(others, key=lambda i: -sims[i])[:10]))
    return train, images, top


def test_sft_data_positives_and_hard_negatives(sft_dir, rda_run):
    out, samples = sft_dir
    train, images, top = brute_force_top10(rda_run)
    records = json.loads((out / "thi_sft.json").read_text())
    assert len(records) == len(samples) == 3 * len(train)
    for i, r in enumerate(train):
        positive, *negatives = records[3 * i:3 * i + 3]
        for record in (positive, *negatives):
            user, assistant = record["messages"]
            assert user == {"role": "user", "content": "<image>" + localisation_prompt(r.caption)}
            assert record["system"] == SYSTEM_PROMPT and assistant["role"] == "assistant"
        assert positive["images"] == [r.img_path] and positive["messages"][1]["content"] == "Yes"
        negative_images = [n["images"][0] for n in negatives]
        assert len(set(negative_images)) == 2
        for n in negatives:
            image = next(k for k, (path, _) in images.items() if path == n["images"][0])
            assert n["messages"][1]["content"] == "No" and images[image][1] != r.pid and image in top[i]
    # the pools themselves are the brute-force top 10 (chunked similarity, fused like test.py)
    run = load_run(rda_run)
    run.load_weights("best")
    paths, pids = sft_data.unique_images(run.dataset.train)
    pools = sft_data.hard_negative_pools(run, [r.caption for r in train], [r.pid for r in train], paths, pids,
                                         chunk=7, progress=False)
    assert [set(p.tolist()) for p in pools] == top
    info = json.loads((out / "dataset_info.json").read_text())["thi_sft"]
    assert info["file_name"] == "thi_sft.json" and info["formatting"] == "sharegpt"
    assert info["columns"]["images"] == "images" and info["tags"]["assistant_tag"] == "assistant"


# ---- LoRA SFT ----------------------------------------------------------------------------------------------------

def sft_args(data, model, out, *extra):
    return ["--data", str(data), "--model_dir", model, "--out", str(out), "--batch_size", "2", "--grad_accum", "1",
            "--lr", "1e-3", "--warmup_ratio", "0", "--eval_examples", "0", *PIXELS, *extra]


@pytest.fixture(scope="module")
def small_sft_data(sft_dir, tmp_path_factory):
    """6 examples: 2 captions, each with its positive and 2 negatives."""
    out = tmp_path_factory.mktemp("small_sft")
    records = json.loads((sft_dir[0] / "thi_sft.json").read_text())[:6]
    (out / "thi_sft.json").write_text(json.dumps(records))
    return out


@pytest.fixture(scope="module")
def trained(small_sft_data, tiny_qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    # lr 1e-2: the tiny model's lm_head rows are small (random init), so its logits move slowly
    result = sft.main(sft_args(small_sft_data, tiny_qwen, out, "--max_steps", "8", "--eval_examples", "6",
                               "--lr", "1e-2", "--lora_dropout", "0.05"))
    return out, result


def test_sft_steps_reduce_the_answer_loss(trained, small_sft_data, tiny_qwen):
    out, result = trained
    assert result["step"] == 8 and len(result["losses"]) == 8
    assert result["eval"]["after"] < result["eval"]["before"] - 0.3
    # 'before' is the base model's own loss (LoRA starts as the identity), computed here independently
    base, processor = sft.load_base(tiny_qwen, torch.device("cpu"), torch.float32)
    encoder = sft.Encoder(processor, 3136, 3136)
    examples = sft.read_examples(str(small_sft_data))
    assert sft.mean_answer_loss(base, encoder, examples, 4, "cpu") == pytest.approx(result["eval"]["before"], rel=1e-4)
    # the labels are the answer token and the end of turn only
    batch = encoder(examples[:2])
    labels = [row[row != sft.IGNORE].tolist() for row in batch["labels"]]
    tok = processor.tokenizer
    assert labels == [tok.encode(e.answer) + [tok.convert_tokens_to_ids("<|im_end|>")] for e in examples[:2]]
    lines = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))
    # LoRA on the language model's projections only
    keys = [k for k, _ in result["model"].named_parameters() if "lora_A" in k]
    assert keys and not any("visual" in k for k in keys)
    assert {k.split(".lora_A")[0].rsplit(".", 1)[1] for k in keys} == set(sft.LORA_TARGETS)


def test_adapter_loads_in_thi_and_merges(trained, small_sft_data, tiny_qwen, tmp_path):
    out, result = trained
    examples = sft.read_examples(str(small_sft_data))
    requests = [e.request for e in examples[:3]]
    in_memory = make_backend("transformers", tiny_qwen, min_pixels=3136, max_pixels=3136)
    in_memory._load()
    in_memory._model = result["model"].eval()            # the trained model, scored by THI's own code
    expected = in_memory.yes_probability(requests)
    loaded = make_backend("transformers", tiny_qwen, lora=str(out), min_pixels=3136, max_pixels=3136)
    assert loaded.yes_probability(requests) == pytest.approx(expected, abs=1e-5)
    merged = merge_lora.main(["--base", tiny_qwen, "--lora", str(out), "--out", str(tmp_path / "merged")])
    assert make_backend("transformers", merged, min_pixels=3136, max_pixels=3136).yes_probability(requests) == \
        pytest.approx(expected, abs=1e-4)
    # training saw THI's prompt: P(yes) from the training input's logits at the answer position is THI's
    batch = sft.Encoder(in_memory._processor, 3136, 3136)(examples[:1])
    first_label = int((batch["labels"][0] != sft.IGNORE).nonzero()[0])
    with torch.no_grad():
        logits = result["model"](**{k: v for k, v in batch.items() if k != "labels"}).logits[0, first_label - 1]
    margin = logits[in_memory.yes_ids].logsumexp(-1) - logits[in_memory.no_ids].logsumexp(-1)
    assert torch.sigmoid(margin).item() == pytest.approx(expected[0], abs=1e-5)
    # the adapter is not the identity
    base = make_backend("transformers", tiny_qwen, min_pixels=3136, max_pixels=3136).yes_probability(requests)
    assert max(abs(a - b) for a, b in zip(base, expected)) > 1e-3


def test_sft_resume_continues_from_the_checkpoint(small_sft_data, tiny_qwen, tmp_path, monkeypatch):
    full = sft.main(sft_args(small_sft_data, tiny_qwen, tmp_path / "full", "--max_steps", "4", "--save_steps", "2"))
    real_save = sft.checkpointing.save_checkpoint

    def killed_after_step_2(out, step, *a, **kw):
        real_save(out, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(sft.checkpointing, "save_checkpoint", killed_after_step_2)
    args = sft_args(small_sft_data, tiny_qwen, tmp_path / "killed", "--max_steps", "4", "--save_steps", "2")
    with pytest.raises(KeyboardInterrupt):
        sft.main(args)
    monkeypatch.setattr(sft.checkpointing, "save_checkpoint", real_save)
    with pytest.raises(SystemExit, match="--resume"):
        sft.main(args)                                       # a finished-or-not run is never overwritten
    resumed = sft.main(args + ["--resume"])
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-4)
    lines = [json.loads(line) for line in (tmp_path / "killed" / "loss.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert [c for c, _ in sft.checkpoints(str(tmp_path / "killed"))] == [2, 4]
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    for k in (k for k in a if "lora_" in k):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
