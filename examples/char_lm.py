"""A character-level LSTM language model trained with truncated backpropagation through time (TBPTT),
as pytorch/examples' word_language_model does: the text is cut into B parallel streams, each batch holds
the next `bptt` characters of every stream, and the LSTM's hidden state is carried from one batch to the
next (detached). The step is an object: its hidden state is per rank, saved in every checkpoint and
restored on resume (`state_dict`/`load_state_dict`), and reset at the start of each epoch and each
evaluation split (`on_split_start`). `data.streams: true` gives each rank the same streams every batch, in
training and in evaluation, on any number of processes.

    python examples/char_lm.py examples/char_lm.yaml                          # one CPU process
    torchrun --standalone --nproc_per_node=2 examples/char_lm.py examples/char_lm.yaml
"""

import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import distrain

WORDS = "the a one every small large red blue cat dog bird runs sees eats jumps over under near and".split()


def generate_text(num_chars, seed):
    """Sentences from a small grammar (article, adjective, noun, verb, ...), drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    words, total = [], 0
    while total < num_chars:
        word = WORDS[int(torch.randint(len(WORDS), (1,), generator=g))]
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:num_chars]


class Streams(Dataset):
    """`text` as `num_streams` parallel streams, cut into segments of `bptt` characters: sample i is segment
    i // num_streams of stream i % num_streams, (input characters, the next characters). With a global
    batch of num_streams and no shuffling, batch t holds segment t of every stream."""

    def __init__(self, text, vocab, num_streams, bptt):
        ids = torch.tensor([vocab.index(c) for c in text])
        length = (len(ids) - 1) // num_streams // bptt * bptt  # whole segments of every stream
        self.x = torch.stack([ids[s * length : (s + 1) * length] for s in range(num_streams)])
        self.y = torch.stack([ids[s * length + 1 : (s + 1) * length + 1] for s in range(num_streams)])
        self.num_streams, self.bptt = num_streams, bptt

    def __len__(self):
        return self.x.numel() // self.bptt

    def __getitem__(self, i):
        stream, segment = i % self.num_streams, i // self.num_streams
        cut = slice(segment * self.bptt, (segment + 1) * self.bptt)
        return self.x[stream, cut], self.y[stream, cut]


class CharLSTM(nn.Module):
    def __init__(self, vocab_size, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 32)
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


class TBPTTStep:
    """The training (and evaluation) step, carrying this rank's hidden state from batch to batch."""

    def __init__(self):
        self.state = None

    def on_split_start(self, split):  # each epoch and each evaluation split starts from a zero state
        self.state = None

    def __call__(self, model, batch):
        x, y = batch
        if self.state is not None and self.state[0].shape[1] != len(x):
            self.state = None  # a batch with fewer streams (a short last batch): start those afresh
        logits, state = model(x, self.state)
        self.state = tuple(s.detach() for s in state)  # truncated: no gradient into earlier batches
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)  # per-sample losses

    def state_dict(self):
        return {"state": self.state}

    def load_state_dict(self, saved):
        self.state = saved["state"]


def main(argv):
    cfg = distrain.load_config(argv[0], argv[1:])
    torch.manual_seed(cfg.seed)
    text = generate_text(40_000, seed=1)
    vocab = sorted(set(text))
    streams = cfg.data.global_batch_size  # one stream per sample of the global batch
    train = Streams(text[:32_000], vocab, streams, bptt=16)
    val = Streams(text[32_000:], vocab, cfg.data.eval_batch_size, bptt=16)
    model = CharLSTM(len(vocab))
    result = distrain.fit(cfg, model=model, train_data=train, val_data=val, step=TBPTTStep())
    if distrain.is_main_process():
        print(f"val loss {result['val_loss']:.4f} (per character, nats)")
        torch.save(model.state_dict(), f"{result['run_dir']}/model.pt")


if __name__ == "__main__":
    distrain.run_main(lambda: main(sys.argv[1:]))
