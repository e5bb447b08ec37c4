"""A synthetic dataset in the SpeechCommands layout, for demos and tests when the real one is not at hand.

It is not speech. Each word is a fixed sequence of 2-3 "syllables" drawn from a shared inventory (so words
share syllables and must be told apart by the rest): voiced ones are sawtooth pulse trains shaped by
formant-like resonances gliding from a start to an end vowel, unvoiced ones are band-limited noise bursts.
Speakers shift pitch, formants, speaking rate and loudness; every clip also gets its own onset, a little
reverberation-like smear and background noise. The parameters aim at a task a small CNN learns to
roughly 85-98 % in a few epochs, not a trivial one.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sctrain.audio.constants import SAMPLE_RATE
from sctrain.data.speechcommands import BACKGROUND_DIR, LIST_FILES, DatasetError

log = logging.getLogger(__name__)

# The 35 Speech Commands v0.02 words, keywords first, so `kws12` works once words > 10.
WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
         "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
         "backward", "forward", "follow", "learn", "visual"]
NOISE_KINDS = ["white", "pink", "hum", "brown"]
README_MARK = "synthetic SpeechCommands-layout dataset"
_SR = SAMPLE_RATE
PARALLEL_MIN_CLIPS = 400  # below this, starting processes costs more than it saves


@dataclass(frozen=True)
class _Syllable:
    voiced: bool
    duration: float  # seconds at the speaker's normal rate
    formants: np.ndarray  # [2, 3] Hz: start and end (F1, F2, F3); fricatives use row 0 = (centre, width, 0)
    pitch: tuple[float, float]  # f0 multipliers at the start and end of the syllable


def _syllable_inventory(rng: np.random.Generator, n: int) -> list[_Syllable]:
    out = []
    for _ in range(n):
        duration = rng.uniform(0.09, 0.2)
        if rng.random() < 0.2:
            centre = rng.uniform(2500, 6500)
            out.append(_Syllable(False, duration * 0.8, np.array([[centre, rng.uniform(600, 2000), 0]] * 2), (1, 1)))
            continue
        start = np.array([rng.uniform(300, 800), rng.uniform(1000, 2200), rng.uniform(2500, 3300)])
        glide = np.array([rng.uniform(0.8, 1.25), rng.uniform(0.75, 1.3), 1.0])
        formants = np.stack([start, start * glide])
        formants[:, 1] = np.maximum(formants[:, 1], formants[:, 0] + 300)  # keep F2 above F1
        out.append(_Syllable(True, duration, formants, (rng.uniform(0.85, 1.2), rng.uniform(0.8, 1.2))))
    return out


def _word_patterns(rng: np.random.Generator, words: int) -> list[tuple[int, ...]]:
    """Syllable ids per word: distinct sequences; odd words open with their neighbour's first syllable."""
    inventory = max(6, math.ceil(1.4 * words))
    patterns: list[tuple[int, ...]] = []
    while len(patterns) < words:
        ids = list(rng.choice(inventory, size=int(rng.integers(2, 4)), replace=False))
        if len(patterns) % 2 == 1 and patterns[-1][0] not in ids[1:]:
            ids[0] = patterns[-1][0]  # a minimal pair: same onset, different rest
        if tuple(ids) not in patterns:
            patterns.append(tuple(ids))
    return patterns


@dataclass(frozen=True)
class _Speaker:
    name: str
    f0: float
    formant_scale: float
    rate: float
    gain_db: float
    room: float  # reverberation decay time constant, seconds


def _speakers(rng: np.random.Generator, n: int) -> list[_Speaker]:
    names: list[str] = []
    while len(names) < n:
        name = f"{int(rng.integers(1 << 32)):08x}"
        if name not in names:
            names.append(name)
    return [_Speaker(name, 160 * rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2),
                     rng.uniform(-10, 10), rng.uniform(0.01, 0.06)) for name in names]


def _resonance(freqs: np.ndarray, formants: np.ndarray, voiced: bool) -> np.ndarray:
    if not voiced:
        centre, width = formants[0], formants[1]
        return np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    gain = np.zeros_like(freqs)
    for f, bw, amp in zip(formants, (90.0, 120.0, 180.0), (1.0, 0.6, 0.25)):
        gain += amp * np.exp(-0.5 * ((freqs - f) / bw) ** 2)
    return gain + 0.01


def _render_syllable(rng: np.random.Generator, syl: _Syllable, speaker: _Speaker, f0: float,
                     rate: float, tilt: float) -> np.ndarray:
    n = max(64, int(syl.duration / rate * _SR * rng.uniform(0.9, 1.1)))
    nfft = 1 << (n - 1).bit_length()
    t = np.linspace(0.0, 1.0, n)
    formants = syl.formants * (speaker.formant_scale * rng.uniform(0.95, 1.05) if syl.voiced else 1.0)
    if syl.voiced:
        pitch = f0 * (syl.pitch[0] + (syl.pitch[1] - syl.pitch[0]) * t)
        phase = np.cumsum(pitch / _SR) + rng.random()
        source = 2.0 * (phase % 1.0) - 1.0 + 0.05 * rng.standard_normal(n)  # sawtooth + breath
    else:
        source = rng.standard_normal(n)
    freqs = np.fft.rfftfreq(nfft, 1.0 / _SR)
    spectrum = np.fft.rfft(source, nfft) * (np.maximum(freqs, 100.0) / 1000.0) ** tilt  # microphone colour
    # A formant glide approximated by cross-fading the start and end vowels' filtered signals.
    start = np.fft.irfft(spectrum * _resonance(freqs, formants[0], syl.voiced), nfft)[:n]
    end = np.fft.irfft(spectrum * _resonance(freqs, formants[1], syl.voiced), nfft)[:n]
    out = start * (1 - t) + end * t
    ramp = min(n // 3, int(0.02 * _SR))
    envelope = np.ones(n)
    envelope[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    envelope[n - ramp:] = envelope[:ramp][::-1]
    return out * envelope / (np.sqrt(np.mean(out ** 2)) + 1e-9)


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    if exponent == 0:
        return rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / _SR)
    spectrum *= 1.0 / np.maximum(freqs, 20.0) ** (exponent / 2)
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _render_clip(rng: np.random.Generator, pattern: tuple[int, ...], inventory: list[_Syllable],
                 speaker: _Speaker, pink: np.ndarray) -> np.ndarray:
    f0 = speaker.f0 * rng.uniform(0.95, 1.05)
    rate = speaker.rate * rng.uniform(0.9, 1.1)
    tilt = rng.uniform(-0.6, 0.6)
    parts = []
    for k, sid in enumerate(pattern):
        if k:
            parts.append(np.zeros(int(rng.uniform(0.01, 0.05) / rate * _SR)))
        parts.append(_render_syllable(rng, inventory[sid], speaker, f0, rate, tilt))
    word = np.concatenate(parts)
    # Reverberation-like smear: an exponentially decaying noise tail, mixed in at the speaker's room level.
    tail = int(0.15 * _SR)
    ir = rng.standard_normal(tail) * np.exp(-np.arange(tail) / (speaker.room * _SR))
    ir *= rng.uniform(0.1, 0.4) / np.sqrt(np.sum(ir ** 2))
    ir[0] = 1.0
    nfft = 1 << (len(word) + tail - 1).bit_length()
    word = np.fft.irfft(np.fft.rfft(word, nfft) * np.fft.rfft(ir, nfft), nfft)[: len(word) + tail // 2]

    # As in the real data, about a quarter of the clips are shorter than 1 s (0.6 s at least).
    length = _SR if rng.random() < 0.75 else int(rng.uniform(max(0.6, len(word) / _SR + 0.05), 1.0) * _SR)
    length = max(length, min(_SR, len(word) + 320))
    word = word[: length - 160]
    level = 10 ** ((-24 + speaker.gain_db + rng.uniform(-2, 2)) / 20)
    word *= level / (np.sqrt(np.mean(word ** 2)) + 1e-9)
    snr_db = rng.uniform(5, 30)
    hard = rng.random()
    if hard < 0.03:  # as in the real data, a few clips are drowned in noise ...
        snr_db = rng.uniform(-8, 0)
    elif hard < 0.06:  # ... or lose part of the word off the clip's end
        word = word[: int(len(word) * rng.uniform(0.35, 0.6))]
        length = _SR
    onset = int(rng.integers(80, max(81, length - len(word) - 80)))
    clip = np.zeros(length)
    clip[onset:onset + len(word)] = word
    if rng.random() < 0.5:
        noise = rng.standard_normal(length)
    else:  # a slice of one long pink recording: an FFT per clip would double the generation time
        start = int(rng.integers(len(pink) - length))
        noise = pink[start:start + length]
    clip += noise * level * 10 ** (-snr_db / 20)
    peak = np.max(np.abs(clip))
    if peak > 0.95:
        clip *= 0.95 / peak
    return np.round(clip * 32767).astype(np.int16)


def _noise_recording(rng: np.random.Generator, kind: str) -> np.ndarray:
    n = int(rng.uniform(10, 20) * _SR)
    if kind == "hum":
        t = np.arange(n) / _SR
        base = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
        x = x * (1 + 0.2 * np.sin(2 * np.pi * 0.3 * t)) + 0.1 * _colored_noise(rng, n, 1.0)
        x /= np.sqrt(np.mean(x ** 2))
    else:
        x = _colored_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    return np.round(np.clip(x * 0.1, -1, 1) * 32767).astype(np.int16)


def write_synthetic_dataset(out: Path, words: int = 8, per_word: int = 60, seed: int = 0,
                            noise_files: int = 3, speakers: Optional[int] = None,
                            overwrite: bool = False, workers: int = 0) -> Path:
    """Write a SpeechCommands-layout folder of ``words`` x ``per_word`` synthetic clips to ``out``.

    Speakers (``max(20, per_word // 2)`` unless given) are split by the order of their name's hash:
    about 10 % validation, 10 % test, the rest train, so no speaker crosses splits. The same arguments
    always give byte-identical files, whatever ``workers`` (processes; 0 = one per CPU core).
    ``overwrite`` replaces an earlier synthetic dataset at ``out`` (never other content). The folder
    appears complete or not at all.
    """
    out = Path(out)
    if not 1 <= words <= len(WORDS):
        raise DatasetError(f"synthetic dataset {out}: words must be in 1..{len(WORDS)}, got {words}")
    if per_word < 1:
        raise DatasetError(f"synthetic dataset {out}: per_word must be >= 1, got {per_word}")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; pick a new folder for the synthetic dataset")
    if out.exists() and any(out.iterdir()):
        readme = out / "README.md"
        if not (overwrite and readme.is_file() and README_MARK in readme.read_text()):
            raise DatasetError(f"{out} is not empty; pick a new folder"
                               + ("" if overwrite else " (or overwrite an earlier synthetic dataset there)"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise DatasetError(f"cannot create {out} ({e.strerror or e}); pick a writable folder") from None
    try:
        _write(tmp, words, per_word, seed, noise_files, speakers or max(20, per_word // 2),
               workers or os.cpu_count() or 1)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d synthetic clips (%d words) to %s", words * per_word, words, out)
    return out


def write_wav(path: Path, samples: np.ndarray) -> None:
    # The stdlib writer, not soundfile: libsndfile fsyncs every file on close (~3 ms each).
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(_SR)
        f.writeframes(samples.astype("<i2").tobytes())


@functools.lru_cache(maxsize=2)
def _design(seed: int, words: int, n_speakers: int):
    """Everything shared by all clips; cheap, so each decoding process rebuilds it instead of unpickling."""
    rng = np.random.default_rng([seed, 0])
    inventory = _syllable_inventory(rng, max(6, math.ceil(1.4 * words)))
    patterns = _word_patterns(rng, words)
    people = _speakers(np.random.default_rng([seed, 1]), n_speakers)
    pink = _colored_noise(np.random.default_rng([seed, 5]), 1 << 19, 1.0)  # 33 s
    return inventory, patterns, people, pink


def _write_word(folder: Path, seed: int, words: int, w: int, per_word: int, n_speakers: int) -> list[str]:
    """Write the clips of word ``w``; every clip has its own RNG, so the output is independent of workers."""
    inventory, patterns, people, pink = _design(seed, words, n_speakers)
    word = WORDS[w]
    (folder / word).mkdir()
    # Every speaker says every word about equally often, as in the real recordings.
    order = np.random.default_rng([seed, 2, w])
    who = np.concatenate([order.permutation(n_speakers) for _ in range(math.ceil(per_word / n_speakers))])
    said: dict[str, int] = {}
    written = []
    for k in range(per_word):
        speaker = people[who[k]]
        n = said[speaker.name] = said.get(speaker.name, -1) + 1
        rel = f"{word}/{speaker.name}_nohash_{n}.wav"
        write_wav(folder / rel, _render_clip(np.random.default_rng([seed, 3, w, k]), patterns[w], inventory,
                                              speaker, pink))
        written.append(rel)
    return written


def _write(folder: Path, words: int, per_word: int, seed: int, noise_files: int, n_speakers: int,
           workers: int) -> None:
    people = _design(seed, words, n_speakers)[2]
    by_hash = sorted(people, key=lambda s: hashlib.sha1(s.name.encode()).hexdigest())
    held_out = max(1, round(0.1 * n_speakers))
    split_of = {s.name: "validation" for s in by_hash[:held_out]}
    split_of.update({s.name: "test" for s in by_hash[held_out:2 * held_out]})

    args = [(folder, seed, words, w, per_word, n_speakers) for w in range(words)]
    if workers > 1 and words > 1 and words * per_word >= PARALLEL_MIN_CLIPS:
        # fork: children inherit the imports; spawn would re-run an unguarded caller script.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(min(workers, words), mp_context=mp.get_context(method)) as pool:
            written = list(pool.map(_write_word, *zip(*args)))
    else:
        written = [_write_word(*a) for a in args]
    listed: dict[str, list[str]] = {"validation": [], "test": []}
    for rel in (r for clips in written for r in clips):
        split = split_of.get(rel.split("/")[1].split("_nohash_")[0])
        if split:
            listed[split].append(rel)
    for split, name in LIST_FILES.items():
        (folder / name).write_text("".join(f"{p}\n" for p in sorted(listed[split])))

    (folder / BACKGROUND_DIR).mkdir()
    for i in range(noise_files):
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        name = f"{kind}_noise.wav" if i < len(NOISE_KINDS) else f"{kind}_noise_{i // len(NOISE_KINDS)}.wav"
        write_wav(folder / BACKGROUND_DIR / name, _noise_recording(np.random.default_rng([seed, 4, i]), kind))
    (folder / "README.md").write_text(
        f"# A {README_MARK} (not speech)\n\n"
        f"Written by `python -m sctrain.synth` (words={words}, per_word={per_word}, seed={seed}, "
        f"speakers={n_speakers}, noise_files={noise_files}). Each word is a fixed sequence of 2-3 synthetic\n"
        "tone or noise syllables; speakers vary pitch, formants, rate and loudness. Use it to exercise the\n"
        "pipeline end to end; accuracies on it say nothing about real keyword spotting.\n")
