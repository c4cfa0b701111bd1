"""Models by name. Input and output sizes come from the data set; the rest from `model.*`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distrain.config import ModelConfig
from distrain.errors import ConfigError, UserError


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
    layers: list[nn.Module] = [nn.Flatten()]  # images (N, C, H, W) become (N, C*H*W); flat rows are unchanged
    width = num_inputs
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


class MnistCNN(nn.Module):
    """The tutorial's MNIST CNN: conv 1->10 and 10->20 (kernel 5, no pooling), then fc 8000->200->10."""

    def __init__(self, num_outputs: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(20 * 20 * 20, 200)
        self.fc2 = nn.Linear(200, num_outputs)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class CifarLeNet(nn.Module):
    """The tutorial's CIFAR-10 LeNet: conv 3->6 and 6->16 (kernel 5) with 2x2 max pooling, fc 400->120->84->10."""

    def __init__(self, num_outputs: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_outputs)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def _head_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the final classification Linear, and that Linear's attribute name."""
    for parent_name in ("fc", "classifier", "head", "heads"):
        head = getattr(model, parent_name, None)
        if isinstance(head, nn.Linear):
            return model, parent_name
        if isinstance(head, nn.Sequential):
            last = [name for name, m in head.named_children() if isinstance(m, nn.Linear)]
            if last:
                return head, last[-1]
    raise UserError(f"cannot find the classification head of {type(model).__name__}",
                    "fine-tuning supports torchvision models whose head is .fc, .classifier or .heads")


def torchvision_model(cfg: ModelConfig, num_outputs: int) -> nn.Module:
    """Any torchvision classification model by name. With model.pretrained, its weights are loaded from a
    local file first (with the original head), then the head is replaced for num_outputs classes."""
    import torchvision.models

    try:
        builder = torchvision.models.get_model_builder(cfg.arch)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:12])
        raise ConfigError("model.arch", f"{cfg.arch!r} is not a torchvision classification model",
                          f"e.g. {names}, ...") from None
    if cfg.pretrained is None:
        return builder(num_classes=num_outputs)
    model = builder()  # the original head, to match the weights file
    path = Path(cfg.pretrained)
    if not path.is_file():
        raise ConfigError("model.pretrained", f"{path} does not exist",
                          "download the weights elsewhere and copy the file here; nothing is fetched at run time")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError("model.pretrained", f"{path} does not match torchvision's {cfg.arch}: "
                          f"{str(exc).splitlines()[0]}") from None
    parent, name = _head_of(model)
    old = getattr(parent, name)
    setattr(parent, name, nn.Linear(old.in_features, num_outputs))
    return model


def freeze_all_but_head(model: nn.Module) -> None:
    """requires_grad=False everywhere except the classification head (the optimizer then skips them), and
    the backbone's BatchNorm layers kept in eval mode, so their running statistics are frozen too (in
    train mode they would drift with every batch although their weights do not)."""
    parent, name = _head_of(model)
    head = getattr(parent, name)
    for p in model.parameters():
        p.requires_grad = False
    for p in head.parameters():
        p.requires_grad = True
    frozen_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    train = model.train

    def train_keeping_frozen_norms(mode: bool = True) -> nn.Module:
        train(mode)
        for norm in frozen_norms:
            norm.eval()
        return model

    model.train = train_keeping_frozen_norms  # what DDP and the loops call


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
    if cfg.name == "mnist_cnn":
        return MnistCNN(outputs)
    if cfg.name == "cifar_lenet":
        return CifarLeNet(outputs)
    if cfg.name == "torchvision":
        model = torchvision_model(cfg, outputs)
        if cfg.freeze_backbone:
            freeze_all_but_head(model)
        return model
    raise AssertionError(f"unhandled model {cfg.name}")  # config validation lists every name
