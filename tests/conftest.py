"""Suite-wide fixtures: the suite never writes the user's data cache (~/.cache/coda_flax or the
user's $CODA_DATA_DIR); datasets a test prepares without naming a folder go to a session folder
(checked by tests/test_datacache.py, which runs a test with HOME pointed at an empty folder)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory):
    old = os.environ.get("CODA_DATA_DIR")
    os.environ["CODA_DATA_DIR"] = str(tmp_path_factory.mktemp("coda_data_dir"))
    yield os.environ["CODA_DATA_DIR"]
    if old is None:
        os.environ.pop("CODA_DATA_DIR", None)
    else:
        os.environ["CODA_DATA_DIR"] = old
