import pytest

from snps3.models import SNPS3Config, SNPS3Model


def tiny_config(**overrides) -> SNPS3Config:
    kw = dict(
        bert=None,
        vocab_size=209,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
        tiny_cnn_channels=8,
        num_answers=5,
    )
    kw.update(overrides)
    return SNPS3Config(**kw)


@pytest.fixture
def tiny_model() -> SNPS3Model:
    return SNPS3Model(tiny_config())


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    from snps3.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("snps3_synthetic")
    return generate_synthetic_dataset(root, num_train=12, num_test=5, num_frames=6, size=32, seed=0)


@pytest.fixture
def make_config():
    """The tiny config factory, for tests that need their own variant (``make_config(num_layers=1)``)."""
    return tiny_config
