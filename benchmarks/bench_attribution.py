"""Throughput and memory of PathwayGrad against its natural baselines, side by side.

For each model, on the same inputs and batch size, this measures:

- ``pathway``: PathwayGrad (taylor, p=70), batched;
- ``pathway-loop``: the same method one sample at a time;
- ``gradient``: the plain input gradient (one forward, one backward);
- ``integrated_gradients``: 50 steps (Captum), on fewer samples when it would take long;
- ``threshold``: only the per-sample percentile selection on real scores, against
  ``kthvalue`` on the concatenated scores (what a simple batched version does);
- on CUDA, ``pathway`` and ``gradient`` once more with cuDNN autotuning instead of the
  deterministic kernels the job runs by default (``--nondeterministic``), for the cost of
  exact retries (models/determinism.py).

It prints maps/s, the ratios the targets are stated in, and peak memory (CUDA: peak
allocated; CPU: peak RSS growth of one call in a fresh process). On CPU the process tunes
glibc's malloc as the job's workers do (workers/allocator.py); ``--glibc-defaults`` measures
without that. Run ``python benchmarks/bench_attribution.py
--help``; results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import attribution
import attribution.baselines  # noqa: F401  (registers the baselines)
from attribution.neurons import NeuronCalls
from attribution.pathway import PathwayGrad
from attribution.scores import taylor
from attribution.threshold import batched_percentile
from models.determinism import deterministic_kernels
from models.registry import build_model, fashion_mnist_spec
from models.tv import models as tv_models
from workers.allocator import keep_freed_memory


GLIBC_DEFAULTS = False


def build(name: str, batch: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """The benchmarked model (random weights, eval mode) and a random input batch."""
    torch.manual_seed(seed)
    if name == "small":
        return build_model(fashion_mnist_spec()).eval(), torch.randn(batch, 1, 28, 28)
    return tv_models.get_model(name).eval(), torch.randn(batch, 3, 224, 224)


def make_method(name: str, model: torch.nn.Module):
    """PathwayGrad with ``activations="all"``: the paper's ReLU neurons on ReLU nets, and every
    elementwise activation on the others (ConvNeXt's GELUs)."""
    return PathwayGrad(model, activations="all") if name == "pathway" else attribution.get(name, model)


def peak_memory_mib(model_name: str, method: str, batch: int, device: torch.device) -> float:
    """Peak memory of one batched call of ``method``.

    CUDA: the allocator's peak above what was allocated before the call. CPU: the growth of
    the peak resident set size during the call, measured in a fresh process so that no
    earlier allocation hides it (torch has no CPU allocator statistics).
    """
    if device.type == "cuda":
        model, x = build(model_name, batch)
        model, x = model.to(device), x.to(device)
        targets = model(x).argmax(1)
        fn = make_method(method, model)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn.attribute(x, target=targets)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    probe = [sys.executable, __file__, "--memory-probe", model_name, method, str(batch)]
    probe += ["--glibc-defaults"] if GLIBC_DEFAULTS else []
    output = subprocess.run(probe, check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def memory_probe(model_name: str, method: str, batch: int) -> None:
    """Child process of :func:`peak_memory_mib` on CPU: prints the peak RSS growth in MiB."""
    model, x = build(model_name, batch)
    with torch.no_grad():
        targets = model(x).argmax(1)
    fn = make_method(method, model)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    before = _status_kib("VmHWM")
    fn.attribute(x, target=targets)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: torch.device, samples: int, repeats: int) -> dict:
    """maps/s from the median of ``repeats`` timed runs after one warm-up (the best run too).

    The median, not the best: on a CPU the best of a few runs favours the method whose time
    varies most (the plain gradient's runs spread 21-33 ms around a 27 ms median here, the
    pathway's 62-77 around 69), which would skew the ratios.
    """
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    median, best = statistics.median(times), min(times)
    return {"maps_per_s": samples / median, "seconds": median, "best_maps_per_s": samples / best}


def threshold_cost(model: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Time the percentile selection alone on the real scores of this batch."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad(), NeuronCalls(model, "all") as relus:
        scores = [s.flatten(1) for s in taylor(model, relus, xr, None).scores]
    total = sum(s.shape[1] for s in scores)
    rank = int(0.7 * (total - 1)) + 1

    def kthvalue() -> torch.Tensor:
        return torch.cat(scores, dim=1).kthvalue(rank, dim=1).values

    ours = measure(lambda: batched_percentile(scores, 70.0), device, x.shape[0], repeats)
    simple = measure(kthvalue, device, x.shape[0], repeats)
    return {"neurons_per_sample": total, "band_s": ours["seconds"], "kthvalue_s": simple["seconds"]}


def bench_model(name: str, batch: int, device: torch.device, repeats: int, ig_samples: int,
                loop_samples: int) -> dict:
    model, x = build(name, batch)
    model, x = model.to(device), x.to(device)
    batch = x.shape[0]
    targets = model(x).argmax(1)
    pathway = make_method("pathway", model)
    gradient = attribution.get("gradient", model)
    ig = attribution.get("integrated_gradients", model, n_steps=50)
    loop_x, loop_t = x[:loop_samples], targets[:loop_samples]

    def per_sample_loop() -> None:
        for i in range(loop_x.shape[0]):
            pathway.attribute(loop_x[i : i + 1], target=loop_t[i : i + 1])

    def throughput(method: attribution.Attribution) -> dict:
        return measure(lambda: method.attribute(x, target=targets), device, batch, repeats)

    autotuned = {}
    if device.type == "cuda":  # the job's workers run deterministic kernels, unless --nondeterministic
        with deterministic_kernels(device, enabled=False):
            autotuned = {"pathway": throughput(pathway), "gradient": throughput(gradient)}
    with deterministic_kernels(device, enabled=True):
        results = {
            "pathway": throughput(pathway),
            "gradient": throughput(gradient),
            "pathway-loop": measure(per_sample_loop, device, loop_x.shape[0], max(1, repeats // 2)),
            "integrated_gradients": measure(
                lambda: ig.attribute(x[:ig_samples], target=targets[:ig_samples]), device, min(ig_samples, batch), 1
            ),
            "threshold": threshold_cost(model, x, device, repeats),
        }
    for method in ("pathway", "gradient"):
        results[method]["peak_mib"] = peak_memory_mib(name, method, batch, device)
    p, g, loop = results["pathway"], results["gradient"], results["pathway-loop"]
    results["ratios"] = {
        "pathway/gradient throughput": p["maps_per_s"] / g["maps_per_s"],
        "pathway/loop throughput": p["maps_per_s"] / loop["maps_per_s"],
        "pathway/integrated_gradients throughput": p["maps_per_s"] / results["integrated_gradients"]["maps_per_s"],
        "pathway/gradient peak memory": p["peak_mib"] / max(g["peak_mib"], 1e-9),
        "threshold share of pathway time": results["threshold"]["band_s"] / p["seconds"],
        "kthvalue/band selection time": results["threshold"]["kthvalue_s"] / results["threshold"]["band_s"],
    }
    if autotuned:
        results["autotuned"] = autotuned
        for method in ("pathway", "gradient"):
            results["ratios"][f"deterministic/autotuned {method} throughput"] = (
                results[method]["maps_per_s"] / autotuned[method]["maps_per_s"])
    return {"model": name, "batch": batch, "input": list(x.shape[1:]), **results}


def print_table(result: dict) -> None:
    print(f"\n== {result['model']}  input {result['input']}  batch {result['batch']}")
    rows = [(key, result[key]) for key in ("pathway", "pathway-loop", "gradient", "integrated_gradients")]
    rows += [(f"{key} (autotuned)", r) for key, r in result.get("autotuned", {}).items()]
    for key, r in rows:
        peak = f"   peak {r['peak_mib']:9.1f} MiB" if "peak_mib" in r else ""
        print(f"  {key:22s} {r['maps_per_s']:10.2f} maps/s (best run {r['best_maps_per_s']:9.2f}){peak}")
    t = result["threshold"]
    print(f"  threshold selection    band {t['band_s'] * 1e3:8.1f} ms   kthvalue {t['kthvalue_s'] * 1e3:8.1f} ms"
          f"   ({t['neurons_per_sample']:,} neurons/sample)")
    for key, value in result["ratios"].items():
        print(f"  {key:42s} {value:7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="small,resnet50",
                        help="comma list of: small, or any torchvision classification model at 224 px, e.g. "
                             "resnet18,vgg16_bn,densenet121,convnext_tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA; 64 small / 8 resnet50 on CPU")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's malloc untuned (the job's workers tune it on CPU)")
    parser.add_argument("--memory-probe", nargs=3, metavar=("MODEL", "METHOD", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global GLIBC_DEFAULTS
    GLIBC_DEFAULTS = args.glibc_defaults
    malloc = "glibc defaults" if GLIBC_DEFAULTS else f"malloc tuned: {keep_freed_memory()}"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        model_name, method, batch = args.memory_probe
        memory_probe(model_name, method, int(batch))
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}  device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()})"
          f"  threads {torch.get_num_threads()}  {malloc}")
    all_results = []
    for name in args.models.split(","):
        big = name != "small"
        batch = args.batch_size or (64 if device.type == "cuda" or not big else 8)
        ig_samples = batch if device.type == "cuda" or not big else 2
        loop_samples = batch if device.type == "cuda" or not big else 4
        result = bench_model(name, batch, device, args.repeats, ig_samples, loop_samples)
        print_table(result)
        all_results.append(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=2)


if __name__ == "__main__":
    main()
