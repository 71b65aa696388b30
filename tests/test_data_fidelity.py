"""Data-side faults a new user met: ambiguous CSV columns, unchecked options, inconsistent manifests, odd inputs."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from kpipe.cli import main
from kpipe.errors import InputError
from kpipe.ingest import scan
from kpipe.prepare import prepare


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------ 1: every column read by name must be one column
@pytest.mark.parametrize("text, options, message", [
    ("x,x,label\n1,2,0\n3,4,1\n", {}, r"names two columns 'x' \(columns 1 and 2\)"),
    ("a,label,label\n1,0,0\n3,1,1\n", {}, r"names two columns 'label' \(columns 2 and 3\)"),
    (" x,x ,label\n1,2,0\n3,4,1\n", {}, r"names two columns 'x'"),  # names compared after stripping blanks
    ("x,a,label\n1,2,0\n3,4,1\n", {"id_column": "x", "weight_column": "x"},
     "column 'x' is given as both `id_column` and `weight_column`"),
    ("id,a,label\nr1,2,0\nr2,4,1\n", {"id_column": "label"}, "both `label_column` and `id_column`"),
    (",a,label\n0,2,0\n1,4,1\n", {}, r"column 1 of the header has no name but holds values \(e.g. line 2\)"),
])
def test_ambiguous_csv_columns_are_refused_naming_file_and_columns(tmp_path: Path, text, options, message):
    raw = _csv(tmp_path / "t.csv", text)
    with pytest.raises(InputError, match=message) as e:
        prepare(raw, tmp_path / "out", n_jobs=1, **options)
    assert str(raw) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_empty_unnamed_column_from_a_trailing_comma_is_dropped_as_before(tmp_path: Path):
    found = scan(_csv(tmp_path / "t.csv", "a,label,\n1,0,\n2,1,\n"))
    assert found.details["feature_columns"] == ["a"] and found.details["dropped_column_reasons"] == {"#3": "empty"}


def test_cli_prepare_duplicate_header_is_one_line(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", "x,x,label\n" + "".join(f"{k},{k},{k % 2}\n" for k in range(20)))
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "out"), "--n-jobs", "1"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "names two columns 'x'" in result.output


# ------------------------------------------------ 5: an unclosed CSV quote
def test_unclosed_quote_names_the_line_where_it_opened(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,b,label\n1,2,0\n3,"4,1\n5,6,1\n7,8,0\n')
    with pytest.raises(InputError, match=r"the quote opened on line 3 is never closed, so lines 3-5 \(the rest"):
        scan(raw)


def test_quote_closed_lines_later_names_the_swallowed_line_break(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,b,label\n1,2,0\n3,"4\n5",6,1\n7,8,0\n9,9,1\n')
    found = scan(raw)
    assert [s.source for s in found.samples] == [f"{raw}:2", f"{raw}:4", f"{raw}:5"]
    assert found.skipped == [{"path": f"{raw}:3", "kind": "bad-row", "reason":
                              "row has 4 cells, the header has 3: a quote opened in this row runs over 1 line break "
                              "before it closes, so those lines were read as one cell"}]


def test_quoted_cells_with_line_breaks_in_a_text_column_still_read(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,note,label\n1,"two\nlines",0\n2,x,1\n3,y,0\n')
    found = scan(raw)
    assert found.details["feature_columns"] == ["a"] and len(found.samples) == 3 and not found.skipped
