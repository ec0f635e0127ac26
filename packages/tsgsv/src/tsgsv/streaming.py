"""A real streaming API: feed one frame feature at a time, get the current start/end/relevance scores.

    grounder = StreamingGrounder(module.model, sentences, lengths)   # Q queries on the same stream
    for frame in stream:                                             # frame (d_v,) or (Q, d_v)
        probs = grounder.step(frame)                                  # (Q, 3): p_start, p_end, p_sem at t

The grounder keeps the last M_l + M_s raw frames internally (zero-padded and masked at the stream start) and
encodes the sentences once. It gives the same scores as the offline test loop (``TSGSVModule.stream_scores``).
"""

from __future__ import annotations

import torch

from .models import StreamingTSGV

__all__ = ["StreamingGrounder"]


class StreamingGrounder:
    """Online grounding of Q sentence queries in one live stream (or Q streams, one frame each per step).

    Args:
        model: a trained :class:`~tsgsv.models.StreamingTSGV` (put in eval mode here).
        sentences: (Q, L, d_s) token features (L = model.config.max_text_len, zero-padded).
        lengths: (Q,) true token counts.
    """

    def __init__(self, model: StreamingTSGV, sentences: torch.Tensor, lengths: torch.Tensor):
        if sentences.ndim != 3:
            raise ValueError(f"sentences must be (Q, L, d_s), got shape {tuple(sentences.shape)}")
        self.model = model.eval()
        c = model.config
        self.window = c.short_memory + c.long_memory
        with torch.no_grad():
            self.encoded = model.encode_sentence(sentences, lengths)
        self.num_queries = sentences.shape[0]
        self.reset()

    def reset(self) -> None:
        """Start a new stream (empty memories)."""
        c = self.model.config
        device = self.encoded[1].device
        self.buffer = torch.zeros(self.num_queries, self.window, c.video_dim, device=device)  # oldest first
        self.invalid = torch.ones(self.num_queries, self.window, dtype=torch.bool, device=device)
        self.time = 0

    @torch.no_grad()
    def step(self, frame: torch.Tensor) -> torch.Tensor:
        """Push the feature of the current frame t — (d_v,) shared by all queries or (Q, d_v) — and return
        (Q, 3) probabilities (p_start(t), p_end(t), p_sem(t)) computed from frames ≤ t only."""
        c = self.model.config
        if frame.shape[-1] != c.video_dim:
            raise ValueError(f"frame feature width {frame.shape[-1]} != model.config.video_dim={c.video_dim}")
        frame = frame.to(self.buffer).expand(self.num_queries, -1)  # (Q, d_v)
        self.buffer = torch.cat([self.buffer[:, 1:], frame[:, None]], 1)  # (Q, M_l + M_s, d_v)
        self.invalid = torch.cat([self.invalid[:, 1:], self.invalid.new_zeros(self.num_queries, 1)], 1)
        self.time += 1
        M_l = c.long_memory
        out = self.model(
            self.buffer[:, M_l:], self.invalid[:, M_l:], self.buffer[:, :M_l], self.invalid[:, :M_l],
            encoded_sentence=self.encoded,
        )  # fmt: skip
        return torch.sigmoid(out.logits[:, -1].float())  # (Q, 3)
