"""The README's Python examples run as written (in order, in one namespace), with an
independent check of what they compute."""

import re

import numpy as np

from conftest import ROOT, relative_error


def python_blocks():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python") : text.index("## The GPU back end")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_examples_run_and_compute_the_closed_forms():
    blocks = python_blocks()
    assert len(blocks) == 2, "the single-process example and the Dask example"
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    A, b, xs = namespace["A"], namespace["b"], namespace["xs"].astype(np.float64)
    expected = 2 * (A.T @ (xs @ A.T + b).T).T
    assert relative_error(namespace["g"], expected) < 2e-5
    assert relative_error(namespace["H"][0], 2 * A.T @ A) < 2e-5
    bs = namespace["bs"]
    ridge = np.linalg.solve(A.T @ A + 0.1 * np.eye(64), A.T @ bs.T).T
    assert (namespace["status"] == 0).all()
    assert relative_error(namespace["x_ridge"], ridge) < 1e-3
    assert namespace["sol"].success
