#!/usr/bin/env bash
# Every test, Rust and Python: the README's test command, and what CI (.ci/run) runs.
# The Rust suite first; then the Python package is built into a virtual environment
# (`target/python-venv`, or $MATGRAD_VENV) with `pip install ./python` and tested with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release

venv="${MATGRAD_VENV:-target/python-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The build runs the venv's pinned maturin (no build isolation: nothing fetched unpinned).
export PATH="$(cd "$venv/bin" && pwd):$PATH"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r python/requirements-test.txt
"$venv/bin/python" -m pip install -q --no-build-isolation --force-reinstall --no-deps ./python
# From the repository root, so that the source folder python/matgrad does not shadow the
# installed package (which holds the compiled extension).
"$venv/bin/pytest" -q -rs -p no:cacheprovider python/tests
