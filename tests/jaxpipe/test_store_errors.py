"""Store errors name the store, the key and the likely fix (a real S3 API server, moto)."""

from __future__ import annotations

import errno

import pytest

from jaxpipe.error_report import message
from transports import FileStore, RetryPolicy, S3Store, StoreError, TransientStoreError
from transports import file_store as file_store_module

FAST = RetryPolicy(max_attempts=2, initial_s=0.0, max_s=0.0)


def test_a_missing_bucket_is_named_with_its_fix(s3_url):
    store = S3Store("no-such-bucket", endpoint_url=s3_url, retry=FAST)
    with pytest.raises(StoreError, match=f"s3://no-such-bucket at {s3_url}, key 'jobs/j/job.json'"
                                         ": the bucket does not exist; create it"):
        store.get("jobs/j/job.json")


def test_a_closed_port_says_to_check_the_endpoint():
    store = S3Store("b", endpoint_url="http://127.0.0.1:9", retry=FAST)
    with pytest.raises(TransientStoreError, match="s3://b at http://127.0.0.1:9, key 'k': .*"
                                                  "check that the endpoint answers"):
        store.get("k")


def test_missing_credentials_are_a_store_error_with_the_fix(s3_url, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("b", endpoint_url=s3_url, retry=FAST)
    with pytest.raises(StoreError, match="no usable AWS credentials .*set AWS_PROFILE") as err:
        store.get("k")
    assert message(err.value).startswith("store error, StoreError: s3://b at ")


def test_a_full_disk_names_the_store_and_the_key(tmp_path, monkeypatch):
    store = FileStore(str(tmp_path))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_store_module, "open", full, raising=False)
    with pytest.raises(StoreError, match=f"file store {tmp_path}: cannot write key 'jobs/j/a' "
                                         r"\(No space left on device\); free disk space"):
        store.put("jobs/j/a", b"x")


def test_a_truncated_job_spec_is_named_when_resumed(tmp_path, capsys):
    from jaxpipe.cli import main

    FileStore(str(tmp_path)).put("jobs/cut/job.json", b'{"job_id": "cut", "pl')
    assert main(["train", "--resume", "cut", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "jaxpipe: CorruptJobError: jobs/cut/job.json (21 bytes) in the store {'kind': " \
           "'file'" in err and "cut short or overwritten" in err


@pytest.fixture(scope="module")
def bundle() -> bytes:
    """A real two-stage bundle (the skip-connection net of tests/jaxpipe/helpers.py)."""
    import jaxpipe
    from tests.jaxpipe.helpers import cross_entropy, skipnet_case

    model, variables, batch, _ = skipnet_case()
    return jaxpipe.trace(model, variables, batch, cross_entropy).split((2,)).export()


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_a_truncated_bundle_names_the_store_the_key_and_the_fix(kind, bundle, s3_url, tmp_path):
    from jaxpipe.errors import CorruptBundleError
    from jaxpipe.runtime.job import Keys
    from jaxpipe.runtime.stage_bundle import load_stage

    keys = Keys("x")
    if kind == "s3":
        store = S3Store("bundles", endpoint_url=s3_url, create_bucket=True, retry=FAST)
        where = f"s3://bundles/jobs/x/bundle.zip (at {s3_url})"
    else:
        store = FileStore(str(tmp_path))
        where = f"{tmp_path}/jobs/x/bundle.zip"
    store.put(keys.bundle, bundle)
    program, shapes = load_stage(store, keys, 1, timeout=1)  # the whole one loads
    assert program.spec.index == 1 and shapes
    cut = bundle[:len(bundle) // 2]
    store.put(keys.bundle, cut)
    with pytest.raises(CorruptBundleError) as err:
        load_stage(store, keys, 1, timeout=1)
    assert str(err.value).startswith(
        f"re-run the job: the bundle at {where} ({len(cut)} bytes) does not read as a stage "
        "bundle (File is not a zip file); it was cut short")
    assert "BadZipFile" not in message(err.value) and "--job-id" in str(err.value)
