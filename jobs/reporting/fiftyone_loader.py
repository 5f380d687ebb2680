"""Load a ``python -m jobs.export --to fiftyone DIR`` export into FiftyOne (copied into DIR as load_fiftyone.py).

    python DIR/load_fiftyone.py [DIR] [--name NAME] [--persistent] [--launch]
    # or, in Python:  import runpy; load = runpy.run_path("DIR/load_fiftyone.py")["load"]; ds = load("DIR")

Needs only fiftyone and the standard library (not this project), so it runs in any Python that has
fiftyone. Each method is one ``fo.Heatmap`` field: ``map_path`` is the 16-bit PNG, ``range`` is
``[0, 65535]`` (FiftyOne's range is that of the stored pixel values) and the map's own value range
is the heatmap's ``lo`` / ``hi`` attributes: value = lo + pixel / 65535 * (hi - lo). ``ground_truth``
and ``prediction`` are ``fo.Classification`` of ``label`` and ``predicted`` (class names where the
checkpoint has them); the other details are plain fields.

Tested by tests/jobs/test_export.py.
"""

from __future__ import annotations

import argparse
import json
import os


def load(directory: str | None = None, name: str | None = None, persistent: bool = False):  # noqa: ANN201
    """The export in ``directory`` (default: this file's folder) as a new ``fo.Dataset`` (an existing
    dataset of that name is replaced: the export is the truth)."""
    import fiftyone as fo

    directory = os.path.abspath(directory or os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(directory, "samples.json"), encoding="utf-8") as f:
        export = json.load(f)
    classes = export.get("classes") or []

    def classification(index):  # noqa: ANN001, ANN202
        if index is None:
            return None
        return fo.Classification(label=classes[index] if 0 <= index < len(classes) else str(index))

    dataset = fo.Dataset(name or export["name"], persistent=persistent, overwrite=True)
    samples = []
    for row in export["samples"]:
        sample = fo.Sample(filepath=os.path.join(directory, row["filepath"]), sample_id=row["sample_id"])
        for key, value in row["fields"].items():
            sample[key] = value
        sample["ground_truth"] = classification(row["fields"].get("label"))
        sample["prediction"] = classification(row["fields"].get("predicted"))
        for field, heatmap in row["heatmaps"].items():
            sample[field] = fo.Heatmap(map_path=os.path.join(directory, heatmap["map_path"]), range=[0, 65535],
                                       lo=heatmap["lo"], hi=heatmap["hi"], signed=heatmap["signed"])
        samples.append(sample)
    dataset.add_samples(samples)
    dataset.info = {k: export[k] for k in ("maps", "images", "heatmap_encoding", "methods", "skipped")}
    dataset.save()
    return dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default=None, help="the export folder (default: this file's)")
    p.add_argument("--name", default=None, help="dataset name (default: the map dataset's folder name)")
    p.add_argument("--persistent", action="store_true", help="keep the dataset in FiftyOne's database")
    p.add_argument("--launch", action="store_true", help="open the FiftyOne App on it")
    args = p.parse_args()
    dataset = load(args.directory, args.name, args.persistent)
    print(f"loaded {len(dataset)} samples into FiftyOne dataset {dataset.name!r}")
    if args.launch:
        import fiftyone as fo

        fo.launch_app(dataset).wait()


if __name__ == "__main__":
    main()
