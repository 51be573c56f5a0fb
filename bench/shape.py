"""The model shape a benchmark builds with random weights (speed does not depend on what a model learned)."""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab.errors import UserError  # noqa: E402
from config import option  # noqa: E402
from model import ModelConfig, Transformer, shape_problem  # noqa: E402


@dataclass
class ModelShape:
    n_layer: int = option(4, low=1)
    n_head: int = option(4, low=1)
    n_embd: int = option(128, low=2)
    n_vocab: int = option(256, low=1, high=65535)


def random_model(config, causal, device):
    """A Transformer of config's shape (and its block_size) with random weights, or a one-line UserError."""
    if shape_problem(config.n_embd, config.n_head):
        raise UserError(shape_problem(config.n_embd, config.n_head))
    return Transformer(ModelConfig(n_vocab=config.n_vocab, block_size=config.block_size, n_layer=config.n_layer,
                                   n_head=config.n_head, n_embd=config.n_embd, causal=causal)).to(device)
