import torch
from torch_geometric.data import HeteroData

from radartag.models import FOLLOWED_BY, HAS_TAG, SUBTOPIC
from radartag.sampler import CSC, BlockSampler


def _graph():
    g = torch.Generator().manual_seed(0)
    data = HeteroData()
    data["video"].num_nodes = 30
    data["tag"].num_nodes = 6
    data[FOLLOWED_BY].edge_index = torch.randint(0, 30, (2, 200), generator=g)
    data[HAS_TAG].edge_index = torch.stack([torch.randint(0, 30, (60,), generator=g), torch.randint(0, 6, (60,), generator=g)])
    data[SUBTOPIC].edge_index = torch.tensor([[0, 1, 2, 3], [4, 4, 5, 5]])
    return data


RELS = [FOLLOWED_BY, SUBTOPIC, HAS_TAG]


def test_fanout_bound_prefix_and_valid_edges():
    data = _graph()
    sampler = BlockSampler(data, RELS, num_layers=2, fanout=3)
    batch = torch.tensor([5, 2, 9])
    s = sampler.sample(batch, torch.Generator().manual_seed(1))
    assert len(s.blocks) == 2
    for num_dst, edges in s.blocks:
        for rel, ei in edges.items():
            assert torch.bincount(ei[1], minlength=num_dst[rel[2]]).max() <= 3  # at most fanout in-edges
            assert ei[1].max() < num_dst[rel[2]]
    assert s.blocks[-1][0] == {"video": 3, "tag": 6}  # layer L's destinations are the seeds
    assert s.blocks[0][0]["video"] >= s.blocks[1][0]["video"]
    # destinations are a prefix of the sources at every layer, and sampled edges exist in the graph
    layer1_src = s.input_nodes
    assert torch.equal(layer1_src["video"][: s.blocks[0][0]["video"]][:3], batch)
    assert torch.equal(layer1_src["tag"], torch.arange(6))
    full = {r: set(map(tuple, data[r].edge_index.T.tolist())) for r in RELS}
    num_dst, edges = s.blocks[0]
    for rel, ei in edges.items():
        src_ids = layer1_src[rel[0]][ei[0]]
        dst_ids = layer1_src[rel[2]][ei[1]]
        assert {(int(a), int(b)) for a, b in zip(src_ids, dst_ids)} <= full[rel]


def test_full_neighbourhood_and_fanout_zero():
    data = _graph()
    csc = CSC(data[FOLLOWED_BY].edge_index, 30)
    dst = torch.arange(30)
    src, owner = csc.sample(dst, -1, None)
    assert sorted(zip(src.tolist(), owner.tolist())) == sorted(map(tuple, data[FOLLOWED_BY].edge_index.T.tolist()))
    src, _ = csc.sample(dst, 0, None)
    assert len(src) == 0
    src, owner = csc.sample(dst, 2, torch.Generator().manual_seed(0))
    deg = torch.bincount(data[FOLLOWED_BY].edge_index[1], minlength=30)
    assert torch.equal(torch.bincount(owner, minlength=30), deg.clamp(max=2))  # min(fanout, degree) without replacement


def test_exclude_batch_targets():
    data = _graph()
    batch = torch.unique(data[HAS_TAG].edge_index[0])[:5]
    s = BlockSampler(data, RELS, 1, fanout=-1, exclude_batch_targets=True).sample(batch)
    num_dst, edges = s.blocks[0]
    src_ids = s.input_nodes["video"][edges[HAS_TAG][0]]
    assert not set(src_ids.tolist()) & set(batch.tolist())
