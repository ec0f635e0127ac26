"""Synthetic digits video-text data in the official formats (spec §8b, §8c), for tests, the demo and the repro.

A "video" shows one scikit-learn ``digits`` image (8x8, upscaled), tinted by one of four colours, moving across a
dark canvas in one of four directions. Its caption names the three grounded content words and appends 6-10 random
function words: ``"a red seven rises the of with it while ..."``. Only content words can be predicted from the video.
Significant words are mined with the real pipeline (:mod:`snps3.significant`) and an injected lexicon tagger.

Clips are stored as lossless H.264 (:func:`write_clip`), so that writing the data set twice gives the same decoded
frames and a demo or test run on freshly written data repeats.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from snps3.significant import build_count_table, count_pos, write_count_json

log = logging.getLogger(__name__)

__all__ = [
    "COLOURS",
    "DIGIT_WORDS",
    "MOTIONS",
    "FILLERS",
    "synthetic_vocab",
    "lexicon_tagger",
    "digit_clip",
    "make_caption",
    "SyntheticSample",
    "sample_items",
    "write_clip",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "write_official_layouts",
    "content_top_k",
]

COLOURS = {"red": (1.0, 0.2, 0.2), "green": (0.2, 1.0, 0.2), "blue": (0.3, 0.4, 1.0), "yellow": (1.0, 1.0, 0.2)}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MOTIONS = {"rises": (-1, 0), "falls": (1, 0), "slides": (0, 1), "drifts": (0, -1)}  # verb -> (dy, dx)
FILLERS = [
    "the",
    "of",
    "with",
    "while",
    "it",
    "this",
    "some",
    "and",
    "at",
    "to",
    "for",
    "from",
    "by",
    "then",
    "there",
    "on",
    "in",
    "as",
    "its",
    "an",
]
QUESTION_WORDS = ["what", "colour", "number", "how", "does", "move", "which", "digit", "is", "a"]
SYNTHETIC_VERSION = 2
"""Version of what :func:`generate_synthetic_dataset` writes (2: lossless clips; 1 wrote lossy clips that decoded
differently each time they were written). It is recorded in ``SYNTHETIC_DONE`` so that
:func:`ensure_synthetic_dataset` rewrites data made by another version."""
MARKER_TEXT = f"version {SYNTHETIC_VERSION}"


def synthetic_vocab() -> list[str]:
    """A WordPiece vocabulary with bert-base-uncased's special ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103) followed by the synthetic words and a few sub-word pieces."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = list(COLOURS) + DIGIT_WORDS + list(MOTIONS) + FILLERS + QUESTION_WORDS
    words += ["video", "screen", "shown", "dummy", "text", "background"]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    seen: set[str] = set(vocab)
    for w in words:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def lexicon_tagger(captions):
    """Injected POS tagger (spec §8c): colours ADJ, digit words NOUN, motion verbs VERB, everything else DET."""
    out = []
    for caption in captions:
        tags = []
        for w in caption.split():
            pos = "ADJ" if w in COLOURS else "NOUN" if w in DIGIT_WORDS else "VERB" if w in MOTIONS else "DET"
            tags.append((w, pos))
        out.append(tags)
    return out


def content_top_k(rank: np.ndarray) -> int:
    """``K_top`` under which exactly the words seen as content qualify: (number of ids with a count) − 1."""
    zero_rank = int(rank.max())
    return zero_rank - 1


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target


def digit_clip(
    image: np.ndarray, colour: str, motion: str, num_frames: int = 8, size: int = 32, digit_size: int = 16
) -> torch.Tensor:
    """uint8 (T, 3, size, size): the tinted digit moving in the ``motion`` direction across the canvas."""
    img = torch.from_numpy(image)[None, None]  # (1, 1, 8, 8)
    img = F.interpolate(img, size=(digit_size, digit_size), mode="bilinear", align_corners=False)[0, 0]  # (d, d)
    tint = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    glyph = (img.clamp(0, 1)[None] * tint * 235 + 20).to(torch.uint8)  # (3, d, d)
    dy, dx = MOTIONS[motion]
    span = size - digit_size
    frames = torch.full((num_frames, 3, size, size), 20, dtype=torch.uint8)
    for t in range(num_frames):
        f = t / max(1, num_frames - 1)
        y = span // 2 if dy == 0 else int(round(span * (f if dy > 0 else 1 - f)))
        x = span // 2 if dx == 0 else int(round(span * (f if dx > 0 else 1 - f)))
        frames[t, :, y : y + digit_size, x : x + digit_size] = glyph
    return frames


def make_caption(colour: str, digit: int, motion: str, rng: random.Random) -> str:
    """``"a {colour} {digit-word} {verb}"`` followed by 6-10 random function words."""
    fillers = [rng.choice(FILLERS) for _ in range(rng.randint(6, 10))]
    return " ".join(["a", colour, DIGIT_WORDS[digit], motion, *fillers])


class SyntheticSample:
    """One synthetic clip: its attributes, frames (uint8 (T, 3, S, S)) and captions."""

    def __init__(
        self, image: np.ndarray, digit: int, colour: str, motion: str, captions: list[str], num_frames: int, size: int
    ):
        self.digit, self.colour, self.motion, self.captions = digit, colour, motion, captions
        self.frames = digit_clip(image, colour, motion, num_frames, size)


def sample_items(
    n: int,
    seed: int,
    num_frames: int = 8,
    size: int = 32,
    captions_per_clip: int = 1,
    image_range: tuple[int, int] | None = None,
) -> list[SyntheticSample]:
    """``n`` random clips (digit image drawn from scikit-learn digits, indices in ``image_range`` when given, so
    train and test can use disjoint images; uniform colour and motion)."""
    images, targets = _digit_images()
    lo, hi = image_range or (0, len(images))
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        k = rng.randrange(lo, min(hi, len(images)))
        colour, motion = rng.choice(list(COLOURS)), rng.choice(list(MOTIONS))
        caps = [make_caption(colour, int(targets[k]), motion, rng) for _ in range(captions_per_clip)]
        items.append(SyntheticSample(images[k], int(targets[k]), colour, motion, caps, num_frames, size))
    return items


def write_clip(path: Path, frames: torch.Tensor) -> Path:
    """Write uint8 (T, 3, S, S) frames as a lossless H.264 ``.mp4`` at 8 fps.

    Lossless (``crf`` 0): the decoded frames are exactly the frames' YUV 4:2:0 conversion, whatever choices the
    encoder makes. At its default quality libx264 is not repeatable: its macroblock-tree rate control picks
    different quantisers from one run to the next (also with one thread), so the same frames written twice decoded
    to pixel values a few levels apart, and the demo's metrics moved with every fresh copy of its data.
    """
    from mmzoo.video import write_video

    return write_video(path, frames, fps=8.0, crf=0)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def generate_synthetic_dataset(
    root: str | Path, num_train: int = 24, num_test: int = 8, num_frames: int = 8, size: int = 32, seed: int = 0
) -> Path:
    """Write every official format the package reads, filled with synthetic digits clips (spec §8b).

    Under ``root``: ``vocab.txt``; ``count_reprocess_synthetic.json`` and ``vocab_simi_list_new.json``;
    WebVid-style pre-training (``webvid/annotations/{train,val}.jsonl`` with video and image lines, start/end on
    some, several captions per clip; ``webvid/videos/*.mp4``; ``images/*.png``); MSRVTT retrieval
    (``msrvtt_retrieval/{train_7k,train,val,test}.jsonl``, one test caption shared by two videos), MC
    (``msrvtt_retrieval/mc_test.jsonl``) and QA (``msrvtt_qa_antmmf/{train,val,test}_antmmf.jsonl`` with int, str
    and list labels; ``msrvtt_qa_antmmf/answers.json``) over ``msrvtt_videos.lmdb`` (video bytes keyed by basename).
    """
    import lmdb
    from torchvision.io import write_png
    from tqdm import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vocab = synthetic_vocab()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    rng = random.Random(seed)
    train = sample_items(num_train, seed, num_frames, size, captions_per_clip=2, image_range=(0, 1300))
    test = sample_items(num_test, seed + 1, num_frames, size, captions_per_clip=1, image_range=(1300, 1797))
    clips = [(f"train{i:05d}", s) for i, s in enumerate(train)] + [(f"test{i:05d}", s) for i, s in enumerate(test)]
    vdir = root / "webvid" / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(root / "msrvtt_videos.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for name, s in tqdm(clips, desc="writing synthetic videos", disable=len(clips) < 200):
            path = write_clip(vdir / f"{name}.mp4", s.frames)
            txn.put(name.encode(), path.read_bytes())
    env.close()
    (root / "images").mkdir(exist_ok=True)
    # -- pre-training (WebVid format; a quarter of the training clips also appear as images) ---------------
    pre_train, pre_val = [], []
    for i, (name, s) in enumerate(clips[:num_train]):
        for j, cap in enumerate(s.captions):
            row = {"clip_name": name, "caption": cap, "type": "video", "sen_id": j}
            if i % 5 == 1:
                row.update(start=0.0, end=num_frames / 8.0)
            pre_train.append(row)
        if i % 4 == 0:
            write_png(s.frames[num_frames // 2], str(root / "images" / f"{name}.png"))
            pre_train.append({"clip_name": f"{name}.png", "caption": s.captions[0], "type": "image"})
    for name, s in clips[num_train:]:
        pre_val.append({"clip_name": name, "caption": s.captions[0], "type": "video", "sen_id": 0})
    _write_jsonl(root / "webvid" / "annotations" / "train.jsonl", pre_train)
    _write_jsonl(root / "webvid" / "annotations" / "val.jsonl", pre_val)
    # -- retrieval (MSRVTT format) ------------------------------------------------------------------------
    ret_train = [
        {"caption": c, "clip_name": n, "sen_id": j} for n, s in clips[:num_train] for j, c in enumerate(s.captions)
    ]
    ret_test = [{"caption": s.captions[0], "clip_name": n, "retrieval_key": n} for n, s in clips[num_train:]]
    if len(ret_test) >= 2:  # one caption shared by two videos: multi-GT
        ret_test.append(
            {
                "caption": ret_test[0]["caption"],
                "clip_name": ret_test[1]["clip_name"],
                "retrieval_key": ret_test[1]["clip_name"],
            }
        )
    for split in ("train_7k", "train"):
        _write_jsonl(root / "msrvtt_retrieval" / f"{split}.jsonl", ret_train)
    for split in ("val", "test"):
        _write_jsonl(root / "msrvtt_retrieval" / f"{split}.jsonl", ret_test)
    # -- multiple choice ------------------------------------------------------------------------------------
    mc = []
    for i, (name, s) in enumerate(clips[num_train:]):
        others = [o.captions[0] for _, o in clips if o.colour != s.colour or o.digit != s.digit][:4]
        while len(others) < 4:
            others.append(make_caption(s.colour, (s.digit + 1 + len(others)) % 10, s.motion, rng))
        answer = i % 5
        options = others[:answer] + [s.captions[0]] + others[answer:4]
        mc.append(
            {"qid": f"mc{i}", "clip_name": name, "title": s.captions[0], "answer": str(answer), "options": options}
        )
    _write_jsonl(root / "msrvtt_retrieval" / "mc_test.jsonl", mc)
    # -- QA (answers: colours then digit words then motions) ----------------------------------------------
    answers = list(COLOURS) + DIGIT_WORDS + list(MOTIONS)
    (root / "msrvtt_qa_antmmf").mkdir(exist_ok=True)
    (root / "msrvtt_qa_antmmf" / "answers.json").write_text(json.dumps(answers))

    def qa_rows(part: list[tuple[str, SyntheticSample]], kinds: str) -> list[dict]:
        rows = []
        for i, (name, s) in enumerate(part):
            q = i % 3
            if q == 0:
                rows.append(
                    {"caption": "what colour is the digit", "clip_name": name, "label": answers.index(s.colour)}
                )
            elif q == 1:
                label = DIGIT_WORDS[s.digit] if kinds == "mixed" else answers.index(DIGIT_WORDS[s.digit])
                rows.append({"caption": "what number is shown", "clip_name": name, "label": label})
            else:
                label = [s.motion] if kinds == "mixed" else answers.index(s.motion)
                rows.append({"caption": "how does the digit move", "clip_name": name, "label": label})
        return rows

    _write_jsonl(root / "msrvtt_qa_antmmf" / "train_antmmf.jsonl", qa_rows(clips[:num_train], "int"))
    _write_jsonl(root / "msrvtt_qa_antmmf" / "val_antmmf.jsonl", qa_rows(clips[num_train:], "int"))
    _write_jsonl(root / "msrvtt_qa_antmmf" / "test_antmmf.jsonl", qa_rows(clips[num_train:], "mixed"))
    # -- significant words (real mining pipeline, injected tagger) and the same-lemma table ---------------
    captions = [r["caption"] for r in pre_train]
    table = build_count_table(count_pos(captions, lexicon_tagger, progress=False), vocab)
    write_count_json(table, root / "count_reprocess_synthetic.json")
    lemma = [[] for _ in vocab]
    for group in (["rises", "falls"], ["slides", "drifts"]):  # toy "same lemma" groups exercise the table
        for w in group:
            lemma[vocab.index(w)] = list(group)
    (root / "vocab_simi_list_new.json").write_text(json.dumps(lemma))
    (root / "SYNTHETIC_DONE").write_text(MARKER_TEXT + "\n")  # last: a complete copy of this generator version
    log.info("synthetic SNP-S3 data written to %s", root)
    return root


def ensure_synthetic_dataset(
    root: str | Path, num_train: int = 24, num_test: int = 8, num_frames: int = 8, size: int = 32, seed: int = 0
) -> Path:
    """Write the synthetic data set into ``root`` (:func:`generate_synthetic_dataset`) unless a copy made by this
    generator version is there.

    The generator writes ``SYNTHETIC_DONE`` last, holding its version (``version 2``; earlier versions wrote
    ``ok``). A copy made by another version is written again (same file names, overwritten), so a cached copy never
    outlives a change of what the generator writes. A copy of the current version is kept whatever sizes it was
    written with (tests point the shipped configs at smaller copies). A folder without ``SYNTHETIC_DONE`` gets the
    data written into it.
    """
    root = Path(root)
    marker = root / "SYNTHETIC_DONE"
    if marker.is_file():
        if marker.read_text().strip() == MARKER_TEXT:
            return root
        log.warning("%s: synthetic data from an earlier version of the generator; writing it again", root)
        marker.unlink()  # a rewrite cut short must not pass for a complete one
    return generate_synthetic_dataset(root, num_train, num_test, num_frames, size, seed)


def write_official_layouts(
    root: str | Path, num_train: int = 8, num_test: int = 4, num_frames: int = 8, size: int = 32, seed: int = 0
) -> Path:
    """The synthetic data of :func:`generate_synthetic_dataset` plus the official layout of every other corpus the
    shipped configs read (spec §4, README "Data preparation"), so each config runs on ``root`` unchanged:

    * ``cc3m/cc_train.jsonl``, ``cc3m/image_val.jsonl`` and ``cc3m/images/*.png`` (image lines);
    * ``coco_vg/{coco_train2017_pretrain_format_with_subfix,image_val_left,region_desc_pretrain_format_with_subfix}
      .jsonl`` (training lines split over the three files), ``coco_vg/image_val.jsonl``, ``coco_vg/images/*.png``;
    * ``didemo_retrieval/{train,val,test}.jsonl`` (paragraph captions) over ``didemo_videos.lmdb``;
    * ``msvd_retrieval/MSVD_{train,test}.jsonl`` and ``msvd_qa/msvd_{train,test}_qa.jsonl`` over
      ``YouTubeClips/<clip>.avi``;
    * ``count_reprocess_webvid.json``, the shipped pre-training configs' significant-word file (the synthetic
      table under that name).

    The QA files hold integer answer indices only, as the official ones do (the shipped QA configs set no
    ``data.answer_list``): ``msrvtt_qa_antmmf/test_antmmf.jsonl`` is rewritten that way.
    """
    import shutil

    from mmzoo.video import write_video
    from torchvision.io import write_png

    root = generate_synthetic_dataset(root, num_train, num_test, num_frames, size, seed)
    train = sample_items(num_train, seed, num_frames, size, captions_per_clip=2, image_range=(0, 1300))
    test = sample_items(num_test, seed + 1, num_frames, size, captions_per_clip=1, image_range=(1300, 1797))
    train_clips = [(f"train{i:05d}", s) for i, s in enumerate(train)]
    test_clips = [(f"test{i:05d}", s) for i, s in enumerate(test)]
    answers = list(COLOURS) + DIGIT_WORDS + list(MOTIONS)

    # image-text pre-training corpora: the middle frame of each clip as an image
    for corpus in ("cc3m", "coco_vg"):
        (root / corpus / "images").mkdir(parents=True, exist_ok=True)
        for name, s in train_clips + test_clips:
            write_png(s.frames[num_frames // 2], str(root / corpus / "images" / f"{name}.png"))
    image_train = [
        {"clip_name": f"{n}.png", "caption": c, "type": "image", "sen_id": j}
        for n, s in train_clips
        for j, c in enumerate(s.captions)
    ]
    image_val = [{"clip_name": f"{n}.png", "caption": s.captions[0], "type": "image"} for n, s in test_clips]
    _write_jsonl(root / "cc3m" / "cc_train.jsonl", image_train)
    _write_jsonl(root / "cc3m" / "image_val.jsonl", image_val)
    coco_files = (
        "coco_train2017_pretrain_format_with_subfix.jsonl",
        "image_val_left.jsonl",
        "region_desc_pretrain_format_with_subfix.jsonl",
    )
    for k, file in enumerate(coco_files):
        _write_jsonl(root / "coco_vg" / file, image_train[k :: len(coco_files)])
    _write_jsonl(root / "coco_vg" / "image_val.jsonl", image_val)

    # DiDeMo: paragraph captions over an LMDB of the same clips
    if (root / "didemo_videos.lmdb").exists():
        shutil.rmtree(root / "didemo_videos.lmdb")
    shutil.copytree(root / "msrvtt_videos.lmdb", root / "didemo_videos.lmdb")
    _write_jsonl(
        root / "didemo_retrieval" / "train.jsonl",
        [{"caption": " ".join(s.captions), "clip_name": n, "sen_id": 0} for n, s in train_clips],
    )
    for split in ("val", "test"):
        _write_jsonl(
            root / "didemo_retrieval" / f"{split}.jsonl",
            [{"caption": s.captions[0], "clip_name": n, "retrieval_key": n} for n, s in test_clips],
        )

    # MSVD: a folder of .avi clips
    (root / "YouTubeClips").mkdir(exist_ok=True)
    for name, s in train_clips + test_clips:
        write_video(root / "YouTubeClips" / f"{name}.avi", s.frames, fps=8.0, codec="mpeg4")
    _write_jsonl(
        root / "msvd_retrieval" / "MSVD_train.jsonl",
        [
            {"caption": c, "clip_name": f"{n}.avi", "sen_id": j}
            for n, s in train_clips
            for j, c in enumerate(s.captions)
        ],
    )
    _write_jsonl(
        root / "msvd_retrieval" / "MSVD_test.jsonl",
        [{"caption": s.captions[0], "clip_name": f"{n}.avi", "retrieval_key": n} for n, s in test_clips],
    )

    def qa(part: list[tuple[str, SyntheticSample]], suffix: str) -> list[dict]:
        questions = (
            ("what colour is the digit", lambda s: s.colour),
            ("what number is shown", lambda s: DIGIT_WORDS[s.digit]),
            ("how does the digit move", lambda s: s.motion),
        )
        return [
            {"caption": q, "clip_name": n + suffix, "label": answers.index(answer(s))}
            for i, (n, s) in enumerate(part)
            for q, answer in (questions[i % 3],)
        ]

    _write_jsonl(root / "msvd_qa" / "msvd_train_qa.jsonl", qa(train_clips, ".avi"))
    _write_jsonl(root / "msvd_qa" / "msvd_test_qa.jsonl", qa(test_clips, ".avi"))
    _write_jsonl(root / "msrvtt_qa_antmmf" / "test_antmmf.jsonl", qa(test_clips, ""))
    shutil.copyfile(root / "count_reprocess_synthetic.json", root / "count_reprocess_webvid.json")
    return root
