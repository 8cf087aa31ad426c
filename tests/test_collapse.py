"""BYOL's known behaviour (Grill et al. 2020, Table 5): without its predictor it collapses, with it it does not.

Short digits runs with a fixed seed; the std monitor (std of L2-normalised projections x sqrt(d):
~1 spread, 0 collapsed) and the collapse warning tell the two apart.
"""

import json

import pytest

from selfsup.api import train

RUN = dict(method="byol", data="digits", backbone="resnet18", width=0.125, epochs=3, batch_size=64, seed=0,
           progress=False, eval_after=False, log_every=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def _std_trace(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["std_scaled"] for r in records if "std_scaled" in r]


def test_no_predictor_collapses_and_is_flagged(tmp_path, capsys):
    summary = train(out=str(tmp_path / "no-pred"), predictor=False, **RUN)
    trace = _std_trace(tmp_path / "no-pred")
    assert max(trace[-3:]) < 0.1
    assert "collapse" in capsys.readouterr().out
    assert summary["collapse_warning_steps"]  # recorded in summary.json too


def test_with_predictor_does_not_collapse(tmp_path, capsys):
    summary = train(out=str(tmp_path / "pred"), **RUN)
    trace = _std_trace(tmp_path / "pred")
    assert min(trace[-3:]) > 0.4
    assert "collapse" not in capsys.readouterr().out
    assert summary["collapse_warning_steps"] == []
