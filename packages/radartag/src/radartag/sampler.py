"""Pure-torch per-layer neighbour sampling with destination-prefix blocks (spec §3.6), no pyg-lib/torch-sparse.

The official code (DGL ``MultiLayerNeighborSampler``) samples per block: the seeds (batch videos + all tags)
are the destinations of layer L; per relation, each destination draws up to ``fanout`` incoming edges uniformly
without replacement; the layer's source set of a type is its destinations (as a prefix) followed by the newly
reached nodes; that source set is the destination set of the layer below. :class:`BlockSampler` reproduces this.

Cost per batch is O(batch · fanout^L + tags · fanout) (times a log), independent of the graph size: fan-out
positions are drawn directly in each destination's CSC segment (:func:`sample_positions`, Floyd's algorithm — no
candidate list, although every tag is a seed and a tag's in-degree grows with the graph), and sampled nodes get
local ids by sorting the sampled ids (:func:`relabel`), not through a graph-sized lookup table. Only the one-off
CSC index (and, with ``exclude_batch_targets``, a one-off out-edge index) is O(graph). Full-neighbour sampling
(fanout −1) costs the size of its output.

Deviation from PyG's ``NeighborLoader`` (usable only with pyg-lib): PyG samples each node's neighbours once for
all layers; here every layer samples anew, as DGL blocks do. :class:`PygNeighborSampler` (``data.sampler: pyg``) is
the optional PyG path; it needs the compiled ``pyg-lib``, which has no wheels on PyPI (nor does ``torch-sparse``:
source only), and raises an ImportError naming this when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.data import HeteroData

from .models import HAS_TAG, EdgeType

__all__ = [
    "CSC",
    "sample_positions",
    "relabel",
    "SampledBatch",
    "BlockSampler",
    "PygNeighborSampler",
    "blocks_from_pyg_output",
    "PYG_LIB_MISSING",
]

PYG_LIB_MISSING = (
    "data.sampler='pyg' needs the compiled 'pyg-lib' package, which is not on PyPI (and 'torch-sparse' ships source "
    "only): install a pyg-lib wheel matching your torch/CUDA from https://data.pyg.org/whl/ , or use the default "
    "pure-torch sampler (data.sampler: block)"
)


def sample_positions(
    start: torch.Tensor, deg: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every node i, ``k[i] ≤ deg[i]`` distinct positions drawn uniformly without replacement from
    ``start[i] … start[i] + deg[i] − 1``, in O(Σ k + n·max(k)²) — independent of the degrees (no candidate is
    enumerated). Nodes with ``k = deg`` take all their positions; the others use Floyd's algorithm, vectorised over
    nodes (for j = deg − k … deg − 1: draw t uniform in [0, j]; take j if t was already taken, else t).
    Returns (positions (Σ k,), owner index into the nodes (Σ k,)), grouped by owner."""
    k = torch.minimum(k, deg)
    full = k == deg
    idx_full = full.nonzero().squeeze(1)
    owner_full = torch.repeat_interleave(idx_full, deg[idx_full])
    offsets = torch.cumsum(deg[idx_full], 0) - deg[idx_full]
    rank = torch.arange(len(owner_full)) - torch.repeat_interleave(offsets, deg[idx_full])
    pos_full = start[owner_full] + rank
    idx = (~full).nonzero().squeeze(1)
    if len(idx) == 0:
        return pos_full, owner_full
    d, kk = deg[idx], k[idx]
    kmax = int(kk.max())
    chosen = torch.full((len(idx), kmax), -1, dtype=torch.long)
    for i in range(kmax):
        active = i < kk
        j = d - kk + i  # (n,) the Floyd step's upper end (valid where active)
        t = (torch.rand(len(idx), generator=generator, dtype=torch.float64) * (j + 1).double()).long()
        t = torch.minimum(t, j)
        taken = (chosen[:, :i] == t[:, None]).any(1)
        chosen[:, i] = torch.where(active, torch.where(taken, j, t), chosen[:, i])
    valid = chosen >= 0
    owner_part = idx[:, None].expand_as(chosen)[valid]
    pos_part = (start[idx][:, None] + chosen)[valid]
    pos, owner = torch.cat([pos_full, pos_part]), torch.cat([owner_full, owner_part])
    order = torch.argsort(owner, stable=True)
    return pos[order], owner[order]


class CSC:
    """Incoming edges of one relation, grouped by destination: ``ptr`` (N_dst + 1,), ``src`` (E,) sorted by dst.
    Out-edges (for ``exclude_src``) are indexed lazily, once."""

    def __init__(self, edge_index: torch.Tensor, num_dst: int):
        order = torch.argsort(edge_index[1], stable=True)
        self.src = edge_index[0, order].contiguous()
        counts = torch.bincount(edge_index[1], minlength=num_dst)
        self.ptr = torch.zeros(num_dst + 1, dtype=torch.long)
        self.ptr[1:] = counts.cumsum(0)
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _out_dst(self, sources: torch.Tensor) -> torch.Tensor:
        """Destinations of every out-edge of ``sources`` (unique ids): O(their out-degree) after a one-off index."""
        if self._out is None:
            dst = torch.repeat_interleave(torch.arange(len(self.ptr) - 1), self.ptr[1:] - self.ptr[:-1])
            order = torch.argsort(self.src, stable=True)
            num_src = int(self.src.max()) + 1 if len(self.src) else 0
            out_ptr = torch.zeros(num_src + 1, dtype=torch.long)
            out_ptr[1:] = torch.bincount(self.src, minlength=num_src).cumsum(0)
            self._out = (out_ptr, dst[order])
        out_ptr, out_dst = self._out
        sources = sources[sources < len(out_ptr) - 1]
        start, deg = out_ptr[sources], out_ptr[sources + 1] - out_ptr[sources]
        pos, _ = sample_positions(start, deg, deg, None)  # all of them
        return out_dst[pos]

    def sample(
        self, dst: torch.Tensor, fanout: int, generator: torch.Generator | None, exclude_src: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``fanout`` in-edges per node of ``dst`` (global ids), uniformly without replacement (all when
        fanout < 0) among the edges whose source is not in ``exclude_src`` (global source ids, or None).
        Returns (src global ids (E',), position in ``dst`` of each edge's destination (E',)), grouped by destination.

        Cost O(len(dst) · fanout + excluded edges), independent of the degrees (and so of the graph size): positions
        are drawn by :func:`sample_positions`; with ``exclude_src``, a destination with x excluded in-edges draws
        fanout + x positions, drops the excluded ones and keeps a random ``fanout`` of the rest (uniform among the
        allowed edges by symmetry). fanout < 0 returns every in-edge (cost = output size)."""
        start, deg = self.ptr[dst], self.ptr[dst + 1] - self.ptr[dst]
        if fanout == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        want = deg if fanout < 0 else deg.clamp(max=fanout)
        if exclude_src is not None and len(exclude_src) and fanout >= 0:
            hit = self._out_dst(torch.unique(exclude_src))  # destinations of the excluded edges (with repeats)
            hit, counts = torch.unique(hit, return_counts=True)  # sorted global destination ids
            n_ex = torch.zeros_like(deg)  # excluded in-edges per destination
            if len(hit):
                where = torch.searchsorted(hit, dst).clamp(max=len(hit) - 1)
                n_ex = torch.where(hit[where] == dst, counts[where], n_ex)
            want = deg.clamp(max=fanout) + n_ex
        pos, owner = sample_positions(start, deg, want, generator)
        src = self.src[pos]
        if exclude_src is None or not len(exclude_src):
            return src, owner
        keep = ~torch.isin(src, exclude_src)
        src, owner = src[keep], owner[keep]
        if fanout < 0 or len(src) == 0:
            return src, owner
        keys = torch.rand(len(src), generator=generator, dtype=torch.float64)  # random order within a destination
        order = torch.argsort(owner.double() + keys)
        src, owner = src[order], owner[order]
        rank = torch.arange(len(owner)) - torch.searchsorted(owner, owner, side="left")
        keep = rank < fanout
        return src[keep], owner[keep]


def relabel(prefix: torch.Tensor, parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Local ids without an O(graph) lookup table: the node set is ``prefix`` (unique global ids, kept in order as
    the destination prefix) followed by the nodes of ``parts`` not in it, in order of first appearance.
    Returns (node set (N,), local ids of each part). Cost O(M log M), M = total length."""
    allids = torch.cat([prefix, *parts])
    uniq, inverse = torch.unique(allids, return_inverse=True)
    first = torch.full((len(uniq),), len(allids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(allids)), reduce="amin")
    order = torch.argsort(first)  # the prefix's nodes first (positions 0…len(prefix)−1), then new nodes
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    local = rank[inverse]
    return uniq[order], list(local[len(prefix) :].split([len(p) for p in parts]))


@dataclass
class SampledBatch:
    """One mini-batch: layer-0 source node ids per type, blocks for layers 1…L, and the batch videos.

    ``blocks[l] = (num_dst, edge_index_dict)`` for layer l+1: ``num_dst[τ]`` destination-prefix sizes, edges in
    local indices (row 0 into the layer's source set, row 1 into its destination prefix).
    """

    input_nodes: dict[str, torch.Tensor]
    blocks: list[tuple[dict[str, int], dict[EdgeType, torch.Tensor]]]
    batch_videos: torch.Tensor


class BlockSampler:
    """Per-layer, per-relation uniform fan-out sampler over a split graph (a :class:`HeteroData`).

    Args:
        graph: the split graph (node types video/tag; message edge types).
        relations: message-passing relations (the model's ``config.relations``).
        num_layers: L.
        fanout: in-edges per destination per relation per layer (official 4); -1 = all neighbours.
        exclude_batch_targets: drop has_tag edges whose source is a batch video from the candidates (spec §3.6
            option; official False — a tag may aggregate a batch video carrying it).
    """

    def __init__(
        self,
        graph: HeteroData,
        relations: list[EdgeType],
        num_layers: int,
        fanout: int = 4,
        exclude_batch_targets: bool = False,
    ):
        self.num_nodes = {t: graph[t].num_nodes for t in ("video", "tag")}
        self.relations = relations
        self.num_layers = num_layers
        self.fanout = fanout
        self.exclude_batch_targets = exclude_batch_targets
        self.csc = {}
        for rel in relations:
            ei = graph[rel].edge_index if rel in graph.edge_types else torch.zeros(2, 0, dtype=torch.long)
            self.csc[rel] = CSC(ei, self.num_nodes[rel[2]])

    def sample(self, batch_videos: torch.Tensor, generator: torch.Generator | None = None) -> SampledBatch:
        """Seeds = ``batch_videos`` (global video ids) + all tags; blocks built from layer L down to 1."""
        dst = {"video": batch_videos.long(), "tag": torch.arange(self.num_nodes["tag"])}
        exclude = torch.unique(batch_videos.long()) if self.exclude_batch_targets else None
        blocks = []
        for _ in range(self.num_layers):
            sampled = {}
            for rel in self.relations:
                sampled[rel] = self.csc[rel].sample(dst[rel[2]], self.fanout, generator,
                                                    exclude if rel == HAS_TAG else None)  # fmt: skip
            src_nodes, edges = {}, {}
            for t, nodes in dst.items():
                rels = [rel for rel in self.relations if rel[0] == t]
                src_nodes[t], local = relabel(nodes, [sampled[rel][0] for rel in rels])
                for rel, src_local in zip(rels, local, strict=True):
                    edges[rel] = torch.stack([src_local, sampled[rel][1]])
            blocks.append(({t: len(n) for t, n in dst.items()}, {rel: edges[rel] for rel in self.relations}))
            dst = src_nodes
        blocks.reverse()  # layer 1 first
        return SampledBatch(dst, blocks, batch_videos)


def blocks_from_pyg_output(out, relations: list[EdgeType], num_layers: int) -> SampledBatch:
    """Turn PyG's hop-major :class:`~torch_geometric.sampler.HeteroSamplerOutput` (non-disjoint, directional) into
    destination-prefix blocks.

    PyG orders nodes by hop (seeds first) and edges by hop; ``num_sampled_nodes[τ][h]`` counts hop-h nodes (h = 0:
    seeds), ``num_sampled_edges[r][h]`` the edges sampled at hop h + 1. Layer l (1…L) then has the destinations of
    hops ≤ L − l and the edges of hops ≤ L − l + 1 (PyG's ``trim_to_layer``): every node's neighbours are sampled
    once for all layers, unlike the per-block sampling of :class:`BlockSampler`.
    """
    if out.num_sampled_nodes is None or out.num_sampled_edges is None:
        raise RuntimeError("the PyG sampler returned no per-hop counts (needs pyg-lib > 0.1.0)")
    blocks = []
    for layer in range(1, num_layers + 1):
        hops = num_layers - layer  # destination hops 0..hops, edge hops 1..hops+1
        num_dst = {t: int(sum(out.num_sampled_nodes.get(t, [0])[: hops + 1])) for t in ("video", "tag")}
        edges = {}
        for rel in relations:
            n = int(sum(out.num_sampled_edges.get(rel, [0])[: hops + 1]))
            row = out.row.get(rel, torch.zeros(0, dtype=torch.long))[:n]
            col = out.col.get(rel, torch.zeros(0, dtype=torch.long))[:n]
            edges[rel] = torch.stack([row.long(), col.long()])
        blocks.append((num_dst, edges))
    nodes = {t: out.node.get(t, torch.zeros(0, dtype=torch.long)).long() for t in ("video", "tag")}
    return SampledBatch(nodes, blocks, nodes["video"][: int(out.num_sampled_nodes["video"][0])])


class PygNeighborSampler:
    """Optional sampler on PyG's compiled neighbour sampling (``torch_geometric.sampler.NeighborSampler``, the engine
    of ``LinkNeighborLoader``), selected by ``data.sampler: pyg``. Same seeds as :class:`BlockSampler` (batch videos,
    sorted, + all tags, as the endpoints of batch-video × tag pairs), ``fanout`` in-edges per relation and hop,
    directional subgraphs; labels stay a dense per-batch matrix.

    Needs ``pyg-lib`` (no PyPI wheels): raises ImportError (:data:`PYG_LIB_MISSING`) without it.
    ``exclude_batch_targets`` is not supported on this path.
    """

    def __init__(
        self,
        graph: HeteroData,
        relations: list[EdgeType],
        num_layers: int,
        fanout: int = 4,
        exclude_batch_targets: bool = False,
    ):
        import torch_geometric.typing

        if not torch_geometric.typing.WITH_PYG_LIB:
            raise ImportError(PYG_LIB_MISSING)
        if exclude_batch_targets:
            raise ValueError("data.exclude_batch_targets=true is only supported by data.sampler: block")
        from torch_geometric.sampler import NeighborSampler

        self.num_tags = graph["tag"].num_nodes
        self.relations, self.num_layers = relations, num_layers
        data = HeteroData()
        for t in ("video", "tag"):
            data[t].num_nodes = graph[t].num_nodes
        for rel in relations:
            data[rel].edge_index = (
                graph[rel].edge_index if rel in graph.edge_types else torch.zeros(2, 0, dtype=torch.long)
            )  # fmt: skip
        self.sampler = NeighborSampler(data, {rel: [fanout] * num_layers for rel in relations},
                                       subgraph_type="directional")  # fmt: skip

    def sample(self, batch_videos: torch.Tensor, generator: torch.Generator | None = None) -> SampledBatch:
        """Seeds = the (sorted, unique) ``batch_videos`` + all tags; ``generator`` is unused (pyg-lib's own RNG)."""
        from torch_geometric.sampler import EdgeSamplerInput

        n = max(len(batch_videos), self.num_tags)
        pairs = torch.arange(n)
        inputs = EdgeSamplerInput(None, batch_videos.long()[pairs % len(batch_videos)], pairs % self.num_tags,
                                  input_type=HAS_TAG)  # fmt: skip
        return blocks_from_pyg_output(self.sampler.sample_from_edges(inputs), self.relations, self.num_layers)
