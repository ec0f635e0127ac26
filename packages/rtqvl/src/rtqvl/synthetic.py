"""Synthetic data in RTQ's official formats (spec §8b, §8c): demo data, test fixtures and the repro's tasks.

The *temporal-order* task: each video shows event A (a coloured square at a position) in its first half and event
B in its second half; its caption is ``"{colour A} square on the {pos A} then {colour B} square on the {pos B}"``.
A test gallery holding every clip together with its order-swapped twin can only be solved by a model that sees
temporal order (spec §8c.1).
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import torch
from mmzoo.video import write_video

from rtqvl.data import write_lmdb

__all__ = [
    "COLOURS",
    "POSITIONS",
    "event_frame",
    "order_clip",
    "encode_mp4",
    "order_pairs",
    "write_order_dataset",
    "write_official_layouts",
]

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 30),
    "white": (235, 235, 235),
}
POSITIONS = ("left", "right", "top", "bottom")


def event_frame(colour: str, position: str, size: int = 32) -> torch.Tensor:
    """uint8 (3, S, S): a square of ``colour`` in the ``position`` half of a dark frame."""
    img = torch.full((3, size, size), 20, dtype=torch.uint8)
    q = size // 2
    s = size * 3 // 8
    y, x = {
        "left": (q - s // 2, 1),
        "right": (q - s // 2, size - s - 1),
        "top": (1, q - s // 2),
        "bottom": (size - s - 1, q - s // 2),
    }[position]
    img[:, y : y + s, x : x + s] = torch.tensor(COLOURS[colour], dtype=torch.uint8).view(3, 1, 1)
    return img


def order_clip(a: tuple[str, str], b: tuple[str, str], num_frames: int = 8, size: int = 32) -> torch.Tensor:
    """uint8 (T, 3, S, S): event ``a`` in the first half of the frames, event ``b`` in the second."""
    half = num_frames // 2
    return torch.stack([event_frame(*(a if t < half else b), size=size) for t in range(num_frames)])


def encode_mp4(frames: torch.Tensor, fps: float = 8.0) -> bytes:
    """Raw mp4 bytes of uint8 (T, 3, H, W) frames (what a ClipBERT LMDB stores).

    All-intra (GOP 1): an event then decodes to the same pixels at any position in the clip. With inter-coded frames
    the codec's drift differs between the first and the second half, which tells even an order-blind model (RQ)
    which event came first.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", frames, fps=fps, codec="mpeg4", gop=1)
        return path.read_bytes()


def caption_of(a: tuple[str, str], b: tuple[str, str]) -> str:
    return f"{a[0]} square on the {a[1]} then {b[0]} square on the {b[1]}"


def order_pairs(
    num: int, rng: random.Random, exclude: set | None = None, unordered: bool = False
) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """``num`` distinct ordered (A, B) event pairs with A, B of different colours and positions.

    ``unordered``: never return both (A, B) and (B, A) (the second one drawn is skipped), so that adding every
    pair's order-swapped twin gives ``2·num`` distinct clips. The draw is the same shuffle either way: when the
    first ``num`` shuffled pairs hold no such twin, both settings return them unchanged.
    """
    events = [(c, p) for c in COLOURS for p in POSITIONS]
    pairs = [(a, b) for a in events for b in events if a[0] != b[0] and a[1] != b[1]]
    exclude = exclude or set()
    pairs = [p for p in pairs if p not in exclude]
    rng.shuffle(pairs)
    if not unordered:
        return pairs[:num]
    out: list[tuple[tuple[str, str], tuple[str, str]]] = []
    taken: set = set()
    for a, b in pairs:
        if len(out) == num:
            break
        if (b, a) not in taken:
            out.append((a, b))
            taken.add((a, b))
    return out


def write_order_dataset(
    root: str | Path,
    num_train: int,
    num_test: int,
    seed: int = 0,
    ann_dir: str = "txt_db/msrvtt_retrieval",
    video_db: str = "vis_db/msrvtt",
    num_frames: int = 8,
    size: int = 32,
    train_name: str = "train.jsonl",
    extra_train_files: tuple[str, ...] = ("val.jsonl",),
    test_name: str = "test.jsonl",
) -> Path:
    """Write the temporal-order task as ClipBERT retrieval data: an LMDB of mp4 bytes and jsonl annotations.

    The test set holds ``num_test // 2`` pairs and their order-swapped twins, ``num_test`` distinct clips (no test
    pair is the reverse of another); train pairs never use a test pair in either order. Extra train files (the
    MSR-VTT layout's ``val.jsonl``) are written empty-free: one line each.
    """
    rng = random.Random(seed)
    root = Path(root)
    # a test pair and its reverse would put two identical clips (and two identical captions) in the gallery
    test_pairs = order_pairs(num_test // 2, rng, unordered=True)
    test_all = []
    for a, b in test_pairs:
        test_all += [(a, b), (b, a)]
    banned = set(test_all)
    train_pairs = order_pairs(num_train, rng, exclude=banned)
    videos: dict[str, bytes] = {}
    lines: dict[str, list[dict]] = {train_name: [], test_name: []}
    for split, pairs in ((train_name, train_pairs), (test_name, test_all)):
        for i, (a, b) in enumerate(pairs):
            vid = f"{Path(split).stem}{i:05d}"
            videos[vid] = encode_mp4(order_clip(a, b, num_frames, size))
            lines[split].append({"clip_name": vid, "caption": caption_of(a, b)})
    ann = root / ann_dir
    ann.mkdir(parents=True, exist_ok=True)
    # the last train clip goes to the extra file(s) so the MSR-VTT layout (train.jsonl + val.jsonl) is complete
    extra = lines[train_name][-len(extra_train_files) :] if extra_train_files else []
    for name, rows in (
        (train_name, lines[train_name][: len(lines[train_name]) - len(extra)]),
        (test_name, lines[test_name]),
    ):
        (ann / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, row in zip(extra_train_files, extra, strict=False):
        (ann / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
    write_lmdb(root / video_db, videos)
    return root


def write_official_layouts(
    root: str | Path, num_train: int = 4, num_test: int = 4, seed: int = 0, num_frames: int = 8, size: int = 32
) -> Path:
    """Write the temporal-order clips in the official layout of every dataset the shipped configs read (spec §4,
    README "Data preparation"), so that each config runs on ``root`` with only ``data.data_root`` changed:

    * retrieval: ``txt_db/msrvtt_retrieval/{train,val,test}.jsonl`` (captions as strings and as lists),
      ``txt_db/didemo_retrieval/{train,test}.jsonl`` and ``txt_db/anet_retrieval/{train,dev,val1}.jsonl`` (paragraph
      captions; ActivityNet names videos with the ``video`` key);
    * captioning: grouped ``txt_db/msrvtt_caption/{train,test}.jsonl`` and ``txt_db/msvd_caption/{train,val,test}
      .jsonl`` (two references per video);
    * MSRVTT-QA: LAVIS ``annotations/msrvtt_qa/qa_{train,val,test}.json`` (``video`` with its ``.mp4``);
    * NExT-QA: the official CSVs (``nextqa/{train,val}.csv``, ``test-data-nextqa/test.csv``, numeric video ids)
      converted by :func:`rtqvl.data.convert_nextqa_csv` into ``annotations/nextqa/{train,test}.json``;
    * videos: ``vis_db/{msrvtt,didemo,anet,msvd,nextqa}`` LMDBs of mp4 bytes.

    Train videos are ``video0 .. video{num_train-1}``; the test videos follow, each pair with its order-swapped twin.
    """
    import csv

    from rtqvl.data import NEXTQA_CSV_HEADER, convert_nextqa_csv

    rng = random.Random(seed)
    root = Path(root)
    test_pairs = order_pairs(max(1, num_test // 2), rng, unordered=True)
    test = [p for a, b in test_pairs for p in ((a, b), (b, a))]
    train = order_pairs(num_train, rng, exclude=set(test))
    clips = [(f"video{k}", a, b) for k, (a, b) in enumerate(train + test)]
    train_clips, test_clips = clips[:num_train], clips[num_train:]
    videos = {vid: encode_mp4(order_clip(a, b, num_frames, size)) for vid, a, b in clips}
    for name in ("msrvtt", "didemo", "anet", "msvd"):
        write_lmdb(root / "vis_db" / name, videos)

    def second(a: tuple[str, str], b: tuple[str, str]) -> str:
        return f"the {b[0]} square comes after the {a[0]} one"

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    # retrieval
    ret = root / "txt_db" / "msrvtt_retrieval"
    rows = [
        {"clip_name": vid, "caption": [caption_of(a, b), second(a, b)] if k % 2 else caption_of(a, b)}
        for k, (vid, a, b) in enumerate(train_clips)
    ]
    jsonl(ret / "train.jsonl", rows[:-1])
    jsonl(ret / "val.jsonl", rows[-1:])
    jsonl(ret / "test.jsonl", [{"clip_name": vid, "caption": caption_of(a, b)} for vid, a, b in test_clips])
    paragraphs = {vid: f"{caption_of(a, b)}. {second(a, b)}." for vid, a, b in clips}
    did = root / "txt_db" / "didemo_retrieval"
    jsonl(did / "train.jsonl", [{"clip_name": vid, "caption": paragraphs[vid]} for vid, _, _ in train_clips])
    jsonl(did / "test.jsonl", [{"clip_name": vid, "caption": paragraphs[vid]} for vid, _, _ in test_clips])
    anet = root / "txt_db" / "anet_retrieval"
    jsonl(anet / "train.jsonl", [{"video": vid, "caption": paragraphs[vid]} for vid, _, _ in train_clips])
    for name in ("dev.jsonl", "val1.jsonl"):
        jsonl(anet / name, [{"video": vid, "caption": paragraphs[vid]} for vid, _, _ in test_clips])

    # captioning
    def grouped(part: list) -> list[dict]:
        return [{"clip_name": vid, "caption": [caption_of(a, b), second(a, b)]} for vid, a, b in part]

    jsonl(root / "txt_db" / "msrvtt_caption" / "train.jsonl", grouped(train_clips))
    jsonl(root / "txt_db" / "msrvtt_caption" / "test.jsonl", grouped(test_clips))
    for name, part in (("train", train_clips), ("val", test_clips), ("test", test_clips)):
        jsonl(root / "txt_db" / "msvd_caption" / f"{name}.jsonl", grouped(part))

    # MSRVTT-QA (LAVIS JSON lists)
    qa = root / "annotations" / "msrvtt_qa"
    qa.mkdir(parents=True, exist_ok=True)
    qid = 0
    for name, part in (("qa_train.json", train_clips), ("qa_val.json", test_clips), ("qa_test.json", test_clips)):
        items = []
        for vid, a, b in part:
            for question, answer in (("what colour is the first square", a[0]), ("where is the last square", b[1])):
                items.append({"video": f"{vid}.mp4", "question": question, "answer": answer, "question_id": qid})
                qid += 1
        (qa / name).write_text(json.dumps(items), encoding="utf-8")

    # NExT-QA: official CSVs, converted as the README describes
    colours = list(COLOURS)
    nextqa_ids = {vid: str(4010000000 + k) for k, (vid, _, _) in enumerate(clips)}
    write_lmdb(root / "vis_db" / "nextqa", {nextqa_ids[vid]: data for vid, data in videos.items()})

    def nextqa_csv(path: Path, part: list) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(NEXTQA_CSV_HEADER)
            for k, (vid, a, _) in enumerate(part):
                options = [c for c in colours if c != a[0]][:4]
                answer = k % 5
                options.insert(answer, a[0])
                qtype = ("TP", "DC", "CW")[k % 3]
                row = [nextqa_ids[vid], num_frames, size, size, "what colour comes first", answer, k, qtype]
                w.writerow(row + options)
        return path

    csvs = root / "nextqa_csv"
    out = root / "annotations" / "nextqa"
    out.mkdir(parents=True, exist_ok=True)
    train_csvs = [
        nextqa_csv(csvs / "nextqa" / "train.csv", train_clips[:-1]),
        nextqa_csv(csvs / "nextqa" / "val.csv", train_clips[-1:]),
    ]
    convert_nextqa_csv(train_csvs, out / "train.json")  # train = train + val (spec §4)
    convert_nextqa_csv([nextqa_csv(csvs / "test-data-nextqa" / "test.csv", test_clips)], out / "test.json")
    return root
