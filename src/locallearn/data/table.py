"""``csv:PATH``: a user's own table, one row per sample.

The first row is a header when one of its cells is text above a number. The label
column is chosen by name (``label_column``, CLI ``--label-column``), by 0-based
index, or is the last column. Labels may be strings or numbers; the sorted
distinct values become classes 0..K-1 (their original values are kept in
``info["class_names"]``). Every other column must be numeric and finite. A fixed
20% of rows (the same for every seed) is the test set; the seed cuts validation
from the rest; features are standardised with training statistics only.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from locallearn.data import DATASETS
from locallearn.data.base import (
    TEST_FRACTION,
    VAL_FRACTION,
    Dataset,
    RawData,
    split_and_normalise,
)
from locallearn.errors import UserError
from locallearn.options import Option, declare


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label_index(header: list[str] | None, n_cols: int, label_column, path: Path) -> int:
    if label_column is None or label_column == "":
        return n_cols - 1
    if header is not None and str(label_column) in header:
        return header.index(str(label_column))
    if isinstance(label_column, int) or str(label_column).lstrip("-").isdigit():
        index = int(label_column)
        if -n_cols <= index < n_cols:
            return index % n_cols
    known = f"columns: {', '.join(header)}" if header else f"{n_cols} columns, no header row"
    raise UserError(f"csv {path}: no label column {label_column!r} ({known}); "
                    f"pass --label-column with one of them")


def read_table(path: Path, label_column=None) -> tuple[np.ndarray, list[str], list[str]]:
    """Features (float32), label strings and feature names of a CSV file."""
    if not path.is_file():
        raise UserError(f"csv file {path} not found; use --data csv:PATH with an existing file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(65536)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            rows = [row for row in csv.reader(f, dialect) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise UserError(f"csv {path} cannot be read as a text table: {exc}") from None
    if not rows:
        raise UserError(f"csv {path} is empty")
    rows = [[c.strip() for c in row] for row in rows]
    # A header row has a text cell where the next row has a number.
    header = rows[0] if len(rows) > 1 and any(
        not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1], strict=False)
    ) else None
    body = rows[1:] if header is not None else rows
    if not body:
        raise UserError(f"csv {path} has a header but no data rows")
    n_cols = len(header) if header is not None else len(body[0])
    if n_cols < 2:
        raise UserError(f"csv {path} needs at least one feature column and a label column")
    label = _label_index(header, n_cols, label_column, path)
    names = header or [f"column {i}" for i in range(n_cols)]
    first_line = 2 if header is not None else 1
    features = np.empty((len(body), n_cols - 1), dtype=np.float32)
    labels = []
    for r, row in enumerate(body):
        line = first_line + r
        if len(row) != n_cols:
            raise UserError(f"csv {path} line {line} has {len(row)} cells, expected {n_cols}")
        values = row[:label] + row[label + 1:]
        for c, cell in enumerate(values):
            col = names[c if c < label else c + 1]
            if cell == "":
                raise UserError(f"csv {path} line {line}: feature {col!r} is missing; fill or "
                                f"drop rows with missing values")
            try:
                v = float(cell)
            except ValueError:
                raise UserError(f"csv {path} line {line}: feature {col!r} is {cell!r}, not a "
                                f"number; features must be numeric (encode or drop that column)"
                                ) from None
            if not math.isfinite(v):
                raise UserError(f"csv {path} line {line}: feature {col!r} is {cell!r}; remove or "
                                f"fill missing (NaN) and infinite values")
            features[r, c] = v
        if row[label] == "":
            raise UserError(f"csv {path} line {line}: the label is empty")
        labels.append(row[label])
    feature_names = [n for i, n in enumerate(names) if i != label]
    return features, labels, feature_names


def encode_labels(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Distinct labels in sorted order (numerically if they are all numbers) -> 0..K-1."""
    distinct = set(labels)
    if all(_is_number(v) for v in distinct):
        ordered = sorted(distinct, key=float)
    else:
        ordered = sorted(distinct)
    index = {v: i for i, v in enumerate(ordered)}
    return np.array([index[v] for v in labels], dtype=np.int64), ordered


@DATASETS.register("csv", help="csv:PATH your own table; label column by --label-column or last")
@declare(Option("label_column", (int, str), "the label column by name or 0-based index "
                "(None: the last)", nullable=True), VAL_FRACTION, TEST_FRACTION)
def csv_table(seed: int = 0, data_dir=None, argument: str = "", label_column=None,
              val_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    if not argument:
        raise UserError("csv needs a path: --data csv:path/to/table.csv")
    path = Path(argument).expanduser()
    if not path.is_absolute() and not path.exists() and data_dir is not None:
        path = Path(data_dir) / path
    features, labels, feature_names = read_table(path, label_column)
    y, classes = encode_labels(labels)
    if len(classes) < 2:
        raise UserError(f"csv {path}: the label column holds a single class ({classes[0]!r}); "
                        f"need at least two (wrong --label-column?)")
    if len(y) < 5:
        raise UserError(f"csv {path}: only {len(y)} rows; need at least 5 to split")
    raw = RawData(torch.from_numpy(features), torch.from_numpy(y), None, None, kind="vector",
                  num_classes=len(classes), class_names=classes)
    dataset = split_and_normalise(f"csv:{argument}", raw, seed, val_fraction, test_fraction)
    dataset.info["feature_names"] = feature_names
    dataset.info["path"] = str(path)
    return dataset
