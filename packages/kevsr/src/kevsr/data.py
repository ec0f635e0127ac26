"""Data of spec §4.2 (package-defined format; the Koubei dataset is not public):

    <data_root>/hierarchy.json
    <data_root>/annotations/{train,val,test}.jsonl
    <data_root>/features/{train,val,test}.h5     (or features/<video_id>.npz)
    <kg_path>                                    (Numberbatch text/.gz, or <name>.npy + <name>.vocab.txt)

A batch is a dict: ``f2d`` (B, T, D2), ``f3d`` (B, T, D3), ``text`` (B, Dt), ``regions`` (B, T, R, Dr),
``region_mask`` (B, T, R) bool, ``keywords`` (B, K, G), ``keyword_mask`` (B, K) bool,
``keyword_ids`` (B, K) long (index in the loaded KG terms, sorted; 0 at padding), ``target1`` (B, L1),
``target2`` (B, L2) float multi-hot, ``video_id`` list[str].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, evaluation_sampler, read_json, read_jsonl, worker_options
from mmzoo.features import H5Features, NpyFolderFeatures
from torch.utils.data import DataLoader, Dataset

from kevsr.knowledge import KnowledgeEmbeddings, candidate_terms, extract_keywords, normalize_term

__all__ = ["Hierarchy", "KEVSRDataset", "KEVSRDataModule", "FEATURE_KEYS"]

log = logging.getLogger(__name__)
README_HINT = "see README, Data preparation"
FEATURE_KEYS = ("f2d", "f3d", "text", "regions", "region_mask")
FeatureFormat = Literal["h5", "npz"]
Tokenizer = Literal["whitespace", "spacy", "jieba"]
MissingFeatures = Literal["raise", "drop"]
KGLang = Literal["en", "zh", "none"]
Generate = Literal["none", "digits", "random"]


def _check_reader_choices(feature_format: str, tokenizer: str, missing_features: str) -> None:
    """The reader's string options, checked where a dataset or data module is built (the code branches on them)."""
    check_choice("data.feature_format", feature_format, get_args(FeatureFormat))
    check_choice("data.tokenizer", tokenizer, get_args(Tokenizer))
    check_choice("data.missing_features", missing_features, get_args(MissingFeatures))


@dataclass
class Hierarchy:
    """Two-level label hierarchy: names per level, parent index μ of each level-2 label, KG term per label."""

    level1: list[str]
    level2: list[str]
    parent_index: torch.Tensor  # (L2,) long
    kg1: list[str | None]
    kg2: list[str | None]

    @classmethod
    def from_json(cls, path: Path) -> Hierarchy:
        if not path.is_file():
            raise FileNotFoundError(f"missing {str(path)!r} (label hierarchy); {README_HINT}")
        data = read_json(path, "label hierarchy")
        for key in ("level1", "level2"):
            if not isinstance(data, dict) or key not in data:
                raise KeyError(f"{path}: missing key {key!r}; {README_HINT}")
            for i, e in enumerate(data[key]):
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise KeyError(f"{path}: {key}[{i}] = {e!r} needs a string 'name'; {README_HINT}")
                if e.get("kg") is not None and not isinstance(e["kg"], str):  # later read as a KG term
                    raise ValueError(f"{path}: {key}[{i}] has 'kg' = {e['kg']!r}; a KG term (string) or null")
        level1 = [e["name"] for e in data["level1"]]
        for key in ("level1", "level2"):  # a repeated name would silently map every path to its last entry
            names = [e["name"] for e in data[key]]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{path}: {key} names must be unique; repeated: {repeated}")
        index1 = {n: i for i, n in enumerate(level1)}
        parents = []
        for e in data["level2"]:
            if e.get("parent") not in index1:
                raise KeyError(f"{path}: level-2 label {e['name']!r} has unknown parent {e.get('parent')!r}")
            parents.append(index1[e["parent"]])

        def kg(e: dict) -> str | None:
            return e["kg"] if "kg" in e else e["name"]  # explicit null: no KG entity (learnable vector)

        return cls(
            level1=level1,
            level2=[e["name"] for e in data["level2"]],
            parent_index=torch.tensor(parents, dtype=torch.long),
            kg1=[kg(e) for e in data["level1"]],
            kg2=[kg(e) for e in data["level2"]],
        )

    def label_vectors(self, kg: KnowledgeEmbeddings | None, level: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, G) KG vectors of a level's labels and (L,) bool: which labels matched a KG entity."""
        terms = self.kg1 if level == 1 else self.kg2
        vectors = torch.zeros(len(terms), dim)
        found = torch.zeros(len(terms), dtype=torch.bool)
        for i, term in enumerate(terms):
            vec = None if (term is None or kg is None) else kg.get(term)
            if vec is not None:
                vectors[i], found[i] = vec, True
        return vectors, found


def read_annotations(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {str(path)!r} (one JSON object per video); {README_HINT}")
    rows, seen = [], {}
    for lineno, row in read_jsonl(path, "annotation file"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: not a JSON object; {README_HINT}")
        for key in ("video_id", "text", "label_paths"):
            if key not in row:
                raise KeyError(f"{path}:{lineno}: missing key {key!r}; {README_HINT}")
        for key in ("video_id", "text"):  # a numeric id would not match the feature files' string keys
            if not isinstance(row[key], str):
                raise ValueError(f"{path}:{lineno}: {key!r} must be a string, got {row[key]!r}; {README_HINT}")
        kws = row.get("keywords")
        if not isinstance(row["label_paths"], list) or not (
            kws is None or (isinstance(kws, list) and all(isinstance(k, str) for k in kws))
        ):  # a bare string would be read one character at a time
            raise ValueError(f"{path}:{lineno}: 'label_paths' must be a list of paths and 'keywords' (optional) "
                             f"a list of strings; {README_HINT}")  # fmt: skip
        vid = row["video_id"]
        if vid in seen:  # one feature group per id: a repeat would train twice on one video, maybe relabelled
            raise ValueError(f"{path}:{lineno}: video_id {vid!r} already on line {seen[vid]}; ids must be unique")
        seen[vid] = lineno
        rows.append(row)
    return rows


class KEVSRDataset(Dataset):
    """One split of the spec §4.2 format. Items are dicts with the batch keys of the module docstring (unbatched).

    Features are read lazily per item through mmzoo.features; regions are cropped/padded to ``num_regions``,
    keywords (from the annotation, or extracted from the description when missing) are mapped to KG vectors,
    those not in the KG dropped, the rest cropped/padded to ``num_keywords``.
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        hierarchy: Hierarchy,
        kg: KnowledgeEmbeddings | None,
        kg_dim: int,
        num_regions: int,
        num_keywords: int,
        feature_format: FeatureFormat = "h5",
        tokenizer: Tokenizer = "whitespace",
        missing_features: MissingFeatures = "raise",
    ) -> None:
        _check_reader_choices(feature_format, tokenizer, missing_features)
        root = Path(data_root)
        annotation_path = root / "annotations" / f"{split}.jsonl"
        self.rows = read_annotations(annotation_path)
        if feature_format == "h5":
            path = root / "features" / f"{split}.h5"
            if not path.is_file():
                raise FileNotFoundError(f"missing {str(path)!r} (HDF5 features, one group per video); {README_HINT}")
            self.readers = {k: H5Features(path, dataset_key=k) for k in FEATURE_KEYS}
            feature_files = f"{str(path)!r} (no group of that name)"
        else:
            folder = root / "features"
            if not folder.is_dir():
                raise FileNotFoundError(f"missing folder {str(folder)!r} (<video_id>.npz features); {README_HINT}")
            self.readers = {k: NpyFolderFeatures(folder, suffix=".npz", npz_key=k) for k in FEATURE_KEYS}
            feature_files = f"{str(folder)!r} (no <video_id>.npz)"
        # Every id is checked here, not when its item is first read (possibly hours into training).
        available = set(self.readers["f2d"].keys()) if self.rows else set()
        missing = [r["video_id"] for r in self.rows if r["video_id"] not in available]
        if missing and missing_features == "raise":
            raise KeyError(
                f"split {split!r}: {len(missing)} of {len(self.rows)} videos have no features in {feature_files} "
                f"(e.g. {missing[:5]}); extract them, remove them from {str(annotation_path)!r}, or set "
                f"data.missing_features: drop to leave them out; {README_HINT}"
            )
        if missing:  # drop: the same rows on every rank, so DDP ranks keep equal batch counts
            rank_zero_warn(f"{split}: dropping {len(missing)} of {len(self.rows)} videos without features "
                           f"(data.missing_features: drop), e.g. {missing[:5]}")  # fmt: skip
            gone = set(missing)
            self.rows = [r for r in self.rows if r["video_id"] not in gone]
        self.hierarchy, self.kg, self.kg_dim = hierarchy, kg, kg_dim
        self._reference: tuple[str, dict[str, int]] | None = None  # the first video's N_f and widths
        self.num_regions, self.num_keywords = num_regions, num_keywords
        index1 = {n: i for i, n in enumerate(hierarchy.level1)}
        index2 = {n: i for i, n in enumerate(hierarchy.level2)}
        self.targets1 = torch.zeros(len(self.rows), len(index1))
        self.targets2 = torch.zeros(len(self.rows), len(index2))
        for i, row in enumerate(self.rows):
            for path in row["label_paths"]:
                if not isinstance(path, (list, tuple)) or not 1 <= len(path) <= 2:
                    raise ValueError(f"{split}.jsonl, video {row['video_id']!r}: label path {path!r} is not "
                                     "[level1_name, level2_name or null]")  # fmt: skip
                l1, l2 = path[0], path[1] if len(path) > 1 else None
                if l1 not in index1 or (l2 is not None and l2 not in index2):
                    raise KeyError(f"{split}.jsonl, video {row['video_id']!r}: label path {path} not in hierarchy.json")
                if l2 is not None and int(hierarchy.parent_index[index2[l2]]) != index1[l1]:
                    parent = hierarchy.level1[int(hierarchy.parent_index[index2[l2]])]
                    raise ValueError(
                        f"{split}.jsonl, video {row['video_id']!r}: label path {path} puts {l2!r} under {l1!r}, "
                        f"but its parent in hierarchy.json is {parent!r}"
                    )
                self.targets1[i, index1[l1]] = 1.0
                if l2 is not None:
                    self.targets2[i, index2[l2]] = 1.0
        self.keywords: list[list[str]] = []
        for row in self.rows:
            kws = row.get("keywords")
            if kws is None:
                kws = extract_keywords(row["text"], kg, num_keywords, tokenizer) if kg is not None else []
            # distinct terms (after the KG's normalisation: "Hot Pot" = "hot_pot"), those in the KG, at most N_k
            kws = list(dict.fromkeys(normalize_term(k) for k in kws if kg is not None and k in kg))[:num_keywords]
            self.keywords.append(kws)
        self.keyword_index = {t: i for i, t in enumerate(kg.vocabulary())} if kg is not None else {}
        if kg is not None and self.rows:
            with_kw = sum(bool(k) for k in self.keywords)
            log.info("%s: %d of %d videos have at least one KG keyword", split, with_kw, len(self.rows))
            if with_kw == 0:
                rank_zero_warn(
                    f"{split}: no video has a keyword found in the KG (check data.kg_lang and the KG file's "
                    "language); the knowledge fusion then reduces to the frame mean"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def _check_shapes(self, vid: str, feats: dict[str, torch.Tensor]) -> None:
        """f2d (T, D2), f3d (T, D3), text (Dt,) or (1, Dt), regions (T, R, Dr), region_mask (T, R) of one video
        (spec §4.2); otherwise a ValueError naming the video and the feature source."""
        shapes = {k: tuple(v.shape) for k, v in feats.items()}
        f2d, f3d, text, regions, mask = (shapes[k] for k in FEATURE_KEYS)
        ok = (
            len(f2d) == 2
            and len(f3d) == 2
            and len(regions) == 3
            and f3d[0] == f2d[0] == regions[0]
            and mask == regions[:2]
            and len(text) in (1, 2)
            and (len(text) == 1 or text[0] == 1)
        )
        if not ok:
            raise ValueError(
                f"{self._source(vid)}: video {vid!r} has feature shapes {shapes}; expected f2d [N_f, D2], "
                f"f3d [N_f, D3], text [Dt], regions [N_f, N_r, Dr], region_mask [N_f, N_r]; {README_HINT}"
            )

    def _source(self, vid: str) -> object:
        reader = self.readers["f2d"]
        return reader.path(vid) if callable(reader.path) else reader.path  # <video_id>.npz or <split>.h5

    @staticmethod
    def _sizes(feats: dict[str, torch.Tensor]) -> dict[str, int]:
        """N_f and the feature widths, which every video of a split must share (they are batched together)."""
        return {
            "N_f": feats["f2d"].shape[0],
            "f2d width": feats["f2d"].shape[1],
            "f3d width": feats["f3d"].shape[1],
            "text width": feats["text"].shape[-1],
            "regions width": feats["regions"].shape[2],
        }

    def _read(self, idx: int) -> tuple[str, dict[str, torch.Tensor]]:
        vid = self.rows[idx]["video_id"]
        feats = {k: self.readers[k][vid] for k in FEATURE_KEYS}
        self._check_shapes(vid, feats)
        # e.g. float16 features that overflowed when written: a NaN loss later would name neither video nor file
        bad = [k for k, v in feats.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"{self._source(vid)}: video {vid!r} has NaN or infinite values in {bad}; {README_HINT}")
        return vid, feats

    def _check_against_first(self, idx: int, vid: str, feats: dict[str, torch.Tensor]) -> None:
        """A video whose N_f or feature widths differ from the split's first video (each split's first is checked
        against the model config at setup) would only fail when batched, in a stack error naming neither video
        nor file."""
        if self._reference is None:
            ref_vid, ref_feats = (vid, feats) if idx == 0 else self._read(0)
            self._reference = (ref_vid, self._sizes(ref_feats))
        ref_vid, ref = self._reference
        sizes = self._sizes(feats)
        wrong = {k: v for k, v in sizes.items() if v != ref[k]}
        if wrong:
            expected = {k: ref[k] for k in wrong}
            raise ValueError(
                f"{self._source(vid)}: video {vid!r} has {wrong} but the split's first video {ref_vid!r} has "
                f"{expected}; every video needs the same N_f and feature widths; {README_HINT}"
            )

    def __getitem__(self, idx: int) -> dict:
        vid, feats = self._read(idx)
        self._check_against_first(idx, vid, feats)
        regions, mask = feats["regions"], feats["region_mask"] > 0  # (T, R', Dr), (T, R')
        t, r, dr = regions.shape
        n = self.num_regions
        out_regions = regions.new_zeros(t, n, dr)
        out_mask = torch.zeros(t, n, dtype=torch.bool)
        out_regions[:, : min(r, n)] = regions[:, :n]
        out_mask[:, : min(r, n)] = mask[:, :n]
        keywords = torch.zeros(self.num_keywords, self.kg_dim)
        kw_mask = torch.zeros(self.num_keywords, dtype=torch.bool)
        kw_ids = torch.zeros(self.num_keywords, dtype=torch.long)
        for k, term in enumerate(self.keywords[idx]):
            keywords[k], kw_mask[k] = self.kg.get(term), True
            kw_ids[k] = self.keyword_index[normalize_term(term)]
        return {
            "video_id": vid,
            "f2d": feats["f2d"],
            "f3d": feats["f3d"],
            "text": feats["text"].reshape(-1),
            "regions": out_regions,
            "region_mask": out_mask,
            "keywords": keywords,
            "keyword_mask": kw_mask,
            "keyword_ids": kw_ids,
            "target1": self.targets1[idx],
            "target2": self.targets2[idx],
        }


class KEVSRDataModule(SplitLoaders, pl.LightningDataModule):
    """Reads the spec §4.2 folder (or generates the synthetic digits data set there on first use)."""

    def __init__(
        self,
        data_root: str = "data/koubei",
        kg_path: str | None = None,
        kg_lang: KGLang = "en",
        feature_format: FeatureFormat = "h5",
        tokenizer: Tokenizer = "whitespace",
        num_regions: int = 10,
        num_keywords: int = 10,
        kg_dim: int = 300,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        generate: Generate = "none",
        generate_seed: int = 0,
        missing_features: MissingFeatures = "raise",
    ) -> None:
        """
        Args:
            data_root: folder with hierarchy.json, annotations/ and features/ (spec §4.2).
            kg_path: KG embeddings (Numberbatch text/.gz, or .npy + .vocab.txt); null = no KG (every label gets a
                learnable vector, no keywords).
            kg_lang: language of the ConceptNet URIs to keep (``none``: any).
            feature_format: ``h5`` (features/<split>.h5) or ``npz`` (features/<video_id>.npz).
            tokenizer: keyword candidates: ``whitespace``, ``spacy`` (English), ``jieba`` (Chinese, optional extra).
            num_regions: regions per keyframe N_r (pad/crop).
            num_keywords: keywords per video N_k (spec §3.7: 10).
            kg_dim: width of the KG vectors (checked against the file).
            batch_size: training batch (reconstruction: 32).
            eval_batch_size: evaluation batch.
            num_workers: DataLoader workers.
            pin_memory: DataLoader pin_memory.
            persistent_workers: DataLoader persistent_workers (only with workers > 0).
            generate: ``digits`` / ``random``: write the synthetic data set of spec §8c / §8b into data_root (and the
                KG file to kg_path) when hierarchy.json is missing, and again when a copy stamped by an earlier
                generator version is there (``kevsr.synthetic.ensure_generated``); ``none`` never writes.
            generate_seed: seed of the generator.
            missing_features: an annotated video without features (e.g. skipped as corrupt by ``kevsr extract
                --on-corrupt skip``): ``raise`` (at setup, naming them) or ``drop`` it from the split with a warning.
        """
        for key, value in (
            ("num_regions", num_regions),
            ("num_keywords", num_keywords),
            ("kg_dim", kg_dim),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            check_range(f"data.{key}", value, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        _check_reader_choices(feature_format, tokenizer, missing_features)
        check_choice("data.kg_lang", kg_lang, get_args(KGLang))
        check_choice("data.generate", generate, get_args(Generate))
        super().__init__()
        self.save_hyperparameters()
        self.hierarchy: Hierarchy | None = None
        self.kg: KnowledgeEmbeddings | None = None
        self.datasets: dict[str, KEVSRDataset] = {}

    @property
    def keyword_vocab(self) -> list[str]:
        """Terms indexed by ``keyword_ids`` (the loaded KG rows, sorted); empty without a KG. It depends on the
        annotations and the KG file; checkpoints save it with the learned keyword offsets (``KeywordOffsets``)."""
        return self.kg.vocabulary() if self.kg is not None else []

    def prepare_data(self) -> None:
        h = self.hparams
        if h.generate != "none":
            from kevsr.synthetic import ensure_generated

            ensure_generated(h.data_root, h.kg_path, h.generate, seed=h.generate_seed)

    def _load_knowledge(self) -> None:
        h = self.hparams
        self.hierarchy = Hierarchy.from_json(Path(h.data_root) / "hierarchy.json")
        if h.kg_path is None:
            return
        vocab = {normalize_term(t) for t in self.hierarchy.kg1 + self.hierarchy.kg2 if t}
        for split in ("train", "val", "test"):
            path = Path(h.data_root) / "annotations" / f"{split}.jsonl"
            if path.is_file():
                for row in read_annotations(path):
                    vocab.update(normalize_term(k) for k in row.get("keywords") or [])
                    if row.get("keywords") is None:
                        vocab.update(candidate_terms(row["text"], h.tokenizer))
        self.kg = KnowledgeEmbeddings.load(h.kg_path, vocab, h.kg_lang)
        if self.kg.dim != h.kg_dim:
            raise ValueError(f"data.kg_path has {self.kg.dim}-d vectors but data.kg_dim={h.kg_dim}")
        for level, terms in ((1, self.hierarchy.kg1), (2, self.hierarchy.kg2)):
            named = [t for t in terms if t]
            found = sum(t in self.kg for t in named)
            log.info("level %d: %d of %d labels have a KG vector (%d have kg: null)", level, found, len(terms),
                     len(terms) - len(named))  # fmt: skip
            if named and found == 0:
                rank_zero_warn(
                    f"level {level}: none of the {len(named)} label KG terms is in {h.kg_path} with "
                    f"data.kg_lang={h.kg_lang!r}; every label of the level gets a learnable vector"
                )

    def setup(self, stage: str | None = None) -> None:
        if self.hierarchy is None:
            self.prepare_data()  # no-op unless generation is asked for and the data are missing
            self._load_knowledge()
        h = self.hparams
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = KEVSRDataset(
                    h.data_root,
                    split,
                    self.hierarchy,
                    self.kg,
                    h.kg_dim,
                    h.num_regions,
                    h.num_keywords,
                    h.feature_format,
                    h.tokenizer,
                    h.missing_features,
                )

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Evaluation loaders (val/test/predict) under several processes give each video to exactly one process:
        Lightning's default DistributedSampler would pad the last round with repeated videos, which the epoch's
        F1 / RP@90% would then count twice. The module accumulates in torchmetrics states (no per-step collective),
        so ranks may hold different numbers of videos."""
        h = self.hparams
        data = self.datasets[split]
        return DataLoader(
            data,
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(data, self.trainer, unit="videos"),
            drop_last=False,
            **worker_options(h),
        )
