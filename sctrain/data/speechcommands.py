"""Speech Commands on disk: fetch and verify the archive, scan the layout, build splits and label sets.

Layout (Warden 2018, arXiv:1804.03209): ``<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono PCM16, at most
1 s), ``_background_noise_/*.wav`` (long noise recordings), and ``validation_list.txt`` /
``testing_list.txt`` naming the held-out clips relative to the root; every other clip is training data.
A folder of ``<word>/*.wav`` without the two lists is used too: :func:`sctrain.data.hashsplit.ensure_split_lists`
writes them by TensorFlow's reference hash split. The official 12-class test set
(``speech_commands_test_set_<version>.tar.gz``: folders of the ten keywords, ``_unknown_`` and ``_silence_``)
can replace the listed test clips (:func:`ensure_test_set`).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf

from sctrain.artifacts.labels import SILENCE, UNKNOWN
from sctrain.audio.constants import CLIP_SAMPLES, INT16_SCALE
from sctrain.audio.io import AudioError, decode_error, read_clip, to_int16
from sctrain.config import TASKS
from sctrain.utils import shorten

log = logging.getLogger(__name__)

BACKGROUND_DIR = "_background_noise_"
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "validation", "test")
# The stretch (share of its length) of every background recording that each split may use: its _silence_ cuts,
# training's noise augmentation (train) and the streams that calibrate (validation) and test the detector, so no
# noise the model trained on is in the audio that chooses its thresholds or reports its false alarms.
NOISE_STRETCH = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KWS12_LABELS = KEYWORDS + [UNKNOWN, SILENCE]

URLS = {
    "v0.01": "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
    "v0.02": "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
}
# Published with the dataset; the same values torchaudio's SPEECHCOMMANDS checks.
SHA256 = {
    "v0.01": "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    "v0.02": "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
}
TEST_SET_URLS = {v: f"http://download.tensorflow.org/data/speech_commands_test_set_{v}.tar.gz" for v in URLS}
# The published values: v0.02 from tensorflow_datasets (url_checksums/speech_commands.txt, 112,563,277 bytes),
# v0.01 from Hugging Face datasets' SUPERB "ks" task (superb/dataset_infos.json, 71,271,436 bytes; it lists the
# main v0.01 archive with the value in SHA256 above).
TEST_SET_SHA256 = {
    "v0.01": "baa084f6b62c91de660ff0588ae4dfc4e4d534aa99ac0e5f406cba75836cbd00",
    "v0.02": "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df",
}
_MARKER = ".sctrain_extracted"  # written last inside an extracted folder: its presence means "complete"
# Folders named like the official archives hold a dataset (e.g. the test set extracted into a root that is
# itself the layout), never a word.
DATASET_PREFIX = "speech_commands_"
# _silence_ cuts are scaled by a gain drawn uniformly in dB: a deployed detector hears quiet rooms as well as
# the loud noise recordings. A share of them is near-digital silence (a muted or gated microphone): at -80 dB
# a recording at a tenth of full scale is left within +-1 LSB.
SILENCE_GAIN_DB = (-30.0, 0.0)
NEAR_SILENCE_SHARE = 0.1
NEAR_SILENCE_DB = -80.0


class DatasetError(RuntimeError):
    """A dataset problem; the message is one line and names the file or folder."""


@dataclass(frozen=True)
class Clip:
    path: str  # relative to the dataset root, forward slashes (absolute outside it: official test clips, extra roots)
    label: int
    offset: int = 0  # first sample; non-zero only for _silence_ cuts and windows of negatives
    gain: float = 1.0  # linear factor applied when decoding; below 1 only for _silence_ cuts
    window: bool = False  # a 1 s window of a data.negatives file: any rate and channels, offset at 16 kHz


@dataclass
class DatasetIndex:
    root: Path
    labels: list[str]
    splits: dict[str, list[Clip]]
    background: list[Path]
    task: str = "all"
    # The scan parameters that shaped the splits (ratios, seed): part of the packed cache's fingerprint.
    options: dict = field(default_factory=dict)
    lists_dir: Optional[Path] = None  # where the split lists were read (None: root)


# ------------------------------------------------------------------------------------ fetch + extract

def word_clips(root: Path) -> dict[str, list[str]]:
    """Every word folder's clips as sorted ``word/file.wav`` paths, by word (sorted); a one-line
    :class:`DatasetError` for a missing root or one without word folders."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    words = word_folders(root)
    if not words:
        raise DatasetError(f"no word folders in {root}: expected <word>/<speaker>_nohash_<n>.wav")
    return {w: sorted(f"{w}/{e.name}" for e in os.scandir(root / w) if e.is_file() and is_clip_name(e.name))
            for w in words}


def nested_clips(root: Path, words: list[str]) -> list[str]:
    """Clips below a sub-folder of a word folder (``yes/session1/a.wav``), which the scan does not read."""
    found = []
    for w in words:
        for entry in os.scandir(root / w):
            if entry.is_dir():
                for folder, _, names in os.walk(entry.path):
                    found += sorted(Path(folder, n).relative_to(root).as_posix() for n in names if is_clip_name(n))
    return found


# Clip files a word folder may hold: the dataset's WAVs, and FLAC for users' own recordings (read by the same
# reader, sctrain.audio.io, so every format packs to the samples soundfile's float read gives).
CLIP_SUFFIXES = (".wav", ".flac")


def is_clip_name(name: str) -> bool:
    return name.lower().endswith(CLIP_SUFFIXES)


def word_folders(root: Path) -> list[str]:
    """The word folder names under ``root``, sorted (not ``_background_noise_``, hidden or dataset folders)."""
    return sorted(p.name for p in Path(root).iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".", DATASET_PREFIX)))


def is_layout(folder: Path) -> bool:
    """True when ``folder`` holds word folders and both list files."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in LIST_FILES.values()):
        return False
    return bool(word_folders(folder))


def has_words(folder: Path) -> bool:
    """True when ``folder`` holds a word folder with a ``.wav`` in it (a layout, with or without list files)."""
    folder = Path(folder)
    return folder.is_dir() and any(_holds_wav(folder / w) for w in word_folders(folder))


def _holds_wav(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # stops at the first: a word folder may hold thousands
        return any(e.is_file() and is_clip_name(e.name) for e in entries)


def is_test_set(folder: Path) -> bool:
    """True when ``folder`` looks like the extracted official test set (``_unknown_`` and keyword folders)."""
    folder = Path(folder)
    return (folder / UNKNOWN).is_dir() and any((folder / k).is_dir() for k in KEYWORDS)


def is_writable(folder: Path) -> bool:
    """True when ``folder`` (or its nearest existing parent) may be written.

    Write bits count even for root, which ``os.access`` ignores: a folder without them (the shared
    read-only datasets) is meant to stay untouched.
    """
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


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


LAYOUT_TEXT = "SpeechCommands layout (word folders + validation_list.txt + testing_list.txt)"


def extract_archive(archive: Path, dest: Path, check=is_layout, what: str = LAYOUT_TEXT) -> Path:
    """Extract ``archive`` into the new folder ``dest`` atomically (temp folder, marker, rename); ``check``
    tells whether a folder holds the expected content (``what``, for the error)."""
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
        if not check(tmp) and len(entries) == 1 and entries[0].is_dir():
            top = entries[0]
        if not check(top):
            raise DatasetError(f"{archive} holds no {what}")
        (top / _MARKER).write_text(f"{archive.name}\n")
        try:
            os.rename(top, dest)
        except OSError as e:
            if not (dest / _MARKER).is_file():  # not another process finishing first: a real error
                raise DatasetError(f"cannot move the extracted archive to {dest}: {e.strerror}") from None
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
    if root.is_dir() and (is_layout(root) or has_words(root)):  # lists missing: ensure_split_lists writes them
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
             and any(is_clip_name(e.name) for e in os.scandir(p))]
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


def ensure_test_set(cfg, fallback: Optional[Path] = None, *, url: Optional[str] = None,
                    sha256: Optional[str] = None, progress: bool = True) -> Path:
    """The extracted official test set of ``cfg.version`` (``data.test_set=official``), fetched if needed.

    Looked for in ``cfg.root``, then in ``fallback`` (a cache folder, for a read-only root): the extracted
    ``speech_commands_test_set_<version>``, else its archive (verified, extracted once); else downloaded
    when ``cfg.download``, by the same cached, resumable, checked :func:`download_file` as the main archive,
    into the first of the two that may be written. ``url`` and ``sha256`` override the official ones.
    """
    name = f"speech_commands_test_set_{cfg.version}"
    url = url or TEST_SET_URLS[cfg.version]
    expected = sha256 if sha256 is not None else TEST_SET_SHA256[cfg.version]
    folders = [Path(cfg.root).expanduser()] + ([Path(fallback)] if fallback is not None else [])
    for folder in folders:
        if (folder / name / _MARKER).is_file() or is_test_set(folder / name):
            return folder / name
    home = next((f for f in folders if is_writable(f)), None)
    archive = next((f / f"{name}.tar.gz" for f in folders if (f / f"{name}.tar.gz").is_file()), None)
    if archive is None and not cfg.download:
        raise DatasetError(f"data.test_set=official: no {name} in {folders[0]} and data.download is false; fetch "
                           f"{url} to {folders[0] / (name + '.tar.gz')}")
    if home is None:
        raise DatasetError(f"data.test_set=official: no writable folder for {name}: tried "
                           f"{', '.join(map(str, folders))}")
    if (home / name).exists():
        raise DatasetError(f"{home / name} exists but holds no complete official test set; delete it to extract again")
    home.mkdir(parents=True, exist_ok=True)
    if archive is None:
        log.info("downloading the official test set %s to %s", url, home)
        archive = download_file(url, home / f"{name}.tar.gz", expected, progress=progress)
    elif expected is not None:
        log.info("verifying %s", archive)
        _check_sha256(archive, sha256_file(archive), expected, shown=archive)
    return extract_archive(archive, home / name, check=is_test_set,
                           what="official test set (folders _unknown_, _silence_ and the keywords)")


# ----------------------------------------------------------------------------------------- scanning

@dataclass(frozen=True)
class LabelPlan:
    """What the word folders become: the label list, each word folder's label, the filler classes' ids."""

    labels: list[str]
    targets: list[str]  # the words with a label of their own
    label_of: dict[str, int]  # word folder -> label (its own, or _unknown_'s)
    unknown: Optional[int] = None
    silence: Optional[int] = None


def plan_labels(root: Path, task: str, words: list[str], keywords: list[str] = (), silence: bool = False,
                negatives: bool = False) -> LabelPlan:
    """The labels ``task`` gives the word folders ``words`` of ``root``.

    ``all``: one label per word folder, sorted. ``keywords``: ``keywords`` in their order (none given: every
    word folder, sorted), then ``_unknown_`` for the other words (absent when there are none). ``kws12``:
    ``keywords`` with the ten Warden keywords, whose 12 labels always include ``_unknown_``. ``silence``
    appends ``_silence_``. ``negatives`` (``data.negatives`` given) makes ``_unknown_`` present whatever the
    word folders are. A keyword without a folder is a :class:`DatasetError`.
    """
    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r} for {root}: use one of {', '.join(TASKS)}")
    targets = list(words if task == "all" or (task == "keywords" and not keywords) else
                   KEYWORDS if task == "kws12" else keywords)
    missing = [k for k in targets if k not in words]
    if missing:
        raise DatasetError(f"{task} task: keyword{'s' * (len(missing) > 1)} {', '.join(missing)} "
                           f"{'have' if len(missing) > 1 else 'has'} no folder in {root} "
                           f"(word folders: {shorten(', '.join(words), 100)})")
    others = [w for w in words if w not in targets]
    if task == "kws12" and not others:
        raise DatasetError(f"kws12 task: _unknown_ would have no clips: every word folder in {root} is one of the "
                           f"ten keywords; data.task=keywords leaves _unknown_ out")
    if task == "keywords" and not others and not negatives:
        log.info("%s: every word folder is a keyword, so there is no _unknown_ class", root)
    unknown = bool(others) or negatives
    labels = targets + ([UNKNOWN] if unknown else []) + ([SILENCE] if silence else [])
    label_of = {w: labels.index(w) if w in targets else labels.index(UNKNOWN) for w in words}
    return LabelPlan(labels, targets, label_of, labels.index(UNKNOWN) if unknown else None,
                     labels.index(SILENCE) if silence else None)


def scan_dataset(root: Path, task: str = "all", unknown_ratio: float = 1.0, silence_ratio: float = 1.0,
                 seed: int = 0, *, keywords: list[str] = (), silence: Optional[bool] = None,
                 lists_dir: Optional[Path] = None, test_root: Optional[Path] = None,
                 negatives: Sequence[str | Path] = (), train_negatives: Sequence[str | Path] = (),
                 extra_roots: list = (), root_train_clips: Optional[int] = None) -> DatasetIndex:
    """Index the clips under ``root`` into train/validation/test splits for ``task`` (see :func:`plan_labels`).

    Following Warden 2018 and the TensorFlow ``speech_commands`` reference (``input_data.py``), per split
    ``_unknown_`` is subsampled (seeded) to ``unknown_ratio`` x the mean keyword class size (0 keeps all),
    and ``_silence_`` (``silence``; default: for the keyword tasks) holds ``silence_ratio`` x that many 1 s
    cuts of the background-noise recordings at seeded offsets and gains (:data:`SILENCE_GAIN_DB`, a share
    near digital silence). Both shares are multiples of the mean keyword class size: the reference's 10 %
    of the keyword clips each is 1.0 with its ten keywords. Cuts of real noise make the validation and test
    silence realistic without augmentation; each split cuts its own stretch of every recording (train 80 %,
    validation and test 10 % each), so no cut is shared between splits.

    ``lists_dir``: where ``validation_list.txt`` / ``testing_list.txt`` are (default ``root``).
    ``test_root``: the extracted official test set, which then is the test split (the listed test clips
    are left out: the same speakers). ``negatives``: ``data.negatives`` (:mod:`sctrain.data.negatives`), every
    1 s window an ``_unknown_`` clip of its file's split, all kept (``unknown_ratio`` is for the word
    folders); ``train_negatives`` the same, all in the training split. ``extra_roots`` and
    ``root_train_clips``: :mod:`sctrain.data.sources`. A label without training clips is a
    :class:`DatasetError`.
    """
    from sctrain.data.sources import extra_clips, keep_root_train

    root = Path(root)
    files = word_clips(root)
    nested = nested_clips(root, list(files))  # root's own word folders, before the extra roots' words join
    split_of = _read_split_lists(Path(lists_dir or root), root, {p for paths in files.values() for p in paths})
    files = keep_root_train(files, split_of, root_train_clips, seed)
    for word, paths in extra_clips(list(extra_roots)).items():
        files[word] = files.get(word, []) + paths
    files = dict(sorted(files.items()))
    words = list(files)
    if nested:
        log.warning("%d clips in sub-folders of word folders are ignored (first: %s): only the clips directly "
                    "inside <word>/ are read; move them up to use them", len(nested), nested[0])
    silence = task != "all" if silence is None else silence
    plan = plan_labels(root, task, words, list(keywords), silence, negatives=bool(negatives or train_negatives))
    background = (sorted(p for p in (root / BACKGROUND_DIR).iterdir() if is_clip_name(p.name))
                  if (root / BACKGROUND_DIR).is_dir() else [])
    splits = _splits(root, plan, files, split_of, background, unknown_ratio, silence_ratio, seed)
    for entries, split in ((negatives, None), (train_negatives, "train")):
        if entries:
            for name, clips in negative_windows(root, entries, plan, split).items():
                splits[name] += clips
    if test_root is not None:
        splits["test"] = official_test_clips(Path(test_root), plan, root)
    try:
        _check_classes(root, plan, splits, files)
    except DatasetError as e:
        if root_train_clips is None:
            raise
        raise DatasetError(f"{e} (data.root_train_clips={root_train_clips} of root's; data.extra_roots may hold "
                           f"more)") from None
    options = _options(task, plan, silence, unknown_ratio, silence_ratio, seed, test_root)
    if extra_roots or root_train_clips is not None:  # absent otherwise: earlier caches stay valid
        options.update(extra_roots=[str(Path(r).expanduser().absolute()) for r in extra_roots],
                       root_train_clips=root_train_clips)
    log.info("%s (%s): %d labels; %s", root, task, len(plan.labels),
             ", ".join(f"{s} {len(c)} clips" for s, c in splits.items()))
    return DatasetIndex(root=root, labels=plan.labels, splits=splits, background=background, task=task,
                        options=options, lists_dir=Path(lists_dir) if lists_dir else None)


def _options(task: str, plan: LabelPlan, silence: bool, unknown_ratio: float, silence_ratio: float, seed: int,
             test_root: Optional[Path]) -> dict:
    if task == "all" and not silence and test_root is None:
        return {}  # the one-label-per-word scan depends on nothing else (and its caches stay valid)
    options = {"seed": seed, "silence": silence, "silence_ratio": float(silence_ratio)}
    if task != "all":
        options.update(keywords=plan.targets, unknown_ratio=float(unknown_ratio))
    if test_root is not None:
        options["test_set"] = str(test_root)
    return options


def _read_split_lists(lists_dir: Path, root: Path, present: set[str]) -> dict[str, str]:
    """Map each listed clip to 'validation' or 'test' (the official lists never overlap)."""
    split_of: dict[str, str] = {}
    for split, name in LIST_FILES.items():
        path = lists_dir / name
        if not path.is_file():
            raise DatasetError(f"split list not found: {path} (load_dataset writes TensorFlow's reference hash "
                               f"split for a folder without lists)")
        listed = [line.strip().replace("\\", "/").removeprefix("./") for line in path.read_text().splitlines()]
        listed = [p for p in listed if p]
        missing = [p for p in listed if p not in present]
        if missing:
            log.warning("%s names %d clips missing under %s (first: %s); they are ignored",
                        path.name, len(missing), root, missing[0])
        for p in listed:
            split_of.setdefault(p, split)
    return split_of


def _splits(root: Path, plan: LabelPlan, files: dict[str, list[str]], split_of: dict[str, str],
            background: list[Path], unknown_ratio: float, silence_ratio: float, seed: int) -> dict[str, list[Clip]]:
    keyword = {s: [] for s in SPLITS}
    unknown = {s: [] for s in SPLITS}
    for w, paths in files.items():
        label = plan.label_of[w]
        for p in paths:
            (unknown if label == plan.unknown else keyword)[split_of.get(p, "train")].append(Clip(p, label))
    lengths = [_frames(p) for p in background] if plan.silence is not None else []
    splits = {}
    for k, s in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])  # one stream per split: a split's draw never shifts another's
        sizes = np.bincount([c.label for c in keyword[s]], minlength=len(plan.labels))
        # Mean over the keywords present, so a partial copy does not shrink _unknown_ / _silence_.
        present = sizes[sizes > 0]
        mean = float(present.mean()) if len(present) else len(unknown[s]) / max(1, len(files))
        pool = unknown[s]
        keep = max(1, round(unknown_ratio * mean))
        if unknown_ratio > 0 and len(pool) > keep:
            pool = [pool[i] for i in np.sort(rng.choice(len(pool), size=keep, replace=False))]
        silence = []
        if plan.silence is not None:
            silence = _silence_cuts(root, background, lengths, max(1, round(silence_ratio * mean)), k, rng,
                                    plan.silence)
        splits[s] = keyword[s] + pool + silence
    return splits


def negative_windows(root: Path, negatives: Sequence[str | Path], plan: LabelPlan,
                     split: Optional[str] = None) -> dict[str, list[Clip]]:
    """Each split's ``_unknown_`` windows of the ``negatives`` files (:mod:`sctrain.data.negatives`), by the
    hash of each file's name, or all in ``split``."""
    from sctrain.data.hashsplit import which_set  # it imports this module
    from sctrain.data.negatives import NegativesError, negative_files, window_offsets

    split_name = {"training": "train", "validation": "validation", "testing": "test"}
    out: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    try:
        files = negative_files(negatives, plan.targets)
        for path in files:
            clips = out[split or split_name[which_set(path.name)]]
            clips += [Clip(_within(path, root), plan.unknown, offset, window=True) for offset in window_offsets(path)]
    except NegativesError as e:
        raise DatasetError(str(e)) from None
    log.info("data.%s: %d files, %s 1 s windows of _unknown_", "train_negatives" if split else "negatives", len(files),
             " / ".join(f"{s} {len(c)}" for s, c in out.items()))
    return out


def _check_classes(root: Path, plan: LabelPlan, splits: dict[str, list[Clip]], files: dict[str, list[str]]) -> None:
    """One-line :class:`DatasetError` for the first label without training clips: it could not be learnt;
    a warning for labels without validation or test clips: they are never measured."""
    for split in ("validation", "test"):
        present = set(c.label for c in splits[split])
        absent = [name for label, name in enumerate(plan.labels) if label not in present]
        if absent:
            log.warning("classes without %s clips (their %s accuracy is not measured): %s", split, split,
                        ", ".join(absent))
    counts = np.bincount([c.label for c in splits["train"]], minlength=len(plan.labels))
    for label, name in enumerate(plan.labels):
        if counts[label]:
            continue
        if label == plan.silence:
            reason = (f"no background recording of >= 1 s in {root / BACKGROUND_DIR} to cut it from (add some, or "
                      f"set data.silence=false)")
        elif label == plan.unknown:
            others = [w for w in files if w not in plan.targets]
            reason = (f"the other word folders ({', '.join(others)}) hold none" if others else
                      "no data.negatives file is in the training split (each file goes to one split by the hash "
                      "of its name; add more files)")
        elif not files[name]:
            reason = f"{root / name} holds no .wav clips"
        else:
            reason = f"all {len(files[name])} of its clips are in {' / '.join(LIST_FILES.values())}"
        raise DatasetError(f"label {name!r} has no training clips: {reason}")


def _frames(path: Path) -> int:
    try:
        return sf.info(str(path)).frames
    except Exception as e:  # noqa: BLE001 - packing reports the file; here it only yields no cuts
        # Debug only: packing names the file (an error, or data.skip_bad_clips's warning); a warning here too
        # told the user about it twice.
        log.debug("cannot read %s (%s); no _silence_ cuts come from it", path, decode_error(e))
        return 0




def _silence_cuts(root: Path, background: list[Path], lengths: list[int], count: int, split: int,
                  rng: np.random.Generator, label: int) -> list[Clip]:
    usable = [(p, n) for p, n in zip(background, lengths) if n >= CLIP_SAMPLES]
    if count <= 0 or not usable:  # no recording: _check_classes names the problem
        return []
    lo_share, hi_share = NOISE_STRETCH[SPLITS[split]]
    cuts = []
    for i in rng.integers(len(usable), size=count):
        path, n = usable[i]
        lo, hi = int(lo_share * n), int(hi_share * n) - CLIP_SAMPLES
        if hi < lo:  # recording too short to split three ways: use all of it
            lo, hi = 0, n - CLIP_SAMPLES
        offset = int(rng.integers(lo, hi + 1))
        db = NEAR_SILENCE_DB if rng.random() < NEAR_SILENCE_SHARE else rng.uniform(*SILENCE_GAIN_DB)
        cuts.append(Clip(path.relative_to(root).as_posix(), label, offset, round(10 ** (db / 20), 6)))
    return sorted(cuts, key=lambda c: (c.path, c.offset))


def official_test_clips(test_root: Path, plan: LabelPlan, root: Path) -> list[Clip]:
    """The official test set's clips under ``plan``'s labels: a keyword folder as its keyword (a Warden
    keyword outside ``plan.targets`` as ``_unknown_``), ``_unknown_`` and ``_silence_`` as themselves."""
    outside = [k for k in plan.targets if k not in KEYWORDS]
    if outside:
        raise DatasetError(f"data.test_set=official labels only the ten Warden keywords, not "
                           f"{shorten(', '.join(outside), 80)}: use data.test_set=lists")
    clips, dropped = [], []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name
        label = (plan.label_of[name] if name in plan.targets else plan.silence if name == SILENCE else
                 plan.unknown if name == UNKNOWN or name in KEYWORDS else None)
        paths = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".wav"))
        if label is None:
            dropped.append(name)
            continue
        clips += [Clip(_within(folder / p, root), label) for p in paths]
    if dropped:
        log.info("official test set %s: left out %s (no such label here)", test_root, ", ".join(dropped))
    return clips


def _within(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute (``root / it`` gives it back either way)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.absolute().as_posix()


# ------------------------------------------------------------------------------------------ decoding

def decode_into(npy_path: str, start: int, items: list[tuple[str, int, float, bool]]) -> list[tuple[int, str]]:
    """Decode ``(path, offset, gain, window)`` items into rows ``start...`` of the int16 .npy at ``npy_path``
    (``window``: a window of a negatives file, :func:`sctrain.data.negatives.read_window`).

    Writing into the memory-mapped file (not returning arrays) keeps gigabytes of audio off the pipes
    between processes. Returns ``(row, reason)`` for the clips that could not be decoded (left zero).
    """
    audio = np.load(npy_path, mmap_mode="r+")
    bad = []
    from sctrain.data.negatives import read_window

    for i, (path, offset, gain, window) in enumerate(items):
        try:
            clip = read_window(path, offset) if window else read_clip(path, offset)
            audio[start + i] = clip if gain == 1.0 else to_int16(clip / INT16_SCALE * gain)
        except AudioError as e:
            bad.append((start + i, e.reason))
    audio.flush()
    del audio
    return bad
