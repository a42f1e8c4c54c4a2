"""Bad input gets a clear message naming the file, the column and the row, and the right exit code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.batch.errors import DataError

from .conftest import engine, run_discovery

pytestmark = pytest.mark.slow


def _copy(extracts: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "x"
    shutil.copytree(extracts, copy, ignore=shutil.ignore_patterns("truth*"))
    return copy


def _discover_cli(x: Path, out: Path, *extra: str) -> Any:
    return engine(
        "discover", "--mapping", str(x / "mapping.yaml"), "--a", str(x / "a"), "--b", str(x / "b"), "--out",
        str(out), "--workers", "1", "--no-report", *extra,
    )  # fmt: skip


def test_a_bad_mapping_file_is_a_usage_error(extracts: Path, tmp_path: Path) -> None:
    x = _copy(extracts, tmp_path)
    (x / "mapping.yaml").write_text(
        (x / "mapping.yaml").read_text().replace("type: number, role: quantity", "type: int")
    )
    run = _discover_cli(x, tmp_path / "out")
    assert run.returncode == 2
    assert (
        "mapping.yaml: fields[1].type: must be one of text, number, date, timestamp, got 'int'" in run.stderr
    )
    assert "discover: cluster" not in run.stderr  # refused before any cluster started


def test_a_missing_key_column_names_the_file_and_column(extracts: Path, tmp_path: Path) -> None:
    x = _copy(extracts, tmp_path)
    part = x / "a" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["book"]), part)
    run = _discover_cli(x, tmp_path / "out")
    assert run.returncode == 2, run.stderr
    assert f"extract A ({part}): no column 'book' (key part book)" in run.stderr


def test_a_value_of_the_wrong_type_names_file_line_column_and_key(
    cluster: Any, extracts: Path, tmp_path: Path
) -> None:
    x = _copy(extracts, tmp_path)
    csv = x / "b" / "part-00000.csv"
    lines = csv.read_text().splitlines(keepends=True)
    cells = lines[41].split(",")
    cells[6] = '"12 shares"'  # Quantity
    lines[41] = ",".join(cells)
    csv.write_text("".join(lines))
    key = f"{cells[1].strip(chr(34))}, {cells[0].strip(chr(34))}"
    with pytest.raises(DataError) as err:
        run_discovery(cluster, x, tmp_path / "out", report=False)
    assert str(err.value) == (
        f"extract B ({csv}, line 42) (key {key}): column 'Quantity' (field quantity): not a number, "
        "got '12 shares'"
    )
    run = _discover_cli(x, tmp_path / "out2")
    assert run.returncode == 1 and f"{csv}, line 42" in run.stderr and "not a number" in run.stderr


def test_a_timestamp_where_the_mapping_wants_a_number_is_refused(
    cluster: Any, extracts: Path, tmp_path: Path
) -> None:
    x = _copy(extracts, tmp_path)
    part = x / "a" / "part-00000.parquet"
    table = pq.read_table(part)
    qty = pa.array([None] * 5 + [0] * (table.num_rows - 5), pa.timestamp("s"))
    pq.write_table(table.set_column(table.schema.get_field_index("qty"), "qty", qty), part)
    message = rf"extract A \({part}, row 5\) .*column 'qty' \(field quantity\): holds timestamps, the mapping"
    with pytest.raises(DataError, match=message):
        run_discovery(cluster, x, tmp_path / "out", report=False)


def test_an_unreadable_partition_names_the_file(cluster: Any, extracts: Path, tmp_path: Path) -> None:
    x = _copy(extracts, tmp_path)
    broken = x / "a" / "part-00001.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")
    with pytest.raises(DataError, match=rf"{broken}: not a readable Parquet file"):
        run_discovery(cluster, x, tmp_path / "out", report=False)


def test_an_output_folder_holding_other_files_is_refused(extracts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    run = _discover_cli(extracts, out)
    assert run.returncode == 2 and "holds other files (precious.txt)" in run.stderr
    assert (out / "precious.txt").read_text() == "keep me"
