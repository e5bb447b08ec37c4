"""One typed config tree: defaults < YAML file < ``dotted.key=value`` overrides.

Every field carries a one-line ``help`` (it is the config reference shown by ``--help``). Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` with a one-line message naming the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from sctrain.artifacts.detector import DetectorRules, StreamSettings, stream_size_problem, target_fa_problem
from sctrain.utils import first_line


class ConfigError(ValueError):
    """A config problem; the message is one line and names the key."""


def doc(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its one-line description (``help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _require_fraction(value: float, key: str) -> None:
    """A dropout rate or similar share: in [0, 1)."""
    _require(0.0 <= value < 1.0, key, f"must be in [0, 1), got {value}")
TASKS = ("all", "kws12", "keywords")  # label sets (sctrain.data.speechcommands.plan_labels)
TEST_SETS = ("lists", "official")
PLACEMENTS = ("auto", "loader", "device")  # where training batches are gathered (sctrain.training.placement)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Keys renamed since; a config file that still uses one gets the new name in its error.
RENAMED = {"data.kws12_unknown_ratio": "data.unknown_ratio", "data.kws12_silence_ratio": "data.silence_ratio"}


@dataclass
class DataConfig:
    root: str = doc("./_sc_data", "folder holding (or receiving) the SpeechCommands layout; packed arrays are cached "
                                  "inside it")
    extra_roots: list = doc([], "more folders of <word>/*.wav clips (e.g. from python -m sctrain.tts) whose every "
                                "clip joins the training split under its folder's word; validation, test and noise "
                                "come from root alone")
    root_train_clips: Optional[int] = doc(None, "keep at most this many of root's training clips per word folder (a "
                                                "seeded choice; 0 = none: train on extra_roots alone); null = all")
    extra_share: Optional[float] = doc(None, "share of each class's training draws that come from extra_roots' clips "
                                             "when the class has clips of both kinds (train.balance=sampler); null = "
                                             "in proportion to their numbers")
    version: str = doc("v0.02", "SpeechCommands release to download when root is empty: v0.01 or v0.02")
    download: bool = doc(True, "download and extract the dataset when root holds no SpeechCommands layout")
    task: str = doc("all", "label set: 'all' (one label per word folder), 'keywords' (data.keywords + _unknown_ for "
                           "the other words + _silence_) or 'kws12' (keywords preset: the 10 Warden words)")
    keywords: list = doc([], "task=keywords: the target words, in label order; [] = every word folder is a keyword "
                             "(quote yes/no/on/off in YAML)")
    silence: Optional[bool] = doc(None, "add a _silence_ class cut from the background recordings at random gains; "
                                        "null = true for kws12/keywords, false for all")
    unknown_ratio: float = doc(1.0, "_unknown_ clips kept per split, as a multiple of the mean keyword class size "
                                    "(1.0 = TF's 10 % with ten keywords); 0 keeps all")
    silence_ratio: float = doc(1.0, "_silence_ clips cut per split, as a multiple of the mean keyword class size "
                                    "(1.0 = TF's 10 % with ten keywords)")
    negatives: list = doc([], "folders or files of audio without the keywords (any length, rate, WAV/FLAC/OGG): "
                              "each file goes to one split by the hash split of its name, and its 1 s windows are "
                              "_unknown_ clips there (training learns from them, the validation and test streams "
                              "play them); in a word layout the folders named like a keyword and "
                              "_background_noise_ are left out")
    train_negatives: list = doc([], "like negatives, but every window goes to the training split (audio cut "
                                    "from the training side already, such as mined false alarms)")
    test_set: str = doc("lists", "test split: 'lists' (testing_list.txt) or 'official' (the released 12-class test "
                                 "set, downloaded once; keyword tasks over the 10 Warden words)")
    cache_dir: Optional[str] = doc(None, "where packed arrays are cached (e.g. a node-local SSD); null = "
                                         "<root>/.sctrain_cache, or ~/.cache/sctrain when root is read-only")
    skip_bad_clips: bool = doc(False, "skip unreadable/empty/non-16kHz-mono clips (count printed) instead of "
                                      "stopping with an error")
    pack_workers: int = doc(0, "processes that decode WAVs when packing (0 = one per CPU core)")
    num_workers: int = doc(2, "DataLoader worker processes per rank (packed arrays make 0-2 enough on most machines)")
    pin_memory: bool = doc(True, "pin host batches for faster copies to a GPU (ignored on the CPU)")
    placement: str = doc("auto", "where batches are gathered: 'loader' (DataLoader workers read the memory-mapped "
                                 "cache), 'device' (the packed splits are copied to the training device once and "
                                 "each step gathers its batch there) or 'auto' (device on a GPU when they fit in "
                                 "data.device_memory_share of its free memory, else loader)")
    device_memory_share: float = doc(0.5, "placement=auto: the largest share of the GPU's free memory the packed "
                                          "splits may take to be placed there")

    def __post_init__(self) -> None:
        _require(self.version in ("v0.01", "v0.02"), "data.version", f"must be v0.01 or v0.02, got {self.version!r}")
        _require(self.task in TASKS, "data.task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        self._check_keywords()
        _require(not (self.task == "kws12" and self.silence is False), "data.silence",
                 "kws12's 12 labels include _silence_; for 11 use data.task=keywords")
        for key in ("negatives", "train_negatives"):
            value = getattr(self, key)
            _require(isinstance(value, list) and all(isinstance(p, str) and p for p in value),
                     f"data.{key}", f"must be a list of folders or files, got {value!r}")
        _require(self.unknown_ratio >= 0, "data.unknown_ratio", "must be >= 0 (0 keeps every non-keyword clip)")
        _require(self.silence_ratio > 0, "data.silence_ratio", "must be > 0 (data.silence=false drops the class)")
        _require(self.test_set in TEST_SETS, "data.test_set", f"must be lists or official, got {self.test_set!r}")
        _require(self.test_set == "lists" or self.task != "all", "data.test_set",
                 "official needs data.task=kws12 or keywords: its clips are labelled as 10 keywords, _unknown_ "
                 "and _silence_")
        _require(all(isinstance(r, str) and r.strip() for r in self.extra_roots), "data.extra_roots",
                 f"must be a list of folder paths, got {self.extra_roots!r}")
        _require(self.root_train_clips is None or self.root_train_clips >= 0, "data.root_train_clips",
                 f"must be >= 0 or null, got {self.root_train_clips}")
        _require(self.extra_share is None or 0 < self.extra_share < 1, "data.extra_share",
                 f"must be in (0, 1) or null, got {self.extra_share}")
        _require(self.extra_share is None or bool(self.extra_roots), "data.extra_share",
                 "needs data.extra_roots (the clips it weighs against root's)")
        _require(self.pack_workers >= 0, "data.pack_workers", "must be >= 0")
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _require(self.placement in PLACEMENTS, "data.placement", f"must be auto, loader or device, got "
                                                                 f"{self.placement!r}")
        _require(0 < self.device_memory_share <= 1, "data.device_memory_share", "must be in (0, 1]")

    def _check_keywords(self) -> None:
        words = self.keywords
        if any(isinstance(w, bool) for w in words):  # YAML 1.1: unquoted yes/no/on/off are booleans
            raise ConfigError("config key 'data.keywords': YAML read an unquoted yes/no/on/off as a boolean; quote "
                              "the words ('yes', 'on')")
        _require(all(isinstance(w, str) and w and not w.startswith(("_", ".")) for w in words), "data.keywords",
                 f"must be word folder names (not starting with '_' or '.'), got {words!r}")
        _require(len(set(words)) == len(words), "data.keywords", f"names a word twice: {words!r}")
        _require(not words or self.task == "keywords", "data.keywords",
                 f"only data.task=keywords takes a word list (task {self.task!r} fixes its labels)")

    @property
    def use_silence(self) -> bool:
        """Whether the label set gets ``_silence_`` (``silence``, or its task's default)."""
        return self.silence if self.silence is not None else self.task != "all"


# features.normalise: per clip (the default) or not at all.
NORMALISATIONS = ("clip", "none")


@dataclass
class FeatureConfig:
    n_mels: int = doc(64, "mel bands of the log-mel spectrogram")
    n_mfcc: int = doc(0, "MFCC coefficients (DCT-II of the log-mel) the model sees instead of the log-mel; 0 = log-mel")
    n_fft: int = doc(512, "FFT size in samples (512 = 32 ms at 16 kHz)")
    win_length: int = doc(480, "analysis window in samples (480 = 30 ms)")
    hop_length: int = doc(160, "hop between frames in samples (160 = 10 ms, 101 frames per second)")
    f_min: float = doc(20.0, "lowest mel band edge in Hz")
    f_max: float = doc(8000.0, "highest mel band edge in Hz (at most 8000 for 16 kHz audio)")
    center: bool = doc(True, "true: frames centred on the clip, reflect-padded by n_fft/2 at its ends (torchaudio's "
                             "default; 101 frames per 1 s at the defaults); false: only the frames wholly inside the "
                             "clip (97), which a stateful streaming model computes hop by hop (docs/deploy.md)")
    normalise: str = doc("clip", "clip: zero mean, unit variance over each clip's whole spectrogram; none: the log-mel "
                                 "as it is (natural log of the mel power + 1e-6), which a stateful streaming model "
                                 "needs: per-window statistics change every frame at every hop")

    def __post_init__(self) -> None:
        _require(self.n_mels > 0, "features.n_mels", "must be > 0")
        _require(0 <= self.n_mfcc <= self.n_mels, "features.n_mfcc", f"must be in [0, n_mels={self.n_mels}]")
        _require(self.win_length <= self.n_fft, "features.win_length", f"must be <= features.n_fft ({self.n_fft})")
        _require(0 < self.hop_length <= self.win_length, "features.hop_length", "must be in (0, win_length]")
        _require(0 <= self.f_min < self.f_max <= 8000, "features.f_max", "need 0 <= f_min < f_max <= 8000")
        _require(self.normalise in NORMALISATIONS, "features.normalise",
                 f"must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")


@dataclass
class AugmentConfig:
    shift_p: float = doc(0.5, "probability of a random circular-free time shift of the waveform")
    shift_max_ms: float = doc(100.0, "largest time shift in milliseconds (either direction, zero-filled)")
    noise_p: float = doc(0.5, "probability of adding noise (white or a background recording) to a clip")
    background_p: float = doc(0.8, "share of noisy clips that get a background recording rather than white noise")
    snr_db_min: float = doc(5.0, "lowest signal-to-noise ratio of added noise, dB")
    snr_db_max: float = doc(30.0, "highest signal-to-noise ratio of added noise, dB")
    gain_db: float = doc(6.0, "random gain of +-gain_db applied to every training clip (0 = off)")
    reverb_p: float = doc(0.0, "probability that a clip is reverberated with a room impulse response "
                               "(before noise is added; 0 = off)")
    rir_dir: Optional[str] = doc(None, "folder of room impulse response recordings (WAV/FLAC); "
                                       "unset: responses generated from a room model")
    rir_count: int = doc(200, "how many impulse responses are generated when rir_dir is unset")
    rt60_min: float = doc(0.2, "shortest reverberation time (RT60, seconds) of the generated rooms")
    rt60_max: float = doc(1.0, "longest reverberation time (RT60, seconds) of the generated rooms")
    rir_seed: int = doc(0, "seed of the generated impulse responses (the same bank on every rank and run)")
    reversed_unknown_p: float = doc(0.0, "share of _unknown_ clips replaced by time-reversed keyword clips of the "
                                         "batch (speech without a word in it; 0 = off; sctrain/audio/fillers.py)")
    spliced_unknown_p: float = doc(0.0, "share of _unknown_ clips replaced by the start of one keyword clip of the "
                                        "batch joined to the end of another's (near-miss words; 0 = off)")
    generated_silence_p: float = doc(0.0, "share of _silence_ clips replaced by generated coloured noise, white "
                                          "to brown (0 = off)")
    generated_silence_dbfs_min: float = doc(-70.0, "quietest level of the generated _silence_ noise, dBFS (RMS)")
    generated_silence_dbfs_max: float = doc(-10.0, "loudest level of the generated _silence_ noise, dBFS (RMS)")
    mask_p: float = doc(0.5, "probability of spectrogram masking (SpecAugment) per clip")
    freq_mask: int = doc(8, "widest frequency mask in mel bands")
    time_mask: int = doc(20, "widest time mask in frames")
    num_masks: int = doc(2, "masks of each kind applied to a masked clip")
    mixup_p: float = doc(0.0, "probability that a batch is mixed with MixUp (0 = off)")
    mixup_alpha: float = doc(0.2, "MixUp Beta(alpha, alpha) parameter")

    def __post_init__(self) -> None:
        for name in ("shift_p", "noise_p", "background_p", "reverb_p", "reversed_unknown_p", "spliced_unknown_p",
                     "generated_silence_p", "mask_p", "mixup_p"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"augment.{name}", f"is a probability, must be in [0, 1], got {value}")
        _require(self.shift_max_ms >= 0, "augment.shift_max_ms", "must be >= 0")
        _require(self.snr_db_min <= self.snr_db_max, "augment.snr_db_min", "must be <= augment.snr_db_max")
        _require(self.gain_db >= 0, "augment.gain_db", "must be >= 0")
        _require(self.reversed_unknown_p + self.spliced_unknown_p <= 1.0, "augment.spliced_unknown_p",
                 f"plus augment.reversed_unknown_p is a share of the _unknown_ clips, must be <= 1, got "
                 f"{self.spliced_unknown_p} + {self.reversed_unknown_p}")
        _require(self.generated_silence_dbfs_min <= self.generated_silence_dbfs_max <= 0,
                 "augment.generated_silence_dbfs_min", "must be <= augment.generated_silence_dbfs_max <= 0, got "
                 f"{self.generated_silence_dbfs_min} and {self.generated_silence_dbfs_max}")
        _require(self.rir_count >= 1, "augment.rir_count", f"must be >= 1, got {self.rir_count}")
        _require(0 < self.rt60_min <= self.rt60_max, "augment.rt60_min",
                 f"must be > 0 and <= augment.rt60_max, got {self.rt60_min} and {self.rt60_max}")
        _require(self.rir_seed >= 0, "augment.rir_seed", f"must be >= 0, got {self.rir_seed}")
        _require(self.freq_mask >= 0 and self.time_mask >= 0, "augment.freq_mask", "mask widths must be >= 0")
        _require(self.num_masks >= 0, "augment.num_masks", "must be >= 0")
        _require(self.mixup_alpha > 0, "augment.mixup_alpha", "must be > 0")


class _Sections:
    """Fills every nested section left unset with its defaults (a dataclass mixin)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if dataclasses.is_dataclass(_field_type(type(self), f)) and getattr(self, f.name) is None:
                setattr(self, f.name, _field_type(type(self), f)())


# ------------------------------------------------------------------------- model families (one section each)
# Each family's section is a dataclass in the family's own module (sctrain/models/<name>.py), registered with
# it. ModelConfig is made from the registry when first needed rather than at import: the family modules import
# this one for doc() and the checks, and sctrain.models.registry imports the family modules.

DEFAULT_MODEL = "kwsnet"


class _ModelSections(_Sections):
    """ModelConfig's behaviour; its fields (name, then one section per registered family) are made below."""

    def __post_init__(self) -> None:
        super().__post_init__()
        families = [f.name for f in dataclasses.fields(self) if f.name != "name"]
        _require(self.name in families, "model.name", f"must be one of {', '.join(families)}, got {self.name!r}")


_model_config: dict = {}  # the registered families (names and sections) -> the ModelConfig made for them


def model_config_class() -> type:
    """``ModelConfig``: ``name`` and a section ``<family>`` of each registered family's config dataclass."""
    from sctrain.models.registry import get_family, list_models

    families = [get_family(name) for name in list_models()]
    key = tuple((f.name, f.config) for f in families)
    if key not in _model_config:
        name = ("name", str, doc(DEFAULT_MODEL, "model family (python -m sctrain --list-models); its settings are "
                                                "in model.<name>"))
        sections = [(f.name, f.config, doc(None, (f.doc.splitlines() or [f.name])[0])) for f in families]
        cls = dataclasses.make_dataclass("ModelConfig", [name, *sections], bases=(_ModelSections,))
        cls.__module__, cls.__doc__ = __name__, "The network: its family (``name``) and every family's settings."
        _model_config[key] = cls
    return _model_config[key]


def __getattr__(name: str) -> Any:
    """``ModelConfig``, and the family sections under the names they had when they lived here (``KWSNetConfig``)."""
    if name == "ModelConfig":
        return model_config_class()
    if name.endswith("Config") and not name.startswith("_"):
        from sctrain.models.registry import get_family, list_models

        for family in map(get_family, list_models()):
            if family.config.__name__ == name:
                return family.config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class TrainConfig:
    epochs: int = doc(20, "passes over the (balanced) training stream")
    batch_size: int = doc(128, "clips per step on each process (global batch = batch_size x processes)")
    eval_batch_size: int = doc(512, "clips per evaluation batch on each process")
    optimizer: str = doc("adamw", "adamw, or sgd (momentum SGD, as BC-ResNet trains)")
    momentum: float = doc(0.9, "sgd: momentum")
    lr: float = doc(3e-3, "peak learning rate (reached after warmup)")
    min_lr_ratio: float = doc(0.01, "final learning rate as a fraction of lr (cosine decay)")
    warmup_epochs: float = doc(1.0, "linear warmup length in epochs")
    schedule: str = doc("cosine", "learning-rate schedule after warmup: cosine or constant")
    weight_decay: float = doc(0.01, "weight decay (AdamW's decoupled one, or sgd's L2 term)")
    label_smoothing: float = doc(0.0, "label smoothing of the cross-entropy loss")
    grad_clip: float = doc(0.0, "clip the gradient norm to this value (0 = off)")
    ema_decay: float = doc(0.0, "exponential moving average of the weights, updated after every optimizer step "
                                "with this decay (e.g. 0.999; 0 = off); when on, validation scores the average "
                                "and best_sc.pt holds it (BatchNorm statistics copied from the trained model)")
    balance: str = doc("sampler", "class balance: 'sampler' (weighted sampler), 'loss' (class-weighted loss) or 'none'")
    seed: int = doc(0, "seed of the sampler, augmentation and initialisation")
    precision: str = doc("auto", "auto (bf16 on GPUs that support it, fp32 on CPU), no, bf16 or fp16")
    compile: bool = doc(False, "torch.compile the model (pays off on GPUs, costs ~40 s of compile time)")
    compile_mode: str = doc("default", "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune or "
                                       "max-autotune-no-cudagraphs; shapes are static (full batches only)")
    channels_last: bool = doc(False, "train 2-D convolution networks in channels-last memory format (can speed up "
                                     "GPU convolutions; measure with python -m sctrain.bench gpu)")
    stop_at_val_acc: float = doc(0.0, "stop training after the first epoch whose validation accuracy reaches this "
                                      "(0 = never; time-to-accuracy runs)")
    sync_bn: bool = doc(False, "convert BatchNorm to SyncBatchNorm when training on several processes")
    log_every: int = doc(20, "steps between training-metric log lines")
    checkpoint_every: int = doc(200, "steps between full training-state saves (0 = only at epoch ends)")
    keep_last: int = doc(2, "training states kept in output_dir/state (older ones are deleted)")
    init_from: Optional[str] = doc(None, "a best_sc.pt whose weights this run starts from (fine-tuning, e.g. a "
                                         "mining round: python -m sctrain.mine); the labels and model must match")
    resume: str = doc("auto", "'auto' (resume from output_dir/state when present), 'never' (start over; earlier "
                              "states move to output_dir/state.replaced-*), or a state folder to start from "
                              "(output_dir's own states win once they exist)")
    max_steps: int = doc(0, "stop after this many steps (0 = no limit; for smoke tests)")
    qat: bool = doc(False, "quantization-aware training: PyTorch's fake quantization (int8 per-channel weights, "
                           "uint8 activations) from the first step, for when post-training int8 loses too much; "
                           "best_sc.pt keeps the float weights, export --int8 quantizes them (docs/deploy.md). "
                           "To fine-tune a float model, set train.init_from")

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _require(not (self.qat and (self.ema_decay > 0 or self.compile)), "train.qat",
                 "is not combined with train.ema_decay > 0 (the average's copies would not observe activation "
                 "ranges) or train.compile (untested)")
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(self.optimizer in ("adamw", "sgd"), "train.optimizer", f"must be adamw or sgd, got {self.optimizer!r}")
        _require(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _require(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        _require(self.schedule in ("cosine", "constant"), "train.schedule", f"must be cosine or constant, got "
                                                                            f"{self.schedule!r}")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")
        _require(self.balance in ("sampler", "loss", "none"), "train.balance", f"must be sampler, loss or none, got "
                                                                               f"{self.balance!r}")
        _require(self.precision in ("auto", "no", "bf16", "fp16"), "train.precision", f"must be auto, no, bf16 or "
                                                                                      f"fp16, got {self.precision!r}")
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _require(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        _require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _require(self.compile_mode in COMPILE_MODES, "train.compile_mode",
                 f"must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        _require(self.compile or self.compile_mode == "default", "train.compile_mode",
                 f"{self.compile_mode} takes effect only with train.compile=true")
        _require(0 <= self.stop_at_val_acc <= 1, "train.stop_at_val_acc", "must be in [0, 1] (0 = never)")


@dataclass
class TrackingConfig:
    wandb: bool = doc(False, "log to Weights & Biases (offline automatically when no API key is configured)")
    project: str = doc("sctrain", "W&B project")
    entity: Optional[str] = doc(None, "W&B entity (team or user); null = your default")
    name: Optional[str] = doc(None, "W&B run name; null = output_dir's folder name")
    group: Optional[str] = doc(None, "W&B group (e.g. a sweep name)")
    tags: list = doc([], "W&B tags")
    mode: str = doc("auto", "W&B mode: auto (online with an API key, else offline), online, offline or disabled")
    log_examples: int = doc(4, "validation clips logged as spectrogram + audio examples each epoch (0 = none)")
    report: bool = doc(True, "write PNG plots and report.md into output_dir at the end of training")

    def __post_init__(self) -> None:
        _require(self.mode in ("auto", "online", "offline", "disabled"), "tracking.mode",
                 f"must be auto, online, offline or disabled, got {self.mode!r}")
        _require(all(isinstance(t, str) for t in self.tags), "tracking.tags", "must be a list of strings")
        _require(self.log_examples >= 0, "tracking.log_examples", "must be >= 0")


@dataclass
class LatencyConfig:
    enabled: bool = doc(True, "time inference of the best checkpoint on the CPU (and GPU) at the end of training")
    large_batch: int = doc(256, "batch size of the throughput measurement")
    iters: int = doc(50, "timed iterations per latency measurement (after warm-up)")

    def __post_init__(self) -> None:
        _require(self.large_batch >= 1, "latency.large_batch", "must be >= 1")
        _require(self.iters >= 1, "latency.iters", "must be >= 1")


@dataclass
class KwsConfig:
    calibrate: Optional[bool] = doc(None, "after training, choose per-keyword detection thresholds on validation "
                                          "streams and store them in best_sc.pt; null = when the labels have _silence_")
    validation_minutes: float = doc(StreamSettings.validation_minutes, "length of the validation keyword stream the "
                                    "thresholds are calibrated on (validation speakers over noise the model did not "
                                    "train on)")
    negative_minutes: float = doc(StreamSettings.negative_minutes, "keyword-free validation audio pooled with it "
                                  "(held-out noise, generated noise and babble): a false-alarm rate is bounded by "
                                  "about 3/hours when none fires, so 180 min supports 1 FA/h")
    test_minutes: Optional[float] = doc(None, "length of the test keyword stream the detector is evaluated on after "
                                              "training (0 = off); null = 10 when the labels have _silence_, else 0")
    test_negative_minutes: float = doc(StreamSettings.test_negative_minutes, "keyword-free test audio pooled with the "
                                       "test stream")
    miss_slack: float = doc(StreamSettings.miss_slack, "calibration takes the highest threshold that meets the "
                            "false-alarm bound while the validation miss rate stays within this of the best")
    target_fa_per_hour: float = doc(1.0, "false alarms per hour per keyword that calibration aims at")
    select_by: str = doc("accuracy", "which checkpoint becomes best_sc.pt: 'accuracy' (validation clip accuracy) or "
                                     "'detection' (most validation-stream keywords found at target_fa_per_hour, "
                                     "from select_from of the epochs on)")
    select_from: float = doc(0.5, "select_by=detection: share of the epochs after which checkpoints are chosen by "
                                  "detection (before: by clip accuracy)")
    selection_minutes: float = doc(5.0, "select_by=detection: validation keyword stream each checkpoint is scored on")
    selection_negative_minutes: float = doc(20.0, "select_by=detection: keyword-free validation audio pooled with it")
    # The detector's rules: calibration chooses thresholds under them and best_sc.pt stores them with the
    # thresholds, so the detector and predict --stream apply both together (docs/streaming.md: the DET curves).
    smooth: int = doc(DetectorRules.smooth, "detector: windows (100 ms apart) averaged before thresholding")
    refractory_ms: float = doc(DetectorRules.refractory_ms, "detector: no new event this long after one's peak")
    filler_gate: bool = doc(DetectorRules.filler_gate, "detector: a keyword only counts while its smoothed "
                                                       "posterior is above _silence_'s and _unknown_'s")

    def __post_init__(self) -> None:
        # A stream needs room for one word: 3 s of keywords (0.6 of the stream at the least).
        _require(self.validation_minutes >= 0.1, "kws.validation_minutes", "must be >= 0.1")
        _require(self.test_minutes is None or self.test_minutes == 0 or self.test_minutes >= 0.1, "kws.test_minutes",
                 "must be 0 (off) or >= 0.1")
        problem = target_fa_problem(self.target_fa_per_hour)  # the check streameval's flag shares
        _require(problem is None, "kws.target_fa_per_hour", problem)
        _require(self.negative_minutes >= 0, "kws.negative_minutes", "must be >= 0")
        _require(self.test_negative_minutes >= 0, "kws.test_negative_minutes", "must be >= 0")
        _require_fraction(self.miss_slack, "kws.miss_slack")
        _require(self.select_by in ("accuracy", "detection"), "kws.select_by",
                 f"must be accuracy or detection, got {self.select_by!r}")
        _require(0.0 <= self.select_from <= 1.0, "kws.select_from", f"must be in [0, 1], got {self.select_from}")
        _require(self.selection_minutes >= 0.1, "kws.selection_minutes", "must be >= 0.1")
        _require(self.selection_negative_minutes >= 0, "kws.selection_negative_minutes", "must be >= 0")
        _require(self.smooth >= 1, "kws.smooth", "must be >= 1")
        _require(self.refractory_ms >= 0, "kws.refractory_ms", "must be >= 0")
        # Before training, not after it: calibration holds every stream in memory at once.
        too_long = stream_size_problem({f"kws.{k}": v for k, v in (
            ("validation_minutes", self.validation_minutes), ("negative_minutes", self.negative_minutes),
            ("test_minutes", self.test_minutes if self.test_minutes is not None else StreamSettings.test_minutes),
            ("test_negative_minutes", self.test_negative_minutes))})
        if too_long:
            _require(False, *too_long)

    def rules(self) -> DetectorRules:
        return DetectorRules(self.smooth, float(self.refractory_ms), self.filler_gate)

    def settings(self, test_minutes: float) -> StreamSettings:
        """The detector pipeline's settings (``test_minutes`` resolved by :meth:`active`)."""
        return StreamSettings(float(self.validation_minutes), float(self.negative_minutes), float(test_minutes),
                              float(self.test_negative_minutes), float(self.target_fa_per_hour),
                              float(self.miss_slack))

    def active(self, has_silence: bool) -> tuple[bool, float]:
        """``(calibrate, test_minutes)`` with the nulls resolved: a detector without a "nothing said" class
        (_silence_) names a word in every window, so streams are only worth it by default when it has one."""
        calibrate = self.calibrate if self.calibrate is not None else has_silence
        minutes = self.test_minutes if self.test_minutes is not None else (10.0 if has_silence else 0.0)
        return calibrate, minutes


@dataclass
class Config(_Sections):
    output_dir: str = doc("runs/sc", "run folder: config.yaml, metrics.jsonl, best_sc.pt, results.json, state/")
    data: DataConfig = doc(None, "dataset location, label set and loading", init=True)
    features: FeatureConfig = doc(None, "log-mel front end (runs on the training device)")
    augment: AugmentConfig = doc(None, "training-only augmentation (runs on the training device)")
    # A call, not a name: get_type_hints evaluates it when the types are first asked for, once the model
    # families can be imported (see model_config_class).
    model: model_config_class() = doc(None, "the network: its family and that family's settings")
    train: TrainConfig = doc(None, "optimisation, precision, balance, checkpointing")
    tracking: TrackingConfig = doc(None, "Weights & Biases and the local report")
    latency: LatencyConfig = doc(None, "end-of-run inference latency of the best checkpoint (python -m sctrain.bench "
                                       "latency times more backends)")
    kws: KwsConfig = doc(None, "keyword spotting on streams after training: threshold calibration, test-stream "
                               "evaluation (python -m sctrain.streameval does it for any checkpoint)")

    def __post_init__(self) -> None:
        super().__post_init__()
        # An empty path is the current folder: best_sc.pt and state/ would land wherever the job started.
        _require(bool(str(self.output_dir).strip()), "output_dir", "must name a folder, got an empty value")
        _require(self.data.extra_share is None or self.train.balance == "sampler", "data.extra_share",
                 f"takes effect only with train.balance=sampler, not {self.train.balance}")
        self._check_model_builds()

    def _check_model_builds(self) -> None:
        """A family's shape rules (BC-ResNet's sub_bands against features.n_mels) said now, not after the dataset
        scan: the network is built once on the meta device, which allocates no weights."""
        import torch

        from sctrain.models.registry import create_model

        try:
            with torch.device("meta"):
                create_model(self.model, self.features, 2)
        except ValueError as e:
            text = str(e) if str(e).startswith("config ") else f"config key 'model.{self.model.name}': {e}"
            raise ConfigError(text) from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- loading

def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, key: str, from_text: bool) -> Any:
    """Check (YAML) or parse (command line) one value against its field type."""
    optional, tp = _is_optional(tp)
    if from_text and isinstance(value, str):
        if optional and value.lower() in ("null", "none", "~"):
            return None
        if tp in (int, float):
            try:  # YAML 1.1 reads '1e-3' as a string; Python's own parsers do not
                value = tp(value)
            except ValueError:
                pass
        elif tp is list or typing.get_origin(tp) is list:
            if value.strip().startswith("["):  # a YAML list; else words split on commas below ('no' stays a word)
                value = yaml.safe_load(value)
        elif tp is not str:
            value = yaml.safe_load(value)
    elif tp is float and isinstance(value, str):  # the same '1e-3' in a YAML file: take it as the command line does
        with contextlib.suppress(ValueError):
            value = float(value)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}': must be a {tp.__name__}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                number = math.inf
            # inf and nan would slip past range checks written as comparisons (inf >= 0 holds; nan fails them all)
            _require(math.isfinite(number), key, f"must be a finite number, got {number}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
    elif tp is list or typing.get_origin(tp) is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str) and from_text:
            return [v for v in value.split(",") if v]
    else:  # pragma: no cover - every field type is listed above
        raise ConfigError(f"config key '{key}': unsupported type {tp}")
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config key '{key}': must be a {name}, got {value!r} ({type(value).__name__})")


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def key_type(key: str) -> Any:
    """The value type of the dotted config key ``key`` (``X`` for ``Optional[X]``); ConfigError (one line) for an
    unknown key or a section."""
    if key not in _all_keys():
        if any(k.startswith(key + ".") for k in _all_keys()):
            raise ConfigError(f"config key '{key}' is a section, not a value")
        raise _unknown(key)
    cls: Any = Config
    for part in key.split("."):
        cls = _field_type(cls, next(f for f in dataclasses.fields(cls) if f.name == part))
    return _is_optional(cls)[1]


def _unknown(key: str) -> ConfigError:
    if key in RENAMED:
        return ConfigError(f"config key '{key}' is now '{RENAMED[key]}'")
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.6)
    if not close:  # a right leaf in the wrong section ('epochs' for 'train.epochs')
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _build(cls: type, values: dict, prefix: str, from_text: bool) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown(key)
        tp = _field_type(cls, fields[name])
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + ".", from_text)
        else:
            kwargs[name] = _coerce(value, tp, key, from_text)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - validation raises ConfigError
        raise ConfigError(f"config section '{prefix.rstrip('.')}': {e}") from None


def _merge(base: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value (e.g. train.epochs=3)")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in _all_keys():
            if any(k.startswith(key + ".") for k in _all_keys()):
                raise ConfigError(f"config key '{key}' is a section; override one of its keys, e.g. '{key}.<name>=...'")
            raise _unknown(key)
        node = base
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{p}': must be a mapping")
        node[parts[-1]] = _TextValue(text)
    return base


class _TextValue(str):
    """A command-line value: parsed to the field's type instead of type-checked."""


def _apply_text(cls: type, values: dict, prefix: str = "") -> dict:
    """Parse the command-line strings in ``values`` to their fields' types (YAML values pass through)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for name, value in values.items():
        if name not in fields:
            raise _unknown(prefix + name)
        tp = _field_type(cls, fields[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[name] = _apply_text(tp, value, f"{prefix}{name}.")
        elif isinstance(value, _TextValue):
            out[name] = _coerce(str(value), tp, prefix + name, from_text=True)
        else:
            out[name] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would silently keep the last one)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Checked here, before '<<' merges are spliced into node.value (a key overriding a merged one is no
        # duplicate), and once per node: a merge source is flattened again by every mapping that merges it.
        if node not in self._checked:
            self._checked.add(node)
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                with contextlib.suppress(TypeError):  # an unhashable key: SafeConstructor reports it
                    if key in lines:
                        where = f"lines {lines[key]} and {line}" if lines[key] != line else f"twice on line {line}"
                        raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r} ({where})")
                    lines[key] = line
        super().flatten_mapping(node)


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; strict throughout."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.load(path.read_bytes(), Loader=_StrictLoader)  # bytes: PyYAML decodes (and checks) them
        except yaml.reader.ReaderError as e:  # not UTF-8/16, or control characters: binary, e.g. a gzip file
            what = (f"control character U+{e.character:04X} at offset {e.position}" if e.encoding == "unicode"
                    else f"byte 0x{e.character:02x} at offset {e.position} is not {e.encoding}")
            raise ConfigError(f"config file {path} is not a text YAML file ({what})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {first_line(e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded
    values = _merge(values, list(overrides or []))
    values = _apply_text(Config, values)
    return _build(Config, values, "", from_text=False)


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a checkpoint); strict.

    Configs saved before the model registry (``model.width``, section ``bench``) are read as what they
    meant then: a ``kwsnet`` and the ``latency`` section.
    """
    return _build(Config, upgrade_saved(values), "", from_text=False)


def upgrade_saved(values: dict) -> dict:
    """A saved config dict in the current layout (a copy; the input is left as it is)."""
    values = dict(values)
    model = values.get("model")
    if isinstance(model, dict) and "name" not in model and set(model) <= {"width", "dropout"}:
        values["model"] = {"name": "kwsnet", "kwsnet": dict(model)}
    bench = values.get("bench")
    if isinstance(bench, dict) and "latency" not in values:
        values.pop("bench")
        values["latency"] = {("enabled" if k == "latency" else k): v for k, v in bench.items()}
    if isinstance(values.get("data"), dict):
        values["data"] = _upgrade_data(values["data"])
    return values


def _upgrade_data(data: dict) -> dict:
    """``kws12_unknown_ratio`` / ``kws12_silence_ratio`` became the task-independent ``unknown_ratio`` /
    ``silence_ratio``. Their old "keep all" (``<= 0``) is now 0; an old silence share of 0 (an empty
    _silence_ class, which is an error now) reads as the default: the label was in the checkpoint either way."""
    data = dict(data)
    fixes = {"kws12_unknown_ratio": lambda r: max(0.0, r), "kws12_silence_ratio": lambda r: r if r > 0 else 1.0}
    for old, fix in fixes.items():
        if old in data:
            value = data.pop(old)
            # Anything but a number goes on as it is, for _build to name the key.
            data[old.removeprefix("kws12_")] = fix(value) if isinstance(value, (int, float)) else value
    return data


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """The config reference: every key with its default and one-line description."""
    return "\n".join(_describe(Config, ""))


def _describe(cls: type, prefix: str) -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        tp, key = _field_type(cls, f), prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n{key}: {f.metadata['help']}")
            lines += _describe(tp, key + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{'  ' if prefix else ''}{key} = {default!r}\n      {f.metadata['help']}")
    return lines
