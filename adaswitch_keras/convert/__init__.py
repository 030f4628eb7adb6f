"""Real checkpoints as KerasHub models: llama.cpp GGUF files (`gguf`).

`load_gguf(path)` gives a KerasHub `CausalLM`, `convert_gguf(path, dir)` saves
it as a preset, `prune_layers(model, keep)` builds a layer-pruned student with
the same tokenizer. Needs `pip install gguf` only when a file is read.
"""

from adaswitch_keras.convert.gguf import GGUFBackbone
from adaswitch_keras.convert.gguf import GGUFTokenizer
from adaswitch_keras.convert.gguf import convert_gguf
from adaswitch_keras.convert.gguf import load_gguf
from adaswitch_keras.convert.gguf import prune_layers
