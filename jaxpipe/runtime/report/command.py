"""The `jaxpipe report`, `jaxpipe jobs` and `jaxpipe gc` subcommands: their arguments and
what they run (`jaxpipe.cli` only registers them)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEFAULT_REPORTS", "add_gc_arguments", "add_jobs_arguments", "add_report_arguments",
           "report_text", "run_gc", "run_jobs", "run_report"]

DEFAULT_REPORTS = ".jaxpipe/reports"
"""Where `jaxpipe report JOB` writes, as `<this>/<JOB>/`, without `--out`."""


def _add_store(parser: argparse.ArgumentParser) -> None:
    from jaxpipe.runtime.options import TrainOptions

    default = TrainOptions().store
    parser.add_argument("--store", default=default,
                        help=f"a directory, or s3://bucket (default: {default})")
    parser.add_argument("--endpoint-url", help="S3 API endpoint for an s3:// store")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="the job id (`jaxpipe jobs` lists them)")
    _add_store(parser)
    parser.add_argument("--out", metavar="DIR",
                        help=f"folder of the page (default: {DEFAULT_REPORTS}/JOB)")
    parser.add_argument("--iteration", type=int, metavar="N",
                        help="the iteration the timeline shows (default: the last held whole)")
    parser.add_argument("--open", action="store_true",
                        help="print the page's file:// URL to open in a browser")


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    _add_store(parser)


def add_gc_arguments(parser: argparse.ArgumentParser) -> None:
    _add_store(parser)
    parser.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")


def run_report(args: argparse.Namespace) -> int:
    from jaxpipe.runtime.report.page import write_report
    from jaxpipe.runtime.train import open_store

    out = Path(args.out) if args.out else Path(DEFAULT_REPORTS) / args.job
    files = write_report(open_store(args.store, args.endpoint_url), args.job, out,
                         args.iteration)
    print(f"report of {args.job}: {files.page}")
    print(f"figures: {', '.join(str(p) for p in files.figures.values()) or 'none'}")
    print(f"Chrome trace: {files.trace} (chrome://tracing or ui.perfetto.dev)")
    if args.open:
        print(f"open {files.page.resolve().as_uri()}")
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    from jaxpipe.runtime.report.jobs import jobs_table, list_jobs
    from jaxpipe.runtime.train import open_store

    print(jobs_table(list_jobs(open_store(args.store, args.endpoint_url))))
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from jaxpipe.runtime.report.jobs import collect, collected_text
    from jaxpipe.runtime.train import open_store

    print(collected_text(collect(open_store(args.store, args.endpoint_url),
                                 dry_run=args.dry_run), args.dry_run))
    return 0


def report_text(store: str, job: str, out: str | Path | None = None) -> str:
    """Writes a finished `jaxpipe train` job's report (`DEFAULT_REPORTS`/JOB) and says where
    it is, with the Chrome trace; a report that cannot be written says why instead."""
    from jaxpipe.runtime.report.page import write_report
    from jaxpipe.runtime.train import open_store

    folder = Path(out) if out else Path(DEFAULT_REPORTS) / job
    try:
        files = write_report(open_store(store), job, folder)
    except (OSError, ValueError) as err:  # the run is done: a report failure must not hide it
        return (f"{'report:':13s} not written ({err}); try `jaxpipe report {job} --store "
                f"{store}`")
    return (f"{'report:':13s} {files.page} (open {files.page.resolve().as_uri()})\n"
            f"{'trace:':13s} {files.trace} (Chrome trace: chrome://tracing, ui.perfetto.dev)")
