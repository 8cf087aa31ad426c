"""Memory of training from a streamed store at two dataset sizes, and its speed against the in-memory path.

For each size: a synthetic image folder (``python -m selfsup.data.synthetic``: Fashion-MNIST items on
noisy colour canvases, JPEG), converted once to a store (``selfsup convert``), then a real training
run, ``selfsup train --method byol --data store:STORE --data-mode stream``, in a subprocess: views of
``--view-size`` cropped from the full stored images by ``--workers`` DataLoader processes. The run
is stopped with SIGTERM (a clean stop: checkpoint, exit 130) once ``--steps`` steps are logged after
the warm-up. The peak of the PSS summed over the training process and its workers (shared pages
counted once) is sampled every 0.2 s, next to the peak RSS of the training process itself.

On the smaller data the same training runs from the same store decoded into memory (``--data-mode
memory``: resize + centre crop at the view size, then the in-memory loop), alternating with a second
stream run (stream, memory, stream, memory: two rounds), for the images/s ratio measured in one run.
Folders and stores are kept in ``--work`` and reused.

    python benchmarks/stream_memory.py --sizes 20000,80000 --image-size 256 --view-size 64 \\
        --batch-size 256 --steps 30 --work /data/stream-bench
    python benchmarks/stream_memory.py --smoke                            # 300 and 600 images of 64 px

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selfsup.data.store import build_store, is_store
from selfsup.data.synthetic import make_synthetic_folder

WARMUP_STEPS = 5


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:  # the process ended
        pass
    return 0.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (read from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        found += frontier
    return found


class PeakMemory:
    """Samples, in a thread, the summed PSS of ``pid`` and its descendants and the RSS of ``pid``."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.peak_pss_mb, self.peak_rss_mb = pid, 0.0, 0.0
        self._every, self._done = every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            self.peak_pss_mb = max(self.peak_pss_mb, sum(_pss_mb(p) for p in _tree(self.pid)))
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(self.pid))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _logged_steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return [r for r in records if "images_per_second" in r]


def train_run(args: argparse.Namespace, store: Path, mode: str, out: Path) -> dict:
    """One ``selfsup train`` run from ``store`` in ``mode``, stopped after the warm-up and ``--steps`` steps."""
    command = [sys.executable, "-m", "selfsup", "train", "--method", "byol", "--data", f"store:{store}",
               "--data-mode", mode, "--image-size", str(args.view_size), "--width", "0.25",
               "--batch-size", str(args.batch_size), "--epochs", "1000", "--log-every", str(args.log_every),
               "--data-workers", str(args.workers), "--no-eval-after", "--no-progress", "--overwrite",
               "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    monitor = PeakMemory(proc.pid)
    started = time.perf_counter()
    while proc.poll() is None:
        records = _logged_steps(out)
        if records and records[-1]["step"] >= WARMUP_STEPS + args.steps:
            proc.send_signal(signal.SIGTERM)  # a clean stop: checkpoint, exit 130
            break
        time.sleep(0.5)
    code = proc.wait()
    monitor.stop()
    if code not in (0, 130):
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {out.with_suffix('.log')}")
    rates = [r["images_per_second"] for r in _logged_steps(out) if r["step"] > WARMUP_STEPS]
    return {"mode": mode, "images_per_second": round(statistics.median(rates), 1),
            "logged_windows": len(rates), "peak_pss_total_mb": round(monitor.peak_pss_mb, 1),
            "peak_rss_main_mb": round(monitor.peak_rss_mb, 1), "wall_s": round(time.perf_counter() - started, 1)}


def _prepare(args: argparse.Namespace, n: int) -> Path:
    folder, store = Path(args.work) / f"folder-{n}-{args.image_size}", Path(args.work) / f"store-{n}-{args.image_size}"
    marker = folder / ".complete"
    if not marker.exists():
        make_synthetic_folder(folder, n, size=args.image_size, seed=0, progress=False)
        marker.touch()
    if not is_store(store):
        build_store(f"folder:{folder}", store, shard_size=args.shard_size, progress=False)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,80000", help="two numbers of images, smaller first")
    parser.add_argument("--image-size", type=int, default=256, help="short side of the synthetic images")
    parser.add_argument("--view-size", type=int, default=64, help="side of the training views (--image-size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="measured steps (after the warm-up steps)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding the store")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--work", default=None, help="folder for the generated data (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="300 and 600 images of 64 px, views of 32 px")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.image_size, args.view_size, args.batch_size, args.steps, args.shard_size = \
            "300,600", 64, 32, 32, 5, 100
        args.log_every = 1
    work = tempfile.TemporaryDirectory() if args.work is None else None
    args.work = args.work or work.name
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = {n: _prepare(args, n) for n in sizes}
    runs = Path(args.work) / "runs"
    runs.mkdir(exist_ok=True)
    stream = {}
    for n in sizes:
        store_mb = sum(f.stat().st_size for f in stores[n].iterdir()) / 2**20
        stream[str(n)] = {"store_mb": round(store_mb, 1), "decoded_uint8_mb_at_image_size":
                          round(n * 3 * args.image_size**2 / 2**20, 1),
                          **train_run(args, stores[n], "stream", runs / f"stream-{n}")}
    rounds = [(train_run(args, stores[sizes[0]], "stream", runs / f"ab-stream-{r}"),
               train_run(args, stores[sizes[0]], "memory", runs / f"ab-memory-{r}")) for r in range(2)]
    small, large = stream[str(sizes[0])], stream[str(sizes[-1])]
    print(json.dumps({
        "benchmark": "stream_memory", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": _dt.date.today().isoformat(), "host": platform.node(), "load_average": os.getloadavg(),
        "settings": {k: getattr(args, k) for k in ("image_size", "view_size", "batch_size", "steps", "workers",
                                                    "threads", "shard_size")},
        "stream": stream,
        "peak_pss_ratio_large_to_small": round(large["peak_pss_total_mb"] / small["peak_pss_total_mb"], 3),
        "peak_rss_ratio_large_to_small": round(large["peak_rss_main_mb"] / small["peak_rss_main_mb"], 3),
        "alternating_rounds_on_smaller_data": rounds,
        "stream_to_memory_images_per_second": round(statistics.median(
            s["images_per_second"] / m["images_per_second"] for s, m in rounds), 3),
    }, indent=2))
    if work is not None:
        work.cleanup()


if __name__ == "__main__":
    main()
