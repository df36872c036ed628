"""Reptile as the Reptile thesis ran it (RT Algorithm 3, Table 6.2a), and joint training.

One meta-iteration: for each of |B| sampled M-way K-shot tasks, start from θ and run n
inner steps of Adam (β1 = 0: "effectively RMSprop") with step α on mini-batches of b task
images; then move θ toward the tasks' mean adapted weights with a step β that is annealed
linearly from `beta` to `beta_final` over the run:

    θ ← θ + β_i · mean_t(θ'_t − θ),     β_i = beta + (beta_final − beta) · i / N,  i = 0..N−1

`joint` is the same with n = 1 (RT Table 6.2b): one step per task, averaged.

Several processes (torchrun) share the |B| tasks of a meta-iteration: task t runs on process
t mod world_size from the same θ, one all-reduce sums the adapted weights, and every process
makes the same meta-update, the one a single process makes over the same tasks.

The inner loop is the project's one training loop (`engine.loop.train`) on the task's
images; nothing is hand-written per module.
"""

from __future__ import annotations

import torch
from torch import nn

from fsx.algorithms.base import Algorithm, PretrainData, StepHook
from fsx.algorithms.episodes import Episode, EpisodeSampler, check_head, head_policy, task_head
from fsx.engine import distributed
from fsx.engine.loop import infinite_batches, optimizer_step, train
from fsx.errors import UsageError

INNER_STATES = ("reset", "carry")


class Reptile(Algorithm):
    name = "reptile"
    episodic = True

    def __init__(
        self,
        name: str = "reptile",
        inner_steps: int | None = None,  # 10 (RT Table 6.2a); joint: 1
        inner_batch: int = 16,
        inner_lr: float = 1e-4,
        inner_beta1: float = 0.0,
        inner_state: str = "reset",
        ways: int = 5,
        shots: int = 10,
        meta_batch: int = 2,
        beta: float = 1.0,
        beta_final: float = 0.0,
        rotate: bool = False,
        clip_norm: float | None = 10.0,
        weight_decay: float = 0.0,
        head: str = "shuffled",
    ):
        if inner_steps is None:
            inner_steps = 1 if name == "joint" else 10
        problems = [f"{k}={v} must be at least 1" for k, v in (("inner_steps", inner_steps), ("inner_batch", inner_batch), ("ways", ways), ("shots", shots), ("meta_batch", meta_batch)) if v < 1]
        if not inner_lr > 0:
            problems.append(f"inner_lr={inner_lr} must be positive")
        if inner_state not in INNER_STATES:
            problems.append(f"inner_state={inner_state}: choose reset or carry")
        if not (0 <= beta <= 1 and 0 <= beta_final <= 1):
            problems.append(f"beta={beta}, beta_final={beta_final} must lie in [0, 1]")
        if name == "joint" and inner_steps != 1:
            problems.append(f"inner_steps={inner_steps}: joint training is Reptile with one inner step (use algorithm=reptile for more)")
        if problems:
            raise UsageError(f"algorithm={name}: " + "; ".join(problems))
        check_head(name, head)
        self.name, self.head, self.task_sized_head = name, head, head == "shuffled"
        self.inner_steps, self.inner_batch, self.inner_lr, self.inner_beta1 = inner_steps, inner_batch, inner_lr, inner_beta1
        self.inner_state, self.ways, self.shots, self.meta_batch = inner_state, ways, shots, meta_batch
        self.beta, self.beta_final, self.rotate = beta, beta_final, rotate
        self.clip_norm, self.weight_decay = clip_norm, weight_decay
        self.total_steps = 1
        self._inner_optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict | None = None

    def describe(self) -> dict[str, str]:
        return {
            "bn_policy": "batch statistics in inner steps; running statistics interpolated toward the tasks' mean like the weights",
            "inner_optimizer": f"Adam(lr={self.inner_lr}, betas=({self.inner_beta1}, 0.999)), "
            + ("one state carried across tasks and meta-iterations" if self.inner_state == "carry" else "a fresh state per task"),
            "head_policy": head_policy(self.head),
        }

    def checkpoint_extras(self) -> dict:
        """Adapt as meta-trained: the inner loop's Adam (β1, lr, weight decay) on every parameter."""
        recipe = {"params": "all", "optimizer": "adam", "lr": self.inner_lr, "beta1": self.inner_beta1, "weight_decay": self.weight_decay, "momentum": 0.0, "from": self.name}
        return {**super().checkpoint_extras(), "adapt_recipe": recipe}

    def passes_per_step(self) -> int:
        return self.meta_batch * self.inner_steps

    def beta_at(self, iteration: int) -> float:
        """β of meta-iteration `iteration` (1-based): `beta` at the first, annealed linearly
        toward `beta_final`, which it would reach one iteration after the last."""
        frac = (iteration - 1) / self.total_steps
        return self.beta + (self.beta_final - self.beta) * frac

    def distributed_plan(self, processes: int) -> dict:
        if processes > 1 and self.meta_batch < processes:
            raise UsageError(f"algorithm.meta_batch={self.meta_batch} tasks cannot be shared among {processes} processes: give every process at least one task (meta_batch >= {processes})")
        if processes > 1 and self.inner_state == "carry":
            raise UsageError(f"algorithm.inner_state=carry carries one Adam state from task to task, which {processes} processes running tasks side by side cannot: use inner_state=reset")
        share = {-(-self.meta_batch // processes), self.meta_batch // processes}
        return {
            "tasks_per_process": " or ".join(str(n) for n in sorted(share, reverse=True)),
            "effective_batch": f"{self.meta_batch} tasks x {self.inner_batch} images per inner step, as in one process",
            "lr": self.inner_lr,
            "lr_scaling": "none: the processes share the meta-batch's tasks; every step is the one-process step",
        }

    # --- the algorithm -----------------------------------------------------------
    def pretrain(self, model: nn.Module, data: PretrainData, steps: int, device: torch.device, *, seed: int, amp: bool = True, start_step: int = 0, on_step: StepHook | None = None, sync_every: int = 1) -> int:
        self.distributed_plan(distributed.world_size())  # refuses what cannot be shared among the processes
        self.total_steps = steps
        sampler = EpisodeSampler(data, self.ways, self.shots, rotate=self.rotate, transform=data.dataset.transform, fixed_head=self.head == "fixed")
        self._restore_inner_state(model)
        distributed.broadcast_from_main(list(model.state_dict().values()))  # every process starts from rank 0's θ
        # task t of the meta-batch runs on process t mod world_size; each is drawn from
        # (seed, iteration, t) alone, so the processes draw the tasks one process would
        mine = range(distributed.rank(), self.meta_batch, distributed.world_size())

        def meta_batches():
            iteration = start_step
            while True:
                iteration += 1
                yield iteration, [sampler.sample(seed, iteration, t) for t in mine]

        def step(item) -> dict[str, float]:
            iteration, episodes = item
            return self.meta_step(model, episodes, device, self.beta_at(iteration), amp)

        return train(model, step, meta_batches(), steps, start_step=start_step, desc=f"pretrain {self.name}", on_step=on_step, show_progress=distributed.is_main(), sync_every=sync_every)

    def meta_step(self, model: nn.Module, episodes: list[Episode], device: torch.device, beta: float, amp: bool = True) -> dict[str, float]:
        """One meta-iteration over `episodes`; returns the mean inner losses and β.

        With several processes `episodes` is this process's share of the meta-batch. One
        all-reduce sums the adapted weights, the task and step counts and the loss sums over
        the processes, so every process moves θ toward the mean over all |B| tasks (uneven
        shares included): the step one process makes with the whole meta-batch.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        with torch.no_grad():
            theta = [p.detach().clone() for p in params]
            theta_buffers = [b.detach().clone() for b in buffers]
            total = [torch.zeros_like(p) for p in params]
            total_buffers = [torch.zeros_like(b) for b in buffers]
        counters = [b for b in model.buffers() if not b.is_floating_point()]  # BN's num_batches_tracked
        counted = [c.clone() for c in counters]
        seen: list[dict[str, float]] = []
        first: list[float] = []
        for episode in episodes:
            with torch.no_grad():
                _copy(params, theta)
                _copy(buffers, theta_buffers)
            optimizer = self._optimizer_for_task(params)
            batches = infinite_batches(episode.support, self.inner_batch, episode.seed)

            def record(step: int, losses: dict[str, float]) -> None:
                seen.append(losses)
                if step == 1:
                    first.append(losses["loss"])

            with task_head(model, episode):
                train(model, optimizer_step(model, optimizer, device, amp, self.clip_norm), batches, self.inner_steps, desc="inner", on_step=record, show_progress=False)
            with torch.no_grad():
                _add(total, params, 1)
                _add(total_buffers, buffers, 1)
        sums = {k: sum(s[k] for s in seen) for k in seen[0]}
        steps_seen, first_sum, tasks = len(seen), sum(first), len(episodes)
        if distributed.is_distributed():
            dtype = theta[0].dtype if theta else torch.float32
            stats = torch.tensor([*sums.values(), steps_seen, first_sum, tasks], dtype=dtype, device=device)
            increments = torch.cat([(c - s).reshape(-1) for c, s in zip(counters, counted)]).to(dtype) if counters else stats.new_zeros(0)
            distributed.all_reduce_sum(total + total_buffers + [stats, increments])
            *loss_sums, steps_seen, first_sum, tasks = stats.tolist()
            sums = dict(zip(sums, loss_sums))
            with torch.no_grad():  # the counters count every process's inner steps, as in one process
                offset = 0
                for c, s in zip(counters, counted):
                    c.copy_(s + increments[offset : offset + c.numel()].round().to(c.dtype).view_as(c))
                    offset += c.numel()
        with torch.no_grad():
            if total:
                torch._foreach_div_(total, tasks)
            if total_buffers:
                torch._foreach_div_(total_buffers, tasks)
            # lerp, not θ + β(θ' − θ): with β = 1 it lands exactly on the tasks' mean
            _lerp(theta, total, beta)
            _lerp(theta_buffers, total_buffers, beta)
            _copy(params, theta)
            _copy(buffers, theta_buffers)
        out = {k: v / steps_seen for k, v in sums.items()}
        out["first_step_loss"] = first_sum / tasks
        out["beta"] = beta
        return out

    def objective(self, model: nn.Module, episodes: list[Episode], device: torch.device, amp: bool = True) -> float:
        """The mean inner-loop loss on `episodes`, the model left as it was (β = 0)."""
        saved = self._inner_optimizer.state_dict() if self._inner_optimizer is not None else None
        loss = self.meta_step(model, episodes, device, beta=0.0, amp=amp)["loss"]
        if saved is not None:
            self._inner_optimizer.load_state_dict(saved)
        return loss

    def _optimizer_for_task(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.inner_state == "carry" and self._inner_optimizer is not None:
            return self._inner_optimizer
        optimizer = torch.optim.Adam(params, lr=self.inner_lr, betas=(self.inner_beta1, 0.999), weight_decay=self.weight_decay)
        if self.inner_state == "carry":
            self._inner_optimizer = optimizer
        return optimizer

    # --- resume --------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.inner_state == "carry" and self._inner_optimizer is not None:
            return {"inner_optimizer": self._inner_optimizer.state_dict()}
        return {}

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state or None

    def _restore_inner_state(self, model: nn.Module) -> None:
        if self._pending_state and "inner_optimizer" in self._pending_state and self.inner_state == "carry":
            optimizer = self._optimizer_for_task([p for p in model.parameters() if p.requires_grad])
            optimizer.load_state_dict(self._pending_state["inner_optimizer"])



def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


def _add(dst: list[torch.Tensor], src: list[torch.Tensor], alpha: float) -> None:
    if dst:
        if alpha == 1:
            torch._foreach_add_(dst, src)
        else:
            torch._foreach_add_(dst, torch._foreach_mul(src, alpha))


def _lerp(start: list[torch.Tensor], end: list[torch.Tensor], weight: float) -> None:
    if start:
        torch._foreach_lerp_(start, end, weight)
