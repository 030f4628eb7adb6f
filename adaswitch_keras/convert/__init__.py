"""Real checkpoints as KerasHub models: llama.cpp GGUF files (`gguf`).

`load_gguf(path)` gives a KerasHub `CausalLM`, `convert_gguf(path, dir)` saves
it as a preset, `prune_layers(model, keep)` builds a layer-pruned student with
the same tokenizer, and `save_gguf(model, path)` writes one back for llama.cpp.
Needs `pip install gguf` only when a file is read or written.
"""

from adaswitch_keras.convert.gguf import GGUFBackbone
from adaswitch_keras.convert.gguf import GGUFTokenizer
from adaswitch_keras.convert.gguf import convert_gguf
from adaswitch_keras.convert.gguf import load_gguf
from adaswitch_keras.convert.gguf import prune_layers
from adaswitch_keras.convert.gguf import save_gguf
