"""DMD engine: the gradient, the teacher bank's errors and switching, resume and NaN handling,
callbacks (snapshots are exact prefixes) and data-parallel ranks."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import BackboneConfig, DistillConfig, LoraTrainConfig
from methods.adapters import AdapterBank, LoraMismatchError
from methods.backbones import TextCondition
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.dmd import DMDTrainer, Objectives, TrainerCallback, dmd_loss, observe
from methods.flow import generate
from methods.fm import NonFiniteLossError
from methods.lora import add_lora, save_lora
from methods.streams import EffectData, GeneralData, StreamSampler


def test_dmd_gradient_matches_independent_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    x_real = torch.randn(3, 16, 12, generator=gen, dtype=torch.float64)
    x_fake = torch.randn(3, 16, 12, generator=gen, dtype=torch.float64)
    dmd_loss(x, x_real, x_fake).backward()

    # independently, in numpy: g = (fake - real) / mean|x - real| per sample;
    # d(0.5*mean((x - sg(x-g))^2))/dx = g / numel
    xn, rn, fn = x.detach().numpy(), x_real.numpy(), x_fake.numpy()
    g = (fn - rn) / np.abs(xn - rn).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(x.grad.numpy(), g / xn.size, rtol=1e-10)


def test_dmd_gradient_points_from_fake_towards_real():
    x = torch.zeros(1, 4, 4, requires_grad=True)
    dmd_loss(x, torch.ones(1, 4, 4), torch.zeros(1, 4, 4)).backward()
    assert (x.grad < 0).all()  # gradient descent moves x towards the real score's estimate


def _teacher_file(tmp_path, name, rank=4, targets=None, seed=0):
    bb = TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)
    cfg = LoraTrainConfig(rank=rank, alpha=rank, **({"target_modules": targets} if targets else {}))
    add_lora(bb.transformer, name, cfg)
    torch.manual_seed(seed)
    for pname, p in bb.transformer.named_parameters():
        if "lora_B" in pname:
            torch.nn.init.normal_(p, std=0.05)
    return save_lora(bb.transformer, name, tmp_path / name)


@pytest.fixture
def bank_setup(tiny_backbone, tmp_path):
    files = {n: _teacher_file(tmp_path, n, seed=i) for i, n in enumerate(["t_a", "t_b"])}
    bank = AdapterBank(tiny_backbone.transformer)
    for n, f in files.items():
        bank.add_teacher(n, f)
    return tiny_backbone, bank, files


def test_bank_switch_equals_diffusers_set_adapters(bank_setup):
    bb, bank, _ = bank_setup
    src = bb.encode_images(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(2))
    cond = bb.encode_prompts(["x", "y"])

    def out():
        return generate(bb, src, cond, (8, 8), steps=2, shift=3.0, noise=noise)[0]

    bank.activate("t_b")
    fast = out()
    bb.transformer.set_adapters(["t_b"])
    assert torch.equal(fast, out())
    bank.activate()
    plain = out()
    bb.transformer.disable_lora()
    assert torch.equal(plain, out())
    assert not torch.equal(plain, fast)


def test_bank_errors_name_the_lora(bank_setup, tmp_path):
    bb, bank, files = bank_setup
    with pytest.raises(KeyError, match="'t_missing' is not loaded"):
        bank.activate("t_missing")
    with pytest.raises(FileNotFoundError, match="teacher LoRA 'ghost'"):
        bank.add_teacher("ghost", tmp_path / "nowhere")
    with pytest.raises(LoraMismatchError, match="'t_rank8'.*rank 8.*rank 4"):
        bank.add_teacher("t_rank8", _teacher_file(tmp_path, "t_rank8", rank=8))
    with pytest.raises(LoraMismatchError, match="'t_attn'.*other modules"):
        bank.add_teacher("t_attn", _teacher_file(tmp_path, "t_attn", targets=("to_q", "to_k")))
    big = TinyQwenBackbone.create(BackboneConfig(num_layers=3), seed=0)  # a block this bank lacks
    add_lora(big.transformer, "t_other", LoraTrainConfig(rank=4, alpha=4))
    other = save_lora(big.transformer, "t_other", tmp_path / "t_other")
    with pytest.raises(LoraMismatchError, match="'t_other'.*does not have"):
        bank.add_teacher("t_other", other)
    assert set(bank.frozen) == {"t_a", "t_b"}  # failed loads left nothing behind


def _trainer(tmp_path, steps, *, lr=1e-3, work="work", batch_size=2, env=None, sampler="renoise"):
    torch.manual_seed(0)
    bb = TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)
    bank = AdapterBank(bb.transformer)
    bank.add_teacher("t_a", _teacher_file(tmp_path, "t_a") if not (tmp_path / "t_a").exists()
                     else tmp_path / "t_a")
    gen = torch.Generator().manual_seed(5)
    src = bb.encode_images(torch.rand(6, 3, 8, 8, generator=gen))
    effect = EffectData("t_a", src, bb.encode_prompts(["teacher prompt"] * 6), bb.encode_prompts(["zqx, desc"] * 6),
                        bb.encode_images(torch.rand(6, 3, 8, 8, generator=gen)), bb.encode_prompts([""] * 6))
    general = GeneralData(src, bb.encode_prompts(["keep"] * 6), bb.encode_prompts([""] * 6))
    streams = StreamSampler([effect], general, p_switch=0.5, redraw_every=2, batch_size=batch_size, grid=(4, 4))
    cfg = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, rank=4, alpha=4, checkpoint_every=3,
                        gen_update_ratio=2)
    return DMDTrainer(bb, bank, streams, cfg, objectives=Objectives(), fast_steps=8, shift=3.0, seed=0,
                      work_dir=tmp_path / work, env=env, sampler=sampler)


def _student(trainer):
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(trainer.bb.transformer, adapter_name="student")


def test_the_effect_stream_draws_a_fresh_effect_every_step_and_holds_only_the_stream():
    """Reference PDSR: the stream is drawn every ``redraw_every`` steps, the effect (and so the
    teacher) every step; ``effect_per_step=False`` holds the effect for the whole group."""
    src = torch.zeros(4, 2, 3)
    cond = TextCondition(torch.zeros(4, 1, 2), torch.ones(4, 1, dtype=torch.bool))
    effects = [EffectData(f"t{i}", src, cond, cond, None, cond) for i in range(5)]
    general = GeneralData(src, cond, cond)

    def run(per_step: bool) -> list[tuple[str, str | None]]:
        s = StreamSampler(effects, general, p_switch=0.5, redraw_every=10, batch_size=2, grid=(1, 2),
                          effect_per_step=per_step)
        gen = torch.Generator().manual_seed(0)
        return [(b.stream, b.teacher) for b in (s.next(gen) for _ in range(200))]

    for per_step in (True, False):
        draws = run(per_step)
        groups = [draws[i:i + 10] for i in range(0, 200, 10)]
        assert all(len({stream for stream, _ in g}) == 1 for g in groups)  # the stream is held
        effect_groups = [{t for _, t in g} for g in groups if g[0][0] == "effect"]
        assert effect_groups and all(None not in g for g in effect_groups)
        if per_step:
            assert max(len(g) for g in effect_groups) >= 3
        else:
            assert all(len(g) == 1 for g in effect_groups)
    assert {t for _, t in run(True) if t} == {e.name for e in effects}


def test_batched_scores_equal_one_call_per_branch(tmp_path):
    """The real score's CFG branches and several sample groups go through one transformer call;
    it must give what separate calls give, also when the empty prompt's condition is shorter
    than the teacher's (real encoders: padded and masked when batched)."""
    from methods.backbones import TextCondition
    from methods.dmd import CRITIC
    from methods.flow import predict_x0, true_cfg

    trainer = _trainer(tmp_path, 1)
    trainer._full = 2
    b = trainer.streams.next(trainer.gen)
    assert b.teacher == "t_a" or b.teacher is None
    b = type(b)(**{**b.__dict__, "teacher": "t_a"})
    short = int(b.uncond.mask.sum(1).max())  # the empty prompt as a real encoder returns it: unpadded
    b = type(b)(**{**b.__dict__, "uncond": TextCondition(b.uncond.embeds[:, :short], b.uncond.mask[:, :short])})
    assert b.uncond.embeds.shape[1] < b.teacher_cond.embeds.shape[1]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(b.sources.shape, generator=g) for _ in range(2)]
    sig = [torch.tensor([0.9, 0.3]), torch.tensor([0.6, 0.75])]
    real, fake = trainer._score_x0(xs, sig, b)
    bb = trainer.bb
    for i, (x, s) in enumerate(zip(xs, sig)):
        with torch.no_grad():
            trainer.bank.activate("t_a")
            v = true_cfg(bb.velocity(x, s, b.sources, b.teacher_cond, b.grid),
                         bb.velocity(x, s, b.sources, b.uncond, b.grid), trainer.cfg.real_cfg)
            trainer.bank.activate(CRITIC)
            vf = bb.velocity(x, s, b.sources, b.student_cond, b.grid)
        rows = slice(2 * i, 2 * i + 2)
        torch.testing.assert_close(real[rows], predict_x0(x, v, s), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fake[rows], predict_x0(x, vf, s), atol=1e-5, rtol=1e-4)


def _simulated_by_hand(trainer, b):
    """Backward simulation written out (methods/flow.py docstring), on the trainer's RNG stream."""
    from methods.dmd import STUDENT
    from methods.flow import add_noise, predict_x0

    sig, g, n = trainer.schedule, trainer.gen, b.sources.shape[0]
    k = int(torch.randint(len(sig) - 1, (1,), generator=g))
    x = torch.randn(b.sources.shape, generator=g)
    with torch.no_grad():
        for i in range(k):
            v = trainer._v((STUDENT,), x, sig[i].expand(n), b, b.student_cond)
            if trainer.sampler == "euler":
                x = x + (sig[i + 1] - sig[i]) * v
            else:
                fresh = torch.randn(x.shape, generator=g)
                x = add_noise(predict_x0(x, v, sig[i].expand(n)), fresh, sig[i + 1].expand(n))
        return predict_x0(x, trainer._v((STUDENT,), x, sig[k].expand(n), b, b.student_cond), sig[k].expand(n))


def test_backward_simulation_uses_the_configured_sampler(tmp_path):
    """Two trainers alike but for the sampler, at a step k >= 2: each simulated input is its
    sampler's (renoise with fresh noise from the trainer's RNG), and the two differ."""
    samples = {}
    for sampler in ("euler", "renoise"):
        trainer = _trainer(tmp_path, 1, work=sampler, sampler=sampler)
        b = trainer.streams.next(trainer.gen)
        while True:  # move the RNG to a draw of k >= 2 (both trainers: the same stream, the same k)
            state = trainer.gen.get_state()
            if int(torch.randint(len(trainer.schedule) - 1, (1,), generator=trainer.gen)) >= 2:
                trainer.gen.set_state(state)
                break
        samples[sampler] = trainer._generator_sample(b, with_grad=False)
        trainer.gen.set_state(state)
        torch.testing.assert_close(samples[sampler], _simulated_by_hand(trainer, b))
    assert not torch.allclose(samples["euler"], samples["renoise"], atol=1e-3)
    with pytest.raises(ValueError, match="valid samplers: euler, renoise"):
        _trainer(tmp_path, 1, work="bad", sampler="ddim")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path, 6, work="full")
    full.train()
    streams_seen = {h["stream"] for h in full.history}
    assert {"dmd", "critic"} <= set().union(*full.history)
    assert streams_seen == {"effect", "general"}

    part = _trainer(tmp_path, 3, work="resumed")  # "killed" after its step-3 checkpoint
    part.train()
    resumed = _trainer(tmp_path, 6, work="resumed")
    resumed.train()
    assert resumed.history[:3] == part.history[:3]
    a, b = _student(full), _student(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h.get("dmd") for h in full.history] == [h.get("dmd") for h in resumed.history]
    assert len(list((tmp_path / "resumed").glob("ckpt-*.pt"))) == 2  # rotation keeps the last two
    assert (tmp_path / "resumed" / "losses.csv").read_text().count("\n") == 7


def test_a_resumed_run_counts_the_training_cost_of_the_killed_one(tmp_path):
    """Passes and samples of a run killed after its step-3 checkpoint and resumed add up to the
    uninterrupted run's (the checkpoint carries what was spent); every critic or generator update
    backpropagates through the transformer at least once per sample (TA-FM / TS on an effect
    batch add their own), and every step draws one batch."""
    from bench import cost

    with cost.measure() as full:
        _trainer(tmp_path, 6, work="full").train()
    with cost.measure():
        _trainer(tmp_path, 3, work="resumed").train()
    with cost.measure() as resumed:
        _trainer(tmp_path, 6, work="resumed").train()
    a, b = full[0], resumed[0]
    assert (a.forward, a.backward, a.samples) == (b.forward, b.backward, b.samples)
    generator_updates = 3  # gen_update_ratio 2 over 6 steps
    assert a.backward >= 2 * (6 + generator_updates) and sum(a.samples.values()) == 2 * 6
    assert a.forward > a.backward  # frozen scores, CFG branches and backward simulation: forwards only


def test_a_pass_budget_ends_distillation_before_its_step_cap(tmp_path):
    """distill.budget_passes: the loop stops on the step whose counted passes reach the budget,
    and checkpoints that state (a rerun finds it finished)."""
    from dataclasses import replace

    from bench import cost

    with cost.measure() as one:
        _trainer(tmp_path, 1, work="one").train()
    per_step = one[0].passes
    trainer = _trainer(tmp_path, 50, work="budget")
    trainer.cfg = replace(trainer.cfg, budget_passes=3 * per_step)
    with cost.measure() as spent:
        history = trainer.train()
    assert 2 <= len(history) < 50 and spent[0].passes >= 3 * per_step
    assert sorted(p.name for p in (tmp_path / "budget").glob("ckpt-*.pt"))[-1] == f"ckpt-{len(history):08d}.pt"


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, 6, work="nan")
    orig = trainer.train_step

    def poisoned():
        if trainer.step == 4:
            with torch.no_grad():
                for p in trainer.params_c:
                    p.fill_(float("nan"))
        return orig()

    trainer.train_step = poisoned
    with pytest.raises(NonFiniteLossError, match="critic loss is nan at step 4.*ckpt-00000003.pt"):
        trainer.train()
    assert (tmp_path / "nan" / "ckpt-00000003.pt").exists()


class _Recorder(TrainerCallback):
    def __init__(self):
        self.steps, self.checkpoints, self.students = [], [], {}

    def on_step_end(self, trainer, log):
        self.steps.append(trainer.step)
        self.students[trainer.step] = {k: v.clone() for k, v in _student(trainer).items()}

    def on_checkpoint(self, trainer, path):
        self.checkpoints.append(path.name)


def test_callbacks_see_every_step_and_checkpoint_and_a_snapshot_is_the_shorter_run(tmp_path):
    """``observe`` reaches trainers built deep inside a call; the student after k steps of a long
    run equals a k-step run's student (what distill.snapshot_every publishes), and observing
    changes nothing."""
    rec = _Recorder()
    with observe(rec):
        long = _trainer(tmp_path, 6, work="long")
    long.train()
    assert rec.steps == [1, 2, 3, 4, 5, 6]
    assert rec.checkpoints == ["ckpt-00000003.pt", "ckpt-00000006.pt"]
    short = _trainer(tmp_path, 3, work="short")
    short.train()
    assert not short.callbacks  # outside the block: not observed
    at3 = _student(short)
    assert all(torch.equal(rec.students[3][k], at3[k]) for k in at3)
    plain = _trainer(tmp_path, 6, work="plain")
    plain.train()
    assert [h.get("dmd") for h in plain.history] == [h.get("dmd") for h in long.history]


def _rank_worker(rank, world, init_file, tmp):
    import torch.distributed as dist

    from methods.distributed import DistEnv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = _trainer(Path(tmp), 4, work="ranks", batch_size=4, env=DistEnv(rank, world, rank, "gloo"))
        trainer.train()
        torch.save({"student": _student(trainer), "history": trainer.history}, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e  # 30-75 s here (processes / a whole grid): out of plain pytest, in CI's -m ""
def test_two_gloo_ranks_train_the_single_process_student(tmp_path):
    """DMD data-parallel over 2 ranks (each half of every batch, averaged gradients) trains the
    same student as one process on the full batch, and both ranks hold the same weights."""
    import torch.multiprocessing as mp

    _teacher_file(tmp_path, "t_a")
    single = _trainer(tmp_path, 4, work="single", batch_size=4)
    single.train()
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ref = _student(single)
    for k in ref:
        assert torch.equal(ranks[0]["student"][k], ranks[1]["student"][k]), "ranks diverged"
        torch.testing.assert_close(ranks[0]["student"][k], ref[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(ranks[0]["history"], single.history):
        assert a["stream"] == b["stream"]
        assert a["critic"] == pytest.approx(b["critic"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "ranks").glob("ckpt-*.pt")) == ["ckpt-00000003.pt", "ckpt-00000004.pt"]


class _KeyRecorder:
    """An artifact cache that records the keys asked for and builds nothing."""

    class Stop(Exception):
        pass

    def __init__(self, stop=False):
        self.keys, self.stop = [], stop

    def get_or_build(self, spec, build):
        self.keys.append((spec.kind, spec.key))
        if self.stop:
            raise self.Stop
        return Path("unused")


def test_the_sampler_keys_distilled_students_but_not_teacher_outputs(tmp_path):
    """A student distilled with one sampler is never served for the other; the teachers' outputs
    (always euler) keep their key whatever dmd_sampler is."""
    from types import SimpleNamespace

    from bench.config import RunConfig, apply_overrides
    from bench.workspace import Workspace
    from methods.distill import lightning_lora
    from methods.teachers import teacher_outputs

    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"x")
    effect = SimpleNamespace(lora_name="e", lora_path=str(teacher), prompt="p")
    keys = {}
    for sampler in ("euler", "renoise"):
        students = _KeyRecorder()
        ws = Workspace(apply_overrides(RunConfig(), [f"sampling.dmd_sampler={sampler}"]), students)
        lightning_lora(ws)
        ws.cache = outputs = _KeyRecorder(stop=True)
        ws.__dict__["full_bench"] = SimpleNamespace(train_rows=lambda name: [])  # no rows: nothing to load
        with pytest.raises(_KeyRecorder.Stop):
            teacher_outputs(ws, effect)
        keys[sampler] = students.keys + outputs.keys
    (student_e, outputs_e), (student_r, outputs_r) = keys["euler"], keys["renoise"]
    assert student_e[0] == student_r[0] == "lightning" and student_e != student_r
    assert outputs_e == outputs_r
