"""Readers of SocialCounterfactuals, CMSC and FairFace (spec §4), generators writing those formats (spec §8b), the
collate function and the LightningDataModule.

Every reader exposes the same description of its samples, which the module needs for Skew:

* ``concepts`` (names, the concept vocabulary), ``concept_groups`` (group name per concept),
  ``questions`` (the concept question of each concept's group, spec §4.4);
* ``attribute_types`` (e.g. ``["gender", "race"]``) and ``attribute_values`` (value names per type);
* ``concept_ids`` (N,) long (-1 for unlabelled FairFace images) and ``attribute_ids`` (N, T) long (-1 unknown).

``__getitem__`` returns ``{"image": uint8 (3, S, S), "instruction": str, "answer": str, "concept": long,
"attributes": long (T,), "index": long}`` (``None`` for a corrupt image under ``on_corrupt: skip``).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from mmzoo.config import check_choice, check_range
from mmzoo.data import ensure_generated, worker_options
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from .sampling import ResampledEpochSampler

__all__ = [
    "DEFAULT_QUESTIONS",
    "CMSC_CONCEPTS",
    "EvalSetInfo",
    "SocialCounterfactualsDataset",
    "CMSCDataset",
    "FairFaceDataset",
    "collate",
    "make_socialcounterfactuals",
    "make_cmsc",
    "make_fairface",
    "render_counterfactual_image",
    "glyph_pools",
    "DemoDataConfig",
    "DebiasDataModule",
]

log = logging.getLogger(__name__)

SEE_README = "see README, Data preparation"

DEMO_STAMP = "demo_data.json"
"""The file in ``data_root`` recording the settings the demo data were generated with."""

DEFAULT_QUESTIONS: dict[str, str] = {
    "occupation": "What is the occupation of the person in the image?",
    "personality": "Which word best describes the personality of the person in the image?",
    "responsibility": "What is the person in the image most associated with?",
    "education": "What best describes the education of the person in the image?",
}
"""Reconstruction (spec §4.4): one concept question per concept group."""

CAPTION_INSTRUCTION = "Describe the person in the image."

CMSC_CONCEPTS: dict[str, list[str]] = {
    "personality": ["compassionate", "belligerent", "authority", "pleasant", "unpleasant"],
    "responsibility": ["tool", "weapon", "career", "family", "chef", "earning money"],
    "education": ["middle school", "high school", "university", "good student", "bad student", "science", "arts"],
}
"""The 18 CMSC social concepts in three groups (spec §4.2; names from summaries of the paper)."""

FAIRFACE_HEADER = ["file", "age", "gender", "race", "service_test"]
FAIRFACE_VALUES = {
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
    "gender": ["Male", "Female"],
    "race": ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"],
}

Split = Literal["train", "val", "test", "all"]
InstructionMode = Literal["concept_qa", "caption"]
SplitBy = Literal["counterfactual_set", "occupation"]
OnCorrupt = Literal["raise", "skip"]
GlyphSource = Literal["digits", "shapes"]
CounterfactualDataset = Literal["socialcounterfactuals", "cmsc"]

SCOUNTER_COLUMNS = ["image", "caption", "a1_type", "a1", "a2_type", "a2", "counterfactual_set", "a1a2"]
CMSC_COLUMNS = ["image", "caption", "concept", "concept_group", "gender", "race", "age", "counterfactual_set"]


@dataclass
class EvalSetInfo:
    """What the module needs to score one evaluation set: its name and vocabularies."""

    name: str
    concepts: list[str]
    concept_groups: list[str]
    questions: list[str]
    attribute_types: list[str]
    attribute_values: list[list[str]]

    @property
    def group_ids(self) -> list[int]:
        names = sorted(set(self.concept_groups))
        return [names.index(g) for g in self.concept_groups]


# ------------------------------------------------------------------------------------------------ images
def load_image(data: bytes | str | Path, size: int) -> torch.Tensor:
    """Decode an image, resize its short side to ``size`` and centre-crop → uint8 (3, size, size).

    Deviation: LLaVA-1.5 pads to a square before resizing; we resize + centre-crop (the datasets are square faces).
    """
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)  # (3, S, S)


def _split_of(key: str) -> str:
    """Deterministic split by hash (spec §4.1): crc32 mod 10 → 0–7 train, 8 val, 9 test."""
    bucket = zlib.crc32(key.encode("utf-8")) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def _set_numbers(prefix: str, n_sets: int, every_split: bool) -> list[int]:
    """Suffixes of a generated concept's ``n_sets`` counterfactual-set ids ``f"{prefix}{j}"``: ``0..n_sets-1``, or
    (``every_split``) the first suffixes that give this concept ``max(1, round(0.1·n))`` sets in each of val and test
    under the crc32 split (so that every split holds every concept; needs ``n_sets >= 3``)."""
    if not every_split:
        return list(range(n_sets))
    if n_sets < 3:
        raise ValueError(f"every_split needs at least 3 sets per concept (one per split), got n_sets={n_sets}")
    held = max(1, round(0.1 * n_sets))
    quota = {"train": n_sets - 2 * held, "val": held, "test": held}
    out, j = [], 0
    while len(out) < n_sets:
        split = _split_of(f"{prefix}{j}")
        if quota[split] > 0:
            quota[split] -= 1
            out.append(j)
        j += 1
    return out


def _parquet_files(root: Path, what: str) -> list[str]:
    files = sorted(str(p) for p in (root / "data").glob("*.parquet"))
    if not root.is_dir():
        raise FileNotFoundError(f"data.data_root: {what} directory '{root}' does not exist; {SEE_README}")
    if not files:
        raise FileNotFoundError(f"'{root / 'data'}': no *.parquet shards of {what}; {SEE_README}")
    return files


def _read_parquet(files: list[str], required: list[str], what: str):
    """The shards as a datasets.Dataset with undecoded images; checks the required columns."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise KeyError(f"{what} parquet '{files[0]}': missing columns {missing} (has {ds.column_names}); {SEE_README}")
    return ds.cast_column("image", datasets.Image(decode=False))


def _require_text(meta: dict[str, list], columns: list[str], root: Path, what: str) -> None:
    """Raise a ValueError naming the column and rows where a cell of ``columns`` is null, empty or blank.

    These cells are labels the readers group by: an empty concept would become a concept named ``""`` (scored as an
    empty answer), an empty counterfactual set id would gather unrelated images into one set (and one split), an
    empty attribute type would be a type of its own."""
    for column in columns:
        bad = [i for i, value in enumerate(meta[column]) if not isinstance(value, str) or not value.strip()]
        if bad:
            raise ValueError(
                f"{what} '{root}': column {column!r} is null or empty in {len(bad)} rows (first: {bad[:5]}, row numbers "
                f"of the shards read in name order); every row needs one; {SEE_README}"
            )


class _CounterfactualDataset(Dataset):
    """Shared item logic of the two counterfactual readers (rows already parsed into vocabularies)."""

    questions_by_group: dict[str, str]
    instruction_mode: InstructionMode
    image_size: int
    on_corrupt: OnCorrupt

    @staticmethod
    def _check_options(split: str, instruction_mode: str, on_corrupt: str) -> None:
        """Refuse a misspelt choice: an unknown instruction mode would train on captions, an unknown on_corrupt
        would skip corrupt images, and an unknown split would read as an empty split of the data."""
        check_choice("split", split, get_args(Split))
        check_choice("data.instruction_mode", instruction_mode, get_args(InstructionMode))
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))

    def _finish(
        self,
        rows: list[int],
        captions: list[str],
        sets: list[str],
        concept_names: list[str],
        group_of: dict[str, str],
        attr_types: list[str],
        attr_rows: list[dict[str, str]],
    ) -> None:
        self.concepts = sorted(set(concept_names))
        self.concept_groups = [group_of[c] for c in self.concepts]
        for g in set(self.concept_groups):
            if g not in self.questions_by_group:
                raise KeyError(f"data.questions has no question for concept group {g!r}; add one")
        self.questions = [self.questions_by_group[g] for g in self.concept_groups]
        self.attribute_types = attr_types
        self.attribute_values = [sorted({r[t] for r in attr_rows if r.get(t)}) for t in attr_types]
        self._rows = rows
        self._captions = [captions[r] for r in rows]
        self.counterfactual_sets = [sets[r] for r in rows]  # per item, the id of its counterfactual set
        c_index = {c: i for i, c in enumerate(self.concepts)}
        self.concept_ids = torch.tensor([c_index[concept_names[r]] for r in rows], dtype=torch.long)
        a_index = [{v: i for i, v in enumerate(vals)} for vals in self.attribute_values]
        self.attribute_ids = torch.tensor(
            [[a_index[t].get(attr_rows[r].get(name, ""), -1) for t, name in enumerate(attr_types)] for r in rows],
            dtype=torch.long,
        ).view(len(rows), len(attr_types))  # (N, T)

    def info(self, name: str) -> EvalSetInfo:
        return EvalSetInfo(
            name, self.concepts, self.concept_groups, self.questions, self.attribute_types, self.attribute_values
        )

    def __len__(self) -> int:
        return len(self._rows)

    def describe(self, index: int) -> dict[str, Any]:
        """What identifies item ``index``: ``source_row`` (its row in the parquet shards, read in name order),
        ``image`` (the image's file name stored in the parquet; None when only its bytes are), ``counterfactual_set``,
        ``concept`` and ``attributes`` (type → value, None when unknown)."""
        record = self._table[self._rows[index]]["image"] or {}  # a null image cell
        attrs = self.attribute_ids[index].tolist()
        return {
            "source_row": self._rows[index],
            "image": record.get("path") or None,
            "counterfactual_set": self.counterfactual_sets[index],
            "concept": self.concepts[int(self.concept_ids[index])],
            "attributes": {
                t: (self.attribute_values[j][a] if a >= 0 else None)
                for j, (t, a) in enumerate(zip(self.attribute_types, attrs))
            },
        }

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self._rows[index]
        record = self._table[row]["image"] or {}  # a null image cell
        try:
            source = record.get("bytes") or record.get("path")
            if not source:
                raise ValueError("the image cell holds neither bytes nor a path")
            image = load_image(source, self.image_size)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            where = f"{self._source} row {row} (set {self.counterfactual_sets[index]!r})"
            if self.on_corrupt == "raise":
                raise ValueError(f"corrupt image at {where}: {err}") from err
            log.warning("skipping corrupt image at %s: %s", where, err)
            return None
        c = int(self.concept_ids[index])
        if self.instruction_mode == "concept_qa":
            instruction, answer = self.questions[c], self.concepts[c]
        else:
            instruction, answer = CAPTION_INSTRUCTION, self._captions[index]
        return {
            "image": image,
            "instruction": instruction,
            "answer": answer,
            "concept": torch.tensor(c),
            "attributes": self.attribute_ids[index],
            "index": torch.tensor(index),
        }


def _concept_after_attributes(caption: str, a1: str | None, a2: str | None) -> str:
    """The concept of a SocialCounterfactuals caption: the text after its attribute words (spec §4.1: after
    ``a2 + " "``). The words are matched whole (``male`` is not the end of ``female``), and when ``a1`` is written
    after ``a2`` (``A photo of a male White nurse``) the concept starts after ``a1``, so that no attribute word is
    left in the concept name (which would split one occupation into one concept per attribute value)."""
    found = re.search(rf"(?<!\S){re.escape(a2)}\s", caption) if a2 else None
    if found is None:
        return ""
    end = found.end()
    after_a1 = re.search(rf"(?<!\S){re.escape(a1)}\s", caption) if a1 else None
    if after_a1 is not None:
        end = max(end, after_a1.end())
    return caption[end:].strip().rstrip(".").strip()


class SocialCounterfactualsDataset(_CounterfactualDataset):
    """SocialCounterfactuals (spec §4.1): ``<data_root>/data/*.parquet`` with the hub columns
    ``image, caption, a1_type, a1, a2_type, a2, counterfactual_set, a1a2``.

    The concept is the caption text after ``a2 + " "``. Attribute types are read from the ``a1_type``/``a2_type``
    values (a row lacking a type gets -1 for it). ``family`` keeps one intersectional family, e.g. ``race-gender``
    (the two ``a*_type`` values joined by ``-``, in any order), or ``all``. ``intersectional`` adds the type ``{a1_type}x{a2_type}``
    with the ``a1a2`` values. Reconstruction: splits by crc32 of ``counterfactual_set`` (or of the occupation,
    ``split_by: occupation``): 0–7 train, 8 val, 9 test.
    """

    def __init__(
        self,
        data_root: str | Path,
        split: Split = "train",
        image_size: int = 336,
        instruction_mode: InstructionMode = "concept_qa",
        family: str = "race-gender",
        intersectional: bool = False,
        split_by: SplitBy = "counterfactual_set",
        questions: dict[str, str] | None = None,
        on_corrupt: OnCorrupt = "raise",
    ) -> None:
        self._check_options(split, instruction_mode, on_corrupt)
        check_choice("data.split_by", split_by, get_args(SplitBy))  # anything else would split by occupation
        check_range("data.image_size", image_size, ge=1, integer=True)
        root = Path(data_root).expanduser()
        self._source = str(root)
        self.image_size, self.instruction_mode, self.on_corrupt = image_size, instruction_mode, on_corrupt
        self.questions_by_group = dict(DEFAULT_QUESTIONS if questions is None else questions)
        self._table = _read_parquet(
            _parquet_files(root, "SocialCounterfactuals"), SCOUNTER_COLUMNS, "SocialCounterfactuals"
        )
        meta = self._table.select_columns([c for c in SCOUNTER_COLUMNS if c != "image"]).to_dict()
        _require_text(meta, ["caption", "a1_type", "a2_type", "counterfactual_set"], root, "SocialCounterfactuals")
        captions, sets = list(meta["caption"]), list(meta["counterfactual_set"])
        concept_names, attr_rows, families = [], [], []
        for i, caption in enumerate(captions):
            a2 = meta["a2"][i]
            concept = _concept_after_attributes(caption, meta["a1"][i], a2)
            if not concept:
                raise ValueError(f"{root}: row {i} caption {caption!r} has no concept after a2={a2!r}; {SEE_README}")
            concept_names.append(concept)
            t1, t2 = meta["a1_type"][i], meta["a2_type"][i]
            row = {t1: meta["a1"][i], t2: a2}
            if intersectional:
                row[f"{t1}x{t2}"] = meta["a1a2"][i]
            attr_rows.append(row)
            families.append("-".join(sorted([t1, t2])))
        known = sorted(set(families))
        family = family if family == "all" else "-".join(sorted(family.split("-")))  # order-insensitive
        if family != "all" and family not in known:
            raise ValueError(f"data.family={family!r} not in {root}; families present: {known}")
        keep = [i for i in range(len(captions)) if family == "all" or families[i] == family]
        attr_types = sorted({t for i in keep for t in attr_rows[i]})
        split_key = sets if split_by == "counterfactual_set" else concept_names
        rows = [i for i in keep if split == "all" or _split_of(split_key[i]) == split]
        if not rows:
            raise ValueError(f"{root}: split {split!r} of family {family!r} is empty")
        self._finish(
            rows, captions, sets, concept_names, dict.fromkeys(concept_names, "occupation"), attr_types, attr_rows
        )


class CMSCDataset(_CounterfactualDataset):
    """CMSC (spec §4.2, package layout): ``<data_root>/data/*.parquet`` with columns
    ``image, caption, concept, concept_group, gender, race, age, counterfactual_set``.

    Reconstruction: the release split is unknown; split by crc32 of ``counterfactual_set`` as for SocialCounterfactuals.
    """

    def __init__(
        self,
        data_root: str | Path,
        split: Split = "train",
        image_size: int = 336,
        instruction_mode: InstructionMode = "concept_qa",
        questions: dict[str, str] | None = None,
        on_corrupt: OnCorrupt = "raise",
    ) -> None:
        self._check_options(split, instruction_mode, on_corrupt)
        check_range("data.image_size", image_size, ge=1, integer=True)
        root = Path(data_root).expanduser()
        self._source = str(root)
        self.image_size, self.instruction_mode, self.on_corrupt = image_size, instruction_mode, on_corrupt
        self.questions_by_group = dict(DEFAULT_QUESTIONS if questions is None else questions)
        self._table = _read_parquet(_parquet_files(root, "CMSC"), CMSC_COLUMNS, "CMSC")
        meta = self._table.select_columns([c for c in CMSC_COLUMNS if c != "image"]).to_dict()
        _require_text(meta, ["concept", "concept_group", "counterfactual_set"], root, "CMSC")
        if instruction_mode == "caption":  # the caption is then the answer trained on
            _require_text(meta, ["caption"], root, "CMSC (data.instruction_mode=caption)")
        captions, sets, concept_names = list(meta["caption"]), list(meta["counterfactual_set"]), list(meta["concept"])
        group_of: dict[str, str] = {}
        for c, g in zip(concept_names, meta["concept_group"], strict=True):
            if group_of.setdefault(c, g) != g:
                raise ValueError(f"{root}: concept {c!r} appears in groups {group_of[c]!r} and {g!r}")
        attr_types = ["age", "gender", "race"]
        attr_rows = [{t: meta[t][i] for t in attr_types} for i in range(len(captions))]
        rows = [i for i in range(len(captions)) if split == "all" or _split_of(sets[i]) == split]
        if not rows:
            raise ValueError(f"{root}: CMSC split {split!r} is empty")
        self._finish(rows, captions, sets, concept_names, group_of, attr_types, attr_rows)


class FairFaceDataset(Dataset):
    """FairFace (spec §4.3): ``<data_root>/fairface_label_{split}.csv`` (header ``file,age,gender,race,service_test``)
    with images at ``<data_root>/<file>``. Used for evaluation only: images carry no concept (``concept = -1``); every
    image is in the pool of every query concept (``concepts``, ``concept_groups``).
    """

    def __init__(
        self,
        data_root: str | Path,
        concepts: list[str],
        concept_groups: list[str],
        split: Literal["val", "train"] = "val",
        image_size: int = 336,
        questions: dict[str, str] | None = None,
        max_images: int | None = None,
        on_corrupt: OnCorrupt = "raise",
    ) -> None:
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))  # anything else would skip corrupt images
        check_range("data.image_size", image_size, ge=1, integer=True)
        if max_images is not None and max_images < 1:  # a negative slice bound would drop the last images instead
            raise ValueError(
                f"data.fairface_max_images={max_images} must be a positive number of images, or null for all"
            )
        root = Path(data_root).expanduser()
        label_file = root / f"fairface_label_{split}.csv"
        if not label_file.is_file():
            raise FileNotFoundError(f"data.fairface_root: missing '{label_file}' (FairFace labels); {SEE_README}")
        if len(concepts) != len(concept_groups) or not concepts:
            raise ValueError(
                "FairFace needs a non-empty concept list with one group per concept (data.fairface_concepts)"
            )
        with label_file.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in FAIRFACE_HEADER[:4] if c not in (reader.fieldnames or [])]
            if missing:
                raise KeyError(f"'{label_file}': missing columns {missing}; {SEE_README}")
            records = list(reader)
        if max_images is not None:
            records = records[:max_images]
        if not records:
            raise ValueError(f"'{label_file}' has no rows")
        self.root, self.image_size, self.on_corrupt = root, image_size, on_corrupt
        self.files = [r["file"] for r in records]
        self.concepts, self.concept_groups = list(concepts), list(concept_groups)
        q = DEFAULT_QUESTIONS if questions is None else questions
        missing = sorted({g for g in concept_groups if g not in q})
        if missing:
            raise KeyError(
                f"data.questions has no question for the FairFace query concept groups {missing} "
                "(data.fairface_concepts, default: the training concepts + CMSC's); add one"
            )
        self.questions = [q[g] for g in concept_groups]
        self.attribute_types = ["age", "gender", "race"]
        self.attribute_values = [FAIRFACE_VALUES[t] for t in self.attribute_types]
        index = [{v: i for i, v in enumerate(vals)} for vals in self.attribute_values]
        # a label outside FairFace's vocabulary (another release's spelling, a blank cell) would silently drop that
        # image from the attribute's pools and bias the Skew; a repeated file would count one face twice
        for t, name in enumerate(self.attribute_types):
            unknown = sorted({r[name] for r in records if r[name] not in index[t]}, key=str)
            if unknown:
                raise ValueError(
                    f"'{label_file}': {name} values {unknown[:5]} are not FairFace's {self.attribute_values[t]}"
                )
        seen: set[str] = set()
        repeated = sorted({f for f in self.files if f in seen or seen.add(f)})
        if repeated:
            raise ValueError(f"'{label_file}': files listed more than once: {repeated[:5]}")
        self.attribute_ids = torch.tensor(
            [[index[t].get(r[name], -1) for t, name in enumerate(self.attribute_types)] for r in records]
        )  # (N, 3)
        self.concept_ids = torch.full((len(records),), -1, dtype=torch.long)

    def info(self, name: str) -> EvalSetInfo:
        return EvalSetInfo(
            name, self.concepts, self.concept_groups, self.questions, self.attribute_types, self.attribute_values
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path = self.root / self.files[index]
        try:
            image = load_image(path, self.image_size)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            if self.on_corrupt == "raise":
                raise ValueError(f"corrupt or missing FairFace image '{path}': {err}") from err
            log.warning("skipping corrupt FairFace image %s: %s", path, err)
            return None
        return {
            "image": image,
            "instruction": "",
            "answer": "",
            "concept": torch.tensor(-1),
            "attributes": self.attribute_ids[index],
            "index": torch.tensor(index),
        }


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack a list of items (``None`` = skipped corrupt image) → images (B, 3, S, S), concept (B,), attributes (B, T),
    index (B,), instruction / answer lists. An all-skipped batch gives ``{"image": empty}`` (B = 0)."""
    items = [it for it in items if it is not None]
    if not items:
        return {
            "image": torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
            "instruction": [],
            "answer": [],
            "concept": torch.zeros(0, dtype=torch.long),
            "attributes": torch.zeros(0, 0, dtype=torch.long),
            "index": torch.zeros(0, dtype=torch.long),
        }
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, S, S)
        "instruction": [it["instruction"] for it in items],
        "answer": [it["answer"] for it in items],
        "concept": torch.stack([it["concept"] for it in items]),  # (B,)
        "attributes": torch.stack([it["attributes"] for it in items]),  # (B, T)
        "index": torch.stack([it["index"] for it in items]),  # (B,)
    }


# -------------------------------------------------------------------------------------- synthetic generators
_HUES = [(200, 60, 60), (60, 110, 200), (70, 170, 80), (200, 170, 50), (150, 80, 180), (60, 180, 180), (120, 120, 120)]


def _shape_glyph(k: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural 8×8 glyph for class ``k`` (fallback when scikit-learn's digits are not wanted)."""
    g = np.zeros((8, 8), dtype=np.float32)
    kind = k % 6
    if kind == 0:
        g[3:5, 1:7] = 1  # horizontal bar
    elif kind == 1:
        g[1:7, 3:5] = 1  # vertical bar
    elif kind == 2:
        g[3:5, 1:7] = 1
        g[1:7, 3:5] = 1  # cross
    elif kind == 3:
        g[1:7, 1:7] = 1
        g[2:6, 2:6] = 0  # box
    elif kind == 4:
        np.fill_diagonal(g, 1)  # diagonal
    else:
        g[1:7, 1] = 1
        g[6, 1:7] = 1  # L shape
    g += rng.normal(0, 0.1, g.shape).astype(np.float32)
    return np.clip(g, 0, 1)


def glyph_pools(source: GlyphSource, classes: int, instance_fraction: tuple[float, float]) -> list[list[np.ndarray]]:
    """Per class, the list of 8×8 glyphs in [0, 1] that the generated datasets draw from (``digits``: sklearn's
    load_digits instances of digit ``k mod 10`` in the given fraction of each digit's instances; ``shapes``: drawn
    shapes)."""
    check_choice("glyph_source", source, get_args(GlyphSource))  # anything else would draw shapes
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        out = []
        for k in range(classes):
            imgs = digits.images[digits.target == k % 10] / 16.0
            lo, hi = (int(f * len(imgs)) for f in instance_fraction)
            out.append([im.astype(np.float32) for im in imgs[lo:hi]])
        return out
    rng = np.random.default_rng(0)
    return [[_shape_glyph(k, rng) for _ in range(50)] for k in range(classes)]


def render_counterfactual_image(
    glyph: np.ndarray, hue: int, border: int, size: int, offset: tuple[int, int], noise: np.ndarray | None = None
) -> np.ndarray:
    """Person-free image (spec §8b): the concept glyph (upsampled ×size/16) on a background hue (race-like attribute)
    with a border pattern (gender-like: 0 solid, 1 dashed, 2 double). → uint8 (size, size, 3)."""
    bg = np.array(_HUES[hue % len(_HUES)], dtype=np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    scale = max(1, size // 16)
    big = np.kron(glyph, np.ones((scale, scale), dtype=np.float32))  # (8·scale, 8·scale)
    y, x = offset
    patch = img[y : y + big.shape[0], x : x + big.shape[1]]
    patch[:] = patch * (1 - big[..., None]) + 255.0 * big[..., None]
    b = max(1, size // 16)
    edge = np.zeros((size, size), dtype=bool)
    edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
    if border % 3 == 1:
        stripes = (np.add.outer(np.arange(size), np.arange(size)) // 2) % 2 == 0
        edge &= stripes
    elif border % 3 == 2:
        edge[2 * b : 3 * b, 2 * b : -2 * b] = True
        edge[-3 * b : -2 * b, 2 * b : -2 * b] = True
    img[edge] = 0.0
    if noise is not None:
        img = img + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_socialcounterfactuals(
    root: str | Path,
    occupations: list[str],
    races: list[str],
    genders: list[str],
    n_sets: int,
    image_size: int = 32,
    seed: int = 0,
    glyph_source: GlyphSource = "shapes",
    instance_fraction: tuple[float, float] = (0.0, 1.0),
    bias: float | None = None,
    glyph_noise: float = 0.0,
    erase: bool = False,
    jitter: bool = True,
    every_split: bool = False,
    each_instance_once: bool = False,
) -> Path:
    """Write a SocialCounterfactuals-format shard ``root/data/train-00000-of-00001.parquet`` (spec §8b).

    Counterfactual sets (``bias=None``): per occupation ``k`` and set, one glyph rendered under every race × gender
    (identical position/noise). Biased sets (``bias=p``): one image per set, race ``k mod |races|`` with probability
    ``p`` (else another race), random gender — the stereotype of the repro experiment (spec §8c). ``glyph_noise``
    (σ, in glyph units) and ``erase`` degrade the glyph so the hue becomes a shortcut. ``jitter=False`` centres the
    glyph instead of placing it at a random offset per set. ``every_split`` numbers the sets so that each occupation
    has sets in train, val and test (see :func:`_set_numbers`). Each set's glyph instance is drawn at random (with
    replacement) from the occupation's pool; ``each_instance_once`` instead renders set ``j`` from the pool's ``j``-th
    instance, so no glyph repeats (``n_sets`` is then capped at the pool size: a large ``n_sets`` uses every instance).
    """
    import datasets

    rng = np.random.default_rng(seed)
    glyphs = glyph_pools(glyph_source, len(occupations), instance_fraction)
    columns: dict[str, list] = {c: [] for c in SCOUNTER_COLUMNS}
    for k, occupation in enumerate(occupations):
        set_prefix = f"a_photo_of_race_gender_{occupation.replace(' ', '_')}_"
        pool = glyphs[k]
        count = min(n_sets, len(pool)) if each_instance_once else n_sets
        for j, s in enumerate(_set_numbers(set_prefix, count, every_split)):
            glyph = pool[j if each_instance_once else int(rng.integers(len(pool)))].copy()
            if glyph_noise > 0:
                glyph = np.clip(glyph + rng.normal(0, glyph_noise, glyph.shape), 0, 1).astype(np.float32)
            if erase:
                y0, x0 = rng.integers(0, 5, size=2)
                glyph[y0 : y0 + 4, x0 : x0 + 4] = 0
            span = image_size - 8 * max(1, image_size // 16) - 2 * max(1, image_size // 16)
            if jitter:
                offset = tuple(int(v) + max(1, image_size // 16) for v in rng.integers(0, max(1, span), size=2))
            else:
                offset = (span // 2 + max(1, image_size // 16),) * 2
            noise = rng.normal(0, 6, (image_size, image_size, 3)).astype(np.float32)
            if bias is None:
                combos = [(r, g) for r in range(len(races)) for g in range(len(genders))]
            else:
                stereo = k % len(races)
                others = [r for r in range(len(races)) if r != stereo] or [stereo]
                r = stereo if rng.random() < bias else int(rng.choice(others))
                combos = [(r, int(rng.integers(len(genders))))]
            for r, g in combos:
                columns["image"].append(
                    {"bytes": _png(render_counterfactual_image(glyph, r, g, image_size, offset, noise)), "path": None}
                )
                columns["caption"].append(f"A photo of a {races[r]} {genders[g]} {occupation}")
                columns["a1_type"].append("race")
                columns["a1"].append(races[r])
                columns["a2_type"].append("gender")
                columns["a2"].append(genders[g])
                columns["a1a2"].append(f"{races[r]}_{genders[g]}")
                columns["counterfactual_set"].append(f"{set_prefix}{s}")
    features = datasets.Features(
        {c: datasets.Image() if c == "image" else datasets.Value("string") for c in SCOUNTER_COLUMNS}
    )
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(out / "train-00000-of-00001.parquet"))
    return Path(root)


def make_cmsc(
    root: str | Path,
    concepts: dict[str, list[str]] | None = None,
    races: tuple[str, ...] = ("White", "Black"),
    genders: tuple[str, ...] = ("male", "female"),
    ages: tuple[str, ...] = ("young", "old"),
    n_sets: int = 2,
    image_size: int = 32,
    seed: int = 0,
    every_split: bool = False,
) -> Path:
    """Write a CMSC-format shard ``root/data/train-00000-of-00001.parquet`` (spec §4.2 layout, §8b): per concept and
    set, one glyph under every gender × age × race (race = background hue, gender = border, age = glyph brightness).
    ``every_split`` numbers the sets so that each concept has sets in train, val and test."""
    import datasets

    concepts = CMSC_CONCEPTS if concepts is None else concepts
    rng = np.random.default_rng(seed)
    flat = [(g, c) for g, cs in concepts.items() for c in cs]
    glyphs = glyph_pools("shapes", len(flat), (0.0, 1.0))
    columns: dict[str, list] = {c: [] for c in CMSC_COLUMNS}
    for k, (group, concept) in enumerate(flat):
        set_prefix = f"{group}_{concept.replace(' ', '_')}_"
        for s in _set_numbers(set_prefix, n_sets, every_split):
            glyph = glyphs[k][int(rng.integers(len(glyphs[k])))]
            offset = (2, 2)
            for gi, gender in enumerate(genders):
                for ai, age in enumerate(ages):
                    for ri, race in enumerate(races):
                        arr = render_counterfactual_image(glyph * (1.0 - 0.4 * ai), ri, gi, image_size, offset)
                        columns["image"].append({"bytes": _png(arr), "path": None})
                        columns["caption"].append(f"A photo of a {age} {race} {gender} person, {concept}")
                        columns["concept"].append(concept)
                        columns["concept_group"].append(group)
                        columns["gender"].append(gender)
                        columns["race"].append(race)
                        columns["age"].append(age)
                        columns["counterfactual_set"].append(f"{set_prefix}{s}")
    features = datasets.Features(
        {c: datasets.Image() if c == "image" else datasets.Value("string") for c in CMSC_COLUMNS}
    )
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(out / "train-00000-of-00001.parquet"))
    return Path(root)


def make_fairface(root: str | Path, n: int, image_size: int = 32, seed: int = 0) -> Path:
    """Write ``root/fairface_label_val.csv`` (exact header and vocabularies of spec §4.3) and ``root/val/{i}.jpg``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "val").mkdir(parents=True, exist_ok=True)
    glyphs = glyph_pools("shapes", 6, (0.0, 1.0))
    with (root / "fairface_label_val.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FAIRFACE_HEADER)
        for i in range(1, n + 1):
            age = FAIRFACE_VALUES["age"][int(rng.integers(9))]
            gender = int(rng.integers(2))
            race = int(rng.integers(7))
            glyph = glyphs[int(rng.integers(6))][0]
            arr = render_counterfactual_image(glyph, race, gender, image_size, (2, 2))
            Image.fromarray(arr).save(root / "val" / f"{i}.jpg", quality=95)
            writer.writerow(
                [f"val/{i}.jpg", age, FAIRFACE_VALUES["gender"][gender], FAIRFACE_VALUES["race"][race], "False"]
            )
    return root


# ----------------------------------------------------------------------------------------------- DataModule
@dataclass
class DemoDataConfig:
    """The generated SocialCounterfactuals-format data of ``data.generate_demo_data`` (spec §8a/§8b)."""

    occupations: list[str] = field(default_factory=lambda: ["plumber", "nurse", "chef", "pilot"])
    """Occupations (concepts); class k is drawn as glyph k."""
    races: list[str] = field(default_factory=lambda: ["White", "Black"])
    """Race values (background hues)."""
    genders: list[str] = field(default_factory=lambda: ["male", "female"])
    """Gender values (border patterns)."""
    n_sets: int = 20
    """Counterfactual sets per occupation."""
    glyph_source: GlyphSource = "shapes"
    """Concept glyphs: scikit-learn digits or procedural shapes."""
    bias: float | None = None
    """None: balanced counterfactual sets; p: one image per set with the stereotyped race with probability p."""
    fairface_images: int = 0
    """Also write a FairFace-format folder of this many images under ``<data_root>/fairface`` (0 = none)."""
    cmsc_sets: int = 0
    """Also write a CMSC-format folder with this many sets per concept under ``<data_root>/CMSC`` (0 = none)."""
    every_split: bool = False
    """Number the generated sets so that every concept has sets in train, val and test (the crc32 split of a few
    consecutive set ids can leave a split with one concept, making concept accuracy meaningless); needs ≥ 3 sets."""

    def __post_init__(self) -> None:
        check_choice("data.demo.glyph_source", self.glyph_source, get_args(GlyphSource))
        check_range("data.demo.n_sets", self.n_sets, ge=1, integer=True)
        if self.bias is not None:  # a probability
            check_range("data.demo.bias", self.bias, ge=0, le=1)
        check_range("data.demo.fairface_images", self.fairface_images, ge=0, integer=True)  # 0: none
        check_range("data.demo.cmsc_sets", self.cmsc_sets, ge=0, integer=True)  # 0: none


class DebiasDataModule(pl.LightningDataModule):
    """Training data (a counterfactual dataset) and the evaluation sets (its val/test split, FairFace, CMSC).

    Test dataloaders, in order: the training dataset's test split, then FairFace (``fairface_root``), then CMSC
    (``cmsc_root``) — each evaluated for bias with its own concept list (:attr:`eval_sets`).
    """

    def __init__(
        self,
        data_root: str = "data",
        dataset: CounterfactualDataset = "socialcounterfactuals",
        image_size: int = 336,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        instruction_mode: InstructionMode = "concept_qa",
        family: str = "race-gender",
        intersectional: bool = False,
        split_by: SplitBy = "counterfactual_set",
        questions: dict[str, str] | None = None,
        fairface_root: str | None = None,
        fairface_concepts: dict[str, list[str]] | None = None,
        fairface_max_images: int | None = None,
        cmsc_root: str | None = None,
        probe_fraction: float = 1.0,
        on_corrupt: OnCorrupt = "raise",
        generate_demo_data: bool = False,
        demo: DemoDataConfig | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            data_root: folder of the training dataset (``<root>/data/*.parquet``; spec §4.1/§4.2 layouts).
            dataset: which counterfactual reader trains the model (spec §4).
            image_size: vision input size (336 for LLaVA-1.5, spec §3.1).
            batch_size: training batch per device (spec §3.6: global 128, Reconstruction).
            eval_batch_size: images per validation/test/probe batch.
            num_workers: DataLoader workers.
            pin_memory: DataLoader pin_memory.
            persistent_workers: DataLoader persistent_workers.
            instruction_mode: ``concept_qa`` (default) or ``caption`` training pairs (spec §4.4, Reconstruction).
            family: SocialCounterfactuals intersectional family (``race-gender``, ``gender-physical``, ``physical-race``, ``all``).
            intersectional: add the ``a1xa2`` attribute type.
            split_by: SocialCounterfactuals split key (spec §4.1, Reconstruction).
            questions: concept question per group (spec §4.4); ``None`` = the defaults.
            fairface_root: FairFace folder for a cross-dataset bias test (spec §4.3); ``None`` = skip.
            fairface_concepts: FairFace query concepts by group; ``None`` = the union of the training concepts and
                the CMSC concepts (those of the CMSC test set with ``cmsc_root``, else CMSC's 18), spec §3.2.
            fairface_max_images: cap on FairFace images (a probe subset; ``None`` = all 10,954).
            cmsc_root: CMSC folder for a cross-dataset bias test (its test split); ``None`` = skip.
            probe_fraction: fraction of the training set used for the per-epoch Skew refresh (spec §3.3).
            on_corrupt: corrupt image → ``raise`` or ``skip`` (logged with its location).
            generate_demo_data: write generated SocialCounterfactuals-format data into ``data_root`` when it holds no
                shards, or generated ones whose settings changed (a folder of shards without the stamp is left alone).
            demo: what ``generate_demo_data`` writes.
            seed: seed of the epoch sampler and the probe subset.
        """
        super().__init__()
        # the readers are built only at setup, and an unknown dataset would read the data as CMSC
        check_choice("data.dataset", dataset, get_args(CounterfactualDataset))
        check_choice("data.instruction_mode", instruction_mode, get_args(InstructionMode))
        check_choice("data.split_by", split_by, get_args(SplitBy))
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))
        if not 0 < probe_fraction <= 1:
            raise ValueError(f"data.probe_fraction={probe_fraction} must be in (0, 1]")
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.image_size", image_size, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        if fairface_max_images is not None and fairface_max_images < 1:  # checked before a fit, not at its test
            raise ValueError(
                f"data.fairface_max_images={fairface_max_images} must be a positive number of images, or null for all"
            )
        self.save_hyperparameters()
        self.demo = demo or DemoDataConfig()
        self.train_set: Dataset | None = None
        self.train_sampler: ResampledEpochSampler | None = None
        self._eval: dict[str, list[tuple[str, Dataset]]] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """With ``generate_demo_data``: write the generated data into ``data_root`` unless it already holds them
        with the current settings (``data.demo``, ``image_size``, ``seed``, recorded in ``demo_data.json``).

        Generated data whose stamp records other settings are written again. A folder that already has parquet
        shards but no stamp is the user's own data (or demo data written before stamps existed): it is left alone,
        with a warning (:func:`mmzoo.data.ensure_generated`)."""
        hp = self.hparams
        if not hp.generate_demo_data:
            return
        root = Path(hp.data_root).expanduser()
        # any shard marks the folder as filled: a user's shards have other names than the generator's one, and
        # writing the generated shard beside them would mix the two data sets
        shards = sorted((root / "data").glob("*.parquet"))
        marker = shards[0] if shards else root / "data" / "train-00000-of-00001.parquet"
        settings = {"demo": asdict(self.demo), "image_size": hp.image_size, "seed": hp.seed}
        ensure_generated(
            marker, root / DEMO_STAMP, settings, lambda: self._write_demo_data(root), "demo data generator"
        )

    def _write_demo_data(self, root: Path) -> None:
        """Write the SocialCounterfactuals-format data of ``data.demo`` (and its FairFace / CMSC extras) to ``root``."""
        hp, d = self.hparams, self.demo
        log.info("writing generated SocialCounterfactuals-format data to %s", root)
        make_socialcounterfactuals(
            root,
            d.occupations,
            d.races,
            d.genders,
            d.n_sets,
            hp.image_size,
            hp.seed,
            d.glyph_source,
            bias=d.bias,
            every_split=d.every_split,
        )
        if d.fairface_images:
            make_fairface(root / "fairface", d.fairface_images, hp.image_size, hp.seed)
        if d.cmsc_sets:
            make_cmsc(
                root / "CMSC", n_sets=d.cmsc_sets, image_size=hp.image_size, seed=hp.seed, every_split=d.every_split
            )

    def _roots(self) -> tuple[Path, Path | None, Path | None]:
        hp = self.hparams
        root = Path(hp.data_root).expanduser()
        fairface = Path(hp.fairface_root).expanduser() if hp.fairface_root else None
        cmsc = Path(hp.cmsc_root).expanduser() if hp.cmsc_root else None
        if hp.generate_demo_data:  # the generated extras live under data_root unless named explicitly
            if fairface is None and self.demo.fairface_images:
                fairface = root / "fairface"
            if cmsc is None and self.demo.cmsc_sets:
                cmsc = root / "CMSC"
        return root, fairface, cmsc

    def _counterfactual(self, split: str, which: str | None = None, root: Path | None = None) -> _CounterfactualDataset:
        hp = self.hparams
        which = which or hp.dataset
        root = root or self._roots()[0]
        if which == "socialcounterfactuals":
            return SocialCounterfactualsDataset(
                root,
                split,
                hp.image_size,
                hp.instruction_mode,
                hp.family,
                hp.intersectional,
                hp.split_by,
                hp.questions,
                hp.on_corrupt,
            )
        return CMSCDataset(root, split, hp.image_size, hp.instruction_mode, hp.questions, hp.on_corrupt)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._counterfactual("train")
            self.train_sampler = ResampledEpochSampler(len(self.train_set), hp.seed)
        if stage in ("fit", "validate", None):
            self._eval["val"] = [(hp.dataset, self._counterfactual("val"))]
        if stage == "predict" and "predict" not in self._eval:  # the test split of the training dataset
            self._eval["predict"] = [(hp.dataset, self._counterfactual("test"))]
        if stage in ("test", None):
            root, fairface, cmsc = self._roots()
            sets: list[tuple[str, Dataset]] = [(hp.dataset, self._counterfactual("test"))]
            cmsc_set = None
            if cmsc is not None:
                cmsc_set = self._counterfactual("test", "cmsc", cmsc) if hp.dataset != "cmsc" else None
            if fairface is not None:
                if hp.fairface_concepts is not None:
                    by_group = hp.fairface_concepts
                    concepts = [c for cs in by_group.values() for c in cs]
                    groups = [g for g, cs in by_group.items() for _ in cs]
                else:  # spec §3.2: the union of the evaluated concepts and CMSC's (its 18 when no CMSC folder is read)
                    base = sets[0][1]
                    concepts, groups = list(base.concepts), list(base.concept_groups)
                    if cmsc_set is not None:
                        extra = list(zip(cmsc_set.concepts, cmsc_set.concept_groups, strict=True))
                    else:
                        extra = [(c, g) for g, cs in CMSC_CONCEPTS.items() for c in cs]
                    for concept, group in extra:  # a name in both lists (e.g. chef) is queried once
                        if concept not in concepts:
                            concepts.append(concept)
                            groups.append(group)
                sets.append(
                    (
                        "fairface",
                        FairFaceDataset(
                            fairface,
                            concepts,
                            groups,
                            "val",
                            hp.image_size,
                            hp.questions,
                            hp.fairface_max_images,
                            hp.on_corrupt,
                        ),
                    )
                )
            if cmsc_set is not None:
                sets.append(("cmsc", cmsc_set))
            self._eval["test"] = sets

    def eval_sets(self, stage: Literal["val", "test"]) -> list[EvalSetInfo]:
        """Vocabularies of the validation or test dataloaders, in dataloader order."""
        return [ds.info(name) for name, ds in self._eval[stage]]

    @property
    def train_info(self) -> EvalSetInfo:
        if self.train_set is None:
            raise RuntimeError("DebiasDataModule.setup('fit') has not run")
        return self.train_set.info(self.hparams.dataset)

    # ------------------------------------------------------------------------------------------ dataloaders
    def _loader(
        self, ds: Dataset, batch_size: int, sampler=None, shuffle: bool = False, drop_last: bool = False
    ) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
            **worker_options(hp),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        """The epoch's training loader. While fitting an ASDModule, its Skew refresh + resampling for the coming epoch
        runs first, so the loader's length is that of the resampled list (``model.debias.epoch_length: resampled``)."""
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if module is not None and trainer.state.fn == "fit" and hasattr(module, "prepare_epoch"):
            module.prepare_epoch(trainer.current_epoch)
        return self._loader(self.train_set, self.hparams.batch_size, sampler=self.train_sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._eval["val"][0][1], self.hparams.eval_batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.hparams.eval_batch_size) for _, ds in self._eval["test"]]

    def predict_dataloader(self) -> DataLoader:
        """The test split of ``data.dataset`` (FairFace and CMSC are bias tests only)."""
        return self._loader(self._eval["predict"][0][1], self.hparams.eval_batch_size)

    def probe_dataloader(self) -> DataLoader:
        """The training images used to re-estimate Skew each epoch (spec §3.3): a fixed random subset of size
        ``probe_fraction · N`` (the same on every rank: seeded)."""
        ds = self.train_set
        if self.hparams.probe_fraction < 1.0:
            g = torch.Generator().manual_seed(self.hparams.seed)
            n = max(1, round(self.hparams.probe_fraction * len(ds)))
            ds = Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())
        return self._loader(ds, self.hparams.eval_batch_size)
