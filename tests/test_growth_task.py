"""The default growth task: the generator, and the property it exists for (the host alone stalls)."""

from __future__ import annotations

import attrs
import torch

from esper_kernel.data.generated import PAIR_OFFSETS, make_pairs
from esper_kernel.data.tasks import TaskData, get_task
from esper_kernel.episode.env import EnvConfig, cnn_host_config
from esper_kernel.grow.hosts import CNNHost


def test_pairs_is_deterministic_by_seed_and_differs_across_seeds() -> None:
    a, b, c = make_pairs(3, 64, 32), make_pairs(3, 64, 32), make_pairs(4, 64, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    # Changing the validation size leaves the training split alone.
    assert torch.equal(make_pairs(3, 64, 48).train_x, a.train_x)


def test_pairs_classes_are_balanced_and_shapes_match_the_docs() -> None:
    task = get_task("pairs", seed=0, n_train=203, n_val=50)
    assert task.train_x.shape == (203, 3, 12, 12) and task.num_classes == 2 * len(PAIR_OFFSETS) == 10
    for y in (task.train_y, task.val_y):
        counts = torch.bincount(y, minlength=10)
        assert int(counts.max() - counts.min()) <= 1


def test_pairs_marks_sit_at_their_class_offset() -> None:
    # Noise off, one pair: the two lit pixels of a dot class are exactly the class's offset apart.
    task = make_pairs(0, 50, 10, noise=0.0, n_pairs=1)
    for img, label in zip(task.train_x, task.train_y, strict=True):
        if int(label) >= len(PAIR_OFFSETS):
            continue
        lit = (img.sum(0) > img.sum(0).min() + 1e-3).nonzero().tolist()
        assert len(lit) == 2
        (y0, x0), (y1, x1) = sorted(lit)
        dy, dx = PAIR_OFFSETS[int(label)]
        assert (y1 - y0, x1 - x0) in {(dy, dx), (-dy, -dx)}
        # Two pixels clear of every edge: no window touching the padding sees a mark.
        assert all(2 <= v < img.shape[-1] - 2 for v in (y0, x0, y1, x1))


def _train(host: CNNHost, task: TaskData, epochs: int) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.SGD(host.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    accs = []
    for _ in range(epochs):
        host.train()
        for x, y in task.batches(64, g):
            loss = torch.nn.functional.cross_entropy(host(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        host.eval()
        with torch.no_grad():
            accs.append(float((host(task.val_x).argmax(1) == task.val_y).float().mean()))
    return accs


def test_the_default_host_alone_plateaus_while_a_wider_view_does_not() -> None:
    """The growth task's premise, on a small budget: the 3x3-view host stalls near 20%,
    the same host with 3x3 blocks (a 9x9 view, what spatial seeds add) does not."""
    cfg = EnvConfig()
    task = get_task("pairs", seed=0, n_train=768, n_val=400)
    torch.manual_seed(0)
    narrow = CNNHost(cnn_host_config(cfg, 10))
    accs = _train(narrow, task, 12)
    assert max(accs) < 0.35, accs
    assert abs(accs[-1] - accs[-4]) < 0.06, accs  # flat over the last quarter
    torch.manual_seed(0)
    wide_view = CNNHost(attrs.evolve(cnn_host_config(cfg, 10), block_kernel=3))
    assert max(_train(wide_view, task, 12)) > max(accs) + 0.15
