"""The driver's progress bar: loss, seconds and dollars of each iteration as it ends."""

from __future__ import annotations

from collections.abc import Callable

from jaxpipe.runtime.billing import functions_gigabytes
from jaxpipe.runtime.driver import Progress
from jaxpipe.runtime.job import JobSpec

__all__ = ["progress_bar"]


def progress_bar(spec: JobSpec, start: int, show: bool,
                 ) -> Callable[[int, Progress], None] | None:
    """A tqdm bar with the loss, seconds and (GB-s) dollars of each iteration, or None."""
    if not show:
        return None
    from tqdm import tqdm

    gigabytes = functions_gigabytes(spec.plan)
    bar = tqdm(total=spec.iterations, initial=start, desc=spec.job_id, unit="it")
    spent = [0.0]

    def update(t: int, progress: Progress) -> None:
        seconds = progress.times.get(t, 0.0)
        spent[0] += spec.platform.compute_dollars(gigabytes, seconds)
        bar.set_postfix(loss=f"{progress.losses[t]:.4f}", s_per_it=f"{seconds:.2f}",
                        dollars=f"{spent[0]:.5f}")
        bar.update()

    return update
