"""The training loop: builds the parts from the config, trains, validates, checkpoints, reports.

Data path per step: int16 batch (packed arrays, sharded sampler) -> device -> FrontEnd (augment, log-mel,
masking) -> the registry's network -> loss. Rank-0 duties sit behind the tracker and checkpointer objects.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sctrain.artifacts.best import load_best, save_best
from sctrain.artifacts.labels import SILENCE, UNKNOWN
from sctrain.audio import cpu_kernels
from sctrain.audio.assets import AugmentAssets
from sctrain.audio.augment import mixup
from sctrain.audio.constants import INT16_SCALE
from sctrain.audio.fillers import FillerSynthesis
from sctrain.audio.frontend import FrontEnd
from sctrain.config import Config, ConfigError, dump_config
from sctrain.data.dataset import PackedDataset
from sctrain.data.pack import load_dataset
from sctrain.data.sampler import BalancedDistributedSampler
from sctrain.data.sources import extra_groups
from sctrain.inference.latency import latency_report
from sctrain.inference.loading import load_model
from sctrain.models.registry import count_parameters, create_model
from sctrain.models.syncbn import convert_sync_batchnorm
from sctrain.tracking.tracker import collect_examples, make_tracker
from sctrain.training import rundir
from sctrain.training.averaging import WeightAverage
from sctrain.training.checkpoint import files as checkpoint
from sctrain.training.checkpoint.policy import Checkpointer, Progress
from sctrain.training.distributed import (
    OtherRankFailed,
    any_rank_failed,
    dump_weight_digest,
    global_sum,
    make_accelerator,
    once_per_node,
    shutdown,
    sync_buffers,
)
from sctrain.training.evaluate import EvalResult, evaluate
from sctrain.training.kws import stream_stage
from sctrain.training.placement import Placement, choose_placement
from sctrain.training.qat import float_copy, is_prepared, prepare_qat
from sctrain.training.selection import DetectionSelector
from sctrain.training.stopping import EXIT_PREEMPTED, GracefulStop
from sctrain.utils import atomic_write_text, json_text

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Raised after a signal-triggered save; the process exits with ``code`` (:data:`EXIT_PREEMPTED`, or
    :data:`EXIT_INTERRUPTED` after Ctrl-C). ``state``: the folder saved, ``step``: the last step in it."""

    def __init__(self, code: int, state: Optional[Path] = None, step: int = 0) -> None:
        super().__init__(code)
        self.state, self.step = state, step


class TrainingDiverged(RuntimeError):
    """The loss or the weights went non-finite; one line naming the step. Nothing non-finite was saved."""


def lr_lambda(cfg: Config, steps_per_epoch: int):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` (or constant), as a function of the step."""
    warmup = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    total = max(1, cfg.train.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.train.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.train.min_lr_ratio + (1 - cfg.train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(cfg: Config, parameters) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.train.lr, momentum=cfg.train.momentum,
                               weight_decay=cfg.train.weight_decay)
    return torch.optim.AdamW(parameters, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def compile_for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """``torch.compile`` with static shapes: every training batch has the same size (full batches only),
    so one graph serves the run and ``reduce-overhead`` can replay it as a CUDA graph."""
    mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
    return torch.compile(model, mode=mode, dynamic=False)


def class_weights(data: PackedDataset, device: torch.device) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present classes) for the class-weighted loss."""
    counts = data.split("train").class_counts(len(data.labels)).astype(np.float64)
    weights = np.divide(counts.sum() / max(1, (counts > 0).sum()), counts, out=np.zeros_like(counts),
                        where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


class Trainer:
    """One training run: the parts, built once, and the methods that use them.

    A context manager: leaving the block closes the parts (progress bar, signal handlers, loader workers,
    tracker) and releases the run folder's lock; a constructor that fails after taking the lock releases it
    before raising, so ``with Trainer(cfg) as trainer:`` is the whole lifecycle.
    """

    def __init__(self, cfg: Config) -> None:
        try:
            self._build(cfg)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            rundir.release()

    def _build(self, cfg: Config) -> None:
        self.cfg = cfg
        self.accelerator = acc = make_accelerator(cfg)
        self.device = acc.device
        self.world, self.rank = acc.num_processes, acc.process_index
        self.is_main = acc.is_main_process
        self.out = Path(cfg.output_dir)
        new_folder = not self.out.exists()
        self._claim_output_dir()
        try:
            self._check_resume_path()
            self.data: PackedDataset = once_per_node(
                acc, lambda: load_dataset(cfg.data, progress=acc.is_local_main_process))
        except BaseException:
            # A run that never got past its data leaves no folder behind for the user to puzzle over.
            if self.is_main and new_folder:
                rundir.release()
                (self.out / rundir.LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.out.rmdir()
            raise
        self._write_config()
        self.labels = self.data.labels
        train_split = self.data.split("train")
        if len(train_split) == 0:
            raise ValueError(f"the training split of {cfg.data.root} is empty")
        log.info("data: %s | train %d, validation %d, test %d clips | %d labels", self.data.cache_dir,
                 len(train_split), len(self.data.split("validation")), len(self.data.split("test")), len(self.labels))

        # Same initial weights on every rank (DDP also broadcasts them), then per-rank augmentation streams.
        torch.manual_seed(cfg.train.seed)
        self.model = create_model(cfg.model, cfg.features, len(self.labels))
        if cfg.train.init_from:
            self._init_weights(cfg.train.init_from)
        if cfg.train.qat:
            prepare_qat(self.model)  # fake quantization; best_sc.pt gets the float copy (best_weights)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # 4-D weights; the rest is unchanged
            if self.is_main and not any(p.dim() == 4 for p in self.model.parameters()):
                log.warning("train.channels_last=true changes nothing for model.name=%s: it has no 4-D "
                            "(convolution) weights", cfg.model.name)
        if cfg.train.sync_bn and self.world > 1:
            self.model = convert_sync_batchnorm(self.model, self.device)  # CPU (gloo) too, unlike torch's
        assets = AugmentAssets.for_config(cfg.augment, noise=self.data.background)
        self.frontend = FrontEnd(cfg.features, cfg.augment, assets).to(self.device)
        self.fillers = self._fillers(cfg)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        # The scheduler is stepped by us, once per optimizer step: Accelerate's wrapper would step it
        # num_processes times, assuming a loader it sharded itself.
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.raw_model = acc.unwrap_model(self.model)
        self.step_model = compile_for_training(self.model, cfg) if cfg.train.compile else self.model
        self.ema = WeightAverage(self.raw_model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        torch.manual_seed(cfg.train.seed * 1000 + 1 + self.rank)

        groups = extra_groups(train_split.files) if cfg.data.extra_share is not None else None
        self.sampler = BalancedDistributedSampler(train_split.labels, len(self.labels), self.world, self.rank,
                                                  seed=cfg.train.seed, balanced=cfg.train.balance == "sampler",
                                                  groups=groups, group_share=cfg.data.extra_share)
        self.drop_last = self.sampler.shard_size >= cfg.train.batch_size
        self.steps_per_epoch = (self.sampler.shard_size // cfg.train.batch_size if self.drop_last else 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.steps_per_epoch))
        self.loss_weights = class_weights(self.data, self.device) if cfg.train.balance == "loss" else None
        self.stop = GracefulStop()  # installed at the end of __init__, once the run can save
        kind, why = choose_placement(cfg.data, self.device, self.data)
        if self.is_main:
            log.info("batches: %s placement (%s)", kind, why)
        self.placement = Placement(kind, self.data, self.device)
        self.batches = self.placement.train_batches(cfg.train.batch_size, self.sampler, self.drop_last,
                                                    cfg.data.num_workers, cfg.data.pin_memory, self.stop, self.world)

        # Every rank scores the same streams the same way: all agree on the best without a broadcast.
        self.selector = DetectionSelector(cfg, self.data, self.labels) if cfg.kws.select_by == "detection" else None
        self.checkpointer = Checkpointer(self.out, cfg.train.checkpoint_every, cfg.train.keep_last,
                                         self.is_main, self.world, self.rank,
                                         global_batch=cfg.train.batch_size * self.world)
        self.progress = Progress()
        resume_path, resume_state = self._find_resume_state()
        # Continue this run's tracker run; a state from another run (train.resume=PATH) starts a new one.
        own_state = resume_state is not None and resume_path.parent == checkpoint.state_dir(self.out)
        tracker_id = resume_state.get("tracker_run_id") if own_state else None
        self.tracker = make_tracker(self.is_main, self.out, cfg.tracking, cfg.to_dict(), resume_id=tracker_id)
        if resume_state is not None:
            self.progress = self.checkpointer.restore(resume_state, self._state_parts(), resume_path,
                                                      self.steps_per_epoch)
            if not own_state:  # its best model is in the other folder: this one gets its own best_sc.pt
                self.progress.best_val_acc, self.progress.best_epoch = -1.0, -1
            log.info("resumed in epoch %d, after step %d (best val acc %.4f)", self.progress.epoch + 1,
                     self.progress.global_step, self.progress.best_val_acc)
            if own_state:
                self.tracker.rewind(self.progress.global_step)
        self.stop.install()

    # ------------------------------------------------------------------------------------ state
    def _claim_output_dir(self) -> None:
        """Rank 0 locks output_dir before writing anything into it; every rank learns whether that worked."""
        error = None
        if self.is_main:
            try:
                rundir.claim(self.out)
            except rundir.RunDirError as e:
                error = e
        if any_rank_failed(self.accelerator, error is not None):
            raise error or OtherRankFailed("stopped because rank 0 cannot use output_dir")

    def _check_resume_path(self) -> None:
        """``train.resume=PATH`` that does not exist, said before the data is packed (it is only used while
        output_dir has no states of its own, so a requeued job whose PATH is gone goes on from those)."""
        mode = self.cfg.train.resume
        if mode not in ("auto", "never") and not Path(mode).exists() and not checkpoint.list_states(self.out):
            raise ConfigError(f"config key 'train.resume': no training state at {mode} (a state/step_* folder "
                              f"or its state.pt), and {self.out} has none of its own")

    def _write_config(self) -> None:
        """config.yaml, once the data is known to load: a run stopped by a data error leaves no folder."""
        error = None
        if self.is_main:
            try:
                dump_config(self.cfg, self.out / "config.yaml")
            except OSError as e:
                error = e
        if any_rank_failed(self.accelerator, error is not None):
            if error is not None:  # e.g. a full disk: rundir.claim checked that it is writable
                raise rundir.RunDirError(f"cannot write {self.out / 'config.yaml'}: {error.strerror or error}")
            raise OtherRankFailed("stopped because rank 0 cannot write config.yaml")

    def _state_parts(self) -> dict:
        parts = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.accelerator.scaler is not None:
            parts["scaler"] = self.accelerator.scaler
        if self.ema is not None:
            parts["ema"] = self.ema
        return parts

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and best_sc.pt holds: the weight average when train.ema_decay is on."""
        return self.ema.model if self.ema is not None else self.raw_model

    @property
    def best_weights(self) -> torch.nn.Module:
        """What best_sc.pt holds: :attr:`eval_model`, without its fake quantization under train.qat."""
        return float_copy(self.eval_model) if is_prepared(self.eval_model) else self.eval_model

    def _find_resume_state(self) -> tuple[Optional[Path], Optional[dict]]:
        mode = self.cfg.train.resume
        if mode == "never":
            if self.is_main:
                checkpoint.set_aside_states(self.out)
            return None, None
        # output_dir's own newest state first, also with resume=PATH: a requeued job repeats its command line
        # and must continue where it stopped, not go back to PATH.
        path, state = checkpoint.load_latest_state(self.out)
        if state is None and mode != "auto":
            path, state = Path(mode), checkpoint.load_state(mode)
        if state is not None:
            log.info("resuming from %s (step %d)", path, state["progress"]["global_step"])
        return path, state

    def check_finite(self, loss: Optional[float] = None) -> None:
        """Stop before a non-finite loss (read from the device anyway) or weights are logged or saved.

        The weights' check costs one host sync; it runs only where a save syncs anyway."""
        step = self.progress.global_step
        if loss is not None:
            bad = any_rank_failed(self.accelerator, not math.isfinite(loss))
            what = f"the training loss is {loss} at step {step}"
        else:
            finite = torch.stack([torch.isfinite(t).all() for t in self.raw_model.state_dict().values()
                                  if t.is_floating_point()]).all()
            bad = any_rank_failed(self.accelerator, not bool(finite))
            what = f"the weights are no longer finite after step {step}"
        if bad:
            states = checkpoint.list_states(self.out) if self.is_main else []
            kept = f"the last good state is {states[0]}" if states else "no training state was saved before it"
            raise TrainingDiverged(f"training diverged: {what} (train.lr={self.cfg.train.lr:g}); {kept}; lower "
                                   "train.lr and start over (train.resume=never), or set train.grad_clip")

    def save_state(self) -> None:
        self.check_finite()
        self.checkpointer.save(self.progress, self._state_parts(),
                               extra={"sampler": self.sampler.state_dict(), "tracker_run_id": self.tracker.run_id,
                                      "config": self.cfg.to_dict()})

    def _fillers(self, cfg) -> Optional[FillerSynthesis]:
        """The filler synthesis the augment config asks for (None when off), warning when the labels lack
        the class it would make."""
        if not FillerSynthesis.enabled(cfg.augment):
            return None
        fillers = FillerSynthesis(cfg.augment, self.labels).to(self.device)
        if self.is_main:
            for key, label, index in (("reversed_unknown_p", UNKNOWN, fillers.unknown),
                                      ("spliced_unknown_p", UNKNOWN, fillers.unknown),
                                      ("generated_silence_p", SILENCE, fillers.silence)):
                if getattr(cfg.augment, key) > 0 and index < 0:
                    log.warning("augment.%s=%g changes nothing: the labels have no %s class (%s)", key,
                                getattr(cfg.augment, key), label,
                                "give data.negatives or non-keyword words" if label == UNKNOWN else
                                "set data.silence=true")
        return fillers

    # ------------------------------------------------------------------------------------ train
    def train_step(self, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        audio = audio.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.fillers is not None:
            audio, target = self.fillers(audio, target)
        with self.accelerator.autocast():
            features = self.frontend(audio)
            if cfg.augment.mixup_p > 0:
                features, target = mixup(features, target, len(self.labels), cfg.augment.mixup_alpha,
                                         p=cfg.augment.mixup_p)
            logits = self.step_model(features)
        if self.loss_weights is not None and target.dim() == 1:
            # Class-weighted mean over the *global* batch: DDP averages per-rank losses, and per-rank weighted
            # means would weight each rank's clips by its own weight total instead.
            per_clip = F.cross_entropy(logits.float(), target, weight=self.loss_weights,
                                       label_smoothing=cfg.train.label_smoothing, reduction="none")
            loss = per_clip.sum() * self.world / global_sum(self.accelerator, self.loss_weights[target].sum())
        else:
            loss = F.cross_entropy(logits.float(), target, weight=self.loss_weights,
                                   label_smoothing=cfg.train.label_smoothing)
        self.accelerator.backward(loss)
        if cfg.train.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def train_epoch(self, epoch: int) -> float:
        """One epoch (or its remainder after a resume); returns global clips/s."""
        cfg, p = self.cfg, self.progress
        self.sampler.set_epoch(epoch, start=p.step_in_epoch * cfg.train.batch_size)
        self.model.train()
        self.frontend.train()
        bar = tqdm(total=self.steps_per_epoch, initial=p.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not self.is_main, dynamic_ncols=True, leave=False)
        self.bar = bar
        loss_sum, loss_steps, clips, t0 = torch.zeros((), device=self.device), 0, 0, time.perf_counter()
        epoch_clips, epoch_t0 = 0, t0
        batches = self.batches.epoch()
        for audio, target in batches:
            loss_sum += self.train_step(audio, target)
            loss_steps += 1
            clips += len(target) * self.world
            epoch_clips += len(target) * self.world
            p.step_in_epoch += 1
            p.global_step += 1
            bar.update(1)
            if p.global_step % cfg.train.log_every == 0 or p.step_in_epoch == self.steps_per_epoch:
                loss = (loss_sum / loss_steps).item()  # host waits for the device: once per log interval
                self.check_finite(loss)
                rate = clips / max(1e-9, time.perf_counter() - t0)
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.0f}")
                self.tracker.log_train(p.global_step, {"epoch": epoch, "loss": loss, "lr": lr, "clips_per_s": rate,
                                                       **self._memory()})
                loss_sum.zero_()
                loss_steps, clips, t0 = 0, 0, time.perf_counter()
            if self.stop.should_stop(self.accelerator):
                self.stop_and_save(bar, batches)
            if self.checkpointer.due(p):
                self.save_state()
            if self.step_budget_spent():
                break
        if batches.worker_lost:
            self.stop_and_save(bar, batches)
        bar.close()
        return epoch_clips / max(1e-9, time.perf_counter() - epoch_t0)

    def stop_and_save(self, bar, batches) -> None:
        """After a stop signal: save this step's state and exit (:class:`Preempted`)."""
        bar.close()
        batches.close()  # workers first: one dying in the save would raise out of torch's SIGCHLD handler
        self.save_state()
        code = self.stop.exit_code
        log.info("stopped after step %d on a signal: training state saved, exiting with code %d%s",
                 self.progress.global_step, code, " so the job can be requeued" if code == EXIT_PREEMPTED else "")
        raise Preempted(code, checkpoint.list_states(self.out)[0] if self.is_main else None,
                        self.progress.global_step)

    def step_budget_spent(self) -> bool:
        """``train.max_steps`` optimizer steps are done (never, when it is 0)."""
        return bool(self.cfg.train.max_steps) and self.progress.global_step >= self.cfg.train.max_steps

    def target_reached(self) -> bool:
        """``train.stop_at_val_acc`` is set and the best validation accuracy so far reaches it (also after a
        resume: the best accuracy is part of the saved progress)."""
        target = self.cfg.train.stop_at_val_acc
        return target > 0 and self.progress.best_val_acc >= target

    def _memory(self) -> dict:
        if self.device.type != "cuda":
            return {}
        return {"gpu_mem_gb": torch.cuda.max_memory_allocated(self.device) / 2 ** 30}

    def evaluate(self, split: str, model: Optional[torch.nn.Module] = None) -> EvalResult:
        batches = self.placement.eval_batches(split, self.cfg.train.eval_batch_size, self.world, self.rank)
        return evaluate(model or self.raw_model, self.frontend, batches, self.labels, self.device,
                        autocast=self.accelerator.autocast)

    def fit(self, on_epoch: Optional[Callable[[int, dict], bool]] = None) -> dict:
        """Train to the end (or a stop); ``on_epoch(epoch, metrics)`` is called after each epoch's validation and
        state save, on every rank, and training stops there when it returns true (a tuner's pruning: it must
        answer alike on every rank)."""
        cfg, p = self.cfg, self.progress
        rates = []
        if self.is_main:
            log.info("training %s (%s): %d params, %d processes on %s, precision %s, %d steps/epoch, batch %d/rank",
                     cfg.model.name, type(self.raw_model).__name__, count_parameters(self.raw_model), self.world,
                     self.device,
                     self.accelerator.mixed_precision, self.steps_per_epoch, cfg.train.batch_size)
            if self.device.type == "cpu":
                log.info("front end on the CPU: %s", cpu_kernels.describe())
            if self.ema is not None:
                log.info("validation and best_sc.pt use the exponential moving average of the weights (decay %g)",
                         cfg.train.ema_decay)
        fit_t0 = time.perf_counter()
        stopped_by_callback = False
        while p.epoch < cfg.train.epochs and not self.step_budget_spent() and not self.target_reached():
            epoch = p.epoch
            if p.step_in_epoch < self.steps_per_epoch:
                rates.append(self.train_epoch(epoch))
            sync_buffers(self.accelerator, self.raw_model)  # all ranks evaluate (rank 0 saves) rank 0's BN stats
            if self.ema is not None:
                self.ema.copy_buffers(self.raw_model)
            val = self.evaluate("validation", self.eval_model)
            self.check_finite()  # before best_sc.pt: NaN logits still score some accuracy
            metrics = {"val_acc": val.accuracy, "val_loss": val.loss, "epoch": epoch, "step": p.global_step,
                       **self._weights_info()}
            selection = None
            if self.selector is not None and self.selector.active(epoch):
                selection = self.selector.score(self.eval_model, self.frontend.logmel, self.device)
                metrics.update(val_keywords_found=selection.keywords_found, selection_hours=selection.hours)
                self.tracker.log_selection(p.global_step, epoch, {
                    "keywords_found": selection.keywords_found, "fa_per_hour_bound": selection.fa_per_hour_bound,
                    "hours": selection.hours})
                # The first detection-scored checkpoint beats every accuracy-chosen one (best_keywords_found -1).
                improved = (selection.keywords_found, val.accuracy) > (p.best_keywords_found, p.best_val_acc)
            else:
                improved = val.accuracy > p.best_val_acc
            if improved:
                p.best_val_acc, p.best_epoch = val.accuracy, epoch
                if selection is not None:
                    p.best_keywords_found = selection.keywords_found
                if self.is_main:
                    save_best(self.out / "best_sc.pt", self.best_weights, self.labels, cfg.to_dict(), metrics)
            examples = collect_examples(self.eval_model, self.frontend, self.data.split("validation"), self.labels,
                                        self.tracker.wants_examples, self.device)  # None unless W&B wants them
            self.tracker.log_eval(p.global_step, epoch, "validation", val, examples)
            found = (f", keywords found {100 * selection.keywords_found:.1f} % at <= {selection.fa_per_hour_bound:.1f} "
                     f"FA/h (95 % bound, {selection.hours:.2f} h of validation streams)" if selection else "")
            log.info("epoch %d/%d: val acc %.4f loss %.4f%s%s", epoch + 1, cfg.train.epochs, val.accuracy, val.loss,
                     found, " (best, saved best_sc.pt)" if improved else "")
            # A train.max_steps stop inside the epoch leaves the state there: a longer run resumed from it
            # trains the rest of the epoch instead of skipping it.
            if p.step_in_epoch >= self.steps_per_epoch:
                p.epoch, p.step_in_epoch = epoch + 1, 0
            self.save_state()
            if on_epoch is not None and on_epoch(epoch, metrics):
                stopped_by_callback = True
                break
        if p.best_epoch < 0:  # nothing left to train from a state another folder's run saved (train.resume=PATH)
            val = self.evaluate("validation", self.eval_model)
            p.best_val_acc, p.best_epoch = val.accuracy, max(0, p.epoch - 1)
            if self.is_main:
                save_best(self.out / "best_sc.pt", self.best_weights, self.labels, cfg.to_dict(),
                          {"val_acc": val.accuracy, "val_loss": val.loss, "epoch": p.best_epoch,
                           "step": p.global_step, **self._weights_info()})
        self.accelerator.wait_for_everyone()
        dump_weight_digest(self.raw_model, self.rank, self.world)  # debug hook, only with $SCTRAIN_DUMP_WEIGHTS_DIR
        return {"train_clips_per_s": float(np.mean(rates)) if rates else None,
                "fit_seconds": time.perf_counter() - fit_t0, "placement": self.placement.kind,
                "stopped_at_val_acc": self.target_reached(), "stopped_by_callback": stopped_by_callback}

    def _weights_info(self) -> dict:
        """Which weights an evaluation scored, for the checkpoint's metrics."""
        return {"weights": "ema", "ema_decay": self.cfg.train.ema_decay} if self.ema is not None else {}

    # ------------------------------------------------------------------------------------ finish
    def finish(self, train_info: dict) -> dict:
        """Best checkpoint -> test evaluation (all ranks), single-clip prediction, latency and the keyword
        streams (rank 0: thresholds calibrated into best_sc.pt, a test-stream report; config section kws)."""
        cfg = self.cfg
        best_path = self.out / "best_sc.pt"
        best = load_model(best_path)  # the loader inference uses: what is evaluated is what users get
        model = best.net.to(self.device)
        test = self.evaluate("test", model)
        val = self.evaluate("validation", model)
        self.tracker.log_eval(self.progress.global_step, best.metrics["epoch"], "test", test)
        results = {"val_acc": val.accuracy, "test_acc": test.accuracy, "test_loss": test.loss,
                   "test_count": test.count, "best_epoch": best.metrics["epoch"],
                   "params": count_parameters(model), "model": cfg.model.name, "labels": self.labels,
                   "per_class_test_acc": test.per_class_accuracy, "world_size": self.world,
                   "precision": self.accelerator.mixed_precision, "device": str(self.device),
                   "distributed": str(self.accelerator.distributed_type),
                   "steps": self.progress.global_step, **train_info}
        if self.is_main:
            model.cpu()
            classifier = best.classifier
            results["example_prediction"] = self.predict_one(classifier)
            if cfg.latency.enabled:
                lat = latency_report(classifier, cfg.latency.large_batch, cfg.latency.iters)
                results["latency"] = lat
                results["latency_ms_p50"] = lat["cpu"]["batch1"]["p50_ms"]
                results["latency_ms_p95"] = lat["cpu"]["batch1"]["p95_ms"]
            results.update(stream_stage(cfg, self.data, best, best_path, self.out, progress=self.is_main))
            atomic_write_text(self.out / "results.json", json_text(results, indent=2))
            self.tracker.log_results(results, best_path)
        self.tracker.finish()
        self.accelerator.wait_for_everyone()
        return results

    def predict_one(self, classifier: torch.nn.Module) -> dict:
        split = self.data.split("test")
        audio = torch.from_numpy(np.asarray(split.audio[0], dtype=np.float32) / INT16_SCALE)
        with torch.inference_mode():
            probs = classifier.eval()(audio[None]).softmax(-1)[0]
        top = int(probs.argmax())
        prediction = {"file": split.files[0], "true": self.labels[int(split.labels[0])],
                      "predicted": self.labels[top], "prob": float(probs[top])}
        log.info("single-clip prediction: %s -> %s (p=%.3f, true %s)", prediction["file"], prediction["predicted"],
                 prediction["prob"], prediction["true"])
        return prediction

    def _init_weights(self, path: str) -> None:
        """Start from the weights of the ``best_sc.pt`` at ``path`` (train.init_from): same labels, same model."""
        best = load_best(path)  # CheckpointError (one line) for a missing or foreign file
        if list(best["labels"]) != self.labels:
            raise ConfigError(f"config key 'train.init_from': {path} has labels {best['labels']}, this run "
                              f"{self.labels}")
        try:
            self.model.load_state_dict(best["model"])
        except RuntimeError as e:
            raise ConfigError(f"config key 'train.init_from': the weights of {path} do not fit this run's "
                              f"{self.cfg.model.name} ({str(e).strip().splitlines()[-1].strip()})") from None
        if self.is_main:
            log.info("weights from %s (epoch %s)", path, best.get("metrics", {}).get("epoch"))

    def close(self) -> None:
        """Close what was built (all of it after a run; the parts made so far after a failed constructor)."""
        if getattr(self, "bar", None) is not None:
            self.bar.close()  # after an error too: its message then starts a line of its own
        if hasattr(self, "stop"):
            self.stop.uninstall()
        if hasattr(self, "batches"):
            self.batches.close()  # persistent loader workers end with the run
        if hasattr(self, "tracker"):
            self.tracker.finish()  # no-op after finish(); after preemption or an error, records the exit code


def train(cfg: Config) -> dict:
    """Train, then test the best checkpoint; returns the results dict (the same on every rank)."""
    try:
        with Trainer(cfg) as trainer:
            return trainer.finish(trainer.fit())
    finally:
        shutdown()  # every rank, on success and on error: no teardown crash after a peer exits
