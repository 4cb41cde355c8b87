"""Training loop shared by every architecture: array batches, per-task BCE, a loss balancer,
evaluation with early stopping, best-state restore and prediction.

The trainer sees a model (``batch -> logits [B, T]``), a balancer (``task losses -> loss``) and
optionally a ``score_fn(preds [N, T]) -> {"weighted": ...}``; it never asks which model or
balancer it holds.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import EncodedArrays, StreamedRows

#: What the trainer reads: rows in memory or streamed from the feature store (same interface:
#: ``len``, ``epoch_batches``, ``ordered_batches``).
RowSource = EncodedArrays | StreamedRows
from .losses import task_bce

ScoreFn = Callable[[np.ndarray], dict]


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def seed_everything(seed: int, threads: int | str | None = "auto", deterministic: bool = True) -> int:
    """Seed torch and numpy, fix the thread count and ask for deterministic kernels.

    Returns the number of threads in use.  Same seed + same thread count -> same weights.
    """
    n = available_threads() if threads in (None, "auto", 0) else int(threads)
    torch.set_num_threads(max(1, n))
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    return torch.get_num_threads()


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (CUDA when torch sees a GPU, else CPU)."""
    name = (name or "cpu").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"nn.train.device={name!r} but this torch build sees no CUDA device "
                         f"(torch {torch.__version__}); use cpu or auto")
    return torch.device(name)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
#: CPU flags (/proc/cpuinfo) of native bf16 matrix instructions: AVX512-BF16 and AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (else bf16 is emulated, slower than fp32)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:          # pragma: no cover - non-Linux: do not guess
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a GPU or on a CPU with native bf16 matrix instructions, else
    ``fp32``; ``fp32`` and ``bf16`` stay as asked."""
    if precision == "auto":
        dev = torch.device(device)
        return "bf16" if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_native_bf16()) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"nn.train.precision={precision!r}; expected auto, {', '.join(PRECISIONS)}")
    return precision


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``nn.train.precision`` (None = plain fp32; ``auto`` resolved on the CPU)."""
    return PRECISIONS[resolve_precision(precision)]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass: bf16 runs the expert and tower matrix products at
    twice the fp32 rate on CPUs with AVX512-BF16 (and on GPUs); parameters, optimizer state and
    losses stay fp32."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class TrainConfig:
    """The trainer's part of ``nn.train`` (defaults: configs/nn.yaml, the one place they live)."""

    batch_size: int
    lr: float
    optimizer: str                    # adam | adagrad
    weight_decay: float               # dense parameters only
    patience: int                     # epochs' worth of evaluations without improvement before stopping
    eval_every_steps: int | str       # 0 = at epoch ends only; auto = 1 to 4 per epoch by size
    predict_batch_size: int
    device: str                       # cpu | cuda | auto; the arrays stay on the CPU, batches move
    precision: str                    # auto | fp32 | bf16 (autocast of the forward pass; losses in fp32)
    seed: int
    progress: bool
    lr_decay: float = 1.0             # every learning rate times this at each epoch's end (1 = constant)
    lr_schedule: str = "constant"     # constant | linear | cosine: per step, from lr to lr x lr_floor
    lr_floor: float = 0.1             #   over the first lr_schedule_epochs, then held at the floor
    lr_schedule_epochs: float = 1.0

    # keys of nn.train that the pipeline reads, not the trainer
    PIPELINE_KEYS = ("epochs", "max_rows", "first_day", "neg_rate")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From ``nn.train`` plus ``seed``; an unknown or missing key is an error, not a default."""
        fields = cls.__dataclass_fields__
        unknown = [k for k in d if k not in fields and k not in cls.PIPELINE_KEYS]
        if unknown:
            raise ValueError(f"nn.train: unknown key {unknown[0]!r}")
        missing = [k for k in fields if k not in d]
        if missing:
            raise ValueError(f"nn.train: missing key {missing[0]!r}")
        out = cls(**{k: d[k] for k in fields})
        from ..config import ConfigError
        for key in ("lr_decay", "lr_floor"):
            g = getattr(out, key)
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 < float(g) <= 1.0:
                raise ConfigError(f"nn.train.{key}: expected a factor in (0, 1], got {g!r}")
        if out.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"nn.train.lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, "
                              f"got {out.lr_schedule!r}")
        e = out.lr_schedule_epochs
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not float(e) > 0.0:
            raise ConfigError(f"nn.train.lr_schedule_epochs: expected a number of epochs > 0, got {e!r}")
        return out

    def lr_factor(self, epochs_done: float) -> float:
        """The schedule's factor on ``lr`` after ``epochs_done`` epochs of training (the
        per-epoch ``lr_decay`` is applied apart, at epoch ends)."""
        if self.lr_schedule == "constant":
            return 1.0
        t = min(1.0, max(0.0, epochs_done / float(self.lr_schedule_epochs)))
        shape = 1.0 - t if self.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
        return float(self.lr_floor) + (1.0 - float(self.lr_floor)) * shape


#: ``nn.train.lr_schedule``: the learning rate within and across epochs, per step.
LR_SCHEDULES = ("constant", "linear", "cosine")


#: ``eval_every_steps: auto``: one evaluation per AUTO_EVAL_ROWS training rows of an epoch,
#: between 1 and AUTO_EVALS_MAX per epoch (at `full` every net peaks within its first epoch).
AUTO_EVAL_ROWS, AUTO_EVALS_MAX = 2_000_000, 4


def eval_schedule(every: int | str, patience: int, n_rows: int, steps_per_epoch: int) -> tuple[int, int]:
    """(evaluate every this many steps, 0 = at epoch ends only; evaluations without improvement
    before stopping).  ``auto`` evaluates 1..4 times per epoch by the epoch's size and scales
    ``patience`` by the same factor, so ``patience`` keeps meaning epochs."""
    if every == "auto":
        k = int(min(AUTO_EVALS_MAX, max(1, n_rows // AUTO_EVAL_ROWS)))
        return (0 if k == 1 else math.ceil(steps_per_epoch / k)), max(1, int(patience)) * k
    if int(every) < 0:
        raise ValueError(f"nn.train.eval_every_steps={every}; expected auto or a number >= 0")
    return int(every), max(1, int(patience))


def offline_epochs(train_cfg: dict, n_rows: int) -> float:
    """The offline fit's epochs: ``nn.train.epochs``, cut so that the fit sees at most
    ``nn.train.max_rows`` training rows over all its epochs, but never below one epoch (nor above
    the configured epochs).  Click-through nets learn nearly all they will within their first
    epoch and overfit after it (at `full` every net peaks inside epoch 1); a larger data set
    needs fewer passes, and at the final round's size one epoch is 62.7M rows.  ``max_rows:
    null``: always the configured epochs."""
    epochs = float(train_cfg["epochs"])
    cap = train_cfg.get("max_rows")
    if cap is None:
        return epochs
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        from ..config import ConfigError
        raise ConfigError(f"nn.train.max_rows: expected a positive row count or null, got {cap!r}")
    return min(epochs, max(1.0, cap / max(1, int(n_rows))))


def fit_epochs(train_cfg: dict, n_rows: int, log: Callable[[str], None] | None = None) -> float:
    """:func:`offline_epochs`, said in one line through ``log`` when ``max_rows`` lowers them."""
    epochs = offline_epochs(train_cfg, n_rows)
    if log is not None and epochs < float(train_cfg["epochs"]):
        log(f"{n_rows:,} training rows: at most {epochs:g} epoch{'s' if epochs != 1 else ''} instead of {float(train_cfg['epochs']):g} "
            f"(nn.train.max_rows={train_cfg['max_rows']:,})")
    return epochs


class _Optimizers:
    """Dense and sparse parameter groups stepped together (SparseAdam cannot take dense grads,
    Adam cannot take sparse ones)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        #: each group's learning rate as built: the schedule's factors are relative to it
        self.base_lrs = [[float(g["lr"]) for g in o.param_groups] for o in optimizers]

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def set_lr_factor(self, factor: float) -> None:
        """Every group's learning rate = its built rate times ``factor``."""
        for o, base in zip(self.optimizers, self.base_lrs):
            for g, lr in zip(o.param_groups, base):
                g["lr"] = lr * factor


def _sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad:
            out.append(m.weight)
    return out


def build_optimizer(model: nn.Module, balancer: nn.Module, cfg: TrainConfig) -> _Optimizers:
    sparse = _sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    dense += [p for p in balancer.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opts: list[torch.optim.Optimizer] = [
            torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)]
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
        return _Optimizers(opts)
    if cfg.optimizer == "adagrad":
        torch.sparse.check_sparse_tensor_invariants.disable()   # explicit: the default, silences a warning
        groups = [{"params": dense, "weight_decay": cfg.weight_decay}]
        if sparse:
            groups.append({"params": sparse, "weight_decay": 0.0})
        return _Optimizers([torch.optim.Adagrad(groups, lr=cfg.lr)])
    raise ValueError(f"nn.train.optimizer={cfg.optimizer!r}; expected adam or adagrad")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_score: float = float("nan")
    best_epoch: float = 0.0          # epochs (fractional with step evaluation) at the best point
    epochs_run: float = 0.0
    steps: int = 0
    samples: int = 0                 # training rows processed (all epochs)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0         # process CPU time of the training loop (all threads)
    samples_per_s: float = 0.0
    precision: str = "fp32"          # the resolved nn.train.precision
    evals_per_epoch: float = 1.0
    best_scores: dict = field(default_factory=dict)
    best_preds: np.ndarray | None = None
    #: per user half ("A", "B"), when ``score_fn`` scores the halves too: the evaluation that
    #: half prefers, {"score": weighted uAUC on that half, "epoch": epochs, "preds": [N, T]}
    half_best: dict = field(default_factory=dict)


def _half_keys(scores: dict) -> list[str]:
    return [h for h in ("A", "B") if f"{h}/weighted" in scores]


class Trainer:
    def __init__(self, model: nn.Module, balancer: nn.Module, cfg: TrainConfig,
                 aux_weight: float = 0.0):
        self.cfg = cfg
        #: weight of each auxiliary regression task's mean squared error (``nn.aux.weight``)
        self.aux_weight = float(aux_weight)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.amp_dtype = amp_dtype(self.precision)
        self.model = model.to(self.device)
        self.balancer = balancer.to(self.device)
        self.optimizer = build_optimizer(model, balancer, cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        #: what the training forward pass calls (the distributed nets: the DDP wrapper of ``model``)
        self.train_model: nn.Module = self.model

    # ------------------------------------------------------------------ training
    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
        batch = to_device(batch, self.device)
        aux = batch.get("aux")
        with autocast(self.device, self.amp_dtype):
            if aux is None:
                logits = self.train_model(batch)
            else:
                logits, aux_out = self.train_model(batch, with_aux=True)
        logits = logits.float()
        task_losses = task_bce(logits, batch["labels"])
        loss = self.balancer(task_losses)
        if aux is not None:
            loss = loss + self.aux_weight * ((aux_out.float() - aux) ** 2).mean(0).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self._after_backward()
        self.optimizer.step()
        return float(loss.detach()), task_losses.detach()

    def fit(self, train: RowSource, epochs: float, valid: RowSource | None = None,
            score_fn: ScoreFn | None = None) -> FitResult:
        """Train for ``epochs`` (may be fractional: stops after that share of the last epoch).

        With ``valid`` and ``score_fn``: score after every epoch (and every
        ``eval_every_steps``), stop after ``patience`` evaluations without improvement of
        ``score["weighted"]`` and restore the best state.  When ``score_fn`` also returns
        ``"A/weighted"`` and ``"B/weighted"`` (the two user halves, ``wbdc.metrics``), each
        half's best evaluation and its predictions are kept in ``FitResult.half_best`` (a
        cross-fitted selection; it never changes when training stops).
        """
        if getattr(train, "labels", None) is None and getattr(train, "packed", None) is None:
            raise ValueError("training rows need labels")
        n, bs = len(train), int(self.cfg.batch_size)
        # a rank's share of the distributed nets says its (equal) step count and the full size
        steps_per_epoch = (train.steps_per_epoch(bs) if hasattr(train, "steps_per_epoch")
                           else max(1, math.ceil(n / bs)))
        total_steps = max(1, int(round(epochs * steps_per_epoch)))
        every, patience = eval_schedule(self.cfg.eval_every_steps, self.cfg.patience,
                                        int(getattr(train, "global_rows", n)), steps_per_epoch)
        evaluate = valid is not None and score_fn is not None
        res = FitResult(precision=self.precision,
                        evals_per_epoch=round(steps_per_epoch / every, 2) if every else 1.0)
        best_state = None
        bad_evals = 0
        step = samples = epoch = 0
        eval_time = eval_cpu = 0.0
        stop = False
        t_start, c_start = time.perf_counter(), time.process_time()
        while step < total_steps and not stop:
            epoch += 1
            self.model.train()
            self.balancer.train()
            bar = tqdm(total=min(n, (total_steps - step) * bs), unit="row", unit_scale=True,
                       desc=f"epoch {epoch}", file=sys.stderr, disable=not self.cfg.progress,
                       leave=False, mininterval=1.0)
            loss_sum, loss_n = 0.0, 0
            for batch in train.epoch_batches(bs, self.generator):
                rows = int(batch["cat"].shape[0])
                # the rate of this step: lr_decay per finished epoch times the schedule
                self.optimizer.set_lr_factor(float(self.cfg.lr_decay) ** (epoch - 1)
                                             * self.cfg.lr_factor(step / steps_per_epoch))
                loss, _ = self.train_step(batch)
                loss_sum += loss
                loss_n += 1
                step += 1
                samples += rows
                bar.update(rows)
                if loss_n % 50 == 0:
                    bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", refresh=False)
                last = step >= total_steps
                at_eval = evaluate and (step % steps_per_epoch == 0 or last or bool(
                    every and step % every == 0))
                if at_eval or last:
                    record = {"epoch": epoch, "step": step, "epochs": round(step / steps_per_epoch, 4),
                              "train_loss": self._mean_loss(loss_sum, loss_n),
                              "train_seconds": round(time.perf_counter() - t_start - eval_time, 3)}
                    if at_eval:
                        te, ce = time.perf_counter(), time.process_time()
                        preds = self.predict(valid)
                        scores = score_fn(preds)
                        record.update({f"valid_{k}": float(v) for k, v in scores.items()
                                       if "/" not in k or k.endswith("/weighted")})
                        for h in _half_keys(scores):
                            hb = res.half_best.get(h)
                            v = float(scores[f"{h}/weighted"])
                            if hb is None or v > hb["score"]:
                                res.half_best[h] = {"score": v, "epoch": step / steps_per_epoch,
                                                    "preds": preds}
                        if best_state is None or scores["weighted"] > res.best_score:
                            res.best_score = float(scores["weighted"])
                            res.best_scores = {k: float(v) for k, v in scores.items() if "/" not in k}
                            res.best_epoch = step / steps_per_epoch
                            res.best_preds = preds
                            best_state = self._snapshot()
                            bad_evals = 0
                        else:
                            bad_evals += 1
                            stop = bad_evals >= patience
                        self.model.train()
                        self.balancer.train()
                        eval_time += time.perf_counter() - te
                        eval_cpu += time.process_time() - ce
                        record["eval_seconds"] = round(time.perf_counter() - te, 3)
                    res.history.append(record)
                    if self.cfg.progress:
                        tqdm.write(_format_record(record), file=sys.stderr)
                if stop or last:
                    break
            bar.close()
        train_time = time.perf_counter() - t_start - eval_time
        res.cpu_seconds = time.process_time() - c_start - eval_cpu
        res.steps = step
        res.samples = samples
        res.epochs_run = step / steps_per_epoch
        res.train_seconds = train_time
        res.samples_per_s = samples / train_time if train_time > 0 else float("nan")
        if best_state is not None:
            self._restore(best_state)
        else:
            res.best_epoch = res.epochs_run
        return res

    def _after_backward(self) -> None:
        """Hook between backward and the optimizer step (the distributed nets average the
        balancer's gradients there)."""

    def _mean_loss(self, loss_sum: float, loss_n: int) -> float:
        """The mean training loss since the epoch began (the distributed nets: over all ranks)."""
        return loss_sum / loss_n

    def _snapshot(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "balancer": {k: v.detach().clone() for k, v in self.balancer.state_dict().items()}}

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.balancer.load_state_dict(state["balancer"])

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, data: RowSource) -> np.ndarray:
        return predict(self.model, data, self.cfg.predict_batch_size, self.precision)


@torch.no_grad()
def predict(model: nn.Module, data: RowSource, batch_size: int = 16384,
            precision: str = "fp32") -> np.ndarray:
    """Probabilities ``float32 [N, T]`` in row order (in-memory arrays or streamed blocks)."""
    model.eval()
    device = model_device(model)
    dtype = amp_dtype(precision)
    out: np.ndarray | None = None
    for pos, batch in data.ordered_batches(batch_size):
        with autocast(device, dtype):
            logits = model(to_device(batch, device))
        p = torch.sigmoid(logits.float()).cpu().numpy()
        if out is None:
            out = np.empty((len(data), p.shape[1]), np.float32)
        out[pos] = p
    if out is None:
        return np.zeros((0, 0), np.float32)
    return out


def _format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']} step {r['step']}", f"loss {r['train_loss']:.5f}"]
    if "valid_weighted" in r:
        parts.append(f"valid weighted uAUC {r['valid_weighted']:.5f}")
    parts.append(f"train {r['train_seconds']:.1f} s")
    return "[train_nn] " + ", ".join(parts)
