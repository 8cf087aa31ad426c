"""``selfsup convert``: build an on-disk store from an image folder, mirroring ``selfsup.api.convert``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from selfsup.api import convert
from selfsup.data.store import DEFAULT_SHARD_SIZE


def add_parsers(sub: Any) -> None:
    """Add the ``convert`` sub-parser to ``selfsup``'s sub-parser collection."""
    cv = sub.add_parser("convert", help="build a sharded on-disk store (WebDataset tar shards) from an image folder",
                        description="Write the images of SOURCE (folder:PATH; sub-folders are classes, train/ and "
                                    "test/ sub-folders are the splits) into tar shards with an index, for data "
                                    "bigger than memory: train with --data store:OUT. Unreadable files are "
                                    "skipped and listed.")
    cv.add_argument("source", help="folder:PATH (or a folder path)")
    cv.add_argument("--out", required=True, help="the store's folder (new or empty)")
    cv.add_argument("--short-side", type=int, default=None,
                    help="re-encode images whose short side is larger down to this side, aspect kept "
                         "(e.g. 1.15x the training size); default: keep the files' bytes as they are")
    cv.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                    help=f"images per shard (default: {DEFAULT_SHARD_SIZE})")
    cv.add_argument("--workers", type=int, default=None, help="parallel writers (default: the usable cores)")
    cv.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def cmd_convert(args: argparse.Namespace) -> int:
    info = convert(args.source, args.out, short_side=args.short_side, shard_size=args.shard_size,
                   workers=args.workers, progress=args.progress)
    splits = ", ".join(f"{split} {count} images in {info.shards[split]} shards" for split, count in info.images.items())
    print(f"wrote {info.path}: {splits}; {len(info.classes)} classes, {info.channels} channel(s)")
    if info.skipped:
        print(f"skipped {len(info.skipped)} unreadable files (listed in the store's manifest)")
    print(f"train with: selfsup train --data store:{info.path} ...")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"convert": cmd_convert}
