"""Early stopping with rollback, checkpoints, the LR schedule, batching and adaptation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fsx.data.coco import CocoSet, DetectionDataset
from fsx.data.shots import sample_shots
from fsx.engine import checkpoint as ckpt_mod
from fsx.engine import finetune
from fsx.engine.checkpoint import FORMAT, load_model, read_checkpoint, save_checkpoint
from fsx.engine.early_stopping import EarlyStopping
from fsx.engine.finetune import AdaptSettings, adapt
from fsx.engine.loop import infinite_batches, warmup_step_schedule
from fsx.errors import UsageError
from fsx.models.detectors import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_spec(num_classes: int = 3) -> dict:
    return {
        "detector": {"name": "retinanet", "anchor_scale": 1.5},
        "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]},
        "num_classes": num_classes,
        "image_size": 128,
        "image_mean": [0.9] * 3,
        "image_std": [0.25] * 3,
    }


# --- early stopping ----------------------------------------------------------------------


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():  # in place, as an optimiser step does
        model.weight.fill_(value)
        model.bias.fill_(-value)


def _value(model: nn.Linear) -> float:
    return float(model.weight.detach().flatten()[0])


def test_early_stopping_fires_at_twice_the_best_running_mean_and_rolls_back():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(window=30, factor=2.0)
    _set(model, -1.0)
    stopper.begin(model)
    # 30 steps at 1.0, 30 at 0.5 (running mean falls to 0.5 at step 60), then 3.5: the mean at
    # step 60 + j is 0.5 + 0.1 j, which reaches 2 x 0.5 at j = 5, i.e. step 65.
    losses = [1.0] * 30 + [0.5] * 30 + [3.5] * 20
    fired_at = None
    for step, loss in enumerate(losses, start=1):
        _set(model, step)
        if stopper.update(step, loss, model):
            fired_at = step
            break
    assert fired_at == 65
    assert stopper.fired and stopper.stopped_at == 65
    assert stopper.best == pytest.approx(0.5)
    assert stopper.best_step == 60
    assert _value(model) == 65
    assert stopper.rollback(model) == 60
    assert _value(model) == 60.0
    assert torch.equal(model.bias, torch.tensor([-60.0]))


def test_early_stopping_does_not_fire_below_the_factor():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(window=5, factor=2.0)
    stopper.begin(model)
    losses = [1.0] * 5 + [1.9] * 50  # the mean creeps up to 1.9 < 2 x 1.0
    assert not any(stopper.update(s, l, model) for s, l in enumerate(losses, start=1))
    assert not stopper.fired and stopper.best_step == 5


def test_early_stopping_waits_for_a_full_window():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(window=30, factor=2.0)
    stopper.begin(model)
    assert not any(stopper.update(s, l, model) for s, l in enumerate([1.0, 100.0] * 14 + [100.0], start=1))
    assert stopper.best == math.inf  # 29 losses: no running mean yet


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_stops_at_once_and_rolls_back_to_begin(bad):
    model = nn.Linear(2, 1)
    _set(model, 0.25)
    stopper = EarlyStopping(window=30, factor=2.0)
    stopper.begin(model)
    for step in range(1, 6):
        _set(model, step)
        assert not stopper.update(step, 1.0, model)
    _set(model, 6)
    assert stopper.update(6, bad, model) is True
    assert stopper.stopped_at == 6
    assert stopper.rollback(model) == 0
    assert _value(model) == 0.25


def test_non_finite_loss_after_a_best_rolls_back_to_the_best():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(window=3, factor=2.0)
    stopper.begin(model)
    for step, loss in enumerate([3.0, 2.0, 1.0, 0.5, 5.0], start=1):
        _set(model, step)
        assert not stopper.update(step, loss, model)
    _set(model, 6)
    assert stopper.update(6, float("nan"), model)
    assert stopper.rollback(model) == 4  # mean (2, 1, 0.5) at step 4 is the best; (1, 0.5, 5) at 5 is not
    assert _value(model) == 4


def test_rollback_without_any_snapshot_is_a_no_op():
    model = nn.Linear(1, 1)
    _set(model, 3)
    stopper = EarlyStopping(window=3)
    assert stopper.update(1, float("nan"), model)
    assert stopper.rollback(model) is None
    assert _value(model) == 3


# --- checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_detector(tiny_spec())


def test_checkpoint_round_trip(tmp_path, tiny_model):
    spec = tiny_spec()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", tiny_model, spec, ["B", "H", "M"], {"seed": 3}, step=17)
    assert path == tmp_path / "sub" / "model.pt"
    payload = read_checkpoint(path)
    assert payload["format"] == FORMAT
    assert payload["classes"] == ["B", "H", "M"]
    assert payload["model_spec"] == spec
    assert payload["config"] == {"seed": 3}
    assert payload["step"] == 17
    rebuilt = load_model(payload)
    want, got = tiny_model.state_dict(), rebuilt.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp files left


def test_load_model_ignores_backbone_weights_path(tmp_path, tiny_model):
    spec = {**tiny_spec(), "backbone": {**tiny_spec()["backbone"], "weights": str(tmp_path / "deleted.pth")}}
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, spec, ["a", "b", "c"], {})
    rebuilt = load_model(read_checkpoint(path))
    assert torch.equal(rebuilt.state_dict()["head.classification_head.cls_logits.weight"], tiny_model.state_dict()["head.classification_head.cls_logits.weight"])


def test_read_checkpoint_missing_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pt")


def test_read_checkpoint_truncated_file(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, tiny_spec(), ["a", "b", "c"], {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="is not a valid fsx checkpoint: it is not a PyTorch file, or it is truncated or damaged"):
        read_checkpoint(path)


def test_read_checkpoint_garbage_file(tmp_path):
    path = tmp_path / "g.pt"
    path.write_bytes(b"\x00\x01 this is not a checkpoint\n" * 10)
    with pytest.raises(UsageError, match="is not a valid fsx checkpoint: it is not a PyTorch file, or it is truncated or damaged"):
        read_checkpoint(path)


def test_read_checkpoint_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "format": "other"}, path)
    with pytest.raises(UsageError, match="is not an fsx checkpoint"):
        read_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(UsageError, match="is not an fsx checkpoint"):
        read_checkpoint(path)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, tiny_spec(), ["a", "b", "c"], {"version": 1})
    old = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model, tiny_spec(), ["a", "b", "c"], {"version": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert read_checkpoint(path)["config"] == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_save_overwrites_atomically(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model, tiny_spec(), ["a", "b", "c"], {"version": 1})
    save_checkpoint(path, tiny_model, tiny_spec(), ["a", "b", "c"], {"version": 2})
    assert read_checkpoint(path)["config"] == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# --- schedule and batches ----------------------------------------------------------------


def _factors(steps: int, warmup: int, decay_at: list[float], gamma: float = 0.1) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = warmup_step_schedule(opt, steps, warmup, decay_at, gamma)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_step_schedule():
    f = _factors(100, 10, [0.6, 0.8])
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10:60] == pytest.approx([1.0] * 50)
    assert f[60:80] == pytest.approx([0.1] * 20)
    assert f[80:] == pytest.approx([0.01] * 20)


def test_warmup_step_schedule_scales_with_the_budget():
    f = _factors(1000, 0, [0.6, 0.8], gamma=0.5)
    assert f[0] == 1.0 and f[599] == 1.0
    assert f[600] == pytest.approx(0.5) and f[799] == pytest.approx(0.5)
    assert f[800] == pytest.approx(0.25) and f[999] == pytest.approx(0.25)


class _Items:
    """A dataset of (image, target) pairs whose target names the index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1,), float(i)), {"index": i}


def _take(gen, k):
    return [[t["index"] for t in next(gen)[1]] for _ in range(k)]


def test_infinite_batches_never_repeat_within_a_batch():
    batches = _take(infinite_batches(_Items(7), 3, seed=0), 30)
    for b in batches:
        assert len(b) == 3 and len(set(b)) == 3
        assert set(b) <= set(range(7))
    # one epoch = two batches of a fresh permutation (the 7th image waits for the next epoch)
    for e in range(15):
        assert not set(batches[2 * e]) & set(batches[2 * e + 1])
    assert set().union(*map(set, batches)) == set(range(7))


def test_infinite_batches_smaller_dataset_than_batch():
    gen = infinite_batches(_Items(3), 16, seed=1)
    images, targets = next(gen)
    assert isinstance(images, list) and isinstance(targets, list)
    assert sorted(t["index"] for t in targets) == [0, 1, 2]
    assert [float(im) for im in images] == [t["index"] for t in targets]


def test_infinite_batches_are_seeded():
    a = _take(infinite_batches(_Items(10), 4, seed=5), 12)
    b = _take(infinite_batches(_Items(10), 4, seed=5), 12)
    c = _take(infinite_batches(_Items(10), 4, seed=6), 12)
    assert a == b
    assert a != c


# --- adaptation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def support(letters_source) -> DetectionDataset:
    source = CocoSet.load(letters_source / "annotations.json", letters_source)
    task = sample_shots(source, ["B", "H", "M"], 1, seed=0)
    return DetectionDataset(task.support, task.class_ids)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_adapt_calls_back_at_exactly_the_milestones(support):
    torch.manual_seed(0)
    model = build_detector(tiny_spec())
    initial = _snapshot(model)
    seen = []

    def on_milestone(step, m):
        assert m is model
        seen.append((step, _snapshot(m)))
        m.eval()  # a callback may evaluate; adapt must return to train mode

    settings = AdaptSettings(steps=4, lr=1e-3, batch_size=2, params="heads")
    result = adapt(model, support, settings, torch.device("cpu"), seed=0, milestones=[4, 0, 2, 9, 2], on_milestone=on_milestone)
    assert [s for s, _ in seen] == [0, 2, 4]
    assert result.steps_run == 4
    assert result.stopped_at is None and result.rolled_back_to is None
    assert result.final_loss is not None and math.isfinite(result.final_loss) and result.final_loss > 0
    assert not model.training
    final = _snapshot(model)
    w = "head.classification_head.cls_logits.weight"
    assert torch.equal(seen[0][1][w], initial[w])  # milestone 0: before any step
    assert torch.equal(seen[2][1][w], final[w])  # the last milestone sees the final weights
    assert not torch.equal(seen[1][1][w], initial[w]) and not torch.equal(seen[1][1][w], final[w])
    # params=heads: the backbone weights are untouched, the box head is trained
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert torch.equal(p, initial[name]), name
            assert not p.requires_grad
    assert any(not torch.equal(final[k], initial[k]) for k in initial if k.startswith("head.regression_head"))


def test_adapt_heads_keeps_the_backbone_batchnorm_statistics(support):
    torch.manual_seed(0)
    model = build_detector(tiny_spec())
    initial = _snapshot(model)
    adapt(model, support, AdaptSettings(steps=2, lr=1e-3, batch_size=2, params="heads"), torch.device("cpu"), seed=0)
    changed = [k for k, v in model.state_dict().items() if k.startswith("backbone.") and not torch.equal(v, initial[k])]
    assert changed == []


def test_adapt_with_zero_steps_scores_milestone_zero_only(support):
    model = build_detector(tiny_spec())
    before = _snapshot(model)
    seen = []
    result = adapt(model, support, AdaptSettings(steps=0), torch.device("cpu"), milestones=[0, 10], on_milestone=lambda s, m: seen.append(s))
    assert seen == [0]
    assert result.steps_run == 0 and result.final_loss is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_adapt_rolls_back_on_divergence_and_scores_the_rest_on_restored_weights(monkeypatch):
    """A fake loop (no detector work): loss NaN at step 2 -> roll back to the starting weights."""
    model = nn.Linear(1, 1)
    _set(model, 0.0)

    def fake_train(model, step_fn, batches, steps, *, on_step=None, **kwargs):
        step = 0
        for step in range(1, steps + 1):
            _set(model, step)
            if on_step(step, {"loss": float("nan") if step == 2 else 1.0}):
                break
        return step

    monkeypatch.setattr(finetune, "train", fake_train)
    seen = []
    result = adapt(
        model, [0, 1, 2], AdaptSettings(steps=5, window=3), torch.device("cpu"),
        milestones=[0, 1, 2, 3, 5], on_milestone=lambda s, m: seen.append((s, _value(m))),
    )
    assert seen == [(0, 0.0), (1, 1.0), (2, 0.0), (3, 0.0), (5, 0.0)]
    assert result.steps_run == 2
    assert result.stopped_at == 2
    assert result.rolled_back_to == 0
    assert math.isnan(result.final_loss)
    assert _value(model) == 0.0


def test_load_model_rejects_weights_that_do_not_fit_the_spec(tmp_path):
    model = build_detector(tiny_spec(num_classes=3))
    path = save_checkpoint(tmp_path / "model.pt", model, tiny_spec(num_classes=7), ["a"] * 7, {})
    with pytest.raises(UsageError, match="does not match its own model spec"):
        load_model(read_checkpoint(path))


def test_read_checkpoint_rejects_an_incomplete_payload(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "classes": ["a"]}, path)
    with pytest.raises(UsageError, match="incomplete.*model_spec"):
        read_checkpoint(path)
