"""How the `jaxpipe` command shows an error: one clear message and a non-zero exit code.

    InputError (refused before any work)             exit 2   "jaxpipe: <Class>: <message>"
    JobFailed, DriverStopped, LaunchError            exit 1   the same; the job is resumable
    store errors (transports), PlanError,            exit 1   the same, with what to check
      a store's missing credentials or endpoint

Everything else is a bug and keeps its traceback. With `--debug` every error does.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from jaxpipe.errors import InputError, JaxPipeError
from planners import PlanError
from transports import CodecError, GetTimeout, KeyNotFound, StoreError

__all__ = ["report_errors"]

_STORE_HINT = ("check --store (and --endpoint-url) and that the store is reachable; a "
               "resumable job keeps its checkpoints: jaxpipe train --resume <job-id>")
_CREDENTIALS_HINT = ("no usable credentials for the store: set AWS_PROFILE or "
                     "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (see docs/aws.md)")
_ENDPOINT_HINT = "the store's endpoint does not answer: check --endpoint-url and the network"


def report_errors(run: Callable[[], int], debug: bool = False, out: TextIO | None = None,
                  ) -> int:
    """Runs `run()` and returns its exit code; a project error is printed to `out` (stderr)
    as one message and turned into exit code 2 (bad input) or 1 (anything else)."""
    stream = out if out is not None else sys.stderr
    try:
        return run()
    except (JaxPipeError, PlanError, StoreError, KeyNotFound, GetTimeout, CodecError) as err:
        return _report(err, debug, stream)
    except Exception as err:
        if _is_store_client_error(err):
            return _report(err, debug, stream)
        raise


def message(err: BaseException) -> str:
    """The one message shown for `err`: its class, its text, and what to check where the text
    alone does not say it."""
    text = str(err)
    name = type(err).__name__
    if isinstance(err, JaxPipeError | PlanError):
        return f"{name}: {text}"
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        return f"{name}: {text}\n{_CREDENTIALS_HINT}"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"{name}: {text}\n{_ENDPOINT_HINT}"
    return f"store error, {name}: {text}\n{_STORE_HINT}"


def _report(err: BaseException, debug: bool, out: TextIO) -> int:
    if debug:
        traceback.print_exception(err, file=out)
    print(f"jaxpipe: {message(err)}", file=out)
    if not debug:
        print("(jaxpipe --debug ... shows the traceback)", file=out)
    return 2 if isinstance(err, InputError) else 1


def _is_store_client_error(err: BaseException) -> bool:
    """botocore's errors, which reach here only from a store (no botocore import needed)."""
    return type(err).__module__.split(".")[0] == "botocore"
