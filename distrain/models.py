"""Built-in models, each a function whose keyword arguments are its options (`model.args`).

    model: {name: mlp, args: {hidden_sizes: [64, 64], activation: relu}}
    model: {name: mypkg.models:Net, args: {width: 128}}        # a user's, resolved the same way

They are registered as import paths in distrain.config.registry exactly like a user's model. Parameters named
num_inputs, num_outputs, num_classes, input_shape and in_channels that the config does not set are
filled in from the data and the loss (see distrain.config.registry.call), for a user's model as for these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

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


def simple_classifier(*, num_inputs: int, num_outputs: int, num_hidden: int = 4) -> nn.Module:
    """The tutorial's classifier: one tanh hidden layer of `num_hidden` units."""
    _positive("num_hidden", num_hidden)
    return SimpleClassifier(num_inputs, num_hidden, num_outputs)


def logistic_regression(*, num_inputs: int, num_outputs: int) -> nn.Module:
    """One linear layer on the flat features (logistic regression with a BCE or cross-entropy loss)."""
    return LogisticRegression(num_inputs, num_outputs)


def linear(*, num_inputs: int, num_outputs: int) -> nn.Module:
    """One linear layer (linear regression with an mse loss)."""
    return LogisticRegression(num_inputs, num_outputs)


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"model.args.{key}", f"must be > 0, got {value}")


def mlp(
    *,
    num_inputs: int,
    num_outputs: int,
    hidden_sizes: list[int] = [64, 64],  # noqa: B006 (read only)
    activation: Literal["tanh", "relu", "gelu"] = "relu",
) -> nn.Sequential:
    """Flatten, then Linear + activation for each of `hidden_sizes`, then a Linear to the outputs."""
    if any(h <= 0 for h in hidden_sizes):
        raise ConfigError("model.args.hidden_sizes", f"widths must be > 0, got {hidden_sizes}")
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
    raise UserError(
        f"cannot find the classification head of {type(model).__name__}",
        "fine-tuning supports torchvision models whose head is .fc, .classifier or .heads",
    )


def mnist_cnn(*, num_outputs: int = 10) -> nn.Module:
    """The tutorial's MNIST CNN (1x28x28 inputs)."""
    return MnistCNN(num_outputs)


def cifar_lenet(*, num_outputs: int = 10) -> nn.Module:
    """The tutorial's CIFAR-10 LeNet (3x32x32 inputs)."""
    return CifarLeNet(num_outputs)


def torchvision(
    *, num_outputs: int, arch: str = "resnet18", pretrained: str | None = None, freeze_backbone: bool = False
) -> nn.Module:
    """Any torchvision classification model by name (`arch`). With `pretrained`, its weights are loaded
    from a local file first (with the original head), then the head is replaced for num_outputs classes;
    `freeze_backbone` trains only that head."""
    model = torchvision_model(arch, pretrained, num_outputs)
    if freeze_backbone:
        freeze_all_but_head(model)
    return model


def torchvision_model(arch: str, pretrained: str | None, num_outputs: int) -> nn.Module:
    import torchvision.models

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:12])
        raise ConfigError(
            "model.args.arch", f"{arch!r} is not a torchvision classification model", f"e.g. {names}, ..."
        ) from None
    if pretrained is None:
        return builder(num_classes=num_outputs)
    model = builder()  # the original head, to match the weights file
    path = Path(pretrained)
    if not path.is_file():
        raise ConfigError(
            "model.args.pretrained",
            f"{path} does not exist",
            "download the weights elsewhere and copy the file here; nothing is fetched at run time",
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            "model.args.pretrained", f"{path} does not match torchvision's {arch}: {str(exc).splitlines()[0]}"
        ) from None
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
