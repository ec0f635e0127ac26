import torch

from tsgsv.metrics import GroundingEvalConfig
from tsgsv.models import TSGSVConfig
from tsgsv.module import TSGSVModule
from tsgsv.streaming import StreamingGrounder


def test_streaming_api_matches_offline_test_loop():
    torch.manual_seed(0)
    cfg = TSGSVConfig(video_dim=8, text_dim=6, hidden_dim=16, ffn_dim=32, num_heads=2, dropout=0.1, short_memory=4,
                      long_memory=8, future_memory=8, gru_layers=1, compressor_tokens=[3, 2])  # fmt: skip
    module = TSGSVModule(cfg, GroundingEvalConfig(), eval_window_batch=7).eval()
    N = 30
    video = torch.randn(N, 8)
    sentences = torch.randn(2, 20, 6)
    lengths = torch.tensor([4, 20])
    offline = [module.stream_scores(video, sentences[q], lengths[q]) for q in range(2)]  # (N, 3) each
    grounder = StreamingGrounder(module.model, sentences, lengths)  # two queries on the same stream
    online = torch.stack([grounder.step(video[t]) for t in range(N)], 1)  # (Q, N, 3)
    for q in range(2):
        torch.testing.assert_close(online[q], offline[q], atol=1e-5, rtol=1e-5)
    grounder.reset()
    again = grounder.step(video[0])
    torch.testing.assert_close(again, online[:, 0])
