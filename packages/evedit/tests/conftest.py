import pytest
import torch

from evedit.models import ModelConfig, build_components
from evedit.pipeline import EVEPipeline


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # the shared CI machine has 2 cores; one thread avoids oversubscription in the tiny models
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_pipe() -> EVEPipeline:
    pipe = EVEPipeline.from_components(build_components(ModelConfig(backbone="tiny", depth_model="tiny")))
    pipe.set_progress_bar_config(disable=True)
    return pipe
