"""A read-only TFDS data source that fails fast and clearly when the data is not prepared.

seqio's default TfdsDataSource calls tfds.load(download=True), which without internet retries for
minutes before failing. This source never downloads (read_only=True -> builder.as_dataset) and turns
"not prepared" into MissingTfdsDataError naming the dataset, the data_dir searched and the command
that prepares it.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import seqio
import tensorflow_datasets as tfds

TFDS_DATA_DIR_ENV_VAR = "TFDS_DATA_DIR"

# Extra preparation notes for datasets that `tfds build` alone cannot make.
_PREPARE_NOTES = {
    "xsum": "XSum needs a manual download first: see the TFDS xsum page "
            "(tfds build xsum --manual_dir DIR, with the extracted XSum archive in DIR).",
    "c4": "C4 is ~800 GB and is built with Apache Beam (pip install apache-beam; tfds build c4/en "
          "--beam_pipeline_options=...); copying an already prepared c4/en/<version> directory is "
          "usually easier.",
}


class MissingTfdsDataError(FileNotFoundError):
    """TFDS data is not prepared in the data_dir searched (nothing is downloaded)."""


def missing_data_message(tfds_name: str, data_dir: str, split: Optional[str] = None,
                         cause: Optional[BaseException] = None) -> str:
    base = tfds_name.split(":")[0]
    lines = [
        f"TFDS dataset '{tfds_name}'" + (f" (split '{split}')" if split else "")
        + f" is not prepared in data_dir '{data_dir}', and coda_flax never downloads "
        "(tfds download=False).",
        "Prepare it on a machine with internet access and copy it here, e.g.:",
        f"    tfds build {base} --data_dir {data_dir}",
        f"or copy a prepared '{base}/<version>/' directory into '{data_dir}', or point "
        f"${TFDS_DATA_DIR_ENV_VAR} (or the tasks' tfds_data_dir) at a directory that has it.",
    ]
    note = _PREPARE_NOTES.get(base.split("/")[0])
    if note:
        lines.append(note)
    if cause is not None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        lines.append(f"(TFDS said: {type(cause).__name__}: {first})")
    return "\n".join(lines)


def default_tfds_data_dir() -> str:
    return os.environ.get(TFDS_DATA_DIR_ENV_VAR) or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets")


class TfdsSource(seqio.TfdsDataSource):
    """seqio.TfdsDataSource that reads prepared data only; MissingTfdsDataError at once if none."""

    def __init__(self, tfds_name: str, tfds_data_dir: Optional[str] = None,
                 splits: Optional[Mapping[str, str]] = None, **kwargs):
        kwargs.pop("read_only", None)
        super().__init__(tfds_name, tfds_data_dir=tfds_data_dir, splits=splits, read_only=True,
                         **kwargs)
        self._tfds_name = tfds_name
        self._explicit_data_dir = tfds_data_dir

    def _data_dir_for_message(self) -> str:
        if self._explicit_data_dir:
            return str(self._explicit_data_dir)
        try:
            return str(self.tfds_dataset.builder.data_dir_root)
        except Exception:  # pylint: disable=broad-except
            return default_tfds_data_dir()

    def _is_prepared(self) -> bool:
        try:
            return bool(self.tfds_dataset.builder.is_prepared())
        except Exception:  # pylint: disable=broad-except
            return False

    def _reraise(self, split, err):
        if isinstance(err, MissingTfdsDataError):
            raise err
        if isinstance(err, tfds.core.registered.DatasetNotFoundError) or not self._is_prepared():
            raise MissingTfdsDataError(
                missing_data_message(self._tfds_name, self._data_dir_for_message(), split, err)
            ) from err
        raise err

    def check_prepared(self, split: Optional[str] = None) -> None:
        """Raises MissingTfdsDataError unless the dataset is prepared (no mocking aware)."""
        if not self._is_prepared():
            raise MissingTfdsDataError(
                missing_data_message(self._tfds_name, self._data_dir_for_message(), split))

    def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
        try:
            return super().get_dataset(split=split, shuffle=shuffle, seed=seed,
                                       shard_info=shard_info, **kwargs)
        except Exception as err:  # pylint: disable=broad-except
            self._reraise(split, err)

    def num_input_examples(self, split: str):
        """Number of examples, or None when TFDS has no split info (data not prepared, mocked
        data); get_dataset is where missing data raises."""
        try:
            return super().num_input_examples(split)
        except Exception:  # pylint: disable=broad-except
            return None

    def list_shards(self, split: str):
        try:
            return super().list_shards(split)
        except Exception as err:  # pylint: disable=broad-except
            self._reraise(split, err)
