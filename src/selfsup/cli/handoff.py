"""``selfsup export`` and ``selfsup embed``: sub-commands mirroring ``selfsup.api.export`` / ``embed``."""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.api import embed, export
from selfsup.handoff.embed import SPLITS
from selfsup.handoff.formats import FORMATS


def add_parsers(sub: Any) -> None:
    """Add the ``export`` and ``embed`` sub-parsers to ``selfsup``'s sub-parser collection."""
    ex = sub.add_parser("export", help="export a run's trained encoder (torchvision, safetensors or ONNX)",
                        description="Export the backbone of RUN_DIR. torchvision: a state_dict for "
                                    "torchvision.models.resnetXX() (width 1, BatchNorm) plus a .json sidecar "
                                    "with mean/std/image size and the loading code; safetensors: weights with "
                                    "every setting in the header (selfsup.load_encoder rebuilds it); onnx: the "
                                    "eval-mode backbone with a dynamic batch axis.")
    ex.add_argument("run_dir")
    ex.add_argument("--format", default="safetensors", choices=list(FORMATS))
    ex.add_argument("--out", default=None, help="output file (default RUN_DIR/export/encoder.<ext>)")

    em = sub.add_parser("embed", help="write embeddings of a whole dataset (.npy, .npz or .parquet)",
                        description="Embed every image of DATA with RUN_DIR's frozen encoder. Rows: train split "
                                    "then test split (or --split), each in dataset order, with split, index, "
                                    "label, class, path and embedding columns.")
    em.add_argument("run_dir")
    em.add_argument("--data", default=None, help="data spec (default: the run's, without --subset)")
    em.add_argument("--out", default=None, help="FILE.npy, FILE.npz or FILE.parquet "
                                                "(default RUN_DIR/embeddings/DATA.npy)")
    em.add_argument("--split", default="all", choices=list(SPLITS))
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--device", default="auto")
    em.add_argument("--data-root", default=None)
    em.add_argument("--eval-layer", type=int, default=None, dest="layer",
                    help="embed with the pooled features of this ResNet stage (1-4) instead of the output")
    em.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def cmd_export(args: argparse.Namespace) -> int:
    result = export(args.run_dir, format=args.format, out=args.out)
    print(f"wrote {', '.join(result['files'])} ({result['format']}: {result['backbone']} width {result['width']:g}, "
          f"{result['feature_dim']}-d features, input {result['in_channels']}x{result['image_size']}x"
          f"{result['image_size']})")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    result = embed(args.run_dir, data=args.data, out=args.out, split=args.split, batch_size=args.batch_size,
                   device=args.device, data_root=args.data_root, progress=args.progress, layer=args.layer)
    parts = ", ".join(f"{n} {k}" for k, n in result["splits"].items())
    print(f"wrote {result['path']}: {result['rows']} x {result['dim']} embeddings ({parts}) of {result['data']}")
    return 0


COMMANDS = {"export": cmd_export, "embed": cmd_embed}
