"""The one audio reader against an independent one: every format libsndfile reads packs to the samples that
``soundfile.read(dtype="float32")`` returns, to int16 rounding (float WAVs used to pack as zeros)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.io import read_audio, read_clip
from sctrain.data.pack import pack_dataset
from sctrain.data.speechcommands import scan_dataset

FORMATS = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
           ("WAV", "DOUBLE"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24")]


def a_word(seconds: float = 0.8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.6 * np.sin(2 * np.pi * 440 * t) * np.hanning(len(t)) + 0.05 * rng.standard_normal(len(t))).clip(-1, 1)


@pytest.mark.parametrize(("container", "subtype"), FORMATS)
def test_every_subtype_packs_what_soundfile_reads(container, subtype, tmp_path):
    path = tmp_path / f"clip.{container.lower()}"
    sf.write(path, a_word(), SAMPLE_RATE, format=container, subtype=subtype)
    reference, _ = sf.read(str(path), dtype="float32")  # the independent reader
    packed = read_clip(path)
    assert packed.dtype == np.int16 and len(packed) == SAMPLE_RATE
    assert np.abs(packed[: len(reference)] / 32768.0 - reference).max() <= 1 / 32768 + 1e-7
    assert np.abs(packed).max() > 10000  # the word is there, not silence
    assert not packed[len(reference):].any()  # padded with zeros to 1 s
    assert np.allclose(read_audio(path), reference, atol=1e-6)  # inference reads the same samples


def test_a_float_and_flac_dataset_packs_like_its_pcm16_original(synthetic_root, tmp_path):
    original = pack_dataset(scan_dataset(synthetic_root, "all"), cache_dir=tmp_path / "cache_pcm", progress=False)
    rewritten = tmp_path / "sc"
    shutil.copytree(synthetic_root, rewritten, ignore=shutil.ignore_patterns(".sctrain_cache"))
    for i, wav in enumerate(sorted(p for p in rewritten.glob("*/*.wav") if not p.parent.name.startswith("_"))):
        data, rate = sf.read(str(wav), dtype="float32")
        if i % 2:  # half as float WAVs, half as FLAC files under the same name (the split lists name .wav)
            sf.write(wav, data, rate, subtype="FLOAT")
        else:
            sf.write(wav, data, rate, format="FLAC", subtype="PCM_16")
    packed = pack_dataset(scan_dataset(rewritten, "all"), cache_dir=tmp_path / "cache_float", progress=False)
    for split in ("train", "validation", "test"):
        assert np.array_equal(np.asarray(packed.split(split).audio), np.asarray(original.split(split).audio)), split


def test_flac_files_in_a_word_folder_are_clips(synthetic_root, tmp_path):
    root = tmp_path / "sc"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".sctrain_cache"))
    wav = sorted((root / "yes").glob("*.wav"))[0]
    data, rate = sf.read(str(wav), dtype="float32")
    sf.write(wav.with_name("ffffffff_nohash_0.flac"), data, rate, format="FLAC")
    index = scan_dataset(root, "all")
    assert "yes/ffffffff_nohash_0.flac" in [c.path for c in index.splits["train"]]
