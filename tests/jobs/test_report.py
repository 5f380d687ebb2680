"""``python -m jobs.report`` over real CSV/PNG files in the layouts jobs.perturb, jobs.sanity and jobs.roar write."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jobs import report  # noqa: E402

RUN = {"config": {"source": "fashion-mnist", "split": "test", "checkpoint": "tiny.pt", "methods": {"gradient": {}}}}


def png(path: Path, label: str) -> bytes:
    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot(np.arange(5), np.arange(5) ** 2, label=label)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path.read_bytes()


def make_maps(tmp_path: Path) -> tuple[Path, bytes]:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "_meta").mkdir()
    (maps / "_meta" / "run.json").write_text(json.dumps(RUN))
    return maps, png(maps / "_meta" / "examples.png", "examples")


def make_perturbation(folder: Path) -> bytes:
    folder.mkdir(parents=True)
    rows = [{"method": m, "fill": "mean", "rank": "abs", "order": o, "fraction": f, "mean_drop": d, "std_drop": 0.1,
             "accuracy": 0.5, "n_images": 4}
            for m, d in (("pathway", 0.5), ("gradient", 0.3)) for o in ("morf", "lerf") for f in (0.0, 0.5, 1.0)]
    pd.DataFrame(rows).to_csv(folder / "perturbation.csv", index=False)
    pd.DataFrame([{"method": "pathway", "fill": f, "rank": "abs", "order": "morf", "auc": 0.7512, "accuracy_auc": 0.3, "n_images": 4}
                  for f in ("mean", "nli")] +
                 [{"method": "pathway", "fill": "nli", "rank": "abs", "order": "lerf", "auc": 0.2101, "accuracy_auc": 0.8,
                   "n_images": 4},
                  {"method": "gradient", "fill": "nli", "rank": "signed", "order": "morf", "auc": 0.6003,
                   "accuracy_auc": 0.4, "n_images": 4},
                  {"method": "random", "fill": "nli", "rank": "-", "order": "random", "auc": 0.4004, "accuracy_auc": 0.7,
                   "n_images": 4}]).to_csv(folder / "auc.csv", index=False)
    return png(folder / "perturbation.png", "perturbation")


def make_sanity(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [{"method": m, "step": i, "step_name": s, "metric": k, "mean": 1.0 - 0.3 * i, "sd_draws": 0.0123 * i,
             "std": 0.2, "n": 4, "draws": 3}
            for m in ("grad_cam", "guided") for i, s in enumerate(("original", "fc")) for k in ("ssim", "spearman_abs")]
    pd.DataFrame(rows).to_csv(folder / "sanity.csv", index=False)
    (folder / "sanity.json").write_text(json.dumps({"samples": 4, "draws": 3, "randomize": "reset", "group": "module"}))
    png(folder / "sanity.png", "sanity")


def make_roar(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [{"method": m, "t": t, "seed": s, "accuracy": 0.8 - t / 200 + s / 100, "epochs": 1, "seconds": 2.0}
            for m, t in (("none", 0), ("sobel", 50), ("pathway", 50)) for s in (0, 1)]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    pd.DataFrame([{"method": m, "t": 50, "fill": "nli", "accuracy": 0.55, "std": 0.01, "n": 2, "mask_accuracy": a,
                   "mask_std": 0.02, "mask_n": 2, "p_value": p, "verdict": v}
                  for m, a, p, v in (("pathway", 0.56, 0.7, "not valid: the mask leaks the class"),
                                     ("sobel", 0.1, 0.001, "valid: the mask alone is at chance"))]).to_csv(
        folder / "summary.csv", index=False)
    (folder / "run.json").write_text(json.dumps({"budget": {"checkpoint_accuracy": 0.9, "unmodified_mean": 0.8,
                                                            "unmodified_std": 0.01, "verdict": "UNDER-TRAINED: 10.0"}}))
    png(folder / "roar.png", "roar")


def test_report_gathers_every_section(tmp_path, capsys) -> None:
    maps, examples = make_maps(tmp_path)
    perturbation = make_perturbation(maps / "_eval" / "perturbation")  # the default location under --maps
    make_sanity(tmp_path / "sanity")
    make_roar(maps / "_eval" / "roar")
    out = tmp_path / "report"
    code = report.main(["--maps", str(maps), "--sanity", str(tmp_path / "sanity"), "--output", str(out)])
    assert code == 0

    page = (out / "report.html").read_text()
    for figure in (examples, perturbation):
        assert f"data:image/png;base64,{base64.b64encode(figure).decode()}" in page
    assert page.count("data:image/png;base64,") == 4
    for method in ("pathway", "gradient", "random", "grad_cam", "guided", "sobel"):
        assert f"<td>{method}</td>" in page
    assert "0.7512" in page and "0.2101" in page  # AUC values from auc.csv
    assert "nli abs morf" in page and "ROAD acc. nli abs lerf" in page
    assert "0.700 ± 0.012" in page and "4 samples, 3 draws, modules reset" in page  # sanity: mean ± sd over draws
    assert "not valid: the mask leaks the class" in page and "55.0 ± 1.0" in page and "56.0 ± 2.0" in page
    assert "budget check: unmodified retrain 80.0 ± 1.0 % vs checkpoint 90.0 %" in page and "UNDER-TRAINED" in page
    assert '"checkpoint": "tiny.pt"' in page and "<pre>" in page
    assert "not run yet" not in page.lower()

    markdown = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(links) == ["examples.png", "perturbation.png", "roar.png", "sanity.png"]
    for link in links:
        assert (out / link).is_file()
    assert (out / "perturbation.png").read_bytes() == perturbation
    assert "| pathway |" in markdown and "0.7512" in markdown and '"checkpoint": "tiny.pt"' in markdown
    assert f"xdg-open {out / 'report.html'}" in capsys.readouterr().out


def test_degenerate_curves_and_a_model_at_chance_are_noted(tmp_path) -> None:
    maps, _ = make_maps(tmp_path)
    make_perturbation(maps / "_eval" / "perturbation")
    note = "ROAD accuracy is 0 for every method and fraction: the model predicts none of the images' labels"
    (maps / "_eval" / "perturbation" / "auc.json").write_text(json.dumps({"notes": [note]}))
    make_roar(maps / "_eval" / "roar")
    verdict = "NOT VALID: the model is at chance on these images (checkpoint 0.0 %; chance 10.0 % = 1/10, +5 points)"
    (maps / "_eval" / "roar" / "run.json").write_text(json.dumps({
        "budget": {"checkpoint_accuracy": 0.0, "unmodified_mean": 0.0, "verdict": verdict, "chance": 0.1,
                   "num_classes": 10, "majority": 1.0},
        "notes": [f"the model is at chance on these images: {verdict}"]}))
    out = tmp_path / "report"
    assert report.main(["--maps", str(maps), "--sanity", str(tmp_path / "none"), "--output", str(out)]) == 0
    page = (out / "report.md").read_text()
    assert f"**Note: {note}**" in page
    assert ("**chance: 10.0 % (1/10 classes the model predicts); majority class of the test images: 100.0 %**"
            in page)
    assert f"**Note: the model is at chance on these images: {verdict}**" in page


def test_missing_sections_are_listed_not_fatal(tmp_path, capsys) -> None:
    maps, _ = make_maps(tmp_path)
    out = tmp_path / "report"
    code = report.main(["--maps", str(maps), "--perturbation", str(tmp_path / "none-p"),
                        "--sanity", str(tmp_path / "none-s"), "--roar", str(tmp_path / "none-r"), "--output", str(out)])
    assert code == 0
    page = (out / "report.html").read_text()
    assert page.count("Not run yet") == 3
    assert "python -m jobs.sanity" in page and f"python -m jobs.perturb --maps {maps}" in page
    assert "python -m jobs.roar" in page
    markdown = (out / "report.md").read_text()
    assert markdown.count("Not run yet") == 3 and "![examples.png](examples.png)" in markdown
    assert (out / "examples.png").is_file() and not (out / "sanity.png").exists()


def test_unreadable_maps_is_one_line_exit_2(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-maps"
    code = report.main(["--maps", str(missing), "--output", str(tmp_path / "report")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("jobs.report: error: --maps: cannot read the map dataset's run.json")
    assert str(missing) in err and "jobs.attribute" in err and "Traceback" not in err
    assert not (tmp_path / "report").exists()


def test_report_reads_and_writes_s3(s3_server, tmp_path, capsys) -> None:
    """Every input and the report itself on s3:// (SeaweedFS on loopback); no secret in the page."""
    from storage.io.fs import open_fs

    maps, examples = make_maps(tmp_path)
    perturbation = make_perturbation(maps / "_eval" / "perturbation")
    make_sanity(maps / "_eval" / "sanity")
    make_roar(maps / "_eval" / "roar")
    options = s3_server.storage_options
    root = s3_server.url("report-e2e")
    fs, path = open_fs(root, options)
    fs.put(str(maps), path + "/maps", recursive=True)
    out = f"{root}/report"
    code = report.main(["--maps", f"{root}/maps", "--sanity", f"{root}/maps/_eval/sanity", "--output", out,
                        "--storage-options", json.dumps(options)])
    assert code == 0, capsys.readouterr().err
    page = fs.cat_file(f"{path}/report/report.html").decode()
    for figure in (examples, perturbation):
        assert f"data:image/png;base64,{base64.b64encode(figure).decode()}" in page
    assert page.count("data:image/png;base64,") == 4 and "not run yet" not in page.lower()
    assert options["secret"] not in page and options["secret"] not in capsys.readouterr().out
    markdown = fs.cat_file(f"{path}/report/report.md").decode()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert fs.exists(f"{path}/report/{link}")
