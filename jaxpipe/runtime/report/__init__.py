"""What a job left in its store, shown: the report page of one job, the table of a store's
jobs, and their clean-up.

    record    read a job back (spec, summary, losses, metrics, statuses, checkpoints, state)
    timeline  one iteration of every rank, and its picture above the simulator's replay
    figures   the report's PNGs
    chrome    the Chrome trace JSON
    page      `write_report`: the HTML page beside its PNGs and the trace
    jobs      `list_jobs`, `jobs_table` and `collect` (gc)
    command   the CLI's `report`, `jobs` and `gc`
"""

from jaxpipe.runtime.report.jobs import Collected, collect, jobs_table, list_jobs
from jaxpipe.runtime.report.page import ReportFiles, write_report
from jaxpipe.runtime.report.record import JobRecord, job_ids, read_job

__all__ = ["Collected", "JobRecord", "ReportFiles", "collect", "job_ids", "jobs_table",
           "list_jobs", "read_job", "write_report"]
