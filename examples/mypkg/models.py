from torch import nn


class SimpleClassifier(nn.Module):
    """The tutorial's classifier; num_outputs is filled in by distrain from the data when not set."""

    def __init__(self, num_inputs: int, num_hidden: int, num_outputs: int):
        super().__init__()
        self.linear1 = nn.Linear(num_inputs, num_hidden)
        self.act_fn = nn.Tanh()
        self.linear2 = nn.Linear(num_hidden, num_outputs)

    def forward(self, x):
        return self.linear2(self.act_fn(self.linear1(x)))
