"""Meta-learners: the update rules checked against their definitions on a toy model, and
every algorithm x detector family meta-training on letters (the loss falls)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fsx.algorithms import ALGORITHMS, PretrainData, build_algorithm
from fsx.algorithms.episodes import Episode, EpisodeSampler
from fsx.algorithms.maml import MAML, rate_shape
from fsx.algorithms.reptile import Reptile
from fsx.engine.finetune import AdaptSettings, LearnedRateSGD, adapt
from fsx.engine.loop import infinite_batches
from fsx.errors import UsageError
from fsx.models.detectors import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


# --- a toy "detector": the same call interface, a loss with curvature in every parameter ---


class Toy(nn.Module):
    """model(images, targets) -> {"loss": ...}, like a torchvision detector in train mode."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(torch.randn(1, 4, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, images, targets):
        x = torch.stack(images)
        y = torch.stack([t["y"] for t in targets])
        pred = torch.tanh(x @ self.w1.T) @ self.w2.T
        return {"loss": ((pred.squeeze(-1) - y) ** 2).mean()}


def toy_set(seed: int, n: int = 4) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=g, dtype=torch.float64), {"y": torch.randn((), generator=g, dtype=torch.float64)}) for _ in range(n)]


def toy_episodes(count: int = 2) -> list[Episode]:
    return [Episode(seed=10 + t, classes=[], rotation=0, support=toy_set(100 + t), query=toy_set(200 + t)) for t in range(count)]


def maml(**kw) -> MAML:
    settings = dict(inner_steps=2, inner_lr=0.3, inner_batch=4, inner_clip_norm=None, meta_batch=2)
    return MAML(**{**settings, **kw})


def meta_gradient(alg: MAML, model: Toy, episodes) -> list[torch.Tensor]:
    alg.setup(model, CPU)
    for p in model.parameters():
        p.grad = None
    alg._meta_gradient(model, episodes, CPU, amp=False)
    return [p.grad.clone() for p in model.parameters()]


def test_maml_meta_gradient_matches_finite_differences():
    model, alg, episodes = Toy(), maml(), toy_episodes()
    analytic = torch.cat([g.flatten() for g in meta_gradient(alg, model, episodes)])
    params = list(model.parameters())
    numeric = []
    eps = 1e-6
    for p in params:
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
            up = alg.objective(model, episodes, CPU, amp=False)
            with torch.no_grad():
                p.view(-1)[i] -= 2 * eps
            down = alg.objective(model, episodes, CPU, amp=False)
            with torch.no_grad():
                p.view(-1)[i] += eps
            numeric.append((up - down) / (2 * eps))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8), f"max error {float((analytic - numeric).abs().max())}"


def test_fomaml_is_maml_without_the_second_order_term():
    model, episodes = Toy(), toy_episodes()
    first = meta_gradient(maml(first_order=True), model, episodes)
    # by hand: the query-loss gradient at the adapted weights, the adaptation held constant
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for episode in episodes:
        fast = [p.detach().clone() for p in model.parameters()]
        batches = infinite_batches(episode.support, 4, episode.seed)
        for _ in range(2):
            w = [f.requires_grad_(True) for f in fast]
            loss = torch.func.functional_call(model, dict(zip(["w1", "w2"], w)), next(batches))["loss"]
            grads = torch.autograd.grad(loss, w)
            fast = [(f - 0.3 * g).detach() for f, g in zip(w, grads)]
        w = [f.requires_grad_(True) for f in fast]
        query = next(infinite_batches(episode.query, 4, episode.seed + 1))
        grads = torch.autograd.grad(torch.func.functional_call(model, dict(zip(["w1", "w2"], w)), query)["loss"], w)
        expected = [e + g / len(episodes) for e, g in zip(expected, grads)]
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(first, expected))
    second = meta_gradient(maml(), model, episodes)
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(first, second)), "second order term vanished"


def test_metasgd_learns_its_step_sizes_and_clamps_them():
    model, episodes = Toy(), toy_episodes()
    alg = maml(learn_inner_lr="parameter", lr_max=0.35, meta_lr=0.05)
    alg.setup(model, CPU)
    alg._optimizer = torch.optim.Adam([*model.parameters(), *alg.rates.values()], lr=0.05)
    before = {n: r.detach().clone() for n, r in alg.rates.items()}
    for _ in range(5):
        alg.meta_step(model, episodes, CPU, amp=False)
    assert any(not torch.equal(before[n], r) for n, r in alg.rates.items())
    assert all(float(r.detach().min()) >= 0 and float(r.detach().max()) <= 0.35 for r in alg.rates.values())
    assert set(alg.checkpoint_extras()["inner_lr"]) == {"w1", "w2"}


def test_rate_shapes_per_parameter_layer_and_filter():
    w = torch.zeros(8, 4, 3, 3)
    assert rate_shape(w, "parameter") == (8, 4, 3, 3)
    assert rate_shape(w, "layer") == ()
    assert rate_shape(w, "filter") == (8, 1, 1, 1)
    assert rate_shape(torch.zeros(8), "filter") == (8,)


def test_learned_rate_sgd_takes_steps_of_exactly_its_rates():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.5, -1.0])
    LearnedRateSGD([p], [torch.tensor([0.1, 0.2])]).step()
    assert torch.allclose(p.detach(), torch.tensor([1.0 - 0.05, 2.0 + 0.2]))


def test_reptile_with_beta_1_and_one_task_lands_on_the_inner_loop_weights():
    model, (episode,) = Toy(), toy_episodes(1)
    alg = Reptile(inner_steps=3, inner_batch=2, inner_lr=0.05, meta_batch=1, clip_norm=None)
    by_hand = copy.deepcopy(model)
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=0.05, betas=(0.0, 0.999))
    batches = infinite_batches(episode.support, 2, episode.seed)
    for _ in range(3):
        optimizer.zero_grad()
        by_hand(*next(batches))["loss"].backward()
        optimizer.step()
    alg.meta_step(model, [episode], CPU, beta=1.0, amp=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), by_hand.parameters()))


def test_reptile_moves_beta_of_the_way_to_the_mean_of_the_tasks():
    model, episodes = Toy(), toy_episodes(2)
    theta = [p.detach().clone() for p in model.parameters()]
    ends = []
    for episode in episodes:
        single = copy.deepcopy(model)
        Reptile(inner_steps=2, inner_batch=2, inner_lr=0.05, meta_batch=1, clip_norm=None).meta_step(single, [episode], CPU, beta=1.0, amp=False)
        ends.append([p.detach() for p in single.parameters()])
    Reptile(inner_steps=2, inner_batch=2, inner_lr=0.05, meta_batch=2, clip_norm=None).meta_step(model, episodes, CPU, beta=0.25, amp=False)
    for k, p in enumerate(model.parameters()):
        mean = (ends[0][k] + ends[1][k]) / 2
        assert torch.allclose(p.detach(), theta[k] + 0.25 * (mean - theta[k]), rtol=1e-12, atol=1e-14)


def test_beta_is_annealed_linearly_from_beta_to_beta_final():
    alg = Reptile(beta=1.0, beta_final=0.0)
    alg.total_steps = 4
    assert [alg.beta_at(i) for i in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    alg = Reptile(beta=0.5, beta_final=0.1)
    alg.total_steps = 2
    assert [alg.beta_at(i) for i in (1, 2)] == pytest.approx([0.5, 0.3])


def test_bad_hyperparameters_are_usage_errors():
    with pytest.raises(UsageError, match="inner_steps=3: joint training is Reptile with one inner step"):
        build_algorithm("joint", inner_steps=3)
    with pytest.raises(UsageError, match="inner_state=keep"):
        build_algorithm("reptile", inner_state="keep")
    with pytest.raises(UsageError, match="learn_inner_lr=row"):
        build_algorithm("metasgd", learn_inner_lr="row")
    with pytest.raises(UsageError, match="algorithm=fancy is not available"):
        build_algorithm("fancy")
    with pytest.raises(UsageError, match="bad hyperparameters"):
        build_algorithm("maml", beta=1.0)


# --- on letters, with real detectors -----------------------------------------------------


DETECTORS = {
    "retinanet": {"name": "retinanet", "anchor_scale": 1.5},
    "fcos": {"name": "fcos"},
    "fasterrcnn": {"name": "fasterrcnn", "anchor_scale": 3.0, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100},
    # RoIAlign from grid_sample: second-order meta-gradients pass through it
    "fasterrcnn-grid": {"name": "fasterrcnn", "anchor_scale": 3.0, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100, "roi_align": "grid"},
    "ssd": {"name": "ssd"},
}
SETTINGS = {
    "reptile": dict(inner_steps=2, inner_batch=4, inner_lr=2e-3, shots=2, meta_batch=2),
    "joint": dict(inner_steps=1, inner_batch=4, inner_lr=2e-3, shots=2, meta_batch=2),
    "maml": dict(inner_steps=1, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1),
    "fomaml": dict(first_order=True, inner_steps=2, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1),
    "metasgd": dict(learn_inner_lr="layer", inner_steps=1, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1),
    "anil": dict(inner_params="heads", inner_steps=1, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1),
}


def small_model(detector: str, num_classes: int):
    torch.manual_seed(0)
    return build_detector({
        "detector": DETECTORS[detector],
        "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]},
        "num_classes": num_classes, "image_size": 128, "image_mean": [0.92] * 3, "image_std": [0.25] * 3,
    })


def test_settings_cover_every_algorithm():
    assert set(SETTINGS) == set(ALGORITHMS) - {"standard", "tfa"}  # TFA: plain training, tests/test_tfa.py


@pytest.mark.slow
@pytest.mark.parametrize("detector", list(DETECTORS))
@pytest.mark.parametrize("name", list(SETTINGS))
def test_meta_training_lowers_the_loss_on_a_fixed_task_stream(name, detector, letters_data):
    alg = build_algorithm(name, **SETTINGS[name])
    model = small_model(detector, alg.num_outputs(letters_data))
    fixed = EpisodeSampler(letters_data, 5, 2, 2 if isinstance(alg, MAML) else 0).sample(seed=99, iteration=0, index=0)
    if isinstance(alg, MAML) and detector == "fasterrcnn" and alg.inner_params == "all" and not alg.first_order:
        with pytest.raises(UsageError, match="second-order meta-gradients cannot pass through a two-stage detector's RoIAlign"):
            alg.pretrain(model, letters_data, 1, CPU, seed=0)
        return
    torch.manual_seed(1)
    before = alg.objective(model, [fixed], CPU)
    alg.pretrain(model, letters_data, 6, CPU, seed=0)
    torch.manual_seed(1)
    after = alg.objective(model, [fixed], CPU)
    assert math.isfinite(after) and after < before, f"{name} on {detector}: meta-training loss {before:.3f} -> {after:.3f}"


@pytest.mark.slow
def test_joint_equals_reptile_with_one_inner_step(letters_data):
    models = []
    for name in ("joint", "reptile"):
        alg = build_algorithm(name, **{**SETTINGS["joint"]})
        model = small_model("retinanet", 5)
        alg.pretrain(model, letters_data, 2, CPU, seed=0)
        models.append(model)
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))


@pytest.mark.slow
def test_beta_is_logged_per_meta_iteration(letters_data):
    alg = build_algorithm("reptile", **SETTINGS["reptile"])
    seen = {}
    alg.pretrain(small_model("retinanet", 5), letters_data, 4, CPU, seed=0, on_step=lambda step, losses: seen.__setitem__(step, losses["beta"]))
    assert seen == {1: 1.0, 2: 0.75, 3: 0.5, 4: 0.25}


def test_episodes_are_a_function_of_seed_iteration_and_index(letters_data):
    sampler = EpisodeSampler(letters_data, 5, 2, 2)
    a, b, c = sampler.sample(0, 3, 1), sampler.sample(0, 3, 1), sampler.sample(0, 3, 2)
    assert a.classes == b.classes and a.support.ids == b.support.ids and a.query.ids == b.query.ids
    assert (a.classes, a.support.ids) != (c.classes, c.support.ids)
    assert not set(a.support.ids) & set(a.query.ids)
    assert set(a.classes) <= set(letters_data.class_names) and len(a.classes) == 5
    # every class is in at least `shots` support images, and only task classes are labelled
    for label, name in enumerate(a.classes):
        holding = [i for i in range(len(a.support)) if label in a.support[i][1]["labels"].tolist()]
        assert len(holding) >= 2, name
    assert all(t["labels"].max() < 5 for _, t in (a.support[i] for i in range(len(a.support))) if len(t["labels"]))


def test_rotated_episodes_turn_every_image_and_box_of_a_task_together(letters_data):
    sampler = EpisodeSampler(letters_data, 5, 2, rotate=True)
    turns = {}
    for index in range(40):
        episode = sampler.sample(0, 0, index)
        turns[episode.rotation] = episode
    assert set(turns) == {0, 1, 2, 3}  # 0 degrees is drawn too
    plain = EpisodeSampler(letters_data, 5, 2, rotate=False)
    for k, episode in turns.items():
        if k == 0:
            continue
        unrotated = plain._dataset(sample_support(letters_data, episode), 0)
        for i in range(len(episode.support)):
            image, target = episode.support[i]
            original, original_target = unrotated[i]
            assert torch.equal(image, original.rot90(k, dims=(-2, -1)))
            ink = image[0] < 0.5
            for box, old in zip(target["boxes"], original_target["boxes"]):
                # the rotated box holds exactly the ink the original box held: it stayed on its letter
                x0, y0, x1, y1 = box.round().int().tolist()
                a0, b0, a1, b1 = old.round().int().tolist()
                assert int(ink[y0:y1, x0:x1].sum()) == int((original[0] < 0.5)[b0:b1, a0:a1].sum()) > 0


def sample_support(data: PretrainData, episode: Episode):
    from fsx.data.shots import sample_shots

    return sample_shots(data.source, episode.classes, 2, episode.seed, pool_name="training split")


# --- adaptation with a meta-learned checkpoint ---------------------------------------------


def test_adapt_with_learned_rates_trains_exactly_the_rated_parameters(letters_data):
    model = small_model("retinanet", 5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rated = "head.classification_head.cls_logits.weight"
    support = EpisodeSampler(letters_data, 5, 2).sample(0, 0, 0).support
    adapt(model, support, AdaptSettings(steps=2, batch_size=4, early_stopping=False, learned_rates={rated: torch.tensor(0.05)}), CPU, seed=0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {rated}


def test_a_head_resized_for_a_task_uses_the_mean_of_its_per_element_rates(letters_data):
    from fsx.engine.finetune import _rate_for

    weight = torch.zeros(9 * 3, 32, 3, 3)
    assert _rate_for(torch.full((9 * 5, 32, 3, 3), 0.2), weight).shape == ()
    assert _rate_for(torch.full((27, 1, 1, 1), 0.2), weight).shape == (27, 1, 1, 1)
    assert np.isclose(float(_rate_for(torch.full((45, 1, 1, 1), 0.2), weight)), 0.2)


# --- resume --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [("reptile", {"inner_state": "carry"}), ("metasgd", {})])
def test_a_resumed_meta_learner_ends_on_the_same_weights(name, extra, letters_data):
    """Interrupted after 2 of 4 meta-iterations and resumed from the saved weights and
    algorithm state: the same tasks follow, and the same final weights."""
    settings = {**SETTINGS[name], **extra}
    alg = build_algorithm(name, **settings)
    straight = small_model("retinanet", 5)
    saved = {}

    def keep(step, losses):
        if step == 2:
            saved["weights"] = copy.deepcopy(straight.state_dict())
            saved["algorithm"] = copy.deepcopy(alg.state_dict())

    alg.pretrain(straight, letters_data, 4, CPU, seed=0, on_step=keep)

    resumed = small_model("retinanet", 5)
    resumed.load_state_dict(saved["weights"])
    again = build_algorithm(name, **settings)
    again.load_state_dict(saved["algorithm"])
    again.pretrain(resumed, letters_data, 4, CPU, seed=0, start_step=2)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_a_pass_budget_gives_every_algorithm_the_same_compute():
    from omegaconf import OmegaConf

    from fsx.run.pretrain import budget

    cfg = OmegaConf.create({"train": {"steps": 7, "passes": 1200}})
    assert budget(cfg, build_algorithm("standard")) == 1200
    assert budget(cfg, build_algorithm("reptile", inner_steps=10, meta_batch=2)) == 60  # 20 passes per meta-iteration
    assert budget(cfg, build_algorithm("joint", meta_batch=2)) == 600
    assert budget(cfg, build_algorithm("fomaml", inner_steps=2, meta_batch=2)) == 200  # 2 x (2 support + 1 query)
    assert budget(OmegaConf.create({"train": {"steps": 7, "passes": None}}), build_algorithm("maml")) == 7


def test_a_meta_learned_head_is_kept_when_it_fits_the_task_and_reset_otherwise(tmp_path, letters_data):
    from fsx.data.shots import Task
    from fsx.engine.checkpoint import read_checkpoint, save_checkpoint
    from fsx.run.fewshot import model_for_task

    model = small_model("fcos", 5)
    spec = {"detector": DETECTORS["fcos"], "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]}, "num_classes": 5, "image_size": 128, "image_mean": [0.92] * 3, "image_std": [0.25] * 3}
    head = "head.classification_head.cls_logits.weight"

    def task(ways: int) -> Task:
        return Task(list(range(ways)), list("BHMRW"[:ways]), 5, 1, None, "image_level")

    for keep, expect_kept in (("keep", True), ("reset", False)):
        payload = read_checkpoint(save_checkpoint(tmp_path / f"{keep}.pt", model, spec, letters_data.class_names, {}, kind="pretrain", adapt_head=keep))
        rebuilt = model_for_task(payload, task(5), CPU, seed=0)
        assert torch.equal(rebuilt.state_dict()[head], model.state_dict()[head]) == expect_kept
    meta = read_checkpoint(tmp_path / "keep.pt")
    assert not torch.equal(model_for_task(meta, task(5), CPU, seed=0, reset=True).state_dict()[head], model.state_dict()[head])  # adapt.head=reset
    assert model_for_task(meta, task(3), CPU, seed=0).state_dict()[head].shape[0] == 3  # a 3-way task needs a new head
