"""Read columnar data sets row by row: Parquet files, Arrow files and ``datasets`` folders written
with ``Dataset.save_to_disk`` (the forms data sets take on the model hubs).

Rows come out as plain dicts (nested lists of structs become lists of dicts), numbered from 1, so
``formats.read_examples`` checks them with the same code as JSON records and its errors name the
file, the row and the field. pyarrow and ``datasets`` are optional (the ``formats`` extra) and
imported here only.
"""

from __future__ import annotations

import json
from pathlib import Path

from acculturate.data.errors import DataError

TABLE_SUFFIXES = (".parquet", ".arrow")
_INSTALL = "pip install 'acculturate[formats]'"


def is_table(path: Path) -> bool:
    """True for a ``.parquet``/``.arrow`` file or a folder written by ``save_to_disk``."""
    if path.is_dir():
        return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    return path.suffix.lower() in TABLE_SUFFIXES


def table_rows(path: Path, split: str = "train") -> list[tuple[int, dict]]:
    """Every row of a table as ``[(row number from 1, {column: value})]``.

    Args:
        path: a ``.parquet`` or ``.arrow`` file (Arrow IPC file or stream, as ``datasets`` writes
            its cache files), or a ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict``
            from which ``split`` is taken).
        split: the split of a ``DatasetDict`` folder.

    Raises:
        DataError: the file is not a readable table, or the split is missing.
        ImportError: pyarrow / datasets are not installed (the message says how to install them).
    """
    table = _read_table(path, split)
    return [(i, row) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_table(path: Path, split: str):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet/Arrow data needs pyarrow ({_INSTALL})") from None
    if path.is_dir():
        return _read_saved_dataset(path, split)
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)   # datasets' cache files are Arrow *streams*, not files
                return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        kind = "a Parquet file" if path.suffix.lower() == ".parquet" else "an Arrow file (IPC file or stream)"
        raise DataError(path, None, None, kind, f"an unreadable file ({e})") from None


def _read_saved_dataset(path: Path, split: str):
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{path}: reading a save_to_disk folder needs the datasets library ({_INSTALL})") from None
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise DataError(path, None, "split", f"one of the saved splits {splits}", repr(split))
        path = path / split
    try:
        return datasets.load_from_disk(str(path)).data.table
    except (FileNotFoundError, ValueError) as e:
        raise DataError(path, None, None, "a folder written by Dataset.save_to_disk", f"an unreadable folder ({e})") from None
