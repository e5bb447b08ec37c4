"""The sharded balanced sampler: one world-size-independent stream, disjoint equal shards, resumable."""
import numpy as np
import pytest

from sctrain.data.sampler import BalancedDistributedSampler

# Imbalanced labels: class 0 is 10x class 2.
LABELS = np.array([0] * 500 + [1] * 200 + [2] * 50 + [3] * 53)


def shards(world, balanced=True, seed=0, epoch=0):
    out = []
    for rank in range(world):
        s = BalancedDistributedSampler(LABELS, 4, world, rank, seed=seed, balanced=balanced)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("balanced", [True, False])
def test_shards_are_equal_disjoint_and_cover_the_stream(world, balanced):
    parts = shards(world, balanced)
    assert len({len(p) for p in parts}) == 1, "every rank must run the same number of steps"
    reference = BalancedDistributedSampler(LABELS, 4, world, 0, balanced=balanced)
    stream = reference.stream(reference.shard_size * world)
    # Disjoint positions: interleaving the shards rebuilds the stream exactly.
    rebuilt = np.empty(len(stream), dtype=np.int64)
    for rank, part in enumerate(parts):
        rebuilt[rank::world] = part
    assert (rebuilt == stream).all()
    if not balanced:
        assert set(stream.tolist()) == set(range(len(LABELS)))


@pytest.mark.parametrize("world", [2, 3, 8])
def test_stream_is_the_same_whatever_the_world_size(world):
    single = shards(1)[0]
    parts = shards(world)
    rebuilt = [None] * (len(parts[0]) * world)
    for rank, part in enumerate(parts):
        rebuilt[rank::world] = part
    assert rebuilt[:len(LABELS)] == single


def test_balanced_stream_balances_classes():
    s = BalancedDistributedSampler(LABELS, 4, seed=1)
    counts = np.zeros(4)
    for epoch in range(20):
        s.set_epoch(epoch)
        counts += np.bincount(LABELS[list(s)], minlength=4)
    share = counts / counts.sum()
    assert np.allclose(share, 0.25, atol=0.02), share


def test_unbalanced_stream_is_a_permutation_and_follows_the_data():
    (part,) = shards(1, balanced=False)
    assert sorted(part) == list(range(len(LABELS)))


def test_epochs_and_seeds_change_the_stream_deterministically():
    assert shards(2, epoch=0) == shards(2, epoch=0)
    assert shards(2, epoch=0) != shards(2, epoch=1)
    assert shards(2, seed=0) != shards(2, seed=1)


@pytest.mark.parametrize("world", [1, 3])
def test_resume_mid_epoch_continues_the_shard(world):
    for rank in range(world):
        s = BalancedDistributedSampler(LABELS, 4, world, rank, seed=3)
        s.set_epoch(2)
        full = list(s)
        s.set_epoch(2, start=37)
        assert list(s) == full[37:] and len(s) == len(full) - 37


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        BalancedDistributedSampler(LABELS, 4, 2, 2)
    with pytest.raises(ValueError, match="empty"):
        BalancedDistributedSampler([], 4)
    s = BalancedDistributedSampler(LABELS, 4)
    with pytest.raises(ValueError, match="start"):
        s.set_epoch(0, start=10_000)
