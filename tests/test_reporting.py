"""selfsup report / compare: PNG plots, the self-contained HTML page, retrieval neighbours, legends."""

import base64
import io
import json
import re
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import copy_run
from selfsup.api import compare, report, train
from selfsup.cli import main
from selfsup.reporting.figures import cosine_neighbors, embed_2d, pick_queries
from selfsup.reporting.plots import compare_figure, plot_run, run_labels

RUN_PLOTS = ("loss", "lr", "tau", "std_scaled", "rankme", "alignment_uniformity", "cosine")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the shared tiny run (its folder name, byol-tiny, is the legend label) with records added."""
    out = copy_run(tiny_run, tmp_path_factory.mktemp("reporting"))
    # what another engineer's epoch-end hook logs: online-probe / kNN accuracy records, at the last step
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": last["step"], "epoch": last["epoch"], "online_probe_top1": 0.5,
                            "knn_top1": 0.55}) + "\n")
    (out / "eval").mkdir()  # as `selfsup eval RUN_DIR --data ...` writes it
    (out / "eval" / "knn-digits.json").write_text(json.dumps(
        {"protocol": "knn", "data": "digits", "data_source": "sklearn", "test_images": 359, "train_images": 1438,
         "knn_top1": 0.8123, "random_init_knn_top1": 0.5, "raw_pixels_knn_top1": 0.97, "seconds": 1.0}))
    return out


@pytest.fixture(scope="module")
def reported(run_dir):
    return report(run_dir, device="cpu", progress=False)


def _check_png(data: bytes, min_side: int = 200) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert min(image.size) >= min_side and max(image.size) <= 4000, image.size
    assert np.asarray(image.convert("L"), dtype=np.float32).std() > 0  # not blank
    return image


def test_report_writes_readable_pngs(run_dir, reported):
    assert reported.directory == run_dir / "report"
    for name in (*RUN_PLOTS, "accuracy", "throughput"):
        path = reported.plots[name]
        assert path == run_dir / "report" / f"{name}.png"
        _check_png(path.read_bytes())
    for name in ("scores", "embedding", "retrieval", "views"):
        _check_png(reported.images[name].read_bytes())
    assert reported.notes == []


def test_html_is_self_contained_and_every_image_loads(run_dir, reported):
    page = reported.html.read_text(encoding="utf-8")
    assert reported.html == run_dir / "report" / "index.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(sources) == len(re.findall(r"<img\b", page)) >= 12
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        _check_png(base64.b64decode(src.split(",", 1)[1], validate=True), min_side=100)
    for text in ("Results", "random init", "raw pixels", "Collapse monitors", "Embedding map",
                 "Nearest neighbours", "Augmentations", "projection_dim", "kNN top-1"):
        assert text in page
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{100 * summary['knn_top1']:.2f}%" in page


def test_eval_json_tables_appear_in_html(reported):
    page = reported.html.read_text(encoding="utf-8")
    assert "knn-digits.json" in page and "81.23%" in page and "+31.23 pts" in page


def test_cosine_neighbors_are_the_true_nearest():
    # gallery rows at angles 0..350 degrees with very different norms: Euclidean nearest != cosine nearest
    angles = torch.arange(0, 360, 10, dtype=torch.float64) * torch.pi / 180
    norms = torch.linspace(0.1, 50, len(angles), dtype=torch.float64)[torch.randperm(len(angles))]
    gallery = torch.stack([angles.cos(), angles.sin()], 1) * norms[:, None]
    queries = torch.tensor([[1.0, 0.02], [0.0, -3.0], [-5.0, 5.1]], dtype=torch.float64)
    sims, idx = cosine_neighbors(queries, gallery, k=3)
    assert idx[0].tolist() == [0, 1, 35]            # 0 deg, then 10 deg (closer to +1.1 deg) than 350
    assert idx[1].tolist()[0] == 27                 # 270 deg
    assert set(idx[1].tolist()[1:]) == {26, 28}
    assert idx[2].tolist()[0] == 13                 # 134.4 deg -> 130 deg
    torch.testing.assert_close(sims, torch.sort(sims, dim=1, descending=True).values)
    # against brute force on random data
    q, g = torch.randn(5, 16), torch.randn(200, 16) * torch.rand(200, 1) * 10
    sims, idx = cosine_neighbors(q, g, k=8)
    brute = torch.tensor([[float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for b in g] for a in q])
    torch.testing.assert_close(idx, brute.argsort(dim=1, descending=True)[:, :8])
    torch.testing.assert_close(sims, brute.sort(dim=1, descending=True).values[:, :8], rtol=1e-5, atol=1e-5)
    assert cosine_neighbors(q, g[:3], k=8)[1].shape == (5, 3)  # k capped at the gallery size


def test_pick_queries_spreads_over_classes():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 40)
    picked = pick_queries(labels, 6, seed=1)
    assert len(set(picked.tolist())) == 6
    assert sorted(set(labels[picked].tolist())) == [0, 1, 2]
    assert torch.equal(picked, pick_queries(labels, 6, seed=1))


def test_embed_2d_uses_umap_when_importable_else_tsne(monkeypatch):
    features = torch.randn(30, 8)
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError
    coords, used = embed_2d(features, "auto")
    assert used == "t-SNE" and coords.shape == (30, 2) and np.isfinite(coords).all()
    seen = {}

    class FakeUMAP:
        def __init__(self, **options):
            seen.update(options)

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    coords, used = embed_2d(features, "auto")
    assert used == "UMAP" and seen["metric"] == "cosine" and coords.shape == (30, 2)


def test_compare_overlays_runs_with_folder_names_in_legend(run_dir, tmp_path):
    other = tmp_path / "byol-tau0.9"
    other.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", other / "metrics.jsonl")  # a second run, curves only
    out = tmp_path / "ablation.png"
    result = compare([run_dir, other], out=out, metrics="loss,std_scaled,rankme,knn_top1")
    assert result.path == out and result.labels == ["byol-tiny", "byol-tau0.9"]
    assert result.metrics == ["loss", "std_scaled", "rankme", "knn_top1"]
    legend = result.figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["byol-tiny", "byol-tau0.9"]
    panels = [ax for ax in result.figure.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == 4
    assert all(len(ax.get_lines()) >= 2 for ax in panels[:3])  # one line per run
    _check_png(out.read_bytes())
    # the CLI mirrors it; an unknown metric is a one-line error with exit code 2
    assert main(["compare", str(run_dir), str(other), "--out", str(tmp_path / "cli.png")]) == 0
    _check_png((tmp_path / "cli.png").read_bytes())
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "x.png"), "--metrics", "nope"]) == 2
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2


def test_plots_tolerate_partial_records_and_clashing_names(tmp_path):
    records = [{"step": 1, "epoch": 0.5, "loss": 2.0, "std_scaled": float("nan")},
               {"step": 2, "epoch": 1.0, "loss": 1.5, "std_scaled": 0.9},
               {"step": 2, "epoch": 1.0, "online_probe_top1": 0.4}]
    figures = plot_run(records)
    assert list(figures) == ["loss", "accuracy", "std_scaled"]
    assert run_labels([tmp_path / "a" / "seed0", tmp_path / "b" / "seed0", tmp_path / "c"]) == \
        ["a/seed0", "b/seed0", "c"]
    fig = compare_figure([("x", records, {}), ("y", [], {"knn_top1": 0.5})], ["loss", "knn_top1"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x", "y"]


def test_report_cli(run_dir, reported, capsys):
    assert main(["report", str(run_dir), "--no-html"]) == 0
    assert "std_scaled.png" in capsys.readouterr().out
    assert main(["report", str(run_dir.parent / "nothing-here")]) == 2


def test_report_of_a_vit_run_shows_its_attention_maps(tmp_path, reported):
    out = tmp_path / "dino-vit"
    train(method="dino", data="digits", subset=300, backbone="vit_tiny", width=0.25, epochs=1, batch_size=64,
          progress=False, out=str(out))
    result = report(out, device="cpu", progress=False, max_points=100, max_gallery=200)
    image = _check_png(result.images["attention"].read_bytes())
    assert image.size[1] > image.size[0] / 2  # 8 rows of image + 3 heads + mean
    page = result.html.read_text(encoding="utf-8")
    assert "Attention maps" in page and "[CLS] token" in page
    assert "attention" not in reported.images  # a ResNet run has none
