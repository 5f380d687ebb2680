"""What every job's command line shares: the common flags, argument types, the default checkpoint,
and :func:`run_main`, which turns the project's own errors into one line (method specs:
:mod:`jobs.mapping.methods`).

Exit status, the same for every job (docs/security.md):

* 0: the job finished.
* 1: the job ran but did not finish: some shards, cells or samples failed, or a worker or the store
  stopped it (:class:`JobStopped`); what was committed stays, and the same command resumes.
* 2: the job refused its input: a bad flag, method spec, checkpoint field, source, output or
  credential, named in one line on stderr with its fix, without a traceback (argparse's errors
  too, in one line: :class:`JobArgumentParser`).
* 130 / 143: Ctrl-C (SIGINT) / SIGTERM stopped it (jobs.runtime.stopping): one line saying what was kept;
  the same command resumes.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

STORAGE_OPTIONS_ENV = "STORAGE_OPTIONS"
#: The default model, shipped with the project (committed, with the ``.metrics.json`` that records how
#: it was trained): relative to the working directory, as Ray workers resolve it in theirs.
DEFAULT_CHECKPOINT = "models/weights/resnet8-fashion-mnist.pt"
#: The command that made it, recorded in its ``.metrics.json``; it writes the file back if lost.
DEFAULT_CHECKPOINT_COMMAND = f"python -m jobs.train --seed 0 --threads 1 --output {DEFAULT_CHECKPOINT}"


class JobError(Exception):
    """A problem the user can fix; reported as one line, exit status 2."""


class JobStopped(JobError):
    """The job ran and stopped before it finished (a worker or the store failed): one line, exit
    status 1, since the same command resumes from what was committed."""


# --------------------------------------------------------------------------- argument types


def _number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Any:
    """``text`` converted, or argparse's one-line error saying what was ``expected``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def device_name(text: str) -> str:
    """``--device``: auto, or a torch device name, checked when parsed (whether the machine has it is
    for the process that uses it to say: a driver without GPUs may schedule workers that have them)."""
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}") from None
    return text


def json_object(text: str) -> dict[str, Any]:
    """A JSON object argument (e.g. an arch's keyword arguments)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def choice_list(*allowed: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma- or space-separated list of distinct values from ``allowed``, in order."""

    def parse(text: str) -> list[str]:
        values = list(dict.fromkeys(v for v in text.replace(",", " ").split()))
        unknown = [v for v in values if v not in allowed]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"choose one or more of {', '.join(allowed)} (comma-separated), "
                                             f"got {text!r}")
        return values

    return parse


def reduction(text: str) -> str:
    from attribution import REDUCTIONS

    if text not in REDUCTIONS:
        raise argparse.ArgumentTypeError(f"choose one of {', '.join(REDUCTIONS)}, got {text!r}")
    return text


def source_format(text: str) -> str:
    """``--source-format``: one of storage.sources.registry's formats (or an alias), checked when parsed,
    since a dataset name such as fashion-mnist would otherwise ignore it."""
    from storage.io.fs import StorageError
    from storage.sources.registry import format_name

    try:
        return format_name(text)
    except StorageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def source_format_help() -> str:
    """The ``--source-format`` help text, built from the format table so a new format shows up in it."""
    from storage.sources.registry import formats_help

    return f"the source's format instead of detecting it: {formats_help()}"


# --------------------------------------------------------------------------- common flags


def storage_flags() -> argparse.ArgumentParser:
    """``--storage-options``: the parent parser of every job that reads or writes storage."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--storage-options", default=None, metavar="JSON|@FILE",
                   help=f"fsspec options as JSON or @file.json, for every URL (default ${STORAGE_OPTIONS_ENV}). "
                        "Put credentials in @file.json or $STORAGE_OPTIONS, not inline: an inline value is "
                        "visible in ps and shell history")
    return p


def source_flags() -> argparse.ArgumentParser:
    """``--allow-paths`` and ``--max-image-pixels``: the operator's limits on what a source (untrusted
    data) can make a job read (storage.sources.policy, docs/security.md)."""
    from storage.sources.policy import DEFAULT_MAX_IMAGE_PIXELS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--allow-paths", nargs="+", default=None, metavar="PREFIX",
                   help="URL or path prefixes outside the source's own location that index rows and Parquet path "
                        "columns may name (default: none; rows that leave the source are error rows)")
    p.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="images larger than N pixels (width x height) are error rows, not decoded")
    return p


def source_policy_of(args: argparse.Namespace) -> Any:
    """The :class:`storage.sources.SourcePolicy` of a job's :func:`source_flags`."""
    from storage.sources.policy import SourcePolicy

    return SourcePolicy.of(getattr(args, "allow_paths", None), getattr(args, "max_image_pixels", None))


def module_names(text: str) -> list[str]:
    """An argparse type: comma-separated Python module names (``--trust-code``)."""
    from models.registry import ModelError
    from models.trust import trusted_modules

    try:
        names = list(trusted_modules(text))
    except ModelError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("trust_code: ")) from None
    if not names:
        raise argparse.ArgumentTypeError(f"expected module names, comma-separated, got {text!r}")
    return names


def trust_flags() -> argparse.ArgumentParser:
    """``--trust-code``: the operator's grant of the model code a checkpoint's arch may import and run
    (models.trust, docs/security.md); a checkpoint is untrusted data and can grant nothing itself."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--trust-code", type=module_names, action="extend", default=[], metavar="MODULE[,MODULE]",
                   help="modules that a checkpoint's arch package.module:Name may import and run (trusting a "
                        "package trusts its submodules); without it such a checkpoint is refused")
    return p


def trust_of(args: argparse.Namespace, arch: str | None = None) -> tuple[str, ...]:
    """The modules a job trusts: ``--trust-code``, plus the module of an import path the operator gave
    as ``--arch`` (jobs.train, jobs.convert)."""
    names = list(getattr(args, "trust_code", None) or ())
    if arch and ":" in arch and not arch.startswith("timm:"):
        names.append(arch.partition(":")[0])
    return tuple(dict.fromkeys(names))


def ray_flags() -> argparse.ArgumentParser:
    """The flags of every job that runs on Ray (includes :func:`storage_flags`)."""
    p = argparse.ArgumentParser(add_help=False, parents=[storage_flags()])
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join: its head's GCS host:port (6379 unless the head chose another; the "
                   "dashboard's 8265 is for ray job submit), auto, or ray://host:port (default: $RAY_ADDRESS, "
                   "else a local Ray on loopback)")
    p.add_argument("--in-process", action="store_true",
                   help="run the work in this process, without Ray: a small run, a laptop, a notebook or a "
                        "debugger (the same results; a rerun either way resumes what the other committed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_in_process(args: argparse.Namespace, what: str = "the work") -> None:
    """Refuse ``--in-process`` beside the flags it cannot honour: a cluster to join, more workers, or a
    ``--device`` this machine does not have (a cluster's GPUs are not here)."""
    if not getattr(args, "in_process", False):
        return
    if args.ray_address or (getattr(args, "workers", None) or 1) > 1:
        raise JobError(f"--in-process runs {what} in this process: leave out --ray-address and --workers")
    device = getattr(args, "device", None)
    if device not in (None, "auto", "cpu"):
        from models.registry import ModelError
        from models.training import resolve_device

        try:
            resolve_device(device)
        except ModelError as err:
            raise JobError(f"--device {device} --in-process: {err}; leave out --in-process to run on a cluster's "
                           "GPUs, or use --device cpu") from None


def worker_flags(default_workers: str) -> argparse.ArgumentParser:
    """``--device`` and ``--workers`` of the jobs that size a pool of model workers (jobs.runtime.cluster)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto", type=device_name, help="auto: one GPU per worker where there are GPUs, else CPU; "
                   "cuda asks for GPUs even before an autoscaling cluster has started them")
    p.add_argument("--workers", type=positive_int, default=None,
                   help=f"concurrent workers, never more than there is work for (default: one per GPU, else "
                        f"{default_workers})")
    p.add_argument("--nondeterministic", action="store_true",
                   help="on CUDA, allow cuDNN autotuning and non-deterministic kernels: faster, but a retry may "
                        "differ in the last bits (CPU runs are deterministic either way)")
    return p


class JobArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other refusal of a job: argparse's
    own prints the whole usage first, which buries the line that says what is wrong."""

    def error(self, message: str) -> typing.NoReturn:
        name = self.prog.removeprefix("python -m ")
        self.exit(2, f"{name}: error: {message} (see --help)\n")


class JobHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: argparse's formatter appends "(default: X)" to every help,
    also where the help already says its default (in words argparse cannot know, such as
    "$RAY_ADDRESS, else a local Ray") and where there is nothing to show (None, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default in ([], ())
        if nothing or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def job_parser(prog: str, doc: str | None, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """A job's parser: its module docstring's first paragraph as the description, defaults shown
    once (:class:`JobHelpFormatter`), errors in one line (exit status 2)."""
    return JobArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0], parents=list(parents),
                             formatter_class=JobHelpFormatter)


def storage_options_from(text: str | None) -> dict[str, Any]:
    """Parse ``--storage-options`` (JSON or ``@path``), falling back to ``$STORAGE_OPTIONS`` as the
    readers do (storage.io.fs.resolve_storage_options): one way to reach storage everywhere."""
    from storage.io.fs import InvalidStorageInput, parse_storage_options, resolve_storage_options

    try:  # the messages never echo the text: it may hold credentials
        if text is None:
            return resolve_storage_options(None)
        options = parse_storage_options(text, "--storage-options") if text else {}
    except InvalidStorageInput as err:
        raise JobError(str(err)) from None
    if text and not text.startswith("@"):
        warn_inline_secrets(options)
    return options


def warn_inline_secrets(options: dict[str, Any]) -> None:
    """One warning line when inline ``--storage-options`` hold keys that look like credentials: the
    command line is visible to every user in ``ps`` and stays in shell history. Names the keys,
    never their values."""
    from storage.io.fs import secret_option_keys

    keys = secret_option_keys(options)
    if keys:
        print(f"warning: --storage-options holds {', '.join(keys[:5])} inline, visible in ps and shell history; "
              f"put credentials in a file (--storage-options @file.json) or ${STORAGE_OPTIONS_ENV}", file=sys.stderr)


# --------------------------------------------------------------------------- checkpoint


def checkpoint_or_default(checkpoint: str | None) -> str:
    """``checkpoint``, or the shipped default model: :data:`DEFAULT_CHECKPOINT` in the working directory
    (the checkout, or a Ray job's working dir), else the copy inside the installed ``models`` package.
    Never trains: a missing file is one line saying how to get it back."""
    if checkpoint:
        return checkpoint
    if os.path.exists(DEFAULT_CHECKPOINT):
        return DEFAULT_CHECKPOINT
    import models

    packaged = os.path.join(os.path.dirname(os.path.abspath(models.__file__)), "weights",
                            os.path.basename(DEFAULT_CHECKPOINT))
    if os.path.exists(packaged):
        return packaged
    raise JobError(f"the shipped default model {DEFAULT_CHECKPOINT} is missing: restore it with "
                   f"'git checkout -- {DEFAULT_CHECKPOINT}' or retrain it with '{DEFAULT_CHECKPOINT_COMMAND}' "
                   "(minutes on a CPU), or pass --checkpoint")


# --------------------------------------------------------------------------- entry point


def redacted(text: str, args: argparse.Namespace | None = None) -> str:
    """``text`` with every URL in it redacted (storage.io.fs.redact_url) and every credential written
    into a URL of ``args`` scrubbed, also where a message quotes it without its scheme (s3fs takes
    ``s3://KEY:SECRET@bucket`` for a bucket named ``KEY:SECRET@bucket``)."""
    from storage.io.fs import redact_text, url_secrets

    text = redact_text(text)
    values = [v for value in vars(args).values() for v in (value if isinstance(value, (list, tuple)) else [value])
              if isinstance(v, str)] if args is not None else []
    for secret in sorted({s for v in values for s in url_secrets(v)}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def run_main(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a problem the user can fix (the project's own error types) is one line on stderr,
    without a traceback: exit status 2, or 1 where the job ran and stopped (:class:`JobStopped`).
    Anything else is a bug and raises as usual."""
    from attribution import AttributionError
    from attribution.evaluation import EvaluationError
    from models.registry import ModelError
    from storage.io.fs import StorageError
    from storage.io.lease import LeaseLost
    from jobs.runtime import stopping
    from jobs.runtime.cluster import stop_ray

    with stopping.handlers():  # Ctrl-C and SIGTERM raise stopping.Interrupted (one line, 128 + signal)
        try:
            return run(args)
        except KeyboardInterrupt as err:
            return interrupted(prog, stopping.as_interrupted(err, getattr(err, "detail", "")), args)
        except (JobStopped, LeaseLost) as err:  # it ran, and stopped: the same command resumes
            if stopping.requested():  # a worker the same Ctrl-C stopped: the job was interrupted
                return interrupted(prog, stopping.as_interrupted(err), args)
            print(f"{prog}: error: {redacted(one_line(err), args)}", file=sys.stderr)
            return 1
        except (JobError, AttributionError, EvaluationError, ModelError, StorageError) as err:
            print(f"{prog}: error: {redacted(one_line(err), args)}", file=sys.stderr)
            return 2
        finally:
            stop_ray()  # the Ray this job started: no daemon or actor outlives it, however it ended


def interrupted(prog: str, err: Any, args: argparse.Namespace) -> int:
    """One line for a job a signal stopped (what it kept, and that the same command resumes); the
    exit status a shell gives a process the signal ended: 130 for SIGINT, 143 for SIGTERM."""
    from jobs.runtime.stopping import signal_name

    detail = err.detail or "rerun the same command to resume"
    print(f"{prog}: interrupted by {signal_name(err.signum)}: {redacted(' '.join(detail.split()), args)}",
          file=sys.stderr)
    return err.exit_status


def one_line(err: BaseException) -> str:
    """``err``'s message on one line: a message that quotes a file or a server's answer may hold
    line breaks, and a refusal is one line."""
    return " ".join(str(err).split()) or type(err).__name__
