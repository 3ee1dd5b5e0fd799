"""Fine-tune EfficientNet-Lite0 for referable DR (grade >= 2) on all 478 photos of the developer set.

The protocol (``python -m models.triage.train``; ``scripts/train-model`` runs it):

1. **K-fold cross-validation over train+valid together** (:func:`models.triage.folds.patient_folds`:
   whole patients, stratified by "any eye referable"; K = 3 by default, see MODEL_CARD.md for why): one
   network per fold, trained on the other folds with the fixed schedule below and saved to
   ``runs/cv/fold<F>/``. ``export.py`` scores each fold's held-out photos with that fold's network
   (out-of-fold, OOF), through ONNX and the gateway's preprocessing, and chooses the thresholds on those
   OOF predictions.
2. **Refit** (unless ``--no-refit``): one network on all photos with the same schedule (``runs/final/``).

Folds already trained with the same config are kept (``--retrain`` forces), so an interrupted run
resumes. Nothing is tuned on the OOF predictions except the two thresholds.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models.triage.data import Augment, Dataset, batch_inputs, load_dataset
from models.triage.folds import DEFAULT_K, patient_folds
from models.triage.metrics import roc_auc
from models.triage.model import BN_MOMENTUM, EfficientNetLite0, ProbabilityModel, build_model

RUNS_DIR = Path(__file__).resolve().parent / "runs"


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that determines a training run (saved next to the checkpoint)."""

    size: int = 256
    epochs: int = 8
    batch: int = 16
    lr: float = 6e-4
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    ema_decay: float = 0.98
    label_smoothing: float = 0.05
    aux_grade_weight: float = 0.0
    dropout: float = 0.3
    drop_connect: float = 0.2
    flip_tta: bool = True
    seed: int = 20261123
    threads: int = 2
    eval_every: int = 4
    channels_last: bool = True
    """NHWC activations: about a third faster on x86 CPUs (oneDNN); the exported graph is the same."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def predict(
    net: nn.Module,
    squares: npt.NDArray[np.uint8],
    size: int,
    flip_tta: bool,
    device: str = "cpu",
    channels_last: bool = False,
) -> npt.NDArray[np.float64]:
    """Referable probabilities for cached squares, through the same wrapper that is exported to ONNX."""
    wrapper = ProbabilityModel(net, flip_tta=flip_tta).to(device).eval()
    out: list[npt.NDArray[np.float64]] = []
    with torch.no_grad():
        for start in range(0, len(squares), 32):
            x = _layout(torch.from_numpy(batch_inputs(squares[start : start + 32], size)).to(device), channels_last)
            out.append(wrapper(x)[:, 0].double().cpu().numpy())
    return np.concatenate(out)


class _ReferableHead(nn.Module):
    """View of a 2-output training net (referable logit, grade regression) as a 1-logit net."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits[:, :1]


def referable_net(net: EfficientNetLite0) -> nn.Module:
    """The 1-logit network to export (drops the auxiliary grade output if the net has one)."""
    return net if net._fc.out_features == 1 else _ReferableHead(net)


def _ema_net(ema: AveragedModel) -> EfficientNetLite0:
    """The averaged network inside an :class:`AveragedModel`."""
    net = ema.module
    assert isinstance(net, EfficientNetLite0)
    return net


def make_net(cfg: TrainConfig, pretrained: bool = True) -> EfficientNetLite0:
    """Build the training network for ``cfg`` (one logit, plus one grade output with the auxiliary loss)."""
    net = build_model(pretrained=pretrained, dropout=cfg.dropout, drop_connect=cfg.drop_connect)
    if cfg.aux_grade_weight > 0:
        old = net._fc
        net._fc = nn.Linear(old.in_features, 2)
        with torch.no_grad():
            net._fc.weight[:1].copy_(old.weight)
            net._fc.bias[:1].copy_(old.bias)
    return net


def train(
    cfg: TrainConfig,
    data: Dataset,
    train_idx: npt.NDArray[np.intp],
    eval_idx: npt.NDArray[np.intp] | None = None,
    device: str = "cpu",
    log_prefix: str = "",
) -> tuple[EfficientNetLite0, list[dict[str, float]]]:
    """Train on ``train_idx``; return the EMA network (eval mode) and a per-epoch log.

    ``eval_idx`` is only scored and logged after each epoch; it never influences training.
    """
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    net = make_net(cfg).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = AveragedModel(
        net,
        multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),  # type: ignore[no-untyped-call]
        use_buffers=True,
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_idx) // cfg.batch
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, round(steps_per_epoch * cfg.warmup_epochs))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return float(0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    augment = Augment()
    labels = data.labels(train_idx)
    grades = data.grades(train_idx).astype(np.float32)
    log: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        net.train()
        started = time.perf_counter()
        order = rng.permutation(len(train_idx))
        losses: list[float] = []
        for b in range(steps_per_epoch):
            pick = order[b * cfg.batch : (b + 1) * cfg.batch]
            squares = np.stack([augment(data.squares[train_idx[i]], rng) for i in pick])
            x = _layout(torch.from_numpy(batch_inputs(squares, cfg.size)).to(device), cfg.channels_last)
            y = torch.from_numpy(labels[pick]).to(device)
            target = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
            out = net(x)
            loss = F.binary_cross_entropy_with_logits(out[:, 0], target)
            if cfg.aux_grade_weight > 0:
                g = torch.from_numpy(grades[pick]).to(device)
                loss = loss + cfg.aux_grade_weight * F.smooth_l1_loss(out[:, 1], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            ema.update_parameters(net)
            losses.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
        if eval_idx is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            net_now = referable_net(_ema_net(ema))
            probs = predict(net_now, data.squares[eval_idx], cfg.size, cfg.flip_tta, device, cfg.channels_last)
            entry["eval_auc"] = roc_auc(data.labels(eval_idx), probs)
        log.append(entry)
        print(log_prefix + json.dumps({k: round(v, 4) for k, v in entry.items()}), flush=True)
    net_out = _ema_net(ema).eval()
    return net_out.to(memory_format=torch.contiguous_format), log  # type: ignore[call-overload]


RECALIBRATED = "bn_recalibrated.json"


def recalibrate_bn(net: EfficientNetLite0, squares: npt.NDArray[np.uint8], size: int, batch: int = 16) -> None:
    """Re-estimate every BatchNorm's running statistics on ``squares`` (the run's own training photos).

    With the TensorFlow momentum (0.01) and an EMA of the buffers, eight epochs leave the running statistics
    partly ImageNet's, so eval-mode scores drift by a different amount in each fold (non-referable medians of
    0.0005-0.012 on held-out patients). A cumulative average over the training photos, un-augmented and in
    order, with only the BatchNorm layers in training mode (no stochastic depth), fixes the scale; it is
    deterministic and uses no held-out photo.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
        bn.train()
    with torch.no_grad():
        for start in range(0, len(squares), batch):
            net(torch.from_numpy(batch_inputs(squares[start : start + batch], size)))
    for bn in bns:
        bn.momentum = BN_MOMENTUM
    net.eval()


def recalibrated(out: Path, data: Dataset, fit: npt.NDArray[np.intp]) -> None:
    """Recalibrate the BatchNorm statistics of the network saved in ``out`` once (see :func:`recalibrate_bn`)."""
    if (out / RECALIBRATED).is_file():
        return
    net, cfg = load_checkpoint(out)
    recalibrate_bn(net, data.squares[fit], cfg.size)
    torch.save(net.state_dict(), out / "model.pt")
    (out / RECALIBRATED).write_text(json.dumps({"photos": len(fit)}) + "\n")


def fold_dir(runs: Path, fold: int) -> Path:
    """Where fold ``fold``'s network is saved."""
    return runs / "cv" / f"fold{fold}"


def _done(out: Path, cfg: TrainConfig) -> bool:
    """A finished run of the same config is in ``out``."""
    try:
        return (out / "model.pt").is_file() and json.loads((out / "config.json").read_text()) == asdict(cfg)
    except (OSError, ValueError):
        return False


def cross_validate(
    cfg: TrainConfig, data: Dataset, k: int, runs: Path, *, only: set[int] | None = None, retrain: bool = False
) -> None:
    """Train one network per patient-grouped fold of all photos (train+valid), saved under ``runs/cv/``.

    The held-out AUC of each fold is logged from torch for the record; the published OOF figures come
    from ``export.py`` (ONNX, gateway preprocessing).
    """
    folds = patient_folds(data.samples, k, cfg.seed)
    for f, held in enumerate(folds):
        out = fold_dir(runs, f)
        if only is not None and f not in only:
            continue
        fit = np.setdiff1d(np.arange(len(data.samples)), held)
        started = time.perf_counter()
        if retrain or not _done(out, cfg):
            net, log = train(cfg, data, fit, None, log_prefix=f"fold{f} ")
            save_checkpoint(net, cfg, log, out)
            (out / "held_out.json").write_text(json.dumps([data.samples[i].file for i in held]) + "\n")
        elif (out / RECALIBRATED).is_file():
            continue
        recalibrated(out, data, fit)
        net, _ = load_checkpoint(out)
        auc = roc_auc(data.labels(held), predict(referable_net(net), data.squares[held], cfg.size, cfg.flip_tta))
        minutes = (time.perf_counter() - started) / 60
        print(json.dumps({"fold": f, "held_out": len(held), "auc": round(auc, 4), "minutes": round(minutes, 1)}))


def save_checkpoint(net: EfficientNetLite0, cfg: TrainConfig, log: list[dict[str, float]], out: Path) -> None:
    """Save weights, config and training log to ``out`` (a directory under ``runs/``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RECALIBRATED).unlink(missing_ok=True)  # new weights: their statistics are not recalibrated yet
    torch.save(net.state_dict(), out / "model.pt")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")


def load_checkpoint(out: Path) -> tuple[EfficientNetLite0, TrainConfig]:
    """Load a network and its config saved by :func:`save_checkpoint` (eval mode, CPU)."""
    cfg = TrainConfig(**json.loads((out / "config.json").read_text()))
    net = make_net(cfg, pretrained=False)
    net.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    return net.eval(), cfg


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Command-line options: every :class:`TrainConfig` field, plus mode and output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in {"1", "true", "yes"}, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="number of cross-validation folds")
    parser.add_argument("--folds", default="", help="train only these folds (comma-separated numbers)")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation folds")
    parser.add_argument("--no-refit", action="store_true", help="skip the refit on all photos")
    parser.add_argument("--retrain", action="store_true", help="train again even when a run with this config exists")
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="runs directory (cv/ and final/ inside)")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m models.triage.train [--k 5] [--folds 0,1] [--no-refit] [--epochs N] ...``."""
    cfg, args = parse_args(argv)
    data = load_dataset()
    started = time.perf_counter()
    if not args.no_cv:
        only = {int(f) for f in args.folds.split(",")} if args.folds else None
        cross_validate(cfg, data, args.k, args.runs, only=only, retrain=args.retrain)
    final = args.runs / "final"
    if not args.no_refit:
        everything = np.arange(len(data.samples))
        if args.retrain or not _done(final, cfg):
            net, log = train(cfg, data, everything, None, log_prefix="refit ")
            save_checkpoint(net, cfg, log, final)
        recalibrated(final, data, everything)
    print(json.dumps({"runs": str(args.runs), "minutes": round((time.perf_counter() - started) / 60, 1)}), flush=True)


if __name__ == "__main__":
    main()
