"""AdaSwitch knowledge distillation for causal LMs, in Keras 3."""

from adaswitch_keras.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before Keras imports it: see `quiet`

from adaswitch_keras import callbacks
from adaswitch_keras import convert  # registers the GGUF model classes for from_preset
from adaswitch_keras import data
from adaswitch_keras import divergences
from adaswitch_keras import evaluation
from adaswitch_keras import lora
from adaswitch_keras import optimizers
from adaswitch_keras import pipeline
from adaswitch_keras import preprocessing
from adaswitch_keras import presets
from adaswitch_keras import strategies
from adaswitch_keras import teacher_cache
from adaswitch_keras import tiny
from adaswitch_keras.distiller import Distiller
from adaswitch_keras.evaluation import evaluate
from adaswitch_keras.rollout import rollout
from adaswitch_keras.strategies import GKD
from adaswitch_keras.strategies import SFT
from adaswitch_keras.strategies import SKD
from adaswitch_keras.strategies import AdaSwitch
from adaswitch_keras.strategies import FixedSwitch
from adaswitch_keras.strategies import ImitKD
from adaswitch_keras.strategies import OnPolicy
from adaswitch_keras.strategies import SeqKD
from adaswitch_keras.strategies import SeqKDDivergence
from adaswitch_keras.strategies import Strategy
from adaswitch_keras.strategies import SupervisedKD
from adaswitch_keras.strategies import Switch

__version__ = "0.1.0"
