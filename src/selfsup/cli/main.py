"""Command-line interface: ``selfsup train | eval | demo | preview | convert | export | embed | report |
compare``, mirroring ``selfsup.api``.

Every ``TrainConfig`` field is a ``train`` flag (``batch_size`` -> ``--batch-size``), and so is
every method hyperparameter (``tau_base`` -> ``--tau-base``). Bad options exit with code 2 and a
one-line message naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import shlex
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfsup.api import demo, evaluate, preview, train
from selfsup.cli.data import COMMANDS as DATA_COMMANDS
from selfsup.cli.data import add_parsers as add_data_parsers
from selfsup.cli.fewshot import COMMANDS as FEWSHOT_COMMANDS
from selfsup.cli.fewshot import add_parsers as add_fewshot_parsers
from selfsup.cli.fields import add_field, base_type, flag
from selfsup.cli.handoff import COMMANDS as HANDOFF_COMMANDS
from selfsup.cli.handoff import add_parsers as add_handoff_parsers
from selfsup.cli.reporting import COMMANDS as REPORTING_COMMANDS
from selfsup.cli.reporting import add_parsers as add_reporting_parsers
from selfsup.config import TRAIN_FIELDS, ConfigError, TrainConfig, method_option_types, options_from_file, recipe_names
from selfsup.data.sources import DATA_SPECS, DataSpecError
from selfsup.data.store import StoreError
from selfsup.evaluation.intervals import small_split_warning
from selfsup.evaluation.protocols import DEFAULT_EPOCHS, PROTOCOLS, format_result
from selfsup.evaluation.tables import aligned_table
from selfsup.methods import METHODS
from selfsup.methods.catalogue import CATALOGUE
from selfsup.models import BACKBONES
from selfsup.models.timm_backbones import TimmError
from selfsup.train.checkpoint import CheckpointError
from selfsup.train.distributed import DistributedRunFailed, env_rank, launched_by_torchrun
from selfsup.train.loop import NonFiniteLoss, TrainingInterrupted

_HELP = {
    "method": f"one of: {', '.join(METHODS)}",
    "data": f"one of: {', '.join(DATA_SPECS)}",
    "subset": "use N training images (a seeded random subset)",
    "holdout_classes": "class indices removed from the training split before --subset, e.g. 5-9 or 7,8,9 "
                       "(never seen in pretraining; `selfsup eval --protocol fewshot` uses them)",
    "recipe": "paper: the paper's hyperparameters; small: the tuned small-image recipe; "
              "auto: small when images <= 64 px",
    "lr": "base learning rate for batch 256 (scaled linearly with the batch size)",
    "out": "run folder (default runs/METHOD-DATA-TIME)",
    "backbone": f"one of: {', '.join(BACKBONES)}; or timm:NAME, any timm model, untrained (pip install "
                "'selfsup[timm]')",
    "width": "width multiplier of the backbone (0.25 for CPU-sized runs)",
    "small_stem": "3x3 stride-1 stem without max-pool (default: on for images <= 64 px)",
    "grad_checkpointing": "recompute each ResNet stage during backward instead of storing its activations "
                          "(less GPU memory for large backbones/images, about one extra forward of compute)",
    "channels_last": "NHWC (channels-last) model and inputs (default: on CUDA only; on the CPU opt-in, about 1.3x "
                     "cheaper ResNet steps; results differ from NCHW by float rounding)",
    "devices": "train on N processes (N GPUs of this machine, or N CPU processes), started through torchrun; "
               "--batch-size stays the global batch",
    "baselines": "at the end, also score a random-init encoder of the same architecture and raw pixels "
                 "(--no-baselines for sweeps that score them once)",
    "sync_bn": "BatchNorm statistics over the global batch when on several processes (default: the method's; "
               "on for all but moco)",
}


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())


def _add_method_fields(parser: argparse.ArgumentParser, method: type) -> None:
    """``method``'s hyperparameters, each with its paper default and small-image recipe value."""
    info = CATALOGUE.get(method.name)
    title = f"{method.name} hyperparameters" + (f" ({info.paper} {info.year})" if info else "")
    optimiser = _settings(method.OPTIMIZER) + (f"; small: {_settings(method.SMALL_IMAGE_OPTIMIZER)}"
                                                 if method.SMALL_IMAGE_OPTIMIZER else "")
    group = parser.add_argument_group(title, "paper: the paper's default; small: the small-image recipe "
                                             f"(images <= 64 px, `--recipe auto`). Optimiser: paper: {optimiser}")
    small = method.SMALL_IMAGE_RECIPE
    for f in dataclasses.fields(method.Config):
        paper = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        note = f"paper: {paper}" + (f"; small: {small[f.name]}" if f.name in small else "")
        kind = base_type(typing.get_type_hints(method.Config)[f.name])
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=note)
        else:
            group.add_argument(flag(f.name), dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(),
                               help=note)


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The ``selfsup`` parser; with ``method`` (``train --method X --help``) the train command lists X's
    own hyperparameters with the paper's defaults and the small-image recipe's values."""
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="pretrain an encoder, then evaluate it against baselines")
    train.add_argument("--config", default=None, metavar="FILE|RECIPE",
                       help="settings from a YAML file (a run's config.yaml re-runs that run) or a recipe "
                            f"({', '.join(recipe_names())}); flags given here override it")
    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    for name in TRAIN_FIELDS:
        add_field(train, name, hints[name], getattr(defaults, name), _HELP)
    if method in METHODS:
        _add_method_fields(train, METHODS[method])
    else:
        group = train.add_argument_group("method hyperparameters (default: the paper's, or the small-image recipe; "
                                         "`selfsup train --method X --help` lists X's own)")
        for name, hint in method_option_types().items():
            if name not in TRAIN_FIELDS:
                add_field(group, name, hint, None)

    ev = sub.add_parser("eval", help="score a run's encoder by a paper protocol, beside a random-init encoder")
    ev.add_argument("run_dir")
    ev.add_argument("--protocol", default="knn",
                    help=f"one of: {', '.join(PROTOCOLS)} (semi:P% takes any P)".replace("%", "%%"))
    ev.add_argument("--data", default=None, help="data spec (default: the run's; transfer: the target, default digits)")
    ev.add_argument("--epochs", type=int, default=None,
                    help="epochs of every trained protocol (default, CPU-sized: "
                         + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    ev.add_argument("--batch-size", type=int, default=None, help="training batch of trained protocols (default: 256)")
    ev.add_argument("--lr", type=float, default=None,
                    help="peak lr for batch 256 (default: linear-aug 0.5, fine-tune/semi/supervised/transfer 0.05)")
    ev.add_argument("--episodes", type=int, default=None, help="few-shot episodes (default: 600)")
    ev.add_argument("--ways", type=int, default=None, help="few-shot classes per episode (default: 5)")
    ev.add_argument("--shots", type=lambda t: tuple(int(x) for x in t.split(",")), default=None,
                    help="few-shot support images per class, comma list (default: 1,5)")
    ev.add_argument("--queries", type=int, default=None, help="few-shot queries per class (default: 15)")
    ev.add_argument("--metric", default=None, help="few-shot prototype distance: euclidean (default) or cosine")
    ev.add_argument("--transfer-data", default=None, help="transfer / cross-domain few-shot target inside all "
                                                          "(default: digits; fashion-mnist for a digits run)")
    ev.add_argument("--eval-layer", type=int, default=None, dest="layer",
                    help="read every encoder at this ResNet stage (1-4, pooled) instead of its output; results in "
                         "RUN_DIR/eval/layerK/ (RotNet's best features are an intermediate stage's)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    dm = sub.add_parser("demo", help="BYOL on Fashion-MNIST (digits when absent), then learned vs baselines")
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--epochs", type=int, default=None)
    dm.add_argument("--subset", type=int, default=None)
    dm.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)

    sub.add_parser("methods", help="list every method: paper, year, family and what it needs")

    pv = sub.add_parser("preview", help="write a PNG grid of images and their augmented views")
    pv.add_argument("--data", default="fashion-mnist", help=f"one of: {', '.join(DATA_SPECS)}")
    pv.add_argument("--out", default="preview.png")
    pv.add_argument("--method", default="byol")
    pv.add_argument("--image-size", type=int, default=None)
    pv.add_argument("--recipe", default="auto")
    pv.add_argument("--crop-scale-min", type=float, default=None)
    pv.add_argument("-n", type=int, default=8)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--data-root", default=None)
    pv.add_argument("--backbone", default="resnet18", help="the network whose panels are shown (MAE: vit_tiny)")

    add_data_parsers(sub)  # convert
    add_fewshot_parsers(sub)  # fewshot
    add_handoff_parsers(sub)  # export, embed
    add_reporting_parsers(sub)  # report, compare
    return parser


def print_scores(scores: dict[str, Any], protocols: Sequence[str]) -> None:
    """Learned vs every floor present in ``scores``, each accuracy with its 95% interval, and what the
    floors are; a warning when the test split is too small for the comparison to mean anything."""
    present = [p for p in protocols if f"{p}_top1" in scores]
    print(format_result({**scores, "metrics": [f"{p}_top1" for p in present]}))
    if "random_default_init_knn_top1" in scores or "random_default_init_linear_top1" in scores:
        print("random init (same init): this run's architecture and initialisation, untrained; (default init): the "
              "same with the framework's default initialisation (every residual block active)")
    warning = small_split_warning(scores["test_images"], scores.get("data", "the data")) \
        if "test_images" in scores else None
    if warning:
        print(warning)


def _report_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['method']} on {summary['data']} ({summary['data_source']}): {summary['steps']} steps in "
          f"{summary['seconds']:.0f} s, {summary['images_per_second']:.0f} images/s on {summary['device']}")
    if "knn_top1" in summary:
        print("top-1 % on the test split (95% interval)")
        print_scores(summary, ["knn", "linear"])
    if summary.get("skipped_files"):
        print(f"skipped {summary['skipped_files']} unreadable files (listed in skipped_files.txt)")


def _cmd_train(args: argparse.Namespace) -> int:
    options = options_from_file(args.config) if args.config else {}
    options.update({k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None})
    summary = train(**options)
    if (args.devices or 1) == 1 or launched_by_torchrun():  # with --devices N, rank 0 of the N reported it
        _report_summary(summary)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    summary = demo(out=args.out, epochs=args.epochs, subset=args.subset, progress=args.progress)
    _report_summary(summary)
    print(f"run folder: {args.out} (summary.json, metrics.jsonl, checkpoints/)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "episodes", "ways", "shots", "queries",
                                             "metric", "transfer_data")}
    result = evaluate(args.run_dir, protocol=args.protocol, data=args.data, device=args.device,
                      progress=args.progress, layer=args.layer, **options)
    if result["protocol"] == "all":
        print(f"\nall protocols on {result['data']} ({result['test_images']} test images), "
              f"{result['seconds']:.0f} s; top-1 % (few-shot: mean ± 95% CI)")
        print(result["text"])
        print(f"written: {', '.join(result['files'])}")
    else:
        print(f"{result['protocol']} on {result['data']} ({result['test_images']} test images)")
        print(format_result(result))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    rows = [("method", "paper", "year", "family", "needs")]
    for name in METHODS:
        info = CATALOGUE[name]
        rows.append((name, info.paper, str(info.year), info.family, ", ".join(info.needs) or "-"))
    print(aligned_table(rows))
    print("\noptions of one method: selfsup train --method NAME --help")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    path = preview(data=args.data, out=args.out, method=args.method, image_size=args.image_size,
                   recipe=args.recipe, crop_scale_min=args.crop_scale_min, n=args.n, seed=args.seed,
                   data_root=args.data_root, backbone=args.backbone)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``selfsup ...``; under torchrun only rank 0 prints (messages, summary), the others stay quiet."""
    signal.signal(signal.SIGTERM, _interrupt)  # outside the training steps SIGTERM acts as Ctrl-C
    if env_rank() == 0:
        return _main(argv)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return _main(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


EXIT_CODES = {"done": 0, "bad option or data": 2, "non-finite loss": 3, "file system": 4, "interrupted": 130}


def _main(argv: Sequence[str] | None = None) -> int:
    """Exit codes (``EXIT_CODES``): 0 done; 2 bad option, unusable data, unsafe/corrupt checkpoint or a run
    folder in use (argparse's own errors too); 3 NaN/Inf loss; 4 the file system refused a read or write
    (read-only, full, permission, path too long, a file where a folder should be); 130 interrupted
    (Ctrl-C, SIGTERM), with the resume or re-run command."""
    args = build_parser(_method_asked_about(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    commands = {"train": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo, "preview": _cmd_preview,
                "methods": _cmd_methods,
                **DATA_COMMANDS, **FEWSHOT_COMMANDS, **HANDOFF_COMMANDS, **REPORTING_COMMANDS}
    try:
        return commands[args.command](args)
    except (ConfigError, DataSpecError, CheckpointError, StoreError, TimmError) as err:
        message = " ".join(str(err).split())
        if isinstance(err, DataSpecError) and not message.startswith("--"):
            message = f"--data: {message}"
        print(f"selfsup {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        run_dir = err.checkpoint.parent.parent if err.checkpoint else "RUN_DIR"
        print(f"\nstopped at step {err.step}; checkpoint saved. Resume with:\n"
              f"  selfsup train --out {run_dir} --resume", file=sys.stderr)
        return 130
    except NonFiniteLoss as err:
        print(f"selfsup {args.command}: error: {err}", file=sys.stderr)
        return 3
    except DistributedRunFailed as err:  # --devices N: the processes printed why; pass on rank 0's code
        return err.returncode
    except OSError as err:
        print(f"selfsup {args.command}: error: {_file_system_message(err, args)}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the training steps (loading data, evaluating)
        print(f"\nselfsup {args.command}: interrupted. {_again(args, argv)}", file=sys.stderr)
        return 130


def _method_asked_about(argv: Sequence[str]) -> str | None:
    """X in ``selfsup train --method X --help`` (the help then lists X's own options)."""
    argv = list(argv)
    if "train" not in argv or not {"-h", "--help"} & set(argv):
        return None
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


def _checkpoint_of(args: argparse.Namespace) -> Path | None:
    out = getattr(args, "out", None)
    path = Path(out) / "checkpoints" / "last.pt" if args.command == "train" and out else None
    return path if path is not None and path.exists() else None


def _again(args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    """How to carry on: resume a run that has a checkpoint, else run the same command again."""
    if _checkpoint_of(args) is not None:
        return f"Resume with:\n  selfsup train --out {args.out} --resume"
    return f"Run it again with:\n  {shlex.join(['selfsup', *(sys.argv[1:] if argv is None else argv)])}"


def _file_system_message(err: OSError, args: argparse.Namespace) -> str:
    """One line: the path, the cause, and what was kept."""
    cause = err.strerror or str(err)
    code = errno.errorcode.get(err.errno, "") if err.errno else ""
    where = f"{err.filename}: " if err.filename else ""
    kept = _checkpoint_of(args)
    after = (f"the last good checkpoint {kept} is intact; once the cause is gone, resume with "
             f"`selfsup train --out {args.out} --resume`") if kept else "run it again once the cause is gone"
    return f"{where}{cause}{f' [{code}]' if code else ''}; {after}"
