"""Large sources built cheaply for benchmarks/bench_scale.py: a Parquet source of N rows, a CSV index
of N rows and WebDataset tars of N samples, all of one small PNG (planning never decodes them)."""

from __future__ import annotations

from pathlib import Path


def parquet_source(folder: Path, rows: int, per_file: int = 1_000_000) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import png_bytes

    blob = png_bytes(np.full((28, 28, 1), 128, np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        image = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([blob], pa.binary()))
        label = pa.array(np.arange(start, start + n, dtype=np.int64) % 10)
        pq.write_table(pa.table({"image": image, "label": label}), folder / f"test-{k:05d}.parquet",
                       row_group_size=100_000)


def index_source(path: Path, rows: int) -> None:
    """A CSV index of ``rows`` image paths and class names (the images themselves are not needed to plan)."""
    with open(path, "w") as fh:
        fh.write("path,label\n")
        fh.writelines(f"train/n{i % 1000:08d}/img_{i:08d}.JPEG,n{i % 1000:08d}\n" for i in range(rows))


def webdataset_source(folder: Path, samples: int, tars: int = 4) -> None:
    """``tars`` WebDataset tars of ``samples`` in all: one 28 px PNG and a ``.cls`` label each."""
    import io
    import tarfile

    import numpy as np

    from tests.helpers import png_bytes

    blob = png_bytes(np.full((28, 28, 1), 128, np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(tars):
        with tarfile.open(folder / f"test-{t:04d}.tar", "w") as tar:
            for i in range(t * samples // tars, (t + 1) * samples // tars):
                for name, data in ((f"s{i:08d}.png", blob), (f"s{i:08d}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
