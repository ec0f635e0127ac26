import pickle

import pytest
import torch

from mmzoo.distributed import restore_output_capture

transformers = pytest.importorskip("transformers")
output_capturing = pytest.importorskip("transformers.utils.output_capturing")


def _tiny_vision_model():
    config = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=8, patch_size=4)  # fmt: skip
    return transformers.CLIPVisionModel(config).eval()


def test_a_model_missing_from_the_registry_gets_its_hidden_states_back():
    """In a process that unpickled the model (ddp_spawn) the class is not registered: hidden states come back None.
    Simulated here by removing the class's entry, which is all that process lacks."""
    model = _tiny_vision_model()
    wrapper = torch.nn.Sequential(pickle.loads(pickle.dumps(model)))  # as a LightningModule holds it
    registry = output_capturing._CAN_RECORD_REGISTRY
    key = str(type(model))
    saved = registry.pop(key)
    x = torch.randn(1, 3, 8, 8)
    try:
        with torch.no_grad():
            assert wrapper[0](pixel_values=x, output_hidden_states=True).hidden_states is None
        assert restore_output_capture(wrapper) == 1
        assert registry[key] == saved
        with torch.no_grad():
            out = wrapper[0](pixel_values=x, output_hidden_states=True)
        assert len(out.hidden_states) == 3  # embeddings + 2 layers
        torch.testing.assert_close(out.last_hidden_state, model(pixel_values=x).last_hidden_state)
    finally:
        registry[key] = saved


def test_modules_without_transformers_models_are_left_alone():
    assert restore_output_capture(torch.nn.Linear(2, 2)) == 0
