"""The project's own checkpoint directory: orbax parameters + config.json.

    DIR/config.json     {"format": "coda_flax", "format_version": 1, "model_config": {...},
                         "params_sha256": {"encoder/.../kernel": "9f2c...", ...}}
    DIR/params/         the parameter tree, written by orbax's StandardCheckpointer

`save_checkpoint` writes it (what `coda convert` produces); `load_checkpoint` reads it back as
(ModelConfig, params), checking every parameter against the shapes the config implies and
against its SHA-256 (coda_flax/checkpoints/integrity.py): a damaged file is refused naming the
array. A config.json without "params_sha256" (written before the digests existed) is read with
a warning that the parameters are not verified.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Mapping

import jax
import numpy as np

from coda_flax.checkpoints.integrity import (IntegrityError, read_or_raise, tree_digests,
                                             verify_arrays)
from coda_flax.checkpoints.io import (config_from_dict, config_to_dict, read_format_json,
                                      write_json)
from coda_flax.checkpoints.tree import (check_flat_params, expected_shapes, flatten_params,
                                        unflatten_params)
from coda_flax.config import ModelConfig

FORMAT = "coda_flax"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_checkpoint(directory: str, params: Mapping[str, Any], config: ModelConfig, *,
                    overwrite: bool = False) -> str:
    """Writes params (checked against config) and config.json into `directory`."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    flat = flatten_params(params)
    check_flat_params(flat, expected_shapes(config), f"save_checkpoint({directory})")
    if os.path.exists(directory) and os.listdir(directory):
        if not overwrite:
            raise FileExistsError(f"{directory} already exists and is not empty; choose another "
                                  f"output directory or pass overwrite=True (--overwrite).")
        shutil.rmtree(directory)
    os.makedirs(directory, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flat.items()}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, PARAMS_DIR), unflatten_params(flat))
    checkpointer.wait_until_finished()
    write_json(os.path.join(directory, CONFIG_FILE), {        # last: its presence = complete
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_config": config_to_dict(config), "params_sha256": tree_digests(flat)})
    return directory


def read_orbax_tree(path: str, subtree: str | None = None) -> dict[str, Any]:
    """An orbax PyTree checkpoint directory -> nested dict with numpy array leaves.

    `subtree`: restore only this top-level entry (e.g. "target", leaving optimizer state on
    disk); KeyError naming the entries present when it does not exist.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    fix = "the checkpoint is damaged or incomplete; write it again (e.g. `coda convert`)"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} not found: {fix}.")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
    except Exception as e:                                   # noqa: BLE001 (orbax's many kinds)
        raise IntegrityError(f"{path}: cannot read the orbax metadata ({_one_line(e)}); "
                             f"{fix}.") from None
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
    if tree is None:
        tree = metadata
    if not isinstance(tree, Mapping):    # e.g. _METADATA deleted: orbax knows no tree
        raise IntegrityError(f"{path}: the orbax metadata (_METADATA) that describes the "
                             f"parameter tree is missing or unreadable; {fix}.")
    tree = dict(tree)
    if subtree is not None:
        if subtree not in tree:
            raise KeyError(f"{path} has no {subtree!r} entry; top-level entries: "
                           f"{sorted(tree)}.")
        tree = {subtree: tree[subtree]}
    restore_args = jax.tree_util.tree_map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray) if hasattr(m, "shape")
        else ocp.RestoreArgs(), tree)
    restored = read_or_raise(lambda: checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=tree, restore_args=restore_args, partial_restore=subtree is not None)), path)
    return restored if subtree is None else restored[subtree]


def load_checkpoint(directory: str) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a directory written by `save_checkpoint` / `coda convert` -> (config, params)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} not found; expected the "
                                f"output of `coda convert` ({CONFIG_FILE} + {PARAMS_DIR}/).")
    meta = read_format_json(os.path.join(directory, CONFIG_FILE), "coda_flax checkpoint config",
                            FORMAT, FORMAT_VERSION, fix="for Hugging Face directories use "
                            "load_hf_t5, for T5X ones load_t5x")
    config = config_from_dict(meta["model_config"])
    params_dir = os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"{params_dir} not found: the checkpoint has a config but no "
                                f"parameters (an interrupted write?); convert it again.")
    flat = flatten_params(read_orbax_tree(params_dir))
    if "params_sha256" in meta:
        verify_arrays(flat, meta["params_sha256"], params_dir)
    else:
        warnings.warn(f"{directory}/{CONFIG_FILE} records no params_sha256 (written by an older "
                      f"coda_flax): the parameters are not verified; save it again to add them.",
                      stacklevel=2)
    check_flat_params(flat, expected_shapes(config), f"checkpoint {directory}")
    return config, unflatten_params(flat)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
