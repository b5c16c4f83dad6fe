"""Tail averaging of weights: the running mean, its checkpointed state, the swap."""

import pytest
import torch

from train.averaging import WeightAverage


def test_running_mean_equals_the_mean_of_the_snapshots_and_swaps_back():
    model = torch.nn.Linear(3, 2)
    avg, snapshots = WeightAverage(model.parameters()), []
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(i + 1))
        snapshots.append([p.detach().clone() for p in model.parameters()])
        avg.update()
    trained = [p.detach().clone() for p in model.parameters()]
    with avg.swapped_in():
        for p, *snaps in zip(model.parameters(), *snapshots):
            torch.testing.assert_close(p, torch.stack(snaps).mean(0))
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))
    assert avg.count == 3


def test_a_restored_average_continues_as_the_original():
    model = torch.nn.Linear(3, 2)
    a = WeightAverage(model.parameters())
    a.update()
    b = WeightAverage(model.parameters())
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        model.weight.mul_(3.0)
    a.update()
    b.update()
    assert b.count == 2 and all(torch.equal(x, y) for x, y in zip(a.mean, b.mean))
    b.reset()
    assert (b.count, b.mean) == (0, None)
    b.update()
    assert b.count == 1 and all(torch.equal(m, p) for m, p in zip(b.mean, model.parameters()))


def test_bad_state_and_empty_average_are_refused():
    with pytest.raises(ValueError, match="no weights averaged"):
        with WeightAverage(torch.nn.Linear(2, 2).parameters()).swapped_in():
            pass
    other = WeightAverage(torch.nn.Linear(2, 2, bias=False).parameters())
    other.update()
    with pytest.raises(ValueError, match="holds 1 tensors, the model trains 2"):
        WeightAverage(torch.nn.Linear(2, 2).parameters()).load_state_dict(other.state_dict())
