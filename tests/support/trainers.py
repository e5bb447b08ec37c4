"""Training in the test's own process: a Trainer to drive step by step, or a whole run on one thread."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def trainer_for(cfg):
    """The Trainer of ``cfg``; closed, and its run folder's lock released, when the block ends."""
    from sctrain.training.trainer import Trainer

    with Trainer(cfg) as trainer:
        yield trainer


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread inside the block: on a shared, oversubscribed CI machine OpenMP's parallel regions stall
    on descheduled threads and take several times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_on_one_thread(cfg) -> dict:
    """``train(cfg)`` on one thread, as the session fixtures train their models (:func:`one_torch_thread`)."""
    from sctrain.training.trainer import train

    with one_torch_thread():
        return train(cfg)


def quickly_trained(name: str, root, cache):
    """The family at its registered test size, trained for 40 steps on 320 real training clips of the mini set
    (its logits then separate the words, so agreement measures quantization, not ties), and 64 test clips."""
    from sctrain.audio.features import LogMel
    from sctrain.config import load_config
    from sctrain.data.clips import split_audio
    from sctrain.inference.loading import LoadedModel
    from sctrain.models.classifier import AudioClassifier
    from sctrain.models.registry import create_model, get_family

    family = get_family(name)
    cfg = load_config(None, [f"model.name={name}", f"data.root={root}", f"data.cache_dir={cache}",
                             *[f"model.{name}.{k}={v}" for k, v in family.test_size.items()],
                             *[f"features.{k}={v}" for k, v in family.features.items()]])
    audio, labels = split_audio(cfg.data, "train", 320)
    test, _ = split_audio(cfg.data, "test", 64)
    torch.manual_seed(0)
    features = LogMel(cfg.features)
    net = create_model(cfg.model, cfg.features, int(labels.max()) + 1)
    x, y = features(torch.from_numpy(audio)), torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(40):
        i = torch.randint(0, len(x), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    names = [f"word{i}" for i in range(int(labels.max()) + 1)]
    return LoadedModel(AudioClassifier(features, net).eval(), names, cfg, root / "none.pt"), test
