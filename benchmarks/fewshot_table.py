"""Few-shot transfer to held-out classes: ProtoNet vs CrossTransformer vs CrossTransformer + SimCLR
episodes, from scratch and from a BYOL initialisation (issue 20); prints JSON lines, writes a table.

Fashion-MNIST with classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) held out: episodic training
on 5-way episodes of the base classes 0-4, then 5-way 1- and 5-shot episodes (15 queries, mean and
95% CI) on the novel classes, on digits and on the ``photos`` colour crops (all their classes, adapted
to the encoder: 1 channel, 28 px), and the supervision-collapse fractions of the novel-class test
images' 10 nearest neighbours among all test images. The "starting encoder" rows are Prototypical
Networks on the frozen features before episodic training (random init, BYOL). Every run uses the same
seed, so the same test episodes.

The BYOL initialisation is the run of

    selfsup train --method byol --data fashion-mnist --holdout-classes 5-9 --subset 10000 --width 0.25 \\
                  --epochs 5 --batch-size 256 --out /tmp/fs-byol --no-progress

(``--byol``; trained by this script with those settings when the folder does not exist). Finished rows
are kept in ``OUT/results.jsonl``, so an interrupted table continues where it stopped; ``OUT/table.md``
is rewritten after each row.

    python benchmarks/fewshot_table.py [--episodes 300] [--eval-pool test] [--out runs/fewshot-table]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from selfsup.runs.episodic import train_fewshot

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from _common import comma_list  # noqa: E402

# row name -> train_fewshot options; the first three are the table, the others the recipe checks
ROWS: dict[str, dict[str, Any]] = {
    "protonet": dict(method="protonet"),
    "ctx": dict(method="crosstransformer"),
    "ctx_simclr": dict(method="crosstransformer", simclr_episodes=0.5),
    "protonet_step_lr": dict(method="protonet", schedule="step"),  # the paper's schedule: constant over 2000 episodes
    "ctx_high_res": dict(method="crosstransformer", high_res=True),  # the paper's stride-16 last stage
}
TABLE_ROWS = ("protonet", "ctx", "ctx_simclr")
INITS = ("scratch", "byol")
DOMAINS = "digits,photos"
BYOL_RUN = dict(method="byol", data="fashion-mnist", holdout_classes="5-9", subset=10000, width=0.25, epochs=5,
                batch_size=256, progress=False)


def _cell(r: dict[str, Any], key: str) -> str:
    if key not in r:
        return "-"
    return f"{100 * r[key]:.1f} ± {100 * r[key + '_ci95']:.1f}"


def _collapse(r: dict[str, Any], key: str) -> str:
    if key + "same_class" not in r:
        return "-"
    return f"{100 * r[key + 'same_class']:.1f} / {100 * r[key + 'base']:.1f}"


def table(records: list[dict[str, Any]], domains: list[str]) -> str:
    """Markdown: one row per (init, method), the starting encoders first; accuracies in % with the 95% CI."""
    tags = [d.split(":")[0].replace("-", "_") for d in domains]
    head = ["init", "model", "novel 1-shot", "novel 5-shot"] + [f"{t} {k}-shot" for t in tags for k in (1, 5)] + \
        ["NN own / base (backbone)", "NN own / base (value head)", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(init: str, model: str, r: dict[str, Any], prefix: str, seconds: str) -> str:
        cells = [init, model, _cell(r, f"{prefix}fewshot_5way_1shot"), _cell(r, f"{prefix}fewshot_5way_5shot")]
        cells += [_cell(r, f"{prefix}{t}_fewshot_5way_{k}shot") for t in tags for k in (1, 5)]
        cells += [_collapse(r, f"{prefix}collapse_"), _collapse(r, f"{prefix}value_collapse_") if not prefix else "-",
                  seconds]
        return "| " + " | ".join(cells) + " |"

    for init in INITS:
        ours = [r for r in records if r["init_kind"] == init]
        start = next((r for r in ours if "init_fewshot_5way_1shot" in r), None)
        if start is not None:
            lines.append(row(init, "starting encoder (frozen, ProtoNet)", start, "init_", "-"))
        for r in ours:
            lines.append(row(init, r["row"], r, "", f"{r['train_seconds']:.0f}"))
    if records:
        r = records[0]
        lines.append(f"\nchance: NN own class {100 * r['collapse_chance_same_class']:.1f}, "
                     f"NN base {100 * r['collapse_chance_base']:.1f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(TABLE_ROWS))
    parser.add_argument("--inits", default=",".join(INITS))
    parser.add_argument("--byol", default="/tmp/fs-byol", help="BYOL run folder (trained when absent)")
    parser.add_argument("--episodes", type=int, default=300, help="training episodes of every run")
    parser.add_argument("--eval-episodes", type=int, default=600)
    parser.add_argument("--eval-pool", default="test", choices=("test", "all"))
    parser.add_argument("--eval-data", default=DOMAINS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/fewshot-table")
    args = parser.parse_args()
    rows = comma_list(parser, "--rows", args.rows, ROWS)
    inits = comma_list(parser, "--inits", args.inits, INITS)
    domains = [d for d in args.eval_data.split(",") if d]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["init_kind"], r["row"]) for r in records}
    if "byol" in inits and not (Path(args.byol) / "summary.json").exists():
        from selfsup.runs.train import train
        train(**BYOL_RUN, out=args.byol)
    for init in inits:
        for name in rows:
            if (init, name) in done:
                continue
            summary = train_fewshot(
                **ROWS[name], init=args.byol if init == "byol" else None, data="fashion-mnist", holdout_classes="5-9",
                width=0.25, episodes=args.episodes, eval_episodes=args.eval_episodes, eval_pool=args.eval_pool,
                eval_data=",".join(domains), eval_init=name == "protonet", seed=args.seed,
                out=str(out / f"{init}-{name}"), overwrite=True, progress=False)
            record = {"init_kind": init, "row": name, **summary}
            print(json.dumps(record), flush=True)
            records.append(record)
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            (out / "table.md").write_text(table(records, domains))
    print(table(records, domains))


if __name__ == "__main__":
    main()
