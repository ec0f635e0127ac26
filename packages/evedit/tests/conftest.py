import pytest

from evedit.models import ModelConfig, build_components
from evedit.pipeline import EVEPipeline


@pytest.fixture(scope="session")
def tiny_pipe() -> EVEPipeline:
    pipe = EVEPipeline.from_components(build_components(ModelConfig(backbone="tiny", depth_model="tiny")))
    pipe.set_progress_bar_config(disable=True)
    return pipe
