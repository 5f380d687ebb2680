"""Pick the blur control's sigma: the Gaussian blur that makes stored gradient maps as spatially
autocorrelated as stored pathway maps (attribution.evaluation.smoothness defines the measure).

    python -m jobs.blur_sigma --maps outputs/maps/fmt-train --record outputs/logs/fm-textures-sigma.json
    python -m jobs.attribute ... --methods "blur=blur_gradient:sigma=<sigma>"

ROAR is known to reward blurry maps (arXiv 2304.13836). A method that beats the gradient under
ROAR only because its maps are smoother would score like the gradient blurred to the same
smoothness; this job chooses that blur from the train split's maps (a seeded sample), so the
control is fixed before any retrain sees the test split. It prints the sigma and the ``--methods``
spec and, with ``--record``, writes them as JSON (benchmarks/run_evaluation.sh reads it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import JobError, job_parser, positive_float, positive_int, run_main, storage_flags, storage_options_from


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.blur_sigma", __doc__, [storage_flags()])
    p.add_argument("--maps", required=True, help="map dataset holding both methods (the train split's)")
    p.add_argument("--reference", default="pathway", help="method label whose smoothness is matched")
    p.add_argument("--blurred", default="gradient", help="method label that is blurred (blur_gradient's input)")
    p.add_argument("--limit", type=positive_int, default=512, help="maps per method, a seeded sample of the shared ids")
    p.add_argument("--max-lag", type=positive_int, default=2, help="lags 1..N pooled into the autocorrelation")
    p.add_argument("--max-sigma", type=positive_float, default=8.0, help="the largest sigma searched (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample")
    p.add_argument("--label", default="blur", help="the blur control's method label in the printed spec")
    p.add_argument("--record", default=None, help="local JSON file to write the result to")
    return p.parse_args(argv)


def sample_maps(url: str, methods: Sequence[str], options: dict, limit: int, seed: int) -> dict[str, np.ndarray]:
    """``limit`` maps [N, H, W] per method, of the same seeded sample of ids both methods have."""
    from storage.maps.reader import read_maps

    frames = {m: read_maps(url, m, options, columns=["sample_id", "map"]) for m in methods}
    for method, frame in frames.items():
        if frame.empty:
            raise JobError(f"{url} holds no committed maps of method {method!r}; compute them with "
                           f"python -m jobs.attribute --output {url} --methods {method}")
    shared = sorted(set.intersection(*(set(f.sample_id) for f in frames.values())))
    if not shared:
        raise JobError(f"{url}: no sample has maps of every one of {list(methods)}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(shared), size=min(limit, len(shared)), replace=False).tolist())
    ids = [shared[i] for i in chosen]
    out = {}
    for method, frame in frames.items():
        by_id = dict(zip(frame.sample_id, frame["map"]))
        out[method] = np.stack([by_id[i] for i in ids]).astype(np.float32)
    return out


def choose(maps: dict[str, np.ndarray], reference: str, blurred: str, max_lag: int, max_sigma: float) -> dict[str, Any]:
    """The matched sigma and the smoothness figures behind it (attribution.evaluation.smoothness)."""
    from attribution.evaluation.smoothness import match_sigma, smoothness

    target = smoothness(maps[reference], max_lag)
    found = match_sigma(maps[blurred], target, max_lag=max_lag, max_sigma=max_sigma)
    return {"reference": reference, "blurred": blurred, "max_lag": max_lag, "n": int(len(maps[reference])),
            "sigma": round(found["sigma"], 3), "reference_smoothness": target,
            "blurred_smoothness_before": found["unblurred"], "blurred_smoothness_after": found["reached"]}


def run(args: argparse.Namespace) -> int:
    options = storage_options_from(args.storage_options)
    maps = sample_maps(args.maps, [args.reference, args.blurred], options, args.limit, args.seed)
    record = choose(maps, args.reference, args.blurred, args.max_lag, args.max_sigma)
    record["spec"] = f"{args.label}=blur_gradient:sigma={record['sigma']}"
    print(f"smoothness (mean autocorrelation of |map|, lags 1..{args.max_lag}, {record['n']} train maps): "
          f"{args.reference} {record['reference_smoothness']:.3f}, {args.blurred} "
          f"{record['blurred_smoothness_before']:.3f} -> {record['blurred_smoothness_after']:.3f} blurred at "
          f"sigma {record['sigma']} px")
    if record["sigma"] in (0.0, args.max_sigma):
        print(f"note: sigma is at the end of the searched range [0, {args.max_sigma}]: no blur matches exactly",
              file=sys.stderr)
    print(f"--methods \"{record['spec']}\"")
    if args.record:
        with open(args.record, "w") as f:
            json.dump(record, f, indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("jobs.blur_sigma", run, args)


if __name__ == "__main__":
    sys.exit(main())
