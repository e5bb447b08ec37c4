"""The audio format every part of sctrain agrees on: Speech Commands' 1 s clips of 16 kHz mono int16."""
from __future__ import annotations

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # every packed clip, training window and exported input is 1 s
INT16_SCALE = 32768.0  # int16 full scale: samples / INT16_SCALE lie in [-1, 1)


def frames_per_clip(hop_length: int, num_samples: int = CLIP_SAMPLES) -> int:
    """STFT frames of a centred STFT over ``num_samples`` samples: one per hop, plus one."""
    return num_samples // hop_length + 1
