"""Speech Commands on disk: fetch and verify the archive, scan the layout, build splits and label sets.

Layout (Warden 2018, arXiv:1804.03209): ``<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono PCM16, at most
1 s), ``_background_noise_/*.wav`` (long noise recordings), and ``validation_list.txt`` /
``testing_list.txt`` naming the held-out clips relative to the root; every other clip is training data.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from sctrain.audio.constants import CLIP_SAMPLES
from sctrain.audio.io import AudioError, decode_error, read_clip

log = logging.getLogger(__name__)

BACKGROUND_DIR = "_background_noise_"
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "validation", "test")
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
KWS12_LABELS = KEYWORDS + [UNKNOWN, SILENCE]
# Labels that mean "no keyword here": never a detection, and a long file's answer comes from a window that
# heard a word when one did.
FILLER_LABELS = (SILENCE, UNKNOWN)

URLS = {
    "v0.01": "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
    "v0.02": "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
}
# Published with the dataset; the same values torchaudio's SPEECHCOMMANDS checks.
SHA256 = {
    "v0.01": "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    "v0.02": "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
}
_MARKER = ".sctrain_extracted"  # written last inside an extracted folder: its presence means "complete"


class DatasetError(RuntimeError):
    """A dataset problem; the message is one line and names the file or folder."""


@dataclass(frozen=True)
class Clip:
    path: str  # relative to the dataset root, forward slashes
    label: int
    offset: int = 0  # first sample; non-zero only for _silence_ cuts of a noise recording


@dataclass
class DatasetIndex:
    root: Path
    labels: list[str]
    splits: dict[str, list[Clip]]
    background: list[Path]
    task: str = "all"
    # The scan parameters that shaped the splits (ratios, seed): part of the packed cache's fingerprint.
    options: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ fetch + extract

def is_layout(folder: Path) -> bool:
    """True when ``folder`` holds word folders and both list files."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in LIST_FILES.values()):
        return False
    return any(p.is_dir() and not p.name.startswith(("_", ".")) for p in folder.iterdir())


def sha256_file(path: Path) -> str:
    return running_sha256(path).hexdigest()


def running_sha256(path: Path, chunk: int = 1 << 20) -> "hashlib._Hash":
    """A SHA-256 over the bytes in ``path``, open to ``update()`` with more."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest


def download_file(url: str, dest: Path, sha256: Optional[str] = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Fetch ``url`` (http(s):// or file://) to ``dest`` via ``dest.part``; verify, then rename into place.

    An interrupted download (a network error, a killed job) leaves ``dest.part``; the next call asks the
    server for the rest (an HTTP ``Range`` request) and starts again from zero only if the server answers
    with the whole file. Raises ``DatasetError`` on a network failure (what arrived is kept for the next
    try) or a checksum mismatch (the download is kept as ``<dest>.bad`` for inspection, never used).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have > 0 and getattr(response, "status", None) == 206  # else: the whole file again
            digest = running_sha256(part) if resumed else hashlib.sha256()
            start = have if resumed else 0
            length = int(response.headers.get("Content-Length") or 0)
            if resumed:
                log.info("resuming the download of %s at %.1f MB", dest.name, start / 1e6)
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=start + length or None, initial=start, unit="B", unit_scale=True, desc=dest.name,
                         disable=not progress) as bar:
                received = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
                    received += len(block)
            if length and received < length:  # read(n) returns what came before the connection dropped
                raise http.client.IncompleteRead(b"", length - received)
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and have):  # 416: nothing after byte `have`: the last try got it all
            raise _download_error(url, dest, part, e) from None
        digest = running_sha256(part)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise _download_error(url, dest, part, e) from None
    _check_sha256(part, digest.hexdigest(), sha256, shown=dest)
    os.replace(part, dest)
    return dest


def _download_error(url: str, dest: Path, part: Path, e: Exception) -> DatasetError:
    if isinstance(e, PermissionError):
        return DatasetError(f"cannot write {part}: {e.strerror}; point data.root at a writable folder")
    reason = getattr(e, "reason", None) or e
    size = part.stat().st_size if part.is_file() else 0
    kept = f"; the {size / 1e6:.1f} MB received are kept in {part}, and the next run continues" if size else ""
    return DatasetError(f"could not download {url} ({reason}){kept}; or fetch it by hand and put it at {dest} "
                        f"(or extract it into {dest.parent / _stem(dest)})")


def _check_sha256(path: Path, actual: str, expected: Optional[str], shown: Path) -> None:
    if expected is None or actual == expected.lower():
        return
    bad = shown.with_name(shown.name + ".bad")
    os.replace(path, bad)
    raise DatasetError(f"checksum mismatch for {shown}: expected sha256 {expected}, got {actual}; "
                       f"the file was moved to {bad} (delete it and download again)")


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into the new folder ``dest`` atomically (temp folder, marker, rename)."""
    archive, dest = Path(archive), Path(dest)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as e:
        raise DatasetError(f"cannot extract {archive} into {dest.parent}: {e.strerror}") from None
    try:
        log.info("extracting %s to %s", archive, dest)
        try:
            with tarfile.open(archive) as tar:
                _safe_extract(tar, tmp)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"cannot extract {archive}: {e}") from None
        # The official archives are flat; tolerate one wrapping folder as well.
        top = tmp
        entries = [p for p in tmp.iterdir()]
        if not is_layout(tmp) and len(entries) == 1 and entries[0].is_dir():
            top = entries[0]
        if not is_layout(top):
            raise DatasetError(f"{archive} holds no SpeechCommands layout (word folders + validation_list.txt "
                               f"+ testing_list.txt)")
        (top / _MARKER).write_text(f"{archive.name}\n")
        try:
            os.rename(top, dest)
        except OSError as e:
            if not (dest / _MARKER).is_file():  # not another process finishing first: a real error
                raise DatasetError(f"cannot move the extracted dataset to {dest}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        # Refuses absolute paths, '..' and links that leave the folder.
        tar.extractall(dest, filter="data")
        return
    base = dest.resolve()  # Pythons without extraction filters: check member paths ourselves
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if base not in (target, *target.parents) or member.issym() or member.islnk():
            raise tarfile.TarError(f"unsafe member {member.name!r}")
    tar.extractall(dest)


def ensure_dataset(cfg, *, url: Optional[str] = None, sha256: Optional[str] = None,
                   progress: bool = True) -> Path:
    """The folder holding the SpeechCommands layout for ``cfg`` (a ``DataConfig``), fetching it if needed.

    Looks, in order, for: the layout in ``cfg.root`` itself; an extracted ``speech_commands_<version>`` (or
    any other layout folder) inside it; the archive in it (verified, extracted once); else downloads the
    archive when ``cfg.download``. ``url`` and ``sha256`` override the official ones (tests, mirrors).
    """
    root = Path(cfg.root).expanduser()
    if root.is_dir() and is_layout(root):
        return root
    url = url or URLS[cfg.version]
    expected = sha256 if sha256 is not None else SHA256.get(cfg.version)
    archive = root / f"speech_commands_{cfg.version}.tar.gz"  # the official name, whatever the URL
    extracted = root / _stem(archive)
    found = _find_extracted(root, extracted)
    if found is not None:
        return found
    if not archive.is_file():
        _require_split_lists(root)
        if not cfg.download:
            raise DatasetError(f"no SpeechCommands layout in {root} and data.download is false; fetch {url} "
                               f"to {archive} (or extract it into {extracted})")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"cannot create data root {root}: {e.strerror}") from None
        log.info("downloading %s to %s", url, archive)
        download_file(url, archive, expected, progress=progress)
    elif expected is not None:
        log.info("verifying %s", archive)
        _check_sha256(archive, sha256_file(archive), expected, shown=archive)
    return extract_archive(archive, extracted)


def _require_split_lists(root: Path) -> None:
    """A root of word folders that lacks a split list is the user's own data, not a download to fetch."""
    if not root.is_dir():
        return
    missing = [name for name in LIST_FILES.values() if not (root / name).is_file()]
    words = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
             and any(e.name.lower().endswith(".wav") for e in os.scandir(p))]
    if words and missing:
        raise DatasetError(f"{root} holds word folders but no {' and no '.join(missing)} (the lists naming "
                           "the validation and test clips; every clip not listed trains); add "
                           f"{'them' if len(missing) > 1 else 'it'}, with one path per line relative to {root} "
                           f"(e.g. {words[0].name}/<file>.wav)")


def _find_extracted(root: Path, preferred: Path) -> Optional[Path]:
    if (preferred / _MARKER).is_file() or (preferred.is_dir() and is_layout(preferred)):
        return preferred
    if preferred.exists():
        raise DatasetError(f"{preferred} exists but holds no complete SpeechCommands layout; delete it to "
                           f"extract again")
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_layout(sub):
                log.info("using the SpeechCommands layout in %s", sub)
                return sub
    return None


# ----------------------------------------------------------------------------------------- scanning

def scan_dataset(root: Path, task: str, unknown_ratio: float = 1.0, silence_ratio: float = 1.0,
                 seed: int = 0) -> DatasetIndex:
    """Index the clips under ``root`` into train/validation/test splits for ``task``.

    ``task='all'``: one label per word folder, sorted. ``task='kws12'`` follows Warden 2018 and the
    TensorFlow ``speech_commands`` reference (``input_data.py``): the ten keywords, ``_unknown_`` for every
    other word and ``_silence_``. Per split, ``_unknown_`` is subsampled (seeded) to ``unknown_ratio`` x the
    mean keyword class size (``<= 0`` keeps all), and ``_silence_`` holds ``silence_ratio`` x that many 1 s
    cuts of the background-noise recordings at seeded offsets (the reference uses silent clips with noise
    mixed in; cuts of real noise make the validation and test silence realistic without augmentation).
    Each split draws its cuts from its own stretch of every recording (train 80 %, validation and test
    10 % each) so no cut is shared between splits.
    """
    root = Path(root)
    if task not in ("all", "kws12"):
        raise DatasetError(f"unknown task {task!r} for {root}: use 'all' or 'kws12'")
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise DatasetError(f"no word folders in {root}: expected <word>/<speaker>_nohash_<n>.wav")
    files = {w: sorted(f"{w}/{e.name}" for e in os.scandir(root / w)
                       if e.is_file() and e.name.lower().endswith(".wav")) for w in words}
    split_of = _read_split_lists(root, {p for paths in files.values() for p in paths})
    background = sorted(p for p in (root / BACKGROUND_DIR).glob("*.wav")) if (root / BACKGROUND_DIR).is_dir() else []

    if task == "all":
        labels = list(words)
        splits = {s: [] for s in SPLITS}
        for label, w in enumerate(words):
            for p in files[w]:
                splits[split_of.get(p, "train")].append(Clip(p, label))
        _check_classes(root, labels, files, splits)
        options: dict = {}
    else:
        labels = list(KWS12_LABELS)
        splits = _kws12_splits(root, words, files, split_of, background, unknown_ratio, silence_ratio, seed)
        options = {"unknown_ratio": float(unknown_ratio), "silence_ratio": float(silence_ratio), "seed": seed}
    log.info("%s (%s): %d labels; %s", root, task, len(labels),
             ", ".join(f"{s} {len(c)} clips" for s, c in splits.items()))
    return DatasetIndex(root=root, labels=labels, splits=splits, background=background, task=task,
                        options=options)


def _check_classes(root: Path, labels: list[str], files: dict[str, list[str]], splits: dict[str, list[Clip]]) -> None:
    """task=all makes a class of every word folder: one that cannot be learned is refused, and one that
    is never measured (no validation or test clips) is pointed out."""
    counts = {s: np.bincount([c.label for c in splits[s]], minlength=len(labels)) for s in SPLITS}
    for i, word in enumerate(labels):
        if counts["train"][i] == 0:
            why = f"has all its {len(files[word])} clips in the split lists" if files[word] else "holds no .wav clips"
            raise DatasetError(f"word folder {root / word} {why}, so class '{word}' has no training clips; add "
                               "clips or remove the folder")
    for split in ("validation", "test"):
        absent = [word for i, word in enumerate(labels) if counts[split][i] == 0]
        if absent:
            log.warning("classes without %s clips (their %s accuracy is not measured): %s", split, split,
                        ", ".join(absent))


def _read_split_lists(root: Path, present: set[str]) -> dict[str, str]:
    """Map each listed clip to 'validation' or 'test' (the official lists never overlap)."""
    split_of: dict[str, str] = {}
    for split, name in LIST_FILES.items():
        path = root / name
        if not path.is_file():
            raise DatasetError(f"split list not found: {path}")
        listed = [line.strip().replace("\\", "/").removeprefix("./") for line in path.read_text().splitlines()]
        listed = [p for p in listed if p]
        missing = [p for p in listed if p not in present]
        if missing:
            log.warning("%s names %d clips missing under %s (first: %s); they are ignored",
                        path.name, len(missing), root, missing[0])
        for p in listed:
            split_of.setdefault(p, split)
    return split_of


def _kws12_splits(root: Path, words: list[str], files: dict[str, list[str]], split_of: dict[str, str],
                  background: list[Path], unknown_ratio: float, silence_ratio: float,
                  seed: int) -> dict[str, list[Clip]]:
    absent = [w for w in KEYWORDS if w not in files]
    if absent:
        log.warning("kws12: keywords %s have no folder in %s; their classes stay empty", ", ".join(absent), root)
    unknown_id, silence_id = KWS12_LABELS.index(UNKNOWN), KWS12_LABELS.index(SILENCE)
    keyword = {s: [] for s in SPLITS}
    unknown = {s: [] for s in SPLITS}
    for w in words:
        for p in files[w]:
            s = split_of.get(p, "train")
            if w in KEYWORDS:
                keyword[s].append(Clip(p, KEYWORDS.index(w)))
            else:
                unknown[s].append(Clip(p, unknown_id))
    lengths = [_frames(p) for p in background]
    splits = {}
    for k, s in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])  # one stream per split: a split's draw never shifts another's
        sizes = np.bincount([c.label for c in keyword[s]], minlength=len(KEYWORDS))
        # Mean over the keywords present, so a partial copy does not shrink _unknown_ / _silence_.
        present = sizes[sizes > 0]
        mean = float(present.mean()) if len(present) else len(unknown[s]) / max(1, len(words))
        pool = unknown[s]
        if unknown_ratio > 0 and len(pool) > round(unknown_ratio * mean):
            keep = np.sort(rng.choice(len(pool), size=round(unknown_ratio * mean), replace=False))
            pool = [pool[i] for i in keep]
        silence = _silence_cuts(root, background, lengths, round(silence_ratio * mean), k, rng, silence_id)
        splits[s] = keyword[s] + pool + silence
    return splits


def _frames(path: Path) -> int:
    try:
        return sf.info(str(path)).frames
    except Exception as e:  # noqa: BLE001 - packing reports the file; here it only yields no cuts
        # Debug only: packing names the file (an error, or data.skip_bad_clips's warning); a warning here too
        # told the user about it twice.
        log.debug("cannot read %s (%s); no _silence_ cuts come from it", path, decode_error(e))
        return 0


_SILENCE_STRETCH = {0: (0.0, 0.8), 1: (0.8, 0.9), 2: (0.9, 1.0)}  # split number -> share of each recording


def _silence_cuts(root: Path, background: list[Path], lengths: list[int], count: int, split: int,
                  rng: np.random.Generator, label: int) -> list[Clip]:
    if count <= 0:
        return []
    usable = [(p, n) for p, n in zip(background, lengths) if n >= CLIP_SAMPLES]
    if not usable:
        log.warning("kws12: no background recording of >= 1 s in %s; _silence_ stays empty", root / BACKGROUND_DIR)
        return []
    lo_share, hi_share = _SILENCE_STRETCH[split]
    cuts = []
    for i in rng.integers(len(usable), size=count):
        path, n = usable[i]
        lo, hi = int(lo_share * n), int(hi_share * n) - CLIP_SAMPLES
        if hi < lo:  # recording too short to split three ways: use all of it
            lo, hi = 0, n - CLIP_SAMPLES
        cuts.append(Clip(path.relative_to(root).as_posix(), label, int(rng.integers(lo, hi + 1))))
    return sorted(cuts, key=lambda c: (c.path, c.offset))


# ------------------------------------------------------------------------------------------ decoding

def decode_into(npy_path: str, start: int, items: list[tuple[str, int]]) -> list[tuple[int, str]]:
    """Decode ``(path, offset)`` pairs into rows ``start...`` of the int16 .npy at ``npy_path``.

    Writing into the memory-mapped file (not returning arrays) keeps gigabytes of audio off the pipes
    between processes. Returns ``(row, reason)`` for the clips that could not be decoded (left zero).
    """
    audio = np.load(npy_path, mmap_mode="r+")
    bad = []
    for i, (path, offset) in enumerate(items):
        try:
            audio[start + i] = read_clip(path, offset)
        except AudioError as e:
            bad.append((start + i, e.reason))
    audio.flush()
    del audio
    return bad
