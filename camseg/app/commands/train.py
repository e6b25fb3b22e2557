"""``camseg train``: train a classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.models import ARCHITECTURES
from camseg.models.training import TrainConfig, train_from_folder


def add_arguments(t: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--patience", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", type=int, default=None, help="input size (default: the images' size)")
    t.add_argument("--channels", type=int, default=1, choices=(1, 3))
    t.add_argument("--width", type=int, default=16)


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                      seed=args.seed)
    with progress_bars(progress) as bars:
        meta = train_from_folder(args.data, args.arch, args.out, cfg, input_size=args.size,
                                 channels=args.channels, width=args.width, on_progress=bars,
                                 device=settings.device)
    m = meta["metrics"]
    print(f"{args.out}: best epoch {m['best_epoch']}, val accuracy {m['val']['val_accuracy']:.4f}, "
          f"val AUC {m['val']['val_auc']:.4f}"
          + (f", test accuracy {m['test']['accuracy']:.4f}, test AUC {m['test']['auc']:.4f}"
             if "test" in m else ""))
    return 0
