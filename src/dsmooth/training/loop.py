"""The epoch loop shared by classifier and denoiser training.

It owns what every run needs and nothing model-specific: deterministic batch order,
per-batch generators, learning-rate schedule, progress bar, per-epoch validation,
metrics files, the dsmooth checkpoint every epoch, and the resumable state every epoch,
every few minutes, on Ctrl-C / SIGTERM, and when a step or time budget ends. Resuming a
finished run writes its checkpoint again from the state and trains nothing.

Exact resume: batch b of epoch e always uses the permutation seeded by (seed, e) and a
generator seeded by (seed, e, b), and the learning rate is a pure function of the step,
so a resumed run performs the same computation as an uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dsmooth.errors import UserError
from dsmooth.training import state as st
from dsmooth.training.metrics import write_metrics

#: step_fn(images uint8 NHWC, labels, generator, global step)
#:   -> (loss to minimise, {stat: sum over the batch, "n": batch size})
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator, int], tuple[torch.Tensor, dict]]


@dataclass
class LoopOptions:
    out: Path
    epochs: int
    batch: int
    seed: int = 0
    save_every_minutes: float = 10.0
    max_steps: int | None = None  # stop (resumable) after this many steps in this call
    max_minutes: float | None = None  # stop (resumable) after this much wall time
    progress: bool = True
    desc: str = "train"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class Progress:
    """Where the run is; saved as JSON in the training state."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch inside the epoch
    step: int = 0  # optimizer steps done in total
    sums: dict = field(default_factory=dict)  # partial-epoch sums of the step stats
    seconds: float = 0.0  # training seconds spent in the current epoch
    history: list = field(default_factory=list)  # one metrics row per finished epoch

    def to_json(self) -> dict:
        return dict(self.__dict__)


def generator(*key: int) -> torch.Generator:
    """A torch generator seeded by a tuple of ints (independent streams per key)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed & ((1 << 63) - 1))


def randn(shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """N(0, 1) noise of `shape` on `device`, keyed by the batch's generator `g`.

    On the CPU it is drawn from `g` itself, exactly as before devices existed. On another
    device it is drawn there, from a generator of that device seeded with `g`'s seed: as
    reproducible (resume stays exact), but another stream than the CPU's, so a CUDA run
    does not see the same noise as a CPU run."""
    if device.type == "cpu":
        return torch.randn(tuple(shape), generator=g)
    on_device = torch.Generator(device=device).manual_seed(g.initial_seed())
    return torch.randn(tuple(shape), generator=on_device, device=device)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device` (itself when it is there already). A CPU batch bound for a GPU is
    pinned first and copied without blocking, so the host can prepare the next step."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _StopFlag:
    """Turns Ctrl-C / SIGTERM into a flag checked between steps (never mid-update)."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            self._old = {}
        return self

    def _handle(self, signum, _frame):
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def run_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    step_fn: StepFn,
    validate_fn: Callable[[], dict],
    export_fn: Callable[[Progress, float], None],
    lr_fn: Callable[[int, int], float],
    opts: LoopOptions,
    recipe: dict,
    resume: bool,
) -> str:
    """Train until `opts.epochs` are done (returns "done") or a budget/signal stops it
    after saving a resumable state ("stopped" / "interrupted")."""
    n = len(images)
    steps_per_epoch = n // opts.batch
    if steps_per_epoch < 1:
        raise UserError(f"the training set has {n} images, fewer than one batch of {opts.batch}.")
    prog = Progress()
    if resume and st.has_state(opts.out):
        info = st.load_state(opts.out, model, optimizer, device=opts.device)
        check_same_recipe(info.get("recipe", {}), recipe)
        prog = Progress(**info["progress"])
    elif st.has_state(opts.out):
        raise UserError(
            f"{opts.out} already holds a training run; pass --resume to continue it "
            "or choose another --out."
        )
    opts.out.mkdir(parents=True, exist_ok=True)
    if prog.epoch >= opts.epochs:
        # A finished run resumed: nothing to train, but write the checkpoint again from
        # the state, so a clone that keeps only train_state.safetensors gets the model.
        export_fn(prog, prog.epoch)
        write_metrics(opts.out, prog.history, recipe)
        return "done"
    run = _Run(
        model=model,
        optimizer=optimizer,
        images=images,
        labels=labels,
        step_fn=step_fn,
        validate_fn=validate_fn,
        export_fn=export_fn,
        lr_fn=lr_fn,
        opts=opts,
        recipe=recipe,
        prog=prog,
        steps_per_epoch=steps_per_epoch,
    )
    with _StopFlag() as stop:
        while prog.epoch < opts.epochs:
            stopped = run.epoch(stop)
            if stopped is not None:
                return stopped
            run.finish_epoch()
            if stop.signal is not None:
                return "interrupted"
            if run.budget_over(time.monotonic()):
                return "done" if prog.epoch >= opts.epochs else "stopped"
    return "done"


@dataclass(kw_only=True)
class _Run:
    """One call of `run_loop` once its state is loaded: the training, epoch by epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    labels: torch.Tensor
    step_fn: StepFn
    validate_fn: Callable[[], dict]
    export_fn: Callable[[Progress, float], None]
    lr_fn: Callable[[int, int], float]
    opts: LoopOptions
    recipe: dict
    prog: Progress
    steps_per_epoch: int
    started: float = field(default_factory=time.monotonic)
    steps_this_call: int = 0
    total_steps: int = field(init=False)
    last_save: float = field(init=False)

    def __post_init__(self):
        self.total_steps = self.opts.epochs * self.steps_per_epoch
        self.last_save = self.started

    def save(self) -> None:
        prog = self.prog
        st.save_state(
            self.opts.out,
            self.model,
            self.optimizer,
            {"progress": prog.to_json(), "recipe": self.recipe},
            device=self.opts.device,
        )
        self.export_fn(prog, prog.epoch + prog.batch / self.steps_per_epoch)

    def budget_over(self, now: float) -> bool:
        """Whether this call's step or time budget is spent."""
        opts = self.opts
        return (opts.max_steps is not None and self.steps_this_call >= opts.max_steps) or (
            opts.max_minutes is not None and now - self.started >= 60 * opts.max_minutes
        )

    def epoch(self, stop: _StopFlag) -> str | None:
        """The rest of the current epoch's steps; "interrupted" or "stopped" (after saving)
        when a signal or the budget stops the run inside the epoch, else None."""
        prog, opts = self.prog, self.opts
        perm = torch.randperm(len(self.images), generator=generator(opts.seed, prog.epoch))
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=prog.batch,
            desc=f"{opts.desc} epoch {prog.epoch + 1}/{opts.epochs}",
            unit="batch",
            disable=not opts.progress,
            dynamic_ncols=True,
        )
        while prog.batch < self.steps_per_epoch:
            self.step(perm, bar)
            now = time.monotonic()
            if stop.signal is not None or self.budget_over(now):
                bar.close()
                if prog.batch >= self.steps_per_epoch:
                    break  # finish the epoch (validation + save) first
                self.save()
                return "interrupted" if stop.signal is not None else "stopped"
            if now - self.last_save >= 60 * opts.save_every_minutes:
                self.save()
                self.last_save = time.monotonic()
        bar.close()
        return None

    def step(self, perm: torch.Tensor, bar: tqdm) -> None:
        """One optimizer step on the next batch of `perm`; a UserError if the loss is not
        finite (nothing is saved: the last checkpoint stays)."""
        prog, batch = self.prog, self.opts.batch
        t0 = time.monotonic()
        idx = perm[prog.batch * batch : (prog.batch + 1) * batch]
        lr = self.lr_fn(prog.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss, stats = self.step_fn(
            self.images[idx],
            self.labels[idx],
            generator(self.opts.seed, prog.epoch, prog.batch),
            prog.step,
        )
        if not torch.isfinite(loss.detach()):
            bar.close()
            raise UserError(
                f"training diverged (loss {float(loss.detach()):g} at step "
                f"{prog.step}); the last checkpoint is kept; lower --lr or warm up."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for k, v in stats.items():
            prog.sums[k] = prog.sums.get(k, 0.0) + float(v)
        prog.step += 1
        prog.batch += 1
        prog.seconds += time.monotonic() - t0
        self.steps_this_call += 1
        bar.update(1)
        bar.set_postfix(_postfix(prog.sums, lr), refresh=False)

    def finish_epoch(self) -> None:
        """Validate, record the epoch's metrics row, save, and move to the next epoch."""
        prog = self.prog
        row = _epoch_row(prog, self.lr_fn(max(prog.step - 1, 0), self.total_steps))
        row.update(self.validate_fn())
        prog.history.append(row)
        prog.epoch += 1
        prog.batch = 0
        prog.sums = {}
        prog.seconds = 0.0
        self.save()
        self.last_save = time.monotonic()
        write_metrics(self.opts.out, prog.history, self.recipe)
        tqdm.write(_describe(row))  # one line per epoch, with or without the bar


def _postfix(sums: dict, lr: float) -> dict:
    n = max(sums.get("n", 0.0), 1.0)
    out = {k: f"{v / n:.4f}" for k, v in sums.items() if k != "n"}
    out["lr"] = f"{lr:.3g}"
    return out


def _epoch_row(prog: Progress, lr: float) -> dict:
    n = max(prog.sums.get("n", 0.0), 1.0)
    row = {"epoch": prog.epoch + 1, "step": prog.step, "lr": lr}
    row.update({f"train_{k}": v / n for k, v in prog.sums.items() if k != "n"})
    row["train_images_per_s"] = prog.sums.get("n", 0.0) / max(prog.seconds, 1e-9)
    row["epoch_minutes"] = prog.seconds / 60
    return row


def _describe(row: dict) -> str:
    parts = []
    for k, v in row.items():
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) and not math.isnan(v) else f"{k} {v}")
    return " | ".join(parts)


#: Recipe keys that may change between a run and its resumption: the host's (threads,
#: device: a run may continue on another machine, CPU <-> CUDA) and this call's budget.
#: So a state saved before `device` existed (its recipe has no such key) still resumes.
MUTABLE = {
    "threads",
    "device",
    "save_every_minutes",
    "max_steps",
    "max_minutes",
    "progress",
    "out",
}


#: Recipe keys holding data paths: compared by file name, so that a clone in another
#: folder (or on another machine) can resume a run committed elsewhere.
PATHS = {"data", "val_data"}


def _comparable(key: str, value):
    if key not in PATHS or value is None:
        return value
    return [Path(p).name for p in value] if isinstance(value, list) else Path(value).name


def check_same_recipe(saved: dict, current: dict) -> None:
    diff = [
        k
        for k in sorted(set(saved) | set(current))
        if k not in MUTABLE and _comparable(k, saved.get(k)) != _comparable(k, current.get(k))
    ]
    if diff:
        shown = ", ".join(f"{k} (was {saved.get(k)!r}, now {current.get(k)!r})" for k in diff[:3])
        raise UserError(f"--resume needs the same recipe as the saved run; changed: {shown}.")
