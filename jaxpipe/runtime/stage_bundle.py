"""A rank's stage programs, read from its job's `bundle.zip`, and what a bundle that does not
read says.

`jaxpipe.staging.bundle.load_stages` knows bytes, not where they came from (staging never
imports the runtime), so a bundle cut short in the store (a killed upload, a full disk) raised
a bare zip error there. Here the rank reads the bundle and, if it does not load, raises
`CorruptBundleError` naming the store, the key, the size and the fix:

    re-run the job: the bundle at s3://b/jobs/x/bundle.zip (4096 bytes) does not read as a
    stage bundle (File is not a zip file); ...

The rank fails with it in its "failed" status, so the driver's `JobFailed` shows it
(`attempts.failure_message`).
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from jaxpipe.errors import BundleError, CorruptBundleError
from jaxpipe.runtime.job import Keys
from jaxpipe.staging.bundle import load_stages
from jaxpipe.staging.stage import StageProgram
from transports import ObjectStore, store_to_spec

__all__ = ["load_stage", "location"]


def load_stage(store: ObjectStore, keys: Keys, stage: int,
               timeout: float | None) -> tuple[StageProgram, dict[str, Any]]:
    """Stage `stage`'s programs from the job's bundle, and the bundle's shapes of every
    parameter and state leaf (waiting up to `timeout` s for the bundle to appear).

    Raises:
      CorruptBundleError: the stored bundle does not load (truncated, overwritten, or made by
        another JaxPipe version); the message names where it is and what to do.
      KeyNotFound, GetTimeout: the job has no bundle (yet).
    """
    blob = store.get(keys.bundle, timeout=timeout)
    try:
        runner = load_stages(blob, only=[stage])
    except (BundleError, zipfile.BadZipFile) as err:  # a stage entry's CRC fails when read
        reason = str(err.__cause__ or err)
        raise CorruptBundleError(
            f"re-run the job: the bundle at {location(store, keys.bundle)} ({len(blob)} bytes) "
            f"does not read as a stage bundle ({reason}); it was cut short (a killed upload, a "
            "full store) or overwritten. Start the job again under a new --job-id with the same "
            "model and plan (its checkpoints stay readable with jaxpipe.load_variables)"
        ) from err
    program = runner.stages[stage]
    assert program is not None, "load_stages(only=[stage]) loads that stage"
    return program, runner.manifest["shapes"]


def location(store: ObjectStore, key: str) -> str:
    """Where `key` lives, for people: `s3://bucket/key` (with its endpoint, if not AWS's), a
    file's path, or the kind of store and the key.

    Example:
      >>> import tempfile
      >>> from transports import FileStore
      >>> with tempfile.TemporaryDirectory() as root:
      ...     location(FileStore(root), "jobs/x/bundle.zip") == f"{root}/jobs/x/bundle.zip"
      True
    """
    try:
        spec = store_to_spec(store)
    except ValueError:  # a MemoryStore: it has no address
        return f"key {key!r} of a {type(store).__name__}"
    while "store" in spec and isinstance(spec["store"], dict):  # throttled, faulty wrappers
        spec = spec["store"]
    if spec.get("kind") == "s3":
        url = f"s3://{spec['bucket']}/{spec.get('prefix') or ''}{key}"
        return url + (f" (at {spec['endpoint_url']})" if spec.get("endpoint_url") else "")
    if spec.get("kind") == "file":
        return os.path.join(spec["root"], key)
    return f"key {key!r} of a {spec.get('kind', type(store).__name__)} store"
