"""The MAML family: MAML (second order), FOMAML, Meta-SGD and ANIL, one implementation.

Per meta-iteration, for each of |B| sampled M-way tasks with a support and a disjoint query
set (RT §2.4.3, PROTOCOLS 4.4-4.5):

    θ'  = θ − α ⊙ ∇_θ L(f_θ, support)        n times, over the inner parameter set only
    θ  ← Adam step on  Σ_t L(f_θ', query_t) / |B|,   the meta-gradient taken through θ'

The inner loop runs the torchvision detector itself through `torch.func.functional_call`
with the adapted tensors in place of its parameters, so every detector family works with
no hand-written stateless copy. Variants:

- maml:    the meta-gradient flows through the inner gradients (create_graph, second order);
- fomaml:  the inner gradients are constants, so the meta-gradient is ∇L(f_θ', query)
           evaluated at θ' (the first-order approximation);
- metasgd: α is learned per parameter, per layer or per filter, clamped to [0, lr_max]
           (the thesis saw learned rates run away), and travels with the checkpoint;
- anil:    the inner loop adapts only the detection head; the outer loop trains everything.

Memory: the second-order graph keeps every inner step's activations, so it grows linearly
with `inner_steps` (make bench measures it); FOMAML and ANIL stay near one step's cost.

Batch norm: every inner and query forward uses batch statistics (train mode, as MAML's
reference code does); the running statistics that inference uses are updated by those
same forwards, so after meta-training they describe meta-training images.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from fsx.algorithms.base import Algorithm, PretrainData, StepHook
from fsx.algorithms.episodes import Episode, EpisodeSampler, check_head, head_policy, task_head
from fsx.engine.device import autocast
from fsx.engine.loop import infinite_batches, to_device, train, warmup_step_schedule
from fsx.errors import UsageError
from fsx.models.heads import TRAINABLE, parameter_names, upstream_of_roi_align

RATE_SHAPES = ("parameter", "layer", "filter")


def detection_loss(model: nn.Module, tensors: dict[str, torch.Tensor], batch, device: torch.device, amp: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The detector's summed training loss with `tensors` in place of its own parameters."""
    images, targets = to_device(*batch, device)
    with autocast(device, amp):
        losses = functional_call(model, tensors, (images, targets))
    total = sum(losses.values())
    return total, {k: float(v.detach()) for k, v in losses.items()}


def rate_shape(param: torch.Tensor, per: str) -> tuple[int, ...]:
    """The shape of a learned inner step size: one per element, per tensor, or per output filter."""
    if per == "parameter":
        return tuple(param.shape)
    if per == "layer":
        return ()
    return (param.shape[0],) + (1,) * (param.dim() - 1) if param.dim() else ()


class MAML(Algorithm):
    name = "maml"
    episodic = True

    def __init__(
        self,
        name: str = "maml",
        first_order: bool = False,
        inner_steps: int = 1,
        inner_lr: float = 0.01,
        inner_params: str = "all",
        inner_batch: int = 16,
        inner_clip_norm: float | None = 10.0,
        learn_inner_lr: str | None = None,
        lr_max: float = 0.1,
        ways: int = 5,
        shots: int = 5,
        query_shots: int = 5,
        meta_batch: int = 2,
        meta_lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup: int = 20,
        decay_at: list[float] = (0.6, 0.8),
        gamma: float = 0.1,
        clip_norm: float | None = 10.0,
        rotate: bool = False,
        head: str = "shuffled",
    ):
        problems = [f"{k}={v} must be at least 1" for k, v in (("inner_steps", inner_steps), ("inner_batch", inner_batch), ("ways", ways), ("shots", shots), ("query_shots", query_shots), ("meta_batch", meta_batch)) if v < 1]
        for key, value in (("inner_lr", inner_lr), ("meta_lr", meta_lr), ("lr_max", lr_max)):
            if not value > 0:
                problems.append(f"{key}={value} must be positive")
        if inner_params not in TRAINABLE:
            problems.append(f"inner_params={inner_params}: choose one of {', '.join(TRAINABLE)}")
        if learn_inner_lr not in (None, *RATE_SHAPES):
            problems.append(f"learn_inner_lr={learn_inner_lr}: choose null, {', '.join(RATE_SHAPES)}")
        if learn_inner_lr and inner_lr > lr_max:
            problems.append(f"inner_lr={inner_lr} is above lr_max={lr_max}, the clamp on learned rates")
        if problems:
            raise UsageError(f"algorithm={name}: " + "; ".join(problems))
        check_head(name, head)
        self.head, self.task_sized_head = head, head == "shuffled"
        self.name, self.first_order, self.inner_steps, self.inner_lr = name, first_order, inner_steps, inner_lr
        self.inner_params, self.inner_batch, self.inner_clip_norm = inner_params, inner_batch, inner_clip_norm
        self.learn_inner_lr, self.lr_max = learn_inner_lr, lr_max
        self.ways, self.shots, self.query_shots, self.meta_batch = ways, shots, query_shots, meta_batch
        self.meta_lr, self.weight_decay, self.warmup, self.decay_at, self.gamma = meta_lr, weight_decay, warmup, list(decay_at), gamma
        self.clip_norm, self.rotate = clip_norm, rotate
        self.rates: dict[str, torch.Tensor] = {}
        self.inner_names: list[str] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler = None
        self._pending_state: dict | None = None

    def describe(self) -> dict[str, str]:
        order = "first order (inner gradients are constants)" if self.first_order else "second order (through the inner gradients)"
        rates = f"learned per {self.learn_inner_lr}, clamped to [0, {self.lr_max}]" if self.learn_inner_lr else f"fixed {self.inner_lr}"
        return {
            "bn_policy": "batch statistics in inner and query forwards; running statistics updated by them",
            "meta_gradient": order,
            "inner_lr_policy": rates,
            "inner_parameter_set": self.inner_params,
            "head_policy": head_policy(self.head),
        }

    def passes_per_step(self) -> int:
        return self.meta_batch * (self.inner_steps + 1)  # inner steps on the support set, one on the query set

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Choose the inner parameters, make the learned rates, and refuse what cannot work."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.inner_names = [n for n in parameter_names(model, self.inner_params) if n in trainable]
        if not self.inner_names:
            raise UsageError(f"algorithm={self.name}: inner_params={self.inner_params} selects no trainable parameter of this model")
        blocked = upstream_of_roi_align(model, self.inner_names)
        if blocked and not self.first_order:
            raise UsageError(
                f"algorithm={self.name}: second-order meta-gradients cannot pass through a two-stage detector's RoIAlign "
                f"(torchvision's compiled op has no double backward), and inner_params={self.inner_params} adapts "
                f"{len(blocked)} tensors before it (e.g. {blocked[0]}). Use detector.roi_align=grid (RoIAlign from differentiable "
                f"ops), algorithm=fomaml, algorithm.inner_params=heads (the RPN and RoI heads, as algorithm=anil does), or a one-stage detector."
            )
        params = dict(model.named_parameters())
        if self.learn_inner_lr and not self.rates:
            self.rates = {n: torch.full(rate_shape(params[n], self.learn_inner_lr), self.inner_lr, device=device, requires_grad=True) for n in self.inner_names}
        self.rates = {n: r if (r.device == device and r.requires_grad) else r.detach().to(device).requires_grad_(True) for n, r in self.rates.items()}

    def pretrain(self, model: nn.Module, data: PretrainData, steps: int, device: torch.device, *, seed: int, amp: bool = True, start_step: int = 0, on_step: StepHook | None = None, sync_every: int = 1) -> int:
        self.setup(model, device)
        meta_params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": meta_params}] + ([{"params": list(self.rates.values()), "weight_decay": 0.0}] if self.rates else [])
        self._optimizer = torch.optim.Adam(groups, lr=self.meta_lr, weight_decay=self.weight_decay)
        self._scheduler = warmup_step_schedule(self._optimizer, steps, min(self.warmup, max(steps // 5, 1)), self.decay_at, self.gamma)
        if self._pending_state:
            self._optimizer.load_state_dict(self._pending_state["optimizer"])
            self._scheduler.load_state_dict(self._pending_state["scheduler"])
        sampler = EpisodeSampler(data, self.ways, self.shots, self.query_shots, rotate=self.rotate, transform=data.dataset.transform, fixed_head=self.head == "fixed")

        def meta_batches():
            iteration = start_step
            while True:
                iteration += 1
                yield [sampler.sample(seed, iteration, t) for t in range(self.meta_batch)]

        return train(model, lambda episodes: self.meta_step(model, episodes, device, amp), meta_batches(), steps, scheduler=self._scheduler, start_step=start_step, desc=f"pretrain {self.name}", on_step=on_step, sync_every=sync_every)

    # --- the algorithm -----------------------------------------------------------
    def adapt_tensors(self, model: nn.Module, episode: Episode, device: torch.device, amp: bool = True) -> tuple[dict[str, torch.Tensor], float]:
        """θ' after the inner loop on the episode's support set (tensors in the autograd graph
        of θ, and of the learned rates), and the support loss before the first inner step."""
        params = dict(model.named_parameters())
        fast = {n: params[n] for n in self.inner_names}
        batches = infinite_batches(episode.support, self.inner_batch, episode.seed)
        first_loss = float("nan")
        for k in range(self.inner_steps):
            loss, parts = detection_loss(model, fast, next(batches), device, amp)
            if k == 0:
                first_loss = sum(parts.values())
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, fast.values())]
            if self.first_order:
                grads = [g.detach() for g in grads]
            if self.inner_clip_norm:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
                scale = (self.inner_clip_norm / (norm + 1e-6)).clamp(max=1.0)  # a constant factor: clipping is not differentiated
                grads = [g * scale for g in grads]
            fast = {n: w - self.step_size(n) * g for (n, w), g in zip(fast.items(), grads)}
        return fast, first_loss

    def step_size(self, name: str) -> torch.Tensor | float:
        return self.rates[name] if self.rates else self.inner_lr

    def meta_step(self, model: nn.Module, episodes: list[Episode], device: torch.device, amp: bool = True) -> dict[str, float]:
        self._optimizer.zero_grad(set_to_none=True)
        losses = self._meta_gradient(model, episodes, device, amp)
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_([p for group in self._optimizer.param_groups for p in group["params"] if p.grad is not None], self.clip_norm)
        self._optimizer.step()
        if self.rates:
            with torch.no_grad():
                for rate in self.rates.values():
                    rate.clamp_(0.0, self.lr_max)
        return losses

    def _meta_gradient(self, model: nn.Module, episodes: list[Episode], device: torch.device, amp: bool, backward: bool = True) -> dict[str, float]:
        """Accumulate the meta-gradient of the episodes into .grad; return the mean losses."""
        model.train()
        seen: list[dict[str, float]] = []
        support: list[float] = []
        for episode in episodes:
            with task_head(model, episode):
                fast, first = self.adapt_tensors(model, episode, device, amp)
                query = next(infinite_batches(episode.query, self.inner_batch, episode.seed + 1))
                loss, parts = detection_loss(model, fast, query, device, amp)
                if backward:
                    (loss / len(episodes)).backward()
            seen.append({**parts, "loss": float(loss.detach())})
            support.append(first)
        out = {k: sum(s[k] for s in seen) / len(seen) for k in seen[0]}
        out["support_loss"] = sum(support) / len(support)
        return out

    def objective(self, model: nn.Module, episodes: list[Episode], device: torch.device, amp: bool = True) -> float:
        """The mean query loss after the inner loop on `episodes`; weights and BN statistics
        left as they were."""
        self.setup(model, device)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        loss = self._meta_gradient(model, episodes, device, amp, backward=False)["loss"]
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        return loss

    def checkpoint_extras(self) -> dict:
        """Adapt as meta-trained: plain SGD steps of the inner lr on the inner parameter set
        (Meta-SGD: its learned rates, `inner_lr`, which replace the optimiser)."""
        recipe = {"params": self.inner_params, "optimizer": "sgd", "lr": self.inner_lr, "momentum": 0.0, "weight_decay": 0.0, "from": self.name}
        extras = {**super().checkpoint_extras(), "adapt_recipe": recipe}
        if self.rates:
            extras["inner_lr"] = {n: r.detach().cpu().clone() for n, r in self.rates.items()}
        return extras

    # --- resume --------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._optimizer is None:
            return {}
        return {"optimizer": self._optimizer.state_dict(), "scheduler": self._scheduler.state_dict(), "rates": {n: r.detach().cpu() for n, r in self.rates.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state or None
        if state and state.get("rates"):
            self.rates = dict(state["rates"])  # placed on the device by setup()
