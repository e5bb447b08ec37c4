"""Decode every clip once, in parallel, into packed int16 arrays that later runs memory-map
(:mod:`sctrain.data.dataset` reads them).

A cache folder holds, per split, ``audio_<split>.npy`` (int16 [N, 16000]), ``labels_<split>.npy`` (int64),
``offsets_<split>.npy`` (int64 sample offsets, non-zero for _silence_ cuts) and ``files_<split>.txt``, plus
``background.npy`` (float32 [M, 16000] 1 s noise segments at a 0.5 s stride) and ``meta.json``. Its name
carries a fingerprint of the source files and the scan options, so a changed source is repacked, and the
cache it replaces is deleted unless a running job still reads it (:func:`remove_stale_caches`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: stale caches are not removed
    fcntl = None
import numpy as np

from sctrain.audio.constants import CLIP_SAMPLES, SAMPLE_RATE
from sctrain.audio.io import AudioError, read_source
from sctrain.data.dataset import PackedDataset
from sctrain.data.hashsplit import ensure_split_lists
from sctrain.data.speechcommands import (
    LIST_FILES,
    NOISE_STRETCH,
    SPLITS,
    DatasetError,
    DatasetIndex,
    decode_into,
    ensure_dataset,
    ensure_test_set,
    is_writable,
    scan_dataset,
)
from sctrain.utils import first_line

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: the noise bank is cut from the train stretch of each recording only; 3: checksums, class counts
BACKGROUND_STRIDE = CLIP_SAMPLES // 2
PARALLEL_MIN_CLIPS = 2048  # below this, starting processes costs more than it saves
KWS12_SEED = 0  # fixed, not train.seed: every run of a task sees the same _unknown_ / _silence_ clips


# --------------------------------------------------------------------------------------- packing side

def load_dataset(cfg, progress: bool = True) -> PackedDataset:
    """The packed dataset that ``cfg`` (a ``DataConfig``) describes: fetch, scan and pack as needed.

    A root without split lists gets TensorFlow's reference hash split (written into the cache folder when
    the root is read-only); ``data.test_set=official`` fetches the released test set once.
    """
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    index = scan_config(cfg, ensure_dataset(cfg, progress=progress), cache_dir, progress)
    return pack_dataset(index, cache_dir=cache_dir, workers=cfg.pack_workers, skip_bad=cfg.skip_bad_clips,
                        progress=progress)


def scan_config(cfg, root: Path, cache_dir: Optional[Path] = None, progress: bool = True) -> DatasetIndex:
    """:func:`scan_dataset` of ``root`` as ``cfg`` (a ``DataConfig``) says, split lists and test set ensured."""
    lists_dir = ensure_split_lists(root, side_folder(root, cache_dir, "split_lists"))
    test_root = None
    if cfg.test_set == "official":
        test_root = ensure_test_set(cfg, side_folder(root, cache_dir, "official_test_set"), progress=progress)
    return scan_dataset(root, cfg.task, cfg.unknown_ratio, cfg.silence_ratio, seed=KWS12_SEED,
                        keywords=cfg.keywords, silence=cfg.use_silence, lists_dir=lists_dir, test_root=test_root,
                        negatives=cfg.negatives, train_negatives=cfg.train_negatives,
                        extra_roots=cfg.extra_roots, root_train_clips=cfg.root_train_clips)


def side_folder(root: Path, cache_dir: Optional[Path], name: str) -> Path:
    """A folder of ``root``'s own in the cache (``cache_dir``, else the user cache) for what the dataset
    lacks and a read-only root cannot take: split lists, the official test set."""
    if cache_dir is None:
        return default_cache_dirs(root)[1] / name
    tag = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{name}-{Path(root).resolve().name}-{tag}"


def fingerprint(index: DatasetIndex) -> str:
    """Hash of everything the packed arrays depend on: clip lists, labels, options, file sizes and mtimes."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "task": index.task, "options": index.options,
                         "labels": index.labels}, sort_keys=True).encode())
    lists = index.lists_dir or index.root
    sources = {_relative(lists / name, index.root) for name in LIST_FILES.values()}
    for split in SPLITS:
        for c in index.splits.get(split, []):
            gain = f"\t{c.gain}" if c.gain != 1.0 else ""  # only _silence_ cuts: other tasks' caches stay valid
            window = "\tw" if c.window else ""  # only negatives: caches without them stay valid
            h.update(f"{split}\t{c.path}\t{c.label}\t{c.offset}{gain}{window}\n".encode())
            sources.add(c.path)
    sources.update(_relative(p, index.root) for p in index.background)
    for rel in sorted(sources):
        try:
            st = os.stat(index.root / rel)
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\tmissing\n".encode())
    return h.hexdigest()


def default_cache_dirs(root: Path) -> list[Path]:
    """Where packed caches live: inside the dataset root, or the user cache when the root is read-only."""
    root = Path(root)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sctrain"
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return [root / ".sctrain_cache", base / f"{root.resolve().name}-{tag}"]


def pack_dataset(index: DatasetIndex, cache_dir: Optional[Path] = None, workers: int = 0,
                 skip_bad: bool = False, progress: bool = True) -> PackedDataset:
    """Pack ``index`` into ``<cache_dir>/<task>-<fingerprint>/`` (reused while the source is unchanged).

    ``cache_dir`` defaults to ``<root>/.sctrain_cache``, or ``~/.cache/sctrain/<root-name>-<hash>`` when
    the root is read-only. ``workers=0`` decodes with one process per CPU core. Unreadable, empty,
    non-16 kHz or non-mono clips raise ``DatasetError`` unless ``skip_bad``, which drops and lists them.
    """
    fp = fingerprint(index)
    name = f"{index.task}-{fp[:16]}"
    parents = [Path(cache_dir)] if cache_dir is not None else default_cache_dirs(index.root)
    for parent in parents:
        folder = parent / name
        try:
            if not folder.is_dir():
                continue
            meta_problem = _meta_problem(folder, fp)
        except PermissionError:
            log.warning("packed dataset %s is not readable by this user (permission denied): packing a copy of "
                        "its own elsewhere", folder)
            continue
        if meta_problem is not None:  # the folder only ever appears whole (a rename): its meta.json was damaged
            log.warning("packed dataset %s has a damaged meta.json (%s): packing it again", folder, meta_problem)
            _discard(folder)
            continue
        damage = cache_damage(folder)
        if damage is None:
            log.info("reusing packed dataset %s (source unchanged)", folder)
            return PackedDataset(folder)
        log.warning("packed dataset %s does not match its meta.json (%s): packing it again", folder, damage)
        _discard(folder)
    parent = next((p for p in parents if is_writable(p)), None)
    if parent is None:
        raise DatasetError(f"no writable folder for the packed cache: tried {', '.join(map(str, parents))}")
    data = PackedDataset(_build(index, parent, name, fp, workers or os.cpu_count() or 1, skip_bad, progress))
    remove_stale_caches(parent, name, index)
    return data


def remove_stale_caches(parent: Path, current: str, index: DatasetIndex) -> None:
    """Delete the caches in ``parent`` that this one replaces: the same root, task and options, packed
    before the source changed. Each is a full copy of the audio (GBs for the real dataset), and nothing
    reuses it. One that a running job has open (:class:`PackedDataset` holds a shared lock) is kept."""
    if fcntl is None:
        return
    for folder in sorted(parent.glob(f"{index.task}-*")):
        if folder.name == current or not folder.is_dir():
            continue
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("root") != str(index.root) or meta.get("options") != index.options:
            continue  # another dataset, or other scan options: not superseded by this cache
        with open(folder / "meta.json", "rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.info("kept the older packed cache %s: a running job reads it", folder)
                continue
            trash = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("removed the older packed cache %s (its source has changed since)", folder)


def _is_complete(folder: Path, fp: str) -> bool:
    try:
        return _meta_problem(folder, fp) is None
    except OSError:
        return False


def _meta_problem(folder: Path, fp: str) -> Optional[str]:
    """What is wrong with ``folder/meta.json`` (missing, empty, not JSON, another fingerprint), or None.
    ``PermissionError`` when this user may not read it."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "it is missing"
    except PermissionError:
        raise
    except (OSError, ValueError) as e:
        return f"not JSON: {getattr(e, 'strerror', None) or first_line(e)}"
    if not isinstance(meta, dict):
        return f"not a mapping but {type(meta).__name__}"
    if meta.get("format") != FORMAT_VERSION or meta.get("fingerprint") != fp:
        return (f"format {meta.get('format')!r} and fingerprint {str(meta.get('fingerprint'))[:16]!r} are not "
                f"this cache's")
    return None


def array_digest(path: Path) -> str:
    """SHA-256 of a file (about 1 GB/s: the 8-word set's cache is checked in well under a second)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_damage(folder: Path) -> Optional[str]:
    """What is wrong with a cache's arrays, judged by the shapes ``meta.json`` promises and the bytes each
    ``.npy`` header announces (a file cut short by a full disk or an interrupted copy), or None.

    Then what the arrays hold: every label in range and each split's class counts as packed (a cache that
    trained every clip as one label, or failed on a label past the last class, passed the shape checks), and a
    SHA-256 of every file against the one written at pack time (a swapped label, file list or clip).
    A short memory-mapped file would otherwise surface later as a loader worker's "mmap length is greater
    than file size"."""
    meta = json.loads((folder / "meta.json").read_text())
    try:
        return _shape_damage(folder, meta) or _content_damage(folder, meta)
    except (KeyError, TypeError, AttributeError) as e:  # a meta.json edited or cut into another structure
        return f"meta.json is malformed ({type(e).__name__}: {e})"


def _content_damage(folder: Path, meta: dict) -> Optional[str]:
    classes, packed_counts, digests = len(meta["labels"]), meta.get("class_counts"), meta.get("sha256")
    if not isinstance(packed_counts, dict) or not isinstance(digests, dict):
        return "meta.json lacks the class counts and checksums"
    for split in SPLITS:
        try:
            labels = np.load(folder / f"labels_{split}.npy")
        except (OSError, ValueError) as e:
            return f"labels_{split}.npy: {getattr(e, 'strerror', None) or first_line(e)}"
        if labels.size and not 0 <= labels.min() <= labels.max() < classes:
            bad = labels.min() if labels.min() < 0 else labels.max()
            return f"labels_{split}.npy holds label {bad}, outside 0..{classes - 1}"
        found = np.bincount(labels, minlength=classes).tolist()
        if found != packed_counts[split]:
            return f"labels_{split}.npy has class counts {found}, packed {packed_counts[split]}"
    for name, digest in sorted(digests.items()):
        if array_digest(folder / name) != digest:
            return f"{name} does not match the checksum written when it was packed"
    return None


def _shape_damage(folder: Path, meta: dict) -> Optional[str]:
    counts = meta.get("counts") or {}
    if any(not isinstance(counts.get(split), int) for split in SPLITS):
        return "meta.json lacks the clip counts"
    expected = {"background.npy": None}
    for split in SPLITS:
        count = counts[split]
        expected.update({f"audio_{split}.npy": (count, CLIP_SAMPLES), f"labels_{split}.npy": (count,),
                         f"offsets_{split}.npy": (count,)})
    for name, shape in expected.items():
        try:
            with open(folder / name, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                found, _, dtype = read_header(f)
                size, needed = os.fstat(f.fileno()).st_size, f.tell() + math.prod(found) * dtype.itemsize
        except (OSError, ValueError) as e:
            return f"{name}: {getattr(e, 'strerror', None) or e}"
        if shape is not None and tuple(found) != shape:
            return f"{name} holds shape {tuple(found)}, not {shape}"
        if size < needed:
            return f"{name} is {size} bytes, its header needs {needed}"
    for split in SPLITS:
        try:
            lines = (folder / f"files_{split}.txt").read_text().count("\n")
        except OSError as e:
            return f"files_{split}.txt: {e.strerror}"
        if lines != counts[split]:
            return f"files_{split}.txt names {lines} clips, not {counts[split]}"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged cache out of the way (a rename: a job still reading it keeps its open files) and delete it."""
    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.rename(folder, trash)
    except OSError:
        return  # read-only: the repack then fails to replace it, naming the folder
    shutil.rmtree(trash, ignore_errors=True)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _build(index: DatasetIndex, parent: Path, name: str, fp: str, workers: int, skip_bad: bool,
           progress: bool) -> Path:
    final = parent / name
    start = time.perf_counter()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    except OSError as e:
        raise DatasetError(f"cannot create the packed cache in {parent}: {e.strerror}") from None
    try:
        bad = _decode_splits(index, tmp, workers, progress)
        background, bad_background = _cut_background(index.background)
        bad = list(dict(bad + bad_background).items())  # one entry per file (silence cuts share theirs)
        if bad and not skip_bad:
            path, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad clips)" if len(bad) > 1 else ""
            raise DatasetError(f"bad clip {path}: {reason}{more}; fix or remove it, or set "
                               f"data.skip_bad_clips=true to skip bad clips")
        if bad:
            log.warning("skipped %d bad clips (first: %s: %s)", len(bad), bad[0][0], bad[0][1])
        bad_paths = {p for p, _ in bad}
        counts = {s: _write_split(index, s, tmp, bad_paths) for s in SPLITS}
        np.save(tmp / "background.npy", background)
        meta = {"format": FORMAT_VERSION, "fingerprint": fp, "task": index.task, "options": index.options,
                "labels": index.labels, "root": str(index.root), "counts": counts,
                "sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES,
                "background_files": [_relative(p, index.root) for p in index.background],
                "skipped": sorted(_relative(Path(p), index.root) for p in bad_paths),
                # What a later run checks the arrays against (cache_damage).
                "class_counts": {s: np.bincount(np.load(tmp / f"labels_{s}.npy"), minlength=len(index.labels))
                                 .tolist() for s in SPLITS},
                "sha256": {p.name: array_digest(p) for p in sorted(tmp.iterdir())}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final, fp):  # not a concurrent packer finishing first: a real error
                raise DatasetError(f"cannot move the packed cache into place at {final}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(v) for v in index.splits.values())
    log.info("packed %d clips into %s in %.1f s", total, final, time.perf_counter() - start)
    return final


def _decode_splits(index: DatasetIndex, tmp: Path, workers: int, progress: bool) -> list[tuple[str, str]]:
    """Decode all splits into ``tmp/audio_<split>.npy`` (full length); return (path, reason) of bad clips."""
    from tqdm.auto import tqdm

    total = sum(len(index.splits[s]) for s in SPLITS)
    chunk = max(32, min(512, math.ceil(total / (workers * 8))))
    jobs = []
    for s in SPLITS:
        clips = index.splits[s]
        npy = tmp / f"audio_{s}.npy"
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.int16, shape=(len(clips), CLIP_SAMPLES)).flush()
        for lo in range(0, len(clips), chunk):
            items = [(str(index.root / c.path), c.offset, c.gain, c.window) for c in clips[lo:lo + chunk]]
            jobs.append((s, str(npy), lo, items))
    bad_rows: list[tuple[str, int, str]] = []
    with tqdm(total=total, unit="clip", desc="packing", disable=not progress) as bar:
        if workers <= 1 or total < PARALLEL_MIN_CLIPS:
            for s, npy, lo, items in jobs:
                bad_rows += [(s, row, reason) for row, reason in decode_into(npy, lo, items)]
                bar.update(len(items))
        else:
            # fork where there is one (as DataLoader does): spawn and forkserver re-run the caller's main
            # script in every child, which breaks scripts without an `if __name__ == "__main__"` guard.
            # The children only touch numpy and soundfile, never the parent's torch or CUDA state.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(method)) as pool:
                futures = [(s, len(items), pool.submit(decode_into, npy, lo, items)) for s, npy, lo, items in jobs]
                for s, n, future in futures:
                    bad_rows += [(s, row, reason) for row, reason in future.result()]
                    bar.update(n)
    return [(str(index.root / index.splits[s][row].path), reason) for s, row, reason in bad_rows]


def _write_split(index: DatasetIndex, split: str, tmp: Path, bad_paths: set[str]) -> int:
    clips = index.splits[split]
    keep = np.array([str(index.root / c.path) not in bad_paths for c in clips], dtype=bool)
    if not keep.all():  # rewrite the audio without the bad rows
        full = np.load(tmp / f"audio_{split}.npy", mmap_mode="r")
        rows = np.flatnonzero(keep)
        kept = np.lib.format.open_memmap(tmp / "compact.npy", mode="w+", dtype=np.int16,
                                         shape=(len(rows), CLIP_SAMPLES))
        for lo in range(0, len(rows), 4096):
            kept[lo:lo + 4096] = full[rows[lo:lo + 4096]]
        kept.flush()
        del full, kept
        os.replace(tmp / "compact.npy", tmp / f"audio_{split}.npy")
    clips = [c for c, k in zip(clips, keep) if k]
    np.save(tmp / f"labels_{split}.npy", np.array([c.label for c in clips], dtype=np.int64))
    np.save(tmp / f"offsets_{split}.npy", np.array([c.offset for c in clips], dtype=np.int64))
    (tmp / f"files_{split}.txt").write_text("".join(f"{c.path}\n" for c in clips))
    return len(clips)


def _cut_background(paths: list[Path]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """1 s float32 segments at a 0.5 s stride from the train stretch of each noise recording
    (:data:`NOISE_STRETCH`: the rest is for the detector's validation and test streams); (path, reason) for bad
    ones."""
    lo_share, hi_share = NOISE_STRETCH["train"]
    segments, bad = [], []
    for path in paths:
        try:
            audio, rate = read_source(path)
        except AudioError as e:
            bad.append((str(path), e.reason))
            continue
        reason = (f"sample rate {rate} Hz, not {SAMPLE_RATE}" if rate != SAMPLE_RATE else
                  f"{audio.shape[1]} channels, not mono" if audio.shape[1] != 1 else None)
        if reason:
            bad.append((str(path), reason))
            continue
        audio = audio[int(lo_share * len(audio)): int(hi_share * len(audio)), 0]
        if len(audio) < CLIP_SAMPLES:
            audio = np.pad(audio, (0, CLIP_SAMPLES - len(audio)))
        segments.append(np.lib.stride_tricks.sliding_window_view(audio, CLIP_SAMPLES)[::BACKGROUND_STRIDE])
    if not segments:
        return np.zeros((0, CLIP_SAMPLES), dtype=np.float32), bad
    return np.ascontiguousarray(np.concatenate(segments), dtype=np.float32), bad
