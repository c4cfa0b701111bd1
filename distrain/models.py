"""Models by name. Input and output sizes come from the data set; the rest from `model.*`."""

from __future__ import annotations

from torch import nn

from distrain.config import ModelConfig


class SimpleClassifier(nn.Module):
    """The tutorial's classifier: inputs -> one tanh hidden layer -> outputs (logits)."""

    def __init__(self, num_inputs: int, num_hidden: int, num_outputs: int):
        super().__init__()
        self.linear1 = nn.Linear(num_inputs, num_hidden)
        self.act_fn = nn.Tanh()
        self.linear2 = nn.Linear(num_hidden, num_outputs)

    def forward(self, x):
        return self.linear2(self.act_fn(self.linear1(x)))


class LogisticRegression(nn.Module):
    """One linear layer; with BCE-with-logits (one output) or cross-entropy (several) it is logistic regression."""

    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(num_inputs, num_outputs)

    def forward(self, x):
        return self.linear(x)


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(num_inputs: int, hidden_sizes: list[int], num_outputs: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = num_inputs
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def num_outputs_for(num_classes: int) -> int:
    """One logit for two classes (BCE-with-logits), one per class otherwise (cross-entropy)."""
    return 1 if num_classes == 2 else num_classes


def build_model(cfg: ModelConfig, num_features: int, num_classes: int) -> nn.Module:
    outputs = num_outputs_for(num_classes)
    if cfg.name == "simple_classifier":
        return SimpleClassifier(num_features, cfg.num_hidden, outputs)
    if cfg.name == "logistic_regression":
        return LogisticRegression(num_features, outputs)
    if cfg.name == "mlp":
        return mlp(num_features, cfg.hidden_sizes, outputs, cfg.activation)
    raise AssertionError(f"unhandled model {cfg.name}")  # config validation lists every name
