import nbformat

from coursepkg.grading.record import record


def test_record_keeps_merged_check_outputs_only(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    work = nbformat.v4.new_code_cell("import sys\nvalue = 6 * 7\nprint('not a check')")
    check = nbformat.v4.new_code_cell(
        "# CHECK chxx-answer\nimport sys\nprint(value, end='')\nsys.stdout.flush()\nprint(' is the answer')"
    )
    check.metadata["tags"] = ["check:chxx-answer", "nbval-check-output"]
    nb.cells = [work, check]
    path = tmp_path / "solution.ipynb"
    nbformat.write(nb, path)
    record(path)
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[0].outputs == [] and stored.cells[0].execution_count is None
    (output,) = stored.cells[1].outputs
    assert output.text == "42 is the answer\n"
    assert stored.cells[1].execution_count == 2
