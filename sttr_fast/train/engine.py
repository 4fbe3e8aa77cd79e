"""The training program: epochs of SGD with accumulation, AMP and DDP; evaluation; checkpoints."""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CheckpointError, save_atomic
from ..data.modalities import CHANNELS
from ..model import STTR
from . import distributed, work_dir as work_dirs
from .checkpoints import TRAINING_FORMAT, check_fits, read_checkpoint
from .config import Config, ConfigError, load_config, save_config
from .data import StepBatches, build_dataset
from .metrics import summarise
from .records import EpochRecords, make_logger


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``epochs_saved`` completed epochs are in ``work_dir/last.pt``."""

    def __init__(self, work_dir: Path, epochs_saved: int, epochs: int):
        super().__init__(f"interrupted with {epochs_saved} of {epochs} epochs in {work_dir}")
        self.work_dir, self.epochs_saved, self.epochs = work_dir, epochs_saved, epochs


def build_model(config: Config) -> STTR:
    m = config.model
    return STTR(num_classes=m.num_classes, stream=m.stream, in_channels=CHANNELS[config.data.modality],
                base_channels=m.base_channels, num_person=config.data.num_person,
                drop_attention=m.drop_attention, dropout=m.dropout, backend=m.backend,
                num_heads=m.num_heads, graph=m.graph,
                tsa_stride_skips_frames=m.tsa_stride_skips_frames)


def place_model(model: STTR, device: torch.device, amp: str = "none") -> STTR:
    """``model`` on ``device`` as training runs it. With ``amp="bf16"`` on the CPU its weights,
    and so its activations (STTR.activation_layout), are channels-last, where oneDNN's bf16
    convolutions skip the reorders to and from NCHW that took about a sixth of a bf16 S-TR step
    (bench/bench_training.py). Float32 keeps NCHW: channels-last gained nothing for S-TR at
    ST-TR's shapes and lost ~10 % on the demo's narrow model."""
    model = model.to(device)
    if device.type == "cpu" and amp == "bf16":
        model = model.to(memory_format=torch.channels_last)
    return model


def lr_factor(epoch: int, config: Config) -> float:
    """Linear warm-up over ``warmup_epochs``, then x gamma at every milestone passed."""
    optim = config.optim
    warmup = min(1.0, (epoch + 1) / optim.warmup_epochs) if optim.warmup_epochs else 1.0
    return warmup * optim.gamma ** sum(epoch >= milestone for milestone in optim.milestones)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # DataLoader gives each worker torch seed base_seed + id; derive numpy's and python's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_states() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [name, keys.tolist(), position, has_gauss, cached]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _autocast(config: Config, device: torch.device):
    if config.train.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, dataset, config: Config, context: distributed.Context, progress: bool = False):
    """Logits of every sample (each process takes every world_size-th), gathered in order."""
    model.eval()
    indices = list(range(context.rank, len(dataset), context.world_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                         batch_size=config.data.eval_batch_size, shuffle=False,
                                         num_workers=config.data.num_workers,
                                         worker_init_fn=_seed_worker)
    outputs, labels = [], []
    from tqdm import tqdm

    for x, y in tqdm(loader, desc="evaluate", leave=False, disable=not (progress and context.is_main)):
        with _autocast(config, context.device):
            outputs.append(model(x.to(context.device, non_blocking=True)).float().cpu())
        labels.append(y)
    local = (indices, torch.cat(outputs) if outputs else torch.empty(0, config.model.num_classes),
             torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    order, logits, targets = zip(*distributed.gather(context, local))
    order = torch.tensor([i for part in order for i in part])
    permutation = torch.argsort(order)
    logits, targets = torch.cat(logits)[permutation], torch.cat(targets)[permutation]
    result = summarise(logits, targets)
    result["loss"] = F.cross_entropy(logits, targets).item() if len(targets) else math.nan
    result["logits"], result["labels"] = logits, targets
    return result


class Trainer:
    """One training run in ``work_dir``; ``fit()`` runs the remaining epochs."""

    def __init__(self, config: Config, work_dir, resume: bool = False, progress: bool = True,
                 overwrite: bool = False):
        self.config, self.work_dir, self.progress = config, Path(work_dir), progress
        self.context = distributed.start(config.train.device)
        # bf16 autocast runs on the CPU too (no loss scaling needed); fp16 needs CUDA's kernels.
        if config.train.amp == "fp16" and self.context.device.type != "cuda":
            raise ConfigError(f"train.amp='fp16' needs a CUDA device; this run is on "
                              f"{self.context.device} (train.amp=bf16 runs there)")
        seed_everything(config.train.seed + self.context.rank)
        # Data, model and optimizer first: a missing or bad file stops the run before the work
        # dir is created or touched.
        self.train_set = build_dataset(config, "train", training=True)
        self.val_set = build_dataset(config, "val")
        self.model = place_model(build_model(config), self.context.device, config.train.amp)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.optim.lr,
                                         momentum=config.optim.momentum,
                                         nesterov=config.optim.nesterov,
                                         weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(epoch, config))
        self.scaler = torch.amp.GradScaler(self.context.device.type,
                                           enabled=config.train.amp == "fp16")
        self.sampler = StepBatches(len(self.train_set), config.data.batch_size,
                                   self.context.world_size, self.context.rank,
                                   config.optim.accumulate, config.train.seed)
        if self.sampler.steps == 0:
            raise ConfigError(
                f"the train split has {len(self.train_set)} samples, fewer than one step of "
                f"data.batch_size x processes x optim.accumulate = "
                f"{config.data.batch_size * self.context.world_size * config.optim.accumulate}")

        self.lock, removed = None, []
        created = not self.work_dir.exists()
        try:
            if self.context.is_main:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                self.lock = work_dirs.WorkDirLock(self.work_dir)
                work_dirs.check(self.work_dir, resume, overwrite, locked=True)  # now it is ours
                if overwrite:
                    removed = work_dirs.remove_run(self.work_dir)
            distributed.barrier(self.context)
            self.log = make_logger(self.work_dir if self.context.is_main else None)
            if not self.context.is_main:
                self.log.disabled = True
            if removed:
                self.log.info(f"--overwrite: removed the earlier run's {', '.join(removed)} "
                              f"from {self.work_dir}")
            self.epoch, self.best_top1, self.best_epoch, rows = 0, -math.inf, 0, []
            if resume:
                rows = self._resume()
            self.saved_epoch = self.epoch
            self.records = EpochRecords(self.work_dir, rows) if self.context.is_main else None
            if self.context.is_main:
                save_config(config, self.work_dir / "config.yaml")
            self.network = (DistributedDataParallel(self.model, device_ids=[self.context.device]
                                                    if self.context.device.type == "cuda" else None)
                            if self.context.distributed else self.model)
        except BaseException:
            self._release()
            if (self.context.is_main and created and self.work_dir.is_dir()
                    and not any(self.work_dir.iterdir())):
                self.work_dir.rmdir()
            raise

    # --- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> dict:
        return {"format": TRAINING_FORMAT, "config": self.config.to_dict(), "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_states(), "best_top1": self.best_top1, "best_epoch": self.best_epoch,
                "records": self.records.rows if self.records else []}

    def _resume(self) -> list[dict]:
        path = self.work_dir / "last.pt"
        checkpoint = read_checkpoint(path, "--resume: checkpoint")
        state = checkpoint.content
        if state.get("format") != TRAINING_FORMAT:
            raise CheckpointError(f"--resume: {path} is not a sttr_fast training checkpoint")
        check_fits(checkpoint, self.config, "this config",
                   "; resume with the settings it was trained with, or pass --overwrite")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_top1, self.best_epoch = (state["epoch"], state["best_top1"],
                                                       state["best_epoch"])
        restore_rng_states(state["rng"])
        self.log.info(f"resuming from {path}: {self.epoch} of {self.config.train.epochs} epochs "
                      "done")
        return state["records"]

    # --- training ----------------------------------------------------------------------------

    def fit(self) -> dict:
        config, context = self.config, self.context
        self.log.info(f"training {config.model.stream} stream on {len(self.train_set)} samples, "
                      f"validating on {len(self.val_set)}; {context.world_size} process(es) on "
                      f"{context.device}; work dir {self.work_dir}")
        while self.epoch < config.train.epochs:
            row = self._train_epoch()
            if (self.epoch + 1) % config.train.eval_interval == 0 or self.epoch + 1 == config.train.epochs:
                # the bare model: DDP's forward would need the same number of calls on every
                # process, which uneven validation shards do not give
                distributed.share_buffers(context, self.model)
                result = evaluate(self.model, self.val_set, config, context, self.progress)
                row.update(val_loss=result["loss"], val_top1=result["top1"], val_top5=result["top5"])
            self.epoch += 1
            self.scheduler.step()
            improved = not math.isnan(row.get("val_top1", math.nan)) and row["val_top1"] > self.best_top1
            if improved:
                self.best_top1, self.best_epoch = row["val_top1"], self.epoch
            self.log.info("epoch {epoch}: lr {lr:.4g}, train loss {train_loss:.4f}, train top-1 "
                          "{train_top1:.2f}%".format(**row)
                          + (", val loss {val_loss:.4f}, top-1 {val_top1:.2f}%, top-5 {val_top5:.2f}%"
                             .format(**row) if "val_top1" in row else "")
                          + f", {row['samples_per_second']:.1f} samples/s")
            if context.is_main:
                self.records.add(row)
                checkpoint = self._checkpoint()
                # best.pt before last.pt: stopped between the two, a resume repeats this epoch
                # and writes best.pt again, so best.pt is never older than last.pt says
                if improved:
                    save_atomic(checkpoint, self.work_dir / "best.pt")
                save_atomic(checkpoint, self.work_dir / "last.pt")
                self.saved_epoch = self.epoch
            distributed.barrier(context)
        if self.records:
            self.records.close()
        self.log.info(f"done: best validation top-1 {self.best_top1:.2f}% at epoch {self.best_epoch}")
        return {"best_top1": self.best_top1, "best_epoch": self.best_epoch, "epochs": self.epoch}

    def _train_epoch(self) -> dict:
        config, context = self.config, self.context
        accumulate = config.optim.accumulate
        self.sampler.set_epoch(self.epoch)
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=self.sampler,
                                             num_workers=config.data.num_workers,
                                             worker_init_fn=_seed_worker,
                                             pin_memory=context.device.type == "cuda",
                                             persistent_workers=False)
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
        self.network.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = correct = seen = 0.0
        start = time.perf_counter()
        from tqdm import tqdm

        bar = tqdm(total=len(self.sampler) // accumulate, desc=f"epoch {self.epoch + 1}",
                   disable=not (self.progress and context.is_main), leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for micro, (x, y) in enumerate(loader):
            x, y = x.to(context.device, non_blocking=True), y.to(context.device, non_blocking=True)
            stepping = (micro + 1) % accumulate == 0
            sync = (self.network.no_sync() if context.distributed and not stepping
                    else contextlib.nullcontext())
            with sync:
                with _autocast(config, context.device):
                    logits = self.network(x)
                    loss = criterion(logits.float(), y)
                self.scaler.scale(loss / accumulate).backward()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += len(y)
            if not stepping:
                continue
            finite = distributed.sum_across(context, [float(math.isfinite(loss_sum))])[0]
            if finite < context.world_size:
                raise TrainingDiverged(
                    f"the training loss became {loss.item()} in epoch {self.epoch + 1}, step "
                    f"{micro // accumulate + 1}; stopped. The last good checkpoint is "
                    f"{self.work_dir / 'last.pt'} ({self.epoch} epochs); lower optim.lr or set "
                    "optim.clip_grad_norm")
            if config.optim.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                            samples_per_s=f"{seen * context.world_size / (time.perf_counter() - start):.1f}")
        bar.close()
        loss_sum, correct, seen = distributed.sum_across(context, [loss_sum, correct, seen])
        seconds = time.perf_counter() - start
        return {"epoch": self.epoch + 1, "lr": lr, "train_loss": loss_sum / seen,
                "train_top1": correct / seen * 100.0, "epoch_seconds": seconds,
                "samples_per_second": seen / seconds}

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        self._release()
        distributed.stop(self.context)


def train(config_path=None, work_dir=None, overrides: list[str] = (), resume: bool = False,
          progress: bool = True, overwrite: bool = False) -> dict:
    """Train into ``work_dir``. A work dir holding a run needs ``resume`` or ``overwrite``; Ctrl-C
    raises TrainingInterrupted with the last completed epoch's checkpoint intact."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the work dir and --overwrite replaces "
                          "it; pass one of them")
    config = load_config(config_path, overrides)
    if work_dir is None:
        name = Path(config_path).stem if config_path else "default"
        work_dir = Path("work_dirs") / name
    work_dirs.check(Path(work_dir), resume, overwrite)  # before minutes of loading data
    trainer = Trainer(config, work_dir, resume=resume, progress=progress, overwrite=overwrite)
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        raise TrainingInterrupted(trainer.work_dir, trainer.saved_epoch,
                                  config.train.epochs) from None
    finally:
        trainer.close()
