"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

from conftest import once

pytestmark = once  # conftest.ONCE_BACKEND


def test_readme_examples_run(monkeypatch):
    root = pathlib.Path(__file__).parents[1]
    monkeypatch.chdir(root)  # the examples use paths relative to the checkout
    examples = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
    assert len(examples) >= 2
    namespace = {}
    for example in examples:
        exec(compile(example, "README.md", "exec"), namespace)
    history = namespace["distiller"].history.history
    assert history["loss"] and history["switch_rate"][-1] > 0  # the example switches
    assert len(namespace["rows"]) == 1319
