"""Pure-torch per-layer neighbour sampling with destination-prefix blocks (spec §3.6), no pyg-lib/torch-sparse.

The official code (DGL ``MultiLayerNeighborSampler``) samples per block: the seeds (batch videos + all tags)
are the destinations of layer L; per relation, each destination draws up to ``fanout`` incoming edges uniformly
without replacement; the layer's source set of a type is its destinations (as a prefix) followed by the newly
reached nodes; that source set is the destination set of the layer below. :class:`BlockSampler` reproduces this.

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

__all__ = ["CSC", "SampledBatch", "BlockSampler", "PygNeighborSampler", "blocks_from_pyg_output", "PYG_LIB_MISSING"]

PYG_LIB_MISSING = (
    "data.sampler='pyg' needs the compiled 'pyg-lib' package, which is not on PyPI (and 'torch-sparse' ships source "
    "only): install a pyg-lib wheel matching your torch/CUDA from https://data.pyg.org/whl/ , or use the default "
    "pure-torch sampler (data.sampler: block)"
)


class CSC:
    """Incoming edges of one relation, grouped by destination: ``ptr`` (N_dst + 1,), ``src`` (E,) sorted by dst."""

    def __init__(self, edge_index: torch.Tensor, num_dst: int):
        order = torch.argsort(edge_index[1], stable=True)
        self.src = edge_index[0, order].contiguous()
        counts = torch.bincount(edge_index[1], minlength=num_dst)
        self.ptr = torch.zeros(num_dst + 1, dtype=torch.long)
        self.ptr[1:] = counts.cumsum(0)

    def sample(
        self, dst: torch.Tensor, fanout: int, generator: torch.Generator | None, exclude_src: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``fanout`` in-edges per node of ``dst`` (global ids), uniformly without replacement (all when
        fanout < 0). ``exclude_src`` (bool over source ids) drops candidate edges from those sources first.
        Returns (src global ids (E',), position in ``dst`` of each edge's destination (E',))."""
        start, deg = self.ptr[dst], self.ptr[dst + 1] - self.ptr[dst]
        owner = torch.repeat_interleave(torch.arange(len(dst)), deg)  # (E_cand,) index into dst
        offsets = torch.cumsum(deg, 0) - deg
        pos = start[owner] + torch.arange(len(owner)) - offsets[owner]  # edge positions in self.src
        src = self.src[pos]
        if exclude_src is not None:
            keep = ~exclude_src[src]
            src, owner = src[keep], owner[keep]
        if fanout < 0 or len(src) == 0:
            return src, owner
        if fanout == 0:
            return src[:0], owner[:0]
        keys = torch.rand(len(src), generator=generator, dtype=torch.float64)  # random keys + segment sort
        order = torch.argsort(owner.double() + keys)
        src, owner = src[order], owner[order]
        seg_start = torch.searchsorted(owner, owner, side="left")
        rank = torch.arange(len(owner)) - seg_start  # rank within its destination's candidates
        keep = rank < fanout
        return src[keep], owner[keep]


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
        exclude = None
        if self.exclude_batch_targets:
            exclude = torch.zeros(self.num_nodes["video"], dtype=torch.bool)
            exclude[batch_videos] = True
        blocks = []
        for _ in range(self.num_layers):
            lookup = {t: torch.full((n,), -1, dtype=torch.long) for t, n in self.num_nodes.items()}
            src_nodes = {}
            for t, nodes in dst.items():
                lookup[t][nodes] = torch.arange(len(nodes))
                src_nodes[t] = [nodes]
            sampled = {}
            for rel in self.relations:
                s, owner = self.csc[rel].sample(dst[rel[2]], self.fanout, generator,
                                                exclude if rel == HAS_TAG else None)  # fmt: skip
                sampled[rel] = (s, owner)
                new = torch.unique(s)
                new = new[lookup[rel[0]][new] < 0]
                size = sum(len(x) for x in src_nodes[rel[0]])
                lookup[rel[0]][new] = torch.arange(size, size + len(new))
                src_nodes[rel[0]].append(new)
            edges = {rel: torch.stack([lookup[rel[0]][s], owner]) for rel, (s, owner) in sampled.items()}
            blocks.append(({t: len(n) for t, n in dst.items()}, edges))
            dst = {t: torch.cat(parts) for t, parts in src_nodes.items()}
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
