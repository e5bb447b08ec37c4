"""Write a keyword dataset from text: TTS clips in the SpeechCommands layout, resumable, with a manifest.

``OUT/<word>/<speaker>_nohash_<n>.wav`` for each keyword and each adversarial negative (their own word
folders, so ``data.task=keywords`` makes them ``_unknown_``), ``validation_list.txt`` / ``testing_list.txt``
by the project's hash split of the speaker names, ``manifest.jsonl`` (one line per clip: text, engine,
voice and settings, how it was fitted to 1 s) and ``tts.json`` (the settings the folder was made with).

A *speaker* is one engine voice with fixed settings (Piper's scales; eSpeak's accent, variant, pitch, rate
and word gap); each clip draws its speaker and its own placement, level and punctuation from a seed of its
own, so clip ``k`` of a word is the same whatever ``per_word`` is, and a rerun only makes what is missing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sctrain.data.hashsplit import write_split_lists
from sctrain.data.speechcommands import DatasetError, is_clip_name
from sctrain.data.synthetic import write_wav
from sctrain.tts.clips import to_clip
from sctrain.tts.engines import Engine, load_engines
from sctrain.tts.negatives import Negative, adversarial_negatives
from sctrain.utils import atomic_write_text, first_line

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SETTINGS = "tts.json"
PUNCTUATION = ("", "", ".", "!", "?")  # intonation: a statement, an exclamation, a question
_WORD_NAME = "abcdefghijklmnopqrstuvwxyz_'"
# Settings that must match to continue a folder; per_word and negatives may grow.
FIXED = ("seed", "engines", "speakers", "words")


@dataclass(frozen=True)
class ClipJob:
    rel: str  # word/<speaker>_nohash_<n>.wav
    text: str
    kind: str  # keyword, or the negative's kind (part, similar, phrase, rhyme, general)
    speaker: int  # index into the speaker table
    seed: tuple  # the clip's own RNG seed: placement, level, punctuation


def _key(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def speaker_table(engines: dict[str, Engine], count: int, seed: int) -> list[dict]:
    """``count`` speakers, the engines taking turns; each ``{"id", "engine", "settings"}``."""
    names = list(engines)
    table = []
    for i in range(count):
        engine = names[i % len(names)]
        rng = np.random.default_rng([seed, 1, i])
        table.append({"id": f"{engine}{_key(f'{seed}/{i}/{engine}'):08x}", "engine": engine,
                      "settings": engines[engine].speaker(rng)})
    return table


def _clips_of(folder: str, text: str, kind: str, count: int, seed: int, ids: list[str]) -> list[ClipJob]:
    said: dict[int, int] = {}
    jobs = []
    for k in range(count):
        clip_seed = (seed, 2, _key(folder), k)
        who = int(np.random.default_rng(list(clip_seed)).integers(len(ids)))
        n = said[who] = said.get(who, -1) + 1
        jobs.append(ClipJob(f"{folder}/{ids[who]}_nohash_{n}.wav", text, kind, who, clip_seed))
    return jobs


def plan(words: list[str], per_word: int, negatives: list[Negative], n_negatives: int, seed: int,
         table: list[dict]) -> list[ClipJob]:
    """Every clip of the folder, in a fixed order (keywords, then negatives taking turns)."""
    ids = [s["id"] for s in table]
    jobs = []
    for word in words:
        jobs += _clips_of(word, word.replace("_", " "), "keyword", per_word, seed, ids)
    if negatives and n_negatives:
        share = [n_negatives // len(negatives) + (j < n_negatives % len(negatives)) for j in range(len(negatives))]
        for neg, count in zip(negatives, share):
            jobs += _clips_of(neg.folder, neg.text, neg.kind, count, seed, ids)
    return jobs


# --------------------------------------------------------------------------------- workers

_engines: dict[str, Engine] = {}


def _init(names: list[str]) -> None:
    global _engines
    _engines = load_engines(names)


def _make(out: str, table: list[dict], jobs: list[ClipJob]) -> list[tuple[Optional[dict], str, float]]:
    """Speak and write ``jobs``; per job ``(manifest entry or None when the engine gave silence, engine,
    seconds the engine took)``."""
    results = []
    for job in jobs:
        speaker = table[job.speaker]
        rng = np.random.default_rng(list(job.seed) + [7])
        text = job.text + PUNCTUATION[int(rng.integers(len(PUNCTUATION)))]
        start = time.perf_counter()
        try:
            audio, rate = _engines[speaker["engine"]].say(text, speaker["settings"])
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - an engine's own failure, named in one line; what is written stays
            raise DatasetError(f"{speaker['engine']} failed on {text!r} with {speaker['settings']}: "
                               f"{first_line(e)}") from None
        took = time.perf_counter() - start
        if len(audio) == 0 or float(np.max(np.abs(audio))) < 1e-4:
            log.warning("%s gave no sound for %r (%s); clip %s not written", speaker["engine"], text,
                        speaker["settings"], job.rel)
            results.append((None, speaker["engine"], took))
            continue
        clip, fit = to_clip(audio, rate, rng)
        path = Path(out) / job.rel
        tmp = path.with_name(f".{path.name}.tmp")
        write_wav(tmp, clip)
        os.replace(tmp, path)  # a clip is on disk whole or not at all
        entry = {"path": job.rel, "text": text, "kind": job.kind, "speaker": speaker["id"],
                 "engine": speaker["engine"], "settings": speaker["settings"], "rate": rate, "fit": fit}
        results.append((entry, speaker["engine"], took))
    return results


# --------------------------------------------------------------------------------- the folder

def _check_words(words: list[str]) -> None:
    if not words:
        raise DatasetError("--words: name at least one keyword")
    for w in words:
        if not w or w.startswith(("_", "'")) or any(c not in _WORD_NAME for c in w):
            raise DatasetError(f"--words: {w!r} is not a word folder name (lower-case letters, _ between words)")
    if len(set(words)) != len(words):
        raise DatasetError(f"--words names a word twice: {','.join(words)}")


def _open(out: Path, settings: dict) -> dict[str, dict]:
    """Check that ``out`` is new, empty or made with ``settings``; the manifest entries already there."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; pick a new folder for the TTS dataset")
    record = out / SETTINGS
    if out.is_dir() and any(out.iterdir()) and not record.is_file():
        raise DatasetError(f"{out} is not empty and was not written by python -m sctrain.tts; pick a new folder")
    done: dict[str, dict] = {}
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except ValueError:
            raise DatasetError(f"{record} is not valid JSON; pick a new folder") from None
        for key in FIXED:
            if before.get(key) != settings[key]:
                raise DatasetError(f"{out} was written with {key}={before.get(key)!r}, not {settings[key]!r}; "
                                   f"use the same {key} to continue it, or pick a new folder")
        manifest = out / MANIFEST
        lines = manifest.read_text().splitlines() if manifest.is_file() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:  # the last line of a run that was killed mid-write
                continue
            if (out / entry["path"]).is_file():
                done[entry["path"]] = entry
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(settings, indent=1) + "\n")
    return done


def write_tts_dataset(out: Path, words: list[str], per_word: int = 100, n_negatives: int = 0,
                      engines: tuple[str, ...] = ("piper", "espeak"), seed: int = 0, speakers: int = 200,
                      jobs: int = 0, progress: bool = False) -> dict:
    """Write (or continue) the TTS keyword dataset at ``out``; returns what was done and how fast.

    ``n_negatives`` clips of adversarial negatives (:func:`adversarial_negatives`) are spread over the
    negative words. ``jobs`` processes speak in parallel (0 = one per CPU core). An engine that is not
    installed is an :class:`~sctrain.tts.engines.EngineMissing` error before anything is written."""
    from tqdm.auto import tqdm

    out = Path(out)
    words = list(words)
    _check_words(words)
    if per_word < 1 or n_negatives < 0 or speakers < 1:
        raise DatasetError("--per-word and --speakers must be >= 1, --negatives >= 0")
    engine_names = list(dict.fromkeys(engines))
    loaded = load_engines(engine_names)  # fails on a missing engine before anything is written
    settings = {"seed": seed, "engines": engine_names, "speakers": speakers, "words": words,
                "per_word": per_word, "negatives": n_negatives}
    negatives = adversarial_negatives(words) if n_negatives else []
    table = speaker_table(loaded, speakers, seed)
    clips = plan(words, per_word, negatives, n_negatives, seed, table)
    done = _open(out, settings)
    for folder in {c.rel.split("/")[0] for c in clips}:
        (out / folder).mkdir(exist_ok=True)
    todo = [c for c in clips if c.rel not in done]
    log.info("%s: %d clips planned, %d already written, %d to make", out, len(clips), len(clips) - len(todo),
             len(todo))
    stats = {n: {"clips": 0, "seconds": 0.0} for n in engine_names}
    silent = 0
    with open(out / MANIFEST, "a") as manifest, tqdm(total=len(todo), unit="clip", desc="tts",
                                                       disable=not progress) as bar:
        def record(results) -> None:
            nonlocal silent
            for entry, engine, took in results:
                stats[engine]["clips"] += 1
                stats[engine]["seconds"] += took
                if entry is None:
                    silent += 1
                else:
                    done[entry["path"]] = entry
                    manifest.write(json.dumps(entry) + "\n")
            manifest.flush()
            bar.update(len(results))

        chunks = [todo[i:i + 16] for i in range(0, len(todo), 16)]
        workers = min(jobs or os.cpu_count() or 1, len(chunks))
        if workers <= 1:
            global _engines
            _engines = loaded
            for chunk in chunks:
                record(_make(str(out), table, chunk))
        else:
            # fork: the children inherit the imports; each loads its own engines (an ONNX session per process).
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init,
                                     initargs=(engine_names,)) as pool:
                pending = {pool.submit(_make, str(out), table, c) for c in chunks[: 2 * workers]}
                rest = iter(chunks[2 * workers:])
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        record(f.result())
                        nxt = next(rest, None)
                        if nxt is not None:
                            pending.add(pool.submit(_make, str(out), table, nxt))
    _finish(out, clips, done, settings, negatives)
    return {"planned": len(clips), "made": len(todo) - silent, "skipped": len(clips) - len(todo), "silent": silent,
            "engines": stats, "negative_words": len(negatives)}


def _finish(out: Path, clips: list[ClipJob], done: dict[str, dict], settings: dict,
            negatives: list[Negative]) -> None:
    """The manifest in plan order (one line per clip on disk), the split lists and a README."""
    planned = {c.rel for c in clips}
    for stray in out.glob("*/.*.tmp"):  # a clip whose writer was killed before its rename
        stray.unlink(missing_ok=True)
    atomic_write_text(out / MANIFEST, "".join(json.dumps(done[c.rel]) + "\n" for c in clips if c.rel in done))
    unplanned = [p for p in done if p not in planned]
    if unplanned:
        log.warning("%s holds %d clips from an earlier, larger run (first: %s); they stay in the folder",
                    out, len(unplanned), unplanned[0])
    write_split_lists(out, overwrite=True)
    words = settings["words"]
    n_clips = sum(1 for d in out.iterdir() if d.is_dir() for f in d.iterdir() if is_clip_name(f.name))
    atomic_write_text(out / "README.md", (
        "# Keywords from text: a TTS dataset in the SpeechCommands layout\n\n"
        f"Written by `python -m sctrain.tts` (settings in {SETTINGS}, one line per clip in {MANIFEST}): "
        f"{n_clips} clips of the keywords {', '.join(words)}"
        + (f" and {len(negatives)} sound-alike or common words (their own folders: `_unknown_` under "
           "data.task=keywords)" if negatives else "") + ".\nThe split lists are the hash split of the "
        "synthetic speaker names. Train on it with data.root, or add it to real clips with data.extra_roots.\n"))
