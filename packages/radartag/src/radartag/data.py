"""Readers of the official Kwai tagging files (spec §4), per-split graphs, and the LightningDataModule.

Files under ``dataset_root`` for vertical ``<v>`` (apparel, cosmetic, food):

    label_map_kwai_<v>.txt                   one tag per line (line index = tag id)
    kwai_<v>_video_<split>_list.txt          <pid>[.mp4]<TAB><tag_id><TAB>…   (split: train, val, test)
    tag_parents_<v>.json                     {"<tag>": ["<parent tag>", …]}     (r1 is_subtopic_of)
    video_children_<v>.json                  {"<pid>": [<child pid>, …]}        (r3 is_followed_by)
    video_feat/<pid>.npy                     [768] video content feature
    tag_feat_bert/<tag>.npy                  [768] tag text feature

Features are read only through :class:`mmzoo.features.NpyFolderFeatures`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, evaluation_sampler, read_json, read_torch, worker_options, written_whole
from mmzoo.features import NpyFolderFeatures
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import HeteroData

from .models import FOLLOWED_BY, HAS_TAG, SUBTOPIC, SUPERTOPIC, EdgeType
from .sampler import BlockSampler, PygNeighborSampler
from .synthetic import SyntheticKwaiConfig, ensure_synthetic_vertical

__all__ = [
    "KwaiFiles",
    "read_lines",
    "read_label_map",
    "read_tag_parents",
    "read_kwai_files",
    "build_split_graph",
    "load_split_graph",
    "GraphBatch",
    "KwaiTagDataModule",
]

log = logging.getLogger(__name__)
_SEE = "see README, Data preparation"
Sampler = Literal["block", "pyg"]


@dataclass
class KwaiFiles:
    """Parsed text files of one vertical: tag names (label map + extra ontology tags), per-split video lists
    (pid, tag ids), parent links (child id, parent id) and follow children {pid: [child pid]}."""

    tags: list[str]
    num_label_map_tags: int
    videos: dict[str, list[tuple[int, list[int]]]]
    parent_edges: list[tuple[int, int]]
    children: dict[int, list[int]]


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file as the official reader sees them (``readlines``): broken at ``\\n``, ``\\r\\n``
    and ``\\r`` only (not at the other separators of :meth:`str.splitlines`), without their line ends; a final line
    end does not open an empty last line."""
    lines = path.read_text(encoding="utf-8").split("\n")  # read_text translates \r\n and \r to \n
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_label_map(path: Path) -> list[str]:
    """Tag names of ``label_map_kwai_<v>.txt``, one per line, line index = tag id (spec §4.2); names are stripped of
    surrounding white space (official). A blank line would shift every later tag id, and a name on two lines would
    give one tag two ids (the name lookup of the ontology and the feature files would only ever see the later one),
    so both are errors naming the file and the lines."""
    tags = [line.strip() for line in read_lines(path)]
    first_line: dict[str, int] = {}
    for line_no, tag in enumerate(tags, 1):
        if not tag:
            raise ValueError(f"{str(path)!r} line {line_no} is blank: every line names the tag whose id is its line "
                             f"index (0-based), so a blank line would shift the ids of all later tags; remove it")  # fmt: skip
        if tag in first_line:
            raise ValueError(f"{str(path)!r}: tag {tag!r} is named on lines {first_line[tag]} and {line_no} (after "
                             "stripping surrounding white space); every tag must have one line, i.e. one id")  # fmt: skip
        first_line[tag] = line_no
    return tags


def read_tag_parents(path: Path) -> dict[str, list[str]]:
    """``tag_parents_<v>.json``: {"<tag>": ["<parent tag>", …]} (spec §4.2), names stripped of surrounding white
    space as the label map's are, so ``"x "`` names the label-map tag ``x`` rather than a new extra tag ``"x "``.

    Errors name the file and key: a value that is not a list of strings, a blank name, two keys that name the same
    tag once stripped, and a parent listed twice for one tag (a duplicate r1 edge the sampler could draw twice).
    The sub-topic links must form a directed acyclic graph (the DAG prior of spec §3.8): a tag listed as its own
    parent, or a chain of links that returns to its start (a → b → a), is an error naming the file, the tags of the
    cycle and the lines of their keys.
    """
    raw = read_json(path, "tag ontology")
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r}: expected a JSON object {{\"<tag>\": [\"<parent tag>\", …]}}, got a "
                         f"{type(raw).__name__}")  # fmt: skip
    ontology: dict[str, list[str]] = {}
    key_of: dict[str, str] = {}
    for key, parents in raw.items():
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            # a bare "parent" string would otherwise be read character by character as parent tags
            raise ValueError(f"{str(path)!r}: key {key!r} -> {parents!r}: expected a list of parent tag names")
        child, names = key.strip(), [p.strip() for p in parents]
        if not child or not all(names):
            raise ValueError(f"{str(path)!r}: key {key!r} -> {parents!r}: a tag name is blank")
        if child in key_of:
            raise ValueError(f"{str(path)!r}: keys {key_of[child]!r} and {key!r} name the same tag {child!r} (tag "
                             "names are stripped of surrounding white space, as in the label map); merge them")  # fmt: skip
        repeated = sorted({p for p in names if names.count(p) > 1})
        if repeated:
            raise ValueError(f"{str(path)!r}: key {key!r} lists the parent {repeated[0]!r} more than once (after "
                             "stripping surrounding white space); each sub-topic link must appear once")  # fmt: skip
        key_of[child] = key
        ontology[child] = names
    cycle = _find_cycle(ontology)
    if cycle is not None:
        text = path.read_text(encoding="utf-8")
        where = ", ".join(f"{key_of[t]!r}{_key_line(text, key_of[t])}" for t in dict.fromkeys(cycle))
        if len(cycle) == 2:  # [t, t]: a self-link
            raise ValueError(f"{str(path)!r}: key {where} lists the tag {cycle[0]!r} as its own parent (after "
                             "stripping surrounding white space); a tag cannot be a sub-topic of itself, remove the "
                             "link")  # fmt: skip
        chain = " -> ".join(repr(t) for t in cycle)
        raise ValueError(f"{str(path)!r}: the sub-topic links form a cycle {chain} (keys {where}); the tag ontology "
                         "must be acyclic (spec §3.8), remove one of these links")  # fmt: skip
    return ontology


def _key_line(text: str, key: str) -> str:
    """`` on line N``: where ``key`` is written as an object key in the JSON ``text`` (escaped or not), or ``""``."""
    for written in (json.dumps(key, ensure_ascii=False), json.dumps(key)):
        found = re.search(re.escape(written) + r"\s*:", text)
        if found:
            return f" on line {text.count(chr(10), 0, found.start()) + 1}"
    return ""


def _find_cycle(graph: Mapping[Hashable, Sequence[Hashable]]) -> list | None:
    """A directed cycle ``[n0, n1, …, n0]`` of ``graph`` (node → successors), or None; a self-link gives ``[n, n]``.
    Iterative depth-first search in the graph's key order."""
    state: dict = {}  # 1 = on the current path, 2 = done
    for root in graph:
        if root in state:
            continue
        path, iters = [root], [iter(graph.get(root, []))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(graph.get(nxt, [])))
    return None


_PID_FIELD = re.compile(r"\d+(\.\S*)?")
"""First field of a list line: the integer pid, optionally followed by a file suffix (``10600.mp4``)."""


def _read_list(path: Path, num_tags: int) -> list[tuple[int, list[int]]]:
    out = []
    seen: dict[int, int] = {}
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        name = parts[0].strip()
        try:
            # the first field is the pid with an optional file suffix and nothing else: "10600.mp4 3 5" (tags
            # separated by spaces) would otherwise be read as pid 10600 without tags, its labels silently lost
            if not _PID_FIELD.fullmatch(name):
                raise ValueError(name)
            pid = int(name.split(".")[0])
            tags = [int(t) for t in parts[1:] if t.strip()]
        except ValueError as err:
            raise ValueError(f"{str(path)!r} line {line_no}: expected '<pid>.mp4<TAB><tag_id>…' (tab-separated), got "
                             f"{line!r}") from err  # fmt: skip
        if any(not 0 <= t < num_tags for t in tags):
            raise ValueError(f"{str(path)!r} line {line_no}: tag id outside the label map (0..{num_tags - 1})")
        repeated = sorted({t for t in tags if tags.count(t) > 1})
        if repeated:
            # a repeated id would become a second, identical has_tag edge that the sampler can draw twice
            raise ValueError(f"{str(path)!r} line {line_no}: tag id {repeated[0]} is listed more than once; list each "
                             "of the video's tags once")  # fmt: skip
        if pid in seen:
            raise ValueError(f"{str(path)!r}: pid {pid} is listed twice (lines {seen[pid]} and {line_no}); every "
                             "video must appear once")  # fmt: skip
        seen[pid] = line_no
        out.append((pid, tags))
    return out


def _integer_pid(value) -> int:
    """A child pid of ``video_children``: a JSON integer (or a string of digits). ``int()`` alone would turn
    10601.7 into pid 10601 and ``true`` into pid 1, linking videos the file never named."""
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, str) and not value.isdigit()):
        raise TypeError(repr(value))
    return int(value)


def _read_children(path: Path) -> dict[int, list[int]]:
    """``video_children_<v>.json``: {"<pid>": [<child pid>, …]} with bare integer pids (no ``.mp4``). Two keys for
    one pid and a child listed twice under one key are errors naming the file and the key."""
    raw = read_json(path, "follow file")
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r}: expected a JSON object {{\"<pid>\": [<child pid>, …]}}, got a "
                         f"{type(raw).__name__}")  # fmt: skip
    children: dict[int, list[int]] = {}
    key_of: dict[int, str] = {}
    for key, values in raw.items():
        try:
            if not isinstance(values, list):  # a bare "10601" would otherwise be read digit by digit
                raise TypeError(type(values).__name__)
            pid, kids = int(key), [_integer_pid(c) for c in values]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(path)!r}: key {key!r} -> {values!r}: expected a bare integer pid (e.g. \"10600\", "
                             f"not \"10600.mp4\") mapped to a list of integer child pids") from err  # fmt: skip
        if pid in key_of:  # "10600" and "010600": the later list would silently replace the earlier one
            raise ValueError(f"{str(path)!r}: keys {key_of[pid]!r} and {key!r} name the same pid {pid}; merge their "
                             "child lists under one key")  # fmt: skip
        repeated = sorted({c for c in kids if kids.count(c) > 1})
        if repeated:  # a second, identical r3 edge that the sampler could draw twice
            raise ValueError(f"{str(path)!r}: key {key!r} lists the child pid {repeated[0]} more than once; each "
                             "follow link must appear once")  # fmt: skip
        key_of[pid] = key
        children[pid] = kids
    return children


def _kwai_paths(root: Path, vertical: str) -> dict[str, Path]:
    """The text/JSON files of one vertical (spec §4.2), by role."""
    return {
        "label_map": root / f"label_map_kwai_{vertical}.txt",
        "parents": root / f"tag_parents_{vertical}.json",
        "children": root / f"video_children_{vertical}.json",
        **{s: root / f"kwai_{vertical}_video_{s}_list.txt" for s in ("train", "val", "test")},
    }


def read_kwai_files(root: str | Path, vertical: str) -> KwaiFiles:
    """Read and check the text/JSON files of one vertical (spec §4.2, §4.3)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset_root={str(root)!r} does not exist; {_SEE}")
    names = _kwai_paths(root, vertical)
    for p in names.values():
        if not p.is_file():
            raise FileNotFoundError(f"missing {str(p)!r} (official Kwai {vertical} file); {_SEE}")
    tags = read_label_map(names["label_map"])
    num_label_map = len(tags)
    tag_id = {t: i for i, t in enumerate(tags)}
    parent_edges = []
    for child, parents in read_tag_parents(names["parents"]).items():
        for name in [child, *parents]:
            if name not in tag_id:  # an ontology tag absent from the label map becomes an extra tag node
                tag_id[name] = len(tags)
                tags.append(name)
        parent_edges += [(tag_id[child], tag_id[p]) for p in parents]
    videos = {s: _read_list(names[s], num_label_map) for s in ("train", "val", "test")}
    if not videos["train"]:  # every split's graph holds the training videos, the only ones with has_tag edges
        raise ValueError(f"{str(names['train'])!r} lists no videos: every split's graph is built on the training "
                         f"videos and their tags; {_SEE}")  # fmt: skip
    train_pids = {p for p, _ in videos["train"]}
    for s in ("val", "test"):
        overlap = train_pids & {p for p, _ in videos[s]}
        if overlap:
            raise ValueError(f"{s} videos overlap the training videos (e.g. pid {next(iter(overlap))}); {_SEE}")
    children = _read_children(names["children"])
    return KwaiFiles(tags, num_label_map, videos, parent_edges, children)


def _stack_features(folder: Path, keys: list[str], kind: str) -> torch.Tensor:
    """One feature vector per key from ``folder/<key>.npy``, stacked (N, d); every file must hold d values (the
    first file's width), else the error names the file."""
    store = NpyFolderFeatures(folder)
    rows = []
    for key in keys:
        try:
            row = store[key].reshape(-1)
        except (FileNotFoundError, KeyError) as err:
            raise FileNotFoundError(f"missing {kind} feature under {str(folder)!r}: {err}; {_SEE}") from err
        if rows and len(row) != len(rows[0]):
            raise ValueError(f"{str(store.path(key))!r} holds {len(row)} values, but {str(store.path(keys[0]))!r} "
                             f"holds {len(rows[0])}: every {kind} feature must be one vector of the same width")  # fmt: skip
        rows.append(row)
    return torch.stack(rows).float()


def build_split_graph(root: str | Path, vertical: str, split: str, files: KwaiFiles | None = None) -> HeteroData:
    """The graph of one split (spec §3.1): training videos (list order) then, for val/test, the evaluation
    videos; all tags; r1 (and its reverse r1'), r2 for training videos only, r3 among videos present.

    Node stores: ``video.x`` (N_v, d_v), ``video.pid``, ``video.label_ptr``/``video.label_col`` (CSR of every
    video's tags: training labels and evaluation ground truth), ``video.num_train``; ``tag.x`` (K, d_t),
    ``tag.names`` (list).
    """
    root = Path(root)
    files = files or read_kwai_files(root, vertical)
    vids = list(files.videos["train"]) + (list(files.videos[split]) if split != "train" else [])
    pids = [p for p, _ in vids]
    vx = _stack_features(root / "video_feat", [str(p) for p in pids], "video")
    tx = _stack_features(root / "tag_feat_bert", files.tags, "tag")
    g = HeteroData()
    g["video"].x = vx
    g["video"].pid = torch.tensor(pids, dtype=torch.long)
    g["video"].num_train = len(files.videos["train"])
    lengths = torch.tensor([len(t) for _, t in vids], dtype=torch.long)
    g["video"].label_ptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    g["video"].label_col = torch.tensor([t for _, ts in vids for t in ts], dtype=torch.long)
    g["tag"].x = tx
    g["tag"].names = files.tags
    n_train = g["video"].num_train
    train_videos = torch.repeat_interleave(torch.arange(n_train), lengths[:n_train])
    g[HAS_TAG].edge_index = torch.stack([train_videos, g["video"].label_col[: len(train_videos)]])
    parents = torch.tensor(files.parent_edges, dtype=torch.long).reshape(-1, 2).T
    g[SUBTOPIC].edge_index = parents
    g[SUPERTOPIC].edge_index = parents.flip(0)
    index = {p: i for i, p in enumerate(pids)}
    follow = [(index[p], index[c]) for p, cs in files.children.items() if p in index for c in cs if c in index]
    g[FOLLOWED_BY].edge_index = torch.tensor(follow, dtype=torch.long).reshape(-1, 2).T
    return g


def _input_stamp(root: Path, vertical: str) -> list:
    """Size and modification time of the vertical's text/JSON files, and the modification time of the two feature
    folders (a file added, removed or renamed there changes it): what a cached graph was built from."""
    stamp = []
    for path in [*_kwai_paths(root, vertical).values(), root / "video_feat", root / "tag_feat_bert"]:
        if not path.exists():
            stamp.append([path.name, None, None])
            continue
        st = path.stat()
        stamp.append([path.name, st.st_size if path.is_file() else -1, st.st_mtime_ns])
    return stamp


def load_split_graph(root: str | Path, vertical: str, split: str, force_reload: bool = False) -> HeteroData:
    """:func:`build_split_graph` cached as ``<root>/cache/<vertical>_<split>.pt``, rebuilt with ``force_reload`` or
    when the input files changed since (e.g. ``radartag build-ontology`` rewrote the ontology)."""
    root = Path(root)
    cache = root / "cache" / f"{vertical}_{split}.pt"
    stamp = _input_stamp(root, vertical)
    if cache.is_file() and not force_reload:
        try:
            saved = read_torch(cache, "graph cache", weights_only=False)
        except ValueError as err:  # e.g. a copy cut short
            log.warning("rebuilding %s: it cannot be read (%s)", cache, str(err).splitlines()[0])
        else:
            if isinstance(saved, dict) and saved.get("inputs") == stamp:
                return saved["graph"]
            log.info("rebuilding %s: its input files changed since it was built", cache)
    g = build_split_graph(root, vertical, split)
    with written_whole(cache) as tmp:  # whole or absent, also when several processes build it at once
        torch.save({"graph": g, "inputs": stamp}, tmp)
    return g


def dense_labels(graph: HeteroData, videos: torch.Tensor, num_tags: int) -> torch.Tensor:
    """(B, K) 0/1 label matrix of ``videos`` from the graph's label CSR (never materialised negative edges)."""
    ptr, col = graph["video"].label_ptr, graph["video"].label_col
    deg = ptr[videos + 1] - ptr[videos]
    rows = torch.repeat_interleave(torch.arange(len(videos)), deg)
    offsets = torch.cumsum(deg, 0) - deg
    cols = col[ptr[videos][rows] + torch.arange(len(rows)) - offsets[rows]]
    y = torch.zeros(len(videos), num_tags)
    y[rows, cols] = 1.0
    return y


@dataclass
class GraphBatch:
    """A sampled mini-batch: input features of layer 0's source sets, the blocks, tag ids and dense labels (B, K);
    ``pids`` (B,): the batch videos' pids (the ids of the list files), row order of ``labels``."""

    video_x: torch.Tensor
    tag_x: torch.Tensor
    tag_ids: torch.Tensor
    blocks: list
    labels: torch.Tensor
    num_videos: int
    pids: torch.Tensor | None = None

    def to(self, device: torch.device) -> GraphBatch:
        blocks = [(n, {r: e.to(device) for r, e in edges.items()}) for n, edges in self.blocks]
        return GraphBatch(self.video_x.to(device), self.tag_x.to(device), self.tag_ids.to(device), blocks,
                          self.labels.to(device), self.num_videos, self.pids)  # fmt: skip


class _VideoIds(Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> int:
        return int(self.ids[i])


class GraphCollator:
    """Turns a list of video ids into a :class:`GraphBatch` by block sampling (runs in DataLoader workers)."""

    def __init__(self, graph: HeteroData, sampler: BlockSampler | PygNeighborSampler, num_tags: int):
        self.graph, self.sampler, self.num_tags = graph, sampler, num_tags

    def __call__(self, ids: list[int]) -> GraphBatch:
        videos = torch.tensor(ids, dtype=torch.long)
        s = self.sampler.sample(videos)
        pids = getattr(self.graph["video"], "pid", None)  # graphs built outside the file readers may have none
        return GraphBatch(
            self.graph["video"].x[s.input_nodes["video"]], self.graph["tag"].x, torch.arange(self.num_tags),
            s.blocks, dense_labels(self.graph, s.batch_videos, self.num_tags), len(s.batch_videos),
            None if pids is None else pids[s.batch_videos],
        )  # fmt: skip


class KwaiTagDataModule(SplitLoaders, pl.LightningDataModule):
    """The Kwai micro-video tagging data of one vertical (spec §4), as per-split graphs with block sampling.

    Args:
        dataset_root: folder holding the official files of the vertical.
        vertical: apparel | cosmetic | food (or any name matching the file names).
        num_layers / relations: must match the model (checked by the module); relations follow the ablation flags.
        use_follow / use_topic / bidirectional_topic: the model's relation flags (must match model.config).
        fanout: sampled in-edges per destination, relation and layer (official 4).
        eval_fanout: fanout at evaluation (official: same as training, stochastic; -1 = all neighbours).
        exclude_batch_targets: drop has_tag edges of the batch videos from sampling (official False).
        sampler: ``block`` (pure-torch per-block sampler, DGL semantics, default) or ``pyg`` (PyG's compiled neighbour
            sampler; needs pyg-lib, which is not on PyPI — an ImportError says so when it is missing).
        batch_size: videos per batch (official 1024), plus all tags.
        eval_batch_size: evaluation videos per batch.
        force_reload: rebuild the cached graphs.
        generate_demo_data: write a synthetic vertical (official format) to ``dataset_root`` if it is missing, or
            again when the copy there was generated with other ``demo`` settings (a vertical without the
            generator's stamp is the user's and is never overwritten).
        demo: generator settings for ``generate_demo_data``.
    """

    def __init__(
        self,
        dataset_root: str = "data/kwai",
        vertical: str = "cosmetic",
        num_layers: int = 2,
        use_follow: bool = True,
        use_topic: bool = True,
        bidirectional_topic: bool = False,
        fanout: int = 4,
        eval_fanout: int = 4,
        exclude_batch_targets: bool = False,
        sampler: Sampler = "block",
        batch_size: int = 1024,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        force_reload: bool = False,
        generate_demo_data: bool = False,
        demo: SyntheticKwaiConfig | None = None,
    ):
        super().__init__()
        check_choice("data.sampler", sampler, get_args(Sampler))  # refused here, not first at the first loader
        check_range("data.num_layers", num_layers, ge=1, integer=True)
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        self.save_hyperparameters()
        self.demo = SyntheticKwaiConfig(**demo) if isinstance(demo, dict) else demo
        self.graphs: dict[str, HeteroData] = {}

    @property
    def relations(self) -> list[EdgeType]:
        hp = self.hparams
        rels = [FOLLOWED_BY] if hp.use_follow else []
        if hp.use_topic:
            rels += [SUBTOPIC] + ([SUPERTOPIC] if hp.bidirectional_topic else [])
        return rels + [HAS_TAG]

    def prepare_data(self) -> None:
        hp = self.hparams
        root = Path(hp.dataset_root)
        if hp.generate_demo_data:  # written when missing or stamped with other settings
            ensure_synthetic_vertical(root, hp.vertical, self.demo or SyntheticKwaiConfig())

    def graph(self, split: str) -> HeteroData:
        if split not in self.graphs:
            self.graphs[split] = load_split_graph(self.hparams.dataset_root, self.hparams.vertical, split,
                                                  self.hparams.force_reload)  # fmt: skip
        return self.graphs[split]

    @property
    def num_tags(self) -> int:
        return self.graph("train")["tag"].num_nodes

    @property
    def tag_names(self) -> list[str]:
        """Tag name of every tag id: the label map's lines, then the extra ontology tags."""
        return self.graph("train")["tag"].names

    def setup(self, stage: str | None = None) -> None:
        """Build the training graph (the tag count comes from it) and check that the split the stage evaluates has
        videos, so that an empty list fails here rather than after a training epoch."""
        self.graph("train")
        loop = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}.get(stage)
        split = self.predict_split if loop == "predict" else loop
        if split not in (None, "train") and getattr(self.trainer, f"limit_{loop}_batches", 1) != 0:
            self._eval_videos(split, f"trainer.limit_{loop}_batches=0")

    def _eval_videos(self, split: str, skip_key: str = "trainer.limit_<stage>_batches=0") -> torch.Tensor:
        """Node ids of the split's evaluation videos (numbered after the training videos). A split without videos is
        an error naming its list file: Lightning runs no loop over an empty loader, so no metric would be logged (not
        even the NaN of a split whose videos all lack tags) and the best-checkpoint monitor would find nothing."""
        g = self.graph(split)
        ids = torch.arange(g["video"].num_train, g["video"].num_nodes)
        if len(ids) == 0:
            path = _kwai_paths(Path(self.hparams.dataset_root), self.hparams.vertical)[split]
            raise ValueError(f"{str(path)!r} lists no videos, so the {split} split has nothing to evaluate: list its "
                             f"videos there (one '<pid>.mp4<TAB><tag_id>…' line each), or skip the loop that reads "
                             f"it ({skip_key})")  # fmt: skip
        return ids

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Evaluation is mini-batched over the split's videos like training. Its loaders (val/test/predict) under
        several processes give each video to exactly one process: Lightning's default DistributedSampler would pad
        the last round with repeated videos, which the epoch's sample/label mAP, P@k and R@k would then count twice.
        The module accumulates in torchmetrics states (no per-step collective), so ranks may hold different numbers
        of videos."""
        hp = self.hparams
        g = self.graph(split)
        ids = torch.arange(g["video"].num_train) if split == "train" else self._eval_videos(split)
        sampler_cls = PygNeighborSampler if hp.sampler == "pyg" else BlockSampler
        sampler = sampler_cls(g, self.relations, hp.num_layers, hp.fanout if train else hp.eval_fanout,
                              hp.exclude_batch_targets)  # fmt: skip
        videos = _VideoIds(ids)
        return DataLoader(
            videos,
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(videos, self.trainer, unit="videos"),
            **worker_options(hp),
            collate_fn=GraphCollator(g, sampler, g["tag"].num_nodes),
        )
