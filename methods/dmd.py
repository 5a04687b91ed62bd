"""Distribution Matching Distillation in flow-matching form, on one frozen base with adapters.

Adapters (methods/adapters.py): ``student`` (the generator LoRA being distilled), ``critic``
(the fake score: a LoRA trained with flow matching on the generator's detached samples) and
the frozen teacher bank (the real score = base + the current teacher, true CFG 4.0; the plain
base for the general stream). DESIGN 4.1 / CollectionLoRA Sec. 3:

* Backward simulation: the generator input is produced by the generator itself along the
  8-step schedule from pure noise, stopped at a random step k, so training sees what
  inference produces. Each simulated step is a step of the sampler the student runs with at
  inference (``sampling.dmd_sampler``, methods/flow.py), so the simulated inputs are
  distributed as inference's intermediate states. Default, as the reference: predict the clean
  image and re-noise it to the next sigma with fresh noise from the trainer's RNG; ``euler``
  re-noises it with the noise the model implies (deterministic).
* Critic: every step, flow matching on the detached generator sample.
* Generator: every ``gen_update_ratio``-th step, with the DMD gradient
      g = (x_fake - x_real) / mean|x - x_real|,   loss = 0.5 * ||x - sg(x - g)||^2
  where x_real / x_fake are the clean estimates of the real / fake score at a noised copy of x.
* Effect stream only: TA-FM, a flow-matching loss towards the teacher's precomputed output at
  noise levels >= the DMD one (stable cold start); TS, the teacher output noised to one of the
  last schedule steps, pushed through the generator and given a DMD loss with t in [500, 1000)
  (shifted, as the reference code does).
* Cost (P1): the generator step's two extra student predictions share one transformer call,
  and its DMD terms share one real-score call (both CFG branches) and one fake-score call.

The whole state (both LoRAs, both optimizers, the RNG, step, stream state, loss history) is
checkpointed every K steps with rotation; a rerun resumes and, on CPU, reproduces the
uninterrupted run exactly.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft.utils import set_peft_model_state_dict

from bench import cost
from bench.cache import atomic_write
from bench.config import DistillConfig, LoraTrainConfig
from bench.progress import progress
from methods.adapters import AdapterBank
from methods.backbones import Backbone, TextCondition
from methods.distributed import DistEnv, average_gradients, broadcast_parameters, shard
from methods.flow import add_noise, check_sampler, predict_x0, sampler_step, shift_sigmas, sigma_schedule, true_cfg
from methods.fm import NonFiniteLossError, budget_spent, step_limit
from methods.lora import adapter_state, lora_config, save_lora
from methods.streams import DistillBatch, StreamSampler

STUDENT, CRITIC = "student", "critic"
# Part of every distilled artifact's cache key: bump it when a change to this loop alters what
# training produces for the same config, so caches never serve a student of the old loop.
# 2: batched score calls, TS timesteps shifted, TA-FM above the DMD noise level (reference).
# 3: backward simulation with the re-noising sampler (reference).
# 4: the effect stream draws a fresh effect every step (reference; ``StreamSampler``).
ENGINE_VERSION = 4


@dataclass(frozen=True)
class Objectives:
    """Which generator loss terms are on (CollectionLoRA's C2F-DO components)."""

    tafm: bool = True
    ts: bool = True


def dmd_loss(x: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """DMD generator loss whose gradient w.r.t. ``x`` is the normalised score difference.

    ``x_real`` / ``x_fake`` are detached clean estimates; the normaliser is per sample
    (DMD eq. 7/8 as in DMD2's flow-matching code), and ``0.5 * mse(x, sg(x - g))`` gives
    d loss / d x = g / numel.
    """
    dims = tuple(range(1, x.dim()))
    norm = (x.detach() - x_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
    grad = torch.nan_to_num((x_fake - x_real) / norm)
    return 0.5 * F.mse_loss(x, (x - grad).detach())


class TrainerCallback:
    """Hooks into the DMD loop (override what you need). A callback must not draw from the
    trainer's generator: training with and without callbacks is the same run.

    * ``on_step_end(trainer, log)``: after every step (``trainer.step`` already advanced).
    * ``on_checkpoint(trainer, path)``: after a full-state checkpoint was written (main rank).
    """

    def on_step_end(self, trainer: "DMDTrainer", log: dict) -> None:
        pass

    def on_checkpoint(self, trainer: "DMDTrainer", path: Path) -> None:
        pass


_OBSERVERS: ContextVar[tuple[TrainerCallback, ...]] = ContextVar("dmd_observers", default=())


@contextmanager
def observe(*callbacks: TrainerCallback) -> Iterator[None]:
    """Attach callbacks to every DMDTrainer created inside the block, however deep in the call
    stack (e.g. ``bench.studies.tune`` scores the student of the cell it runs at every checkpoint)."""
    token = _OBSERVERS.set(_OBSERVERS.get() + callbacks)
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


class DMDTrainer:
    """The DMD loop. With ``env`` (several ranks of torch.distributed) every rank draws the same
    full batch and noise from one RNG stream, computes its contiguous shard, and the LoRA
    gradients are averaged before clipping: N ranks take the single-process step on the full
    batch (methods/distributed.py; a test checks it with 2 gloo ranks). ``sampler`` is the one
    the student will be sampled with (``sampling.dmd_sampler``)."""

    def __init__(self, backbone: Backbone, bank: AdapterBank, streams: StreamSampler, cfg: DistillConfig,
                 *, objectives: Objectives, fast_steps: int, shift: float, seed: int, work_dir: Path,
                 sampler: str = "renoise", init_student: Path | None = None, desc: str = "dmd",
                 callbacks: tuple[TrainerCallback, ...] = (), env: DistEnv | None = None) -> None:
        self.bb, self.bank, self.streams, self.cfg = backbone, bank, streams, cfg
        self.obj, self.shift, self.desc = objectives, shift, desc
        self.sampler = check_sampler(sampler)
        self.dmd_shift = shift if cfg.dmd_shift is None else cfg.dmd_shift
        self.work_dir = Path(work_dir)
        self.callbacks = (*callbacks, *_OBSERVERS.get())
        self.env = env or DistEnv()
        self._full, self._mine = cfg.batch_size, slice(None)   # this step's batch size and shard
        self.schedule = sigma_schedule(fast_steps, shift).to(backbone.device)
        lora = lora_config(LoraTrainConfig(rank=cfg.rank, alpha=cfg.alpha))
        with torch.random.fork_rng():  # LoRA init from the run seed, not from global RNG state
            torch.manual_seed(seed)
            student_params = bank.add_trainable(STUDENT, lora)
            critic_params = bank.add_trainable(CRITIC, lora)
        if init_student is not None:  # incremental extension: start from a trained CollectionLoRA
            from methods.lora import load_lora
            load_lora(backbone.transformer, init_student, "_init")
            init = adapter_state(backbone.transformer, "_init")
            set_peft_model_state_dict(backbone.transformer, init, adapter_name=STUDENT)
            backbone.transformer.delete_adapters(["_init"])
            bank._mark_trainable()
        self.opt_g = torch.optim.AdamW(student_params, lr=cfg.lr, betas=(0.9, 0.999))
        self.opt_c = torch.optim.AdamW(critic_params, lr=cfg.critic_lr or cfg.lr, betas=(0.9, 0.999))
        self.params_g, self.params_c = student_params, critic_params
        broadcast_parameters(self.params_g + self.params_c)  # ranks start from rank 0's LoRAs
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        self.history: list[dict] = []

    # -- scores ---------------------------------------------------------------------------------
    def _v(self, adapter: tuple[str, ...], x: torch.Tensor, sigma: torch.Tensor, b: DistillBatch,
           cond: TextCondition) -> torch.Tensor:
        self.bank.activate(*adapter)
        return self.bb.velocity(x, sigma, b.sources, cond, b.grid)

    def _v_groups(self, adapter: tuple[str, ...], xs: list[torch.Tensor], sigmas: list[torch.Tensor],
                  conds: list[TextCondition], b: DistillBatch) -> torch.Tensor:
        """ONE transformer call for several groups of the batch's rows (each with its own inputs,
        noise levels and text condition; the batch's sources): the groups' velocities, stacked
        in order. Padding + mask make the stacked text condition exact (TextCondition.cat)."""
        self.bank.activate(*adapter)
        return self.bb.velocity(torch.cat(xs), torch.cat(sigmas), b.sources.repeat(len(xs), 1, 1),
                                TextCondition.cat(conds), b.grid)

    @torch.no_grad()
    def _score_x0(self, x_t: list[torch.Tensor], sigma: list[torch.Tensor],
                  b: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean estimates of the real and the fake score at the noised samples ``x_t`` (one or
        more groups of the batch's rows), stacked in order. Every group and, for the real score,
        both CFG branches go through one transformer call per adapter -- the main saving of P1."""
        n = len(x_t)
        teacher = (b.teacher,) if b.teacher else ()
        if self.cfg.real_cfg > 1:
            v_cond, v_uncond = self._v_groups(teacher, x_t * 2, sigma * 2, [b.teacher_cond] * n + [b.uncond] * n,
                                              b).chunk(2)
            v_real = true_cfg(v_cond, v_uncond, self.cfg.real_cfg, rescale=self.cfg.real_cfg_norm)
        else:
            v_real = self._v_groups(teacher, x_t, sigma, [b.teacher_cond] * n, b)
        v_fake = self._v_groups((CRITIC,), x_t, sigma, [b.student_cond] * n, b)
        x, s = torch.cat(x_t), torch.cat(sigma)
        return predict_x0(x, v_real, s), predict_x0(x, v_fake, s)

    # -- random draws: always the full batch from the one stream, then this rank's shard ---------
    def _rand(self, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return (low + (high - low) * torch.rand(self._full, generator=self.gen))[self._mine]

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn((self._full, *like.shape[1:]), generator=self.gen)[self._mine].to(like.device)

    def _dmd_sigma(self, sigma_range: tuple[float, float]) -> torch.Tensor:
        """A DMD noise level per sample: uniform in ``sigma_range``, then the timestep shift
        (the reference shifts the TS range [500, 1000) the same way)."""
        return shift_sigmas(self._rand(*sigma_range), self.dmd_shift)

    # -- generator sample -------------------------------------------------------------------------
    def _generator_sample(self, b: DistillBatch, with_grad: bool) -> torch.Tensor:
        """Backward simulation: run the student with its sampler from noise to a random schedule
        step k, then one more student prediction there (with grad when the generator is updated).
        Renoise's fresh noise comes from the trainer's RNG (``_randn``: every rank draws the full
        batch, and a resumed run continues the same stream)."""
        n = b.sources.shape[0]
        k = int(torch.randint(len(self.schedule) - 1, (1,), generator=self.gen))
        x = self._randn(b.sources)
        with torch.no_grad():
            for i in range(k):  # k < len(schedule) - 1: every step here re-noises to a sigma > 0
                v = self._v((STUDENT,), x, self.schedule[i].expand(n), b, b.student_cond)
                x = sampler_step(self.sampler, x, v, self.schedule[i], self.schedule[i + 1], self._randn)
        sigma_k = self.schedule[k].expand(n)
        with torch.set_grad_enabled(with_grad):
            return predict_x0(x, self._v((STUDENT,), x, sigma_k, b, b.student_cond), sigma_k)

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        b = self.streams.next(self.gen)
        self._full = b.sources.shape[0]
        if self.env.world_size > 1:
            self._mine = shard(self._full, self.env)
            b = b.slice(self._mine)
        update_gen = self.step % self.cfg.gen_update_ratio == 0
        x0 = self._generator_sample(b, with_grad=update_gen)
        log = {"step": self.step, "stream": b.stream, "effect": b.teacher or ""}
        if update_gen:
            log.update(self._generator_update(x0, b))

        # Critic: flow matching on the (shared, detached) generator sample
        fake = x0.detach()
        sigma = shift_sigmas(self._rand(1e-3, 1.0), self.shift).to(fake.device)
        noise = self._randn(fake)
        v = self._v((CRITIC,), add_noise(fake, noise, sigma), sigma, b, b.student_cond)
        critic = F.mse_loss(v.float(), noise - fake)
        self._check(critic, "critic")
        self.opt_c.zero_grad(set_to_none=True)
        critic.backward()
        average_gradients(self.params_c)
        torch.nn.utils.clip_grad_norm_(self.params_c, self.cfg.grad_clip)
        self.opt_c.step()
        log["critic"] = critic.item()
        self.bank.activate()
        self.step += 1
        return self._mean_over_ranks(log)

    def _generator_update(self, x0: torch.Tensor, b: DistillBatch) -> dict:
        """DMD on the simulated sample; in the effect stream also TA-FM and TS. The student's two
        extra predictions (TA-FM, TS) share one call, and all DMD terms share one real-score and
        one fake-score call (``_score_x0``)."""
        log: dict = {}
        dev = x0.device
        sigma_dmd = self._dmd_sigma(self.cfg.dmd_sigma_range).to(dev)
        noise_dmd = self._randn(x0)
        anchor = b.anchor  # effect stream only
        tafm = anchor is not None and self.obj.tafm
        ts = anchor is not None and self.obj.ts
        inputs, sigmas = [], []
        if tafm:
            # TA-FM: flow matching towards the teacher output at a noise level drawn above the
            # DMD one (reference; tafm_above_dmd=False: any level), then shifted
            floor = sigma_dmd if self.cfg.tafm_above_dmd else torch.full_like(sigma_dmd, 1e-3)
            sigma_a = shift_sigmas(floor + (1 - floor) * self._rand().to(dev), self.dmd_shift)
            noise = self._randn(anchor)
            tafm_target = noise - anchor
            inputs.append(add_noise(anchor, noise, sigma_a))
            sigmas.append(sigma_a)
        if ts:
            # TS: the teacher output noised to one of the last schedule steps, through the student
            j = len(self.schedule) - 2 - int(torch.randint(self.cfg.ts_last_steps, (1,), generator=self.gen))
            sigmas.append(self.schedule[j].expand(anchor.shape[0]))
            inputs.append(add_noise(anchor, self._randn(anchor), sigmas[-1]))
        if inputs:  # the student's TA-FM and TS predictions: one call
            v = self._v_groups((STUDENT,), inputs, sigmas, [b.student_cond] * len(inputs), b).chunk(len(inputs))
        x0_ts = predict_x0(inputs[-1], v[-1], sigmas[-1]) if ts else None
        groups = [(x0, sigma_dmd, noise_dmd)]
        if ts:
            groups.append((x0_ts, self._dmd_sigma(self.cfg.ts_sigma_range).to(dev), self._randn(x0_ts)))
        x_real, x_fake = self._score_x0([add_noise(x.detach(), e, s) for x, s, e in groups],
                                        [s for _, s, _ in groups], b)
        m = x0.shape[0]
        loss = dmd_loss(x0, x_real[:m], x_fake[:m])
        log["dmd"] = loss.item()
        if tafm:
            tafm_loss = F.mse_loss(v[0].float(), tafm_target)
            loss = loss + self.cfg.tafm_weight * tafm_loss
            log["tafm"] = tafm_loss.item()
        if ts:
            ts_loss = dmd_loss(x0_ts, x_real[m:], x_fake[m:])
            loss = loss + self.cfg.ts_weight * ts_loss
            log["ts"] = ts_loss.item()
        self._check(loss, "generator")
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params_g)  # no-op on one process
        log["gen_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params_g, self.cfg.grad_clip))
        self.opt_g.step()
        return log

    def _mean_over_ranks(self, log: dict) -> dict:
        """Logged losses as full-batch means (one all-reduce of a few scalars per step)."""
        if self.env.world_size == 1:
            return log
        keys = [k for k in ("dmd", "tafm", "ts", "critic") if k in log]
        values = torch.tensor([log[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {**log, **{k: float(v) / self.env.world_size for k, v in zip(keys, values)}}

    def _check(self, loss: torch.Tensor, what: str) -> None:
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if self.env.world_size > 1:  # every rank stops together, or none does (no hung collective)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            last = self._checkpoints()
            raise NonFiniteLossError(
                f"{self.desc}: {what} loss is {loss.item()} at step {self.step}. Training stopped; the last "
                f"good checkpoint is {last[-1] if last else 'none (no checkpoint yet)'}. Lower distill.lr "
                f"({self.cfg.lr}) or check the data of stream {self.streams.state.stream!r}.")

    # -- loop, checkpoints ------------------------------------------------------------------------
    def train(self) -> list[dict]:
        self._resume()
        bar = progress(total=self.cfg.steps, initial=self.step, desc=self.desc)
        limit = step_limit(self.cfg.steps, self.cfg.budget_passes)  # under a pass budget the budget decides
        while self.step < limit and not budget_spent(self.cfg.budget_passes, self.env):
            log = self.train_step()
            self.history.append(log)
            bar.update(1)
            if "dmd" in log:
                bar.set_postfix(dmd=f"{log['dmd']:.4f}", critic=f"{log['critic']:.4f}")
            for cb in self.callbacks:
                cb.on_step_end(self, log)
            last = self.step == limit or budget_spent(self.cfg.budget_passes, self.env)
            if self.step % self.cfg.checkpoint_every == 0 or last:
                path = self.save_checkpoint()
                for cb in self.callbacks:
                    if path is not None:
                        cb.on_checkpoint(self, path)
        bar.close()
        if self.env.is_main:
            self.write_losses(self.work_dir / "losses.csv")
        return self.history

    def _checkpoints(self) -> list[Path]:
        return sorted(self.work_dir.glob("ckpt-*.pt"))

    def save_checkpoint(self) -> Path | None:
        """Write the full state (main rank only; the others hold the same state). Returns its path."""
        if not self.env.is_main:
            return None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        t = self.bb.transformer
        state = {
            "step": self.step,
            "student": adapter_state(t, STUDENT),
            "critic": adapter_state(t, CRITIC),
            "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
            "rng": self.gen.get_state(), "streams": asdict(self.streams.state),
            "history": self.history, "config": asdict(self.cfg), "sampler": self.sampler,
            "cost": asdict(cost.so_far()),  # a resumed build's training cost includes the killed run's
        }
        path = self.work_dir / f"ckpt-{self.step:08d}.pt"
        atomic_write(path, lambda f: torch.save(state, f))  # a checkpoint is either complete or absent
        for old in self._checkpoints()[: -self.cfg.keep_checkpoints]:
            old.unlink()
        return path

    def _resume(self) -> None:
        ckpts = self._checkpoints()
        if not ckpts:
            return
        state = torch.load(ckpts[-1], weights_only=False)
        t = self.bb.transformer
        set_peft_model_state_dict(t, state["student"], adapter_name=STUDENT)
        set_peft_model_state_dict(t, state["critic"], adapter_name=CRITIC)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.gen.set_state(state["rng"])
        self.streams.restore(state["streams"])
        self.step, self.history = state["step"], state["history"]
        if "cost" in state:  # checkpoints from before costs were counted have none
            cost.carry(cost.Cost(**state["cost"]))
        print(f"[{self.desc}] resumed from {ckpts[-1].name} at step {self.step}/{self.cfg.steps}", flush=True)

    def write_losses(self, path: Path) -> None:
        keys = ["step", "stream", "effect", "critic", "dmd", "tafm", "ts", "gen_grad_norm"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in self.history:
                w.writerow({k: row.get(k, "") for k in keys})

    def save_student(self, directory: Path) -> Path:
        return save_lora(self.bb.transformer, STUDENT, directory)


def generator_updates(cfg: DistillConfig) -> int:
    return math.ceil(cfg.steps / cfg.gen_update_ratio)
