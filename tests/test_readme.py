"""The README's few-lines example runs as written."""

import pathlib
import re


def test_readme_example_runs():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["distiller"].history.history["loss"]
