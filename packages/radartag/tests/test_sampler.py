import torch
from torch_geometric.data import HeteroData

from radartag.models import FOLLOWED_BY, HAS_TAG, SUBTOPIC
from radartag.sampler import CSC, BlockSampler
from radartag.synthetic import random_graph


def _graph():
    g = torch.Generator().manual_seed(0)
    data = HeteroData()
    data["video"].num_nodes = 30
    data["tag"].num_nodes = 6
    data[FOLLOWED_BY].edge_index = torch.randint(0, 30, (2, 200), generator=g)
    data[HAS_TAG].edge_index = torch.stack(
        [torch.randint(0, 30, (60,), generator=g), torch.randint(0, 6, (60,), generator=g)]
    )
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


def test_batch_bounded_by_batch_not_graph():
    """Scale check (the 200k-video version is in `make bench`): the sampled batch of a 20k-video graph obeys the same
    size bound as that of a 2k-video graph — batch videos B, all K tags, fanout f, L = 2 layers:
    V_1 ≤ B + f·B + f·K and V_0 ≤ V_1 + f·V_1 + f·K input videos, at most f in-edges per destination and relation."""
    from radartag.data import GraphCollator

    B, K, f, L = 16, 40, 3, 2
    v1 = B + f * B + f * K
    bound_videos = v1 + f * v1 + f * K
    sizes = {}
    for num_videos in (2_000, 20_000):
        graph = random_graph(
            num_videos, K, dim=4, follows_per_video=20, seed=num_videos
        )  # in-degree ~20 > f: sampling is what bounds the batch
        sampler = BlockSampler(graph, RELS, num_layers=L, fanout=f)
        collate = GraphCollator(graph, sampler, K)
        for seed in range(3):
            ids = torch.randperm(num_videos, generator=torch.Generator().manual_seed(seed))[:B].tolist()
            batch = collate(ids)
            n_in = batch.video_x.shape[0]
            assert n_in <= bound_videos
            assert batch.tag_x.shape[0] == K and batch.labels.shape == (B, K)
            num_edges = sum(e.shape[1] for _, edges in batch.blocks for e in edges.values())
            assert num_edges <= f * (bound_videos + 2 * K) * L
            sizes.setdefault(num_videos, []).append(n_in)
    # a tenfold larger graph does not grow the batch beyond the bound (sizes are ~ equal: both near the bound)
    assert max(sizes[20_000]) <= bound_videos and max(sizes[2_000]) <= bound_videos
    assert max(sizes[20_000]) < 20_000 // 10


def test_pyg_sampler_missing_pyg_lib_is_a_clear_error(tmp_path):
    """pyg-lib (and torch-sparse) have no wheels on PyPI: data.sampler=pyg must say so instead of failing deep in PyG."""
    import pytest
    import torch_geometric.typing

    from radartag.data import KwaiTagDataModule
    from radartag.sampler import PYG_LIB_MISSING, PygNeighborSampler
    from radartag.synthetic import SyntheticKwaiConfig

    if torch_geometric.typing.WITH_PYG_LIB:
        pytest.skip("pyg-lib is installed")
    with pytest.raises(ImportError, match="pyg-lib") as err:
        PygNeighborSampler(_graph(), RELS, 2, fanout=3)
    assert str(err.value) == PYG_LIB_MISSING and "PyPI" in PYG_LIB_MISSING
    dm = KwaiTagDataModule(str(tmp_path / "k"), "v", sampler="pyg", generate_demo_data=True,
                           demo=SyntheticKwaiConfig(num_users=6, num_parents=2, leaves_per_parent=2, follows=2,
                                                    feature_dim=4))  # fmt: skip
    dm.prepare_data()
    with pytest.raises(ImportError, match="data.sampler='pyg'"):
        dm.train_dataloader()


def test_blocks_from_pyg_output_hop_major_to_prefix_blocks():
    """Conversion of PyG's hop-major sampler output (hand-built, 2 hops) into destination-prefix blocks."""
    from torch_geometric.sampler import HeteroSamplerOutput

    from radartag.models import Radar, RadarConfig
    from radartag.sampler import blocks_from_pyg_output

    out = HeteroSamplerOutput(
        node={"video": torch.tensor([7, 3, 5, 9, 1]), "tag": torch.tensor([0, 1, 2])},
        row={FOLLOWED_BY: torch.tensor([2, 3, 4]), HAS_TAG: torch.tensor([1, 3]), SUBTOPIC: torch.tensor([1])},
        col={FOLLOWED_BY: torch.tensor([0, 1, 2]), HAS_TAG: torch.tensor([0, 2]), SUBTOPIC: torch.tensor([0])},
        edge={},
        num_sampled_nodes={"video": [2, 2, 1], "tag": [3, 0, 0]},
        num_sampled_edges={FOLLOWED_BY: [2, 1], HAS_TAG: [2, 0], SUBTOPIC: [1, 0]},
    )
    s = blocks_from_pyg_output(out, RELS, num_layers=2)
    assert torch.equal(s.batch_videos, torch.tensor([7, 3]))
    (dst1, e1), (dst2, e2) = s.blocks
    assert dst1 == {"video": 4, "tag": 3} and dst2 == {"video": 2, "tag": 3}
    assert e1[FOLLOWED_BY].tolist() == [[2, 3, 4], [0, 1, 2]]  # layer 1: edges of hops 1 and 2
    assert e2[FOLLOWED_BY].tolist() == [[2, 3], [0, 1]]  # layer 2: hop-1 edges into the seeds only
    assert e2[HAS_TAG].tolist() == [[1, 3], [0, 2]] and e2[SUBTOPIC].tolist() == [[1], [0]]
    for (num_dst, edges), num_src in zip(s.blocks, ({"video": 5, "tag": 3}, dst1), strict=True):
        for rel, ei in edges.items():
            assert int(ei[0].max()) < num_src[rel[0]] and int(ei[1].max()) < num_dst[rel[2]]
    cfg = RadarConfig(video_dim=4, tag_dim=4, num_tags=3, hidden_dim=8, num_heads=2)
    res = Radar(cfg)(torch.randn(5, 4), torch.randn(3, 4), torch.arange(3), s.blocks, len(s.batch_videos))
    assert res.scores.shape == (2, 3)


def test_pyg_sampler_with_pyg_lib():
    """Runs only where pyg-lib is installed (not installable from PyPI)."""
    import pytest

    pytest.importorskip("pyg_lib")
    from radartag.sampler import PygNeighborSampler

    data = _graph()
    batch = torch.tensor([9, 2, 5])
    s = PygNeighborSampler(data, RELS, 2, fanout=3).sample(batch)
    assert torch.equal(s.batch_videos, batch.sort().values)
    assert torch.equal(s.input_nodes["tag"][:6].sort().values, torch.arange(6))
    full = {r: set(map(tuple, data[r].edge_index.T.tolist())) for r in RELS}
    for _num_dst, edges in s.blocks:
        for rel, ei in edges.items():
            if ei.numel():
                assert torch.bincount(ei[1]).max() <= 3
                pairs = zip(s.input_nodes[rel[0]][ei[0]].tolist(), s.input_nodes[rel[2]][ei[1]].tolist(), strict=True)
                assert set(pairs) <= full[rel]


def test_sample_positions_uniform_without_replacement():
    """Floyd's algorithm draws k distinct positions per node, uniformly over the k-subsets (here 2 of 4: each
    position with probability 1/2, each of the 6 pairs with probability 1/6)."""
    from radartag.sampler import sample_positions

    n = 6000
    start, deg = torch.full((n,), 10), torch.full((n,), 4)
    pos, owner = sample_positions(start, deg, torch.full((n,), 2), torch.Generator().manual_seed(0))
    assert torch.equal(owner, torch.arange(n).repeat_interleave(2))
    pairs = pos.view(n, 2).sort(1).values - 10
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() < 4
    freq = torch.bincount(pos - 10, minlength=4) / n
    assert torch.allclose(freq, torch.full((4,), 0.5), atol=0.03)
    pair_freq = torch.bincount(pairs[:, 0] * 4 + pairs[:, 1], minlength=16)[[1, 2, 3, 6, 7, 11]] / n
    assert torch.allclose(pair_freq, torch.full((6,), 1 / 6), atol=0.03)
    # k >= degree: every position once
    pos, owner = sample_positions(torch.tensor([0, 5]), torch.tensor([2, 3]), torch.tensor([4, 4]), None)
    assert pos.tolist() == [0, 1, 5, 6, 7] and owner.tolist() == [0, 0, 1, 1, 1]


def test_sampling_cost_independent_of_degree():
    """Issue item: sampling is O(batch · fanout), not O(graph). Destinations of in-degree 10^12 (a virtual edge list,
    never materialised: an O(degree) step would need terabytes) are sampled at once, in the CSC and in a
    BlockSampler whose tag seeds have such degrees."""
    huge = 10**12
    csc = CSC(torch.zeros(2, 0, dtype=torch.long), 3)
    csc.ptr = torch.tensor([0, huge, huge + 2, 2 * huge + 2])
    csc.src = torch.zeros(1, dtype=torch.long).expand(2 * huge + 2)  # stride-0 view: every source is video 0
    src, owner = csc.sample(torch.tensor([2, 1, 0]), 4, torch.Generator().manual_seed(0))
    assert owner.tolist() == [0] * 4 + [1] * 2 + [2] * 4 and (src == 0).all()
    data = _graph()
    sampler = BlockSampler(data, RELS, num_layers=2, fanout=3)
    tag_csc = sampler.csc[HAS_TAG]
    n_tags = len(tag_csc.ptr) - 1
    tag_csc.ptr = torch.arange(n_tags + 1) * huge
    tag_csc.src = torch.arange(30)[7:8].expand(n_tags * huge)  # every tag is carried by 10^12 "copies" of video 7
    s = sampler.sample(torch.tensor([5, 2]), torch.Generator().manual_seed(1))
    for num_dst, edges in s.blocks:
        assert torch.equal(torch.bincount(edges[HAS_TAG][1], minlength=num_dst["tag"]), torch.full((n_tags,), 3))
        assert (s.input_nodes["video"][edges[HAS_TAG][0]] == 7).all()


def test_exclude_batch_targets_with_fanout():
    """With a fanout, excluded sources never appear and each tag keeps min(fanout, allowed in-edges) edges."""
    data = _graph()
    ei = data[HAS_TAG].edge_index
    batch = torch.unique(ei[0])[:8]
    allowed = torch.bincount(ei[1][~torch.isin(ei[0], batch)], minlength=6)
    csc = CSC(ei, 6)
    for seed in range(5):
        src, owner = csc.sample(torch.arange(6), 2, torch.Generator().manual_seed(seed), exclude_src=batch)
        assert not torch.isin(src, batch).any()
        assert torch.equal(torch.bincount(owner, minlength=6), allowed.clamp(max=2))
        assert set(zip(src.tolist(), owner.tolist(), strict=True)) <= set(map(tuple, ei.T.tolist()))
