import pytest

from evedit.models import ModelConfig, build_components
from evedit.pipeline import EVEPipeline


@pytest.fixture(scope="session")
def tiny_pipe() -> EVEPipeline:
    pipe = EVEPipeline.from_components(build_components(ModelConfig(backbone="tiny", depth_model="tiny")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def textured_frame():
    """``make(x_freq)``: a (1, 3, 512, 512) uint8 frame of fine sine textures (the green channel's frequency along x
    is ``x_freq``), which exposes any resize that does not antialias its downsampling."""
    import torch

    def make(x_freq: float) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
        img = torch.stack(
            [
                128 + 100 * torch.sin(xx * 0.9) * torch.cos(yy * 0.7),
                128 + 60 * torch.sin(xx * x_freq),
                128 + 80 * torch.sin(yy * 1.3),
            ]
        )
        return img.round().clamp(0, 255).to(torch.uint8)[None]

    return make
