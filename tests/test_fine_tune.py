"""The shared Trainer, the GPU-side batch transforms and the run-directory helpers (in-process)."""

import math
import os
import signal
import sys

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from rest_support import torch_one_thread  # noqa: F401  (one torch thread: see there)

import kit.trainer as trainer_module
from fine_tune import ViTPrompt
from kit.device_batches import ImageBatchSource
from kit.errors import UserError
from kit.image_ops import crop_flip, normalize, sample_crop_offsets, to_chw_uint8, transform_points
from kit.runs import (
    CHECKPOINT_FILE,
    BackgroundSaver,
    prepare_run_dir,
    to_cpu_copy,
    write_predictions,
)
from kit.stopping import (
    Preempted,
    clear_stop_request,
    handle_stop_signal,
    resume_command,
    run_main,
    stop_on_signals,
    stop_reason,
    stop_requested,
)
from kit.trainer import LRSchedule, TrainConfig, Trainer, inference, predict

# ---------------------------------------------------------------- batch transforms


def test_read_only_images_are_copied_not_wrapped():
    """np.asarray of a PIL image is read-only; torch must not wrap it (undefined behaviour)."""
    import numpy as np

    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image.flags.writeable = False
    tensor = to_chw_uint8(image)
    assert tensor.shape == (3, 4, 5)
    assert (tensor.permute(1, 2, 0).numpy() == image).all()
    assert tensor.untyped_storage().data_ptr() != image.ctypes.data, "wrapped a read-only array"
    writable = np.zeros((2, 2, 3), np.uint8)
    assert to_chw_uint8(writable).untyped_storage().data_ptr() == writable.ctypes.data  # a view


def test_crop_flip_matches_torchvision_crop_and_hflip():
    torch.manual_seed(0)
    store = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8)
    index = torch.tensor([2, 0, 2])
    oy, ox = torch.tensor([0, 3, 12]), torch.tensor([8, 0, 16])
    flip = torch.tensor([False, True, True])
    out = crop_flip(store, index, oy, ox, flip, 8)
    for b in range(3):
        expected = TF.crop(store[index[b]], int(oy[b]), int(ox[b]), 8, 8)
        if flip[b]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[b], expected)


def test_crop_offsets_cover_the_valid_range_only():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[10, 14]]).expand(4000, 2)
    oy, ox = sample_crop_offsets(sizes, 8, g)
    assert oy.min() == 0 and oy.max() == 2 and ox.min() == 0 and ox.max() == 6


def test_points_move_with_the_crop_and_flip():
    store = torch.zeros(1, 3, 20, 30, dtype=torch.uint8)
    store[0, :, 7, 11] = 255  # the pixel whose centre is the point (x=11.5, y=7.5)
    point = torch.tensor([[11.5, 7.5]])
    for flip in (False, True):
        oy, ox, f = torch.tensor([3]), torch.tensor([5]), torch.tensor([flip])
        crop = crop_flip(store, torch.tensor([0]), oy, ox, f, 10)
        x, y = transform_points(point, oy, ox, f, 10)[0]
        row, col = (crop[0, 0] == 255).nonzero()[0].tolist()
        assert (col + 0.5, row + 0.5) == (x.item(), y.item())


def test_normalize_is_imagenet_normalisation():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = TF.normalize(x.float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(normalize(x), expected)
    assert normalize(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def make_source(train, n=40, batch=8, rank=0, world=1, seed=0):
    g = torch.Generator().manual_seed(1)
    store = torch.randint(0, 256, (n, 3, 36, 40), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 5
    if not train:
        store = store[:, :, :32, :32].contiguous()
    return ImageBatchSource(
        store,
        labels,
        batch_size=batch,
        train=train,
        crop=32,
        seed=seed,
        rank=rank,
        world_size=world,
    )


def test_batches_are_deterministic_and_resumable_mid_epoch():
    src = make_source(True)
    full = list(src.batches(epoch=3))
    assert len(full) == len(src) == 5
    tail = list(src.batches(epoch=3, start=2))
    for a, b in zip(full[2:], tail):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = next(iter(src.batches(epoch=4)))
    assert not torch.equal(full[0][1], other[1])  # a new order every epoch


def test_ddp_shards_split_each_global_batch():
    one = list(make_source(True).batches(epoch=1))
    ranks = [list(make_source(True, rank=r, world=2).batches(epoch=1)) for r in range(2)]
    for b, (x, y) in enumerate(one):
        torch.testing.assert_close(torch.cat([ranks[0][b][0], ranks[1][b][0]]), x)
        assert torch.equal(torch.cat([ranks[0][b][1], ranks[1][b][1]]), y)
    ev = [
        torch.cat([y for _, y in make_source(False, n=37, rank=r, world=2).batches()])
        for r in (0, 1)
    ]
    assert len(ev[0]) + len(ev[1]) == 37  # every validation image exactly once


# ---------------------------------------------------------------- schedules


def test_multistep_schedule_drops_at_milestone_epochs():
    s = LRSchedule(TrainConfig(epochs=100, milestones=[60, 80], gamma=0.1), steps_per_epoch=50)
    assert s(0) == 1.0 and s(60 * 50 - 1) == 1.0
    assert math.isclose(s(60 * 50), 0.1) and math.isclose(s(80 * 50), 0.01)


def test_cosine_schedule_with_warmup():
    s = LRSchedule(TrainConfig(epochs=10, scheduler="cosine", warmup_epochs=2), steps_per_epoch=10)
    assert math.isclose(s(0), 0.05) and math.isclose(s(19), 1.0)
    assert math.isclose(s(20 + 40), 0.5, abs_tol=1e-9) and s(99) < 0.01


# ---------------------------------------------------------------- trainer


def tiny_run(run_dir, stop_at_step=None, resume=False, epochs=3, checkpoint_every=1):
    torch.manual_seed(0)
    model = ViTPrompt(5, "vit_tiny_test", num_prompts=2, prompt_dropout=0.2, weights=None)
    config = TrainConfig(
        epochs=epochs,
        lr=0.05,
        momentum=0.9,
        milestones=[2],
        log_every=2,
        checkpoint_every=checkpoint_every,
    )

    def stop(trainer, epoch, step):
        if trainer.global_step == stop_at_step:
            trainer.request_stop()

    trainer = Trainer(
        model,
        make_source(True, seed=7),
        make_source(False, n=20),
        prepare_run_dir(run_dir, resume),
        config,
        resume=resume,
        on_step_end=stop if stop_at_step else None,
    )
    return trainer.fit(), model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """tiny_run's 3 epochs without a stop, once for the tests that compare a resumed run with
    it: its result (the history) and its trained prompts."""
    result, model = tiny_run(tmp_path_factory.mktemp("uninterrupted") / "run")
    return result, model.prompts.detach().clone()


@pytest.mark.parametrize("stop_at_step", [7, 10])  # mid-epoch, and at an epoch boundary
def test_interrupted_run_resumes_to_the_same_result(tmp_path, stop_at_step, uninterrupted):
    expected, prompts_a = uninterrupted
    with pytest.raises(Preempted):
        tiny_run(tmp_path / "b", stop_at_step=stop_at_step)
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file()
    resumed, model_b = tiny_run(tmp_path / "b", resume=True)
    assert resumed["history"] == expected["history"]
    torch.testing.assert_close(model_b.prompts, prompts_a, rtol=0, atol=0)
    assert (tmp_path / "b" / "best.pt").is_file()
    assert list((tmp_path / "b" / "tensorboard").iterdir())


def test_a_signal_before_training_starts_still_checkpoints_and_resumes(tmp_path, uninterrupted):
    """SIGTERM while the data loads (before fit) must not be lost: run_main's handler records
    it, the first step ends with checkpoint.pt and Preempted (exit 75), and --resume works."""
    expected, _ = uninterrupted
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)  # delivered now, to the handler
            assert stop_requested(), "SIGTERM did not reach the stop handler"
            with pytest.raises(Preempted, match="step 1"):
                tiny_run(tmp_path / "b")
    finally:
        clear_stop_request()
    assert signal.getsignal(signal.SIGTERM) is not handle_stop_signal  # handlers restored
    resumed, _ = tiny_run(tmp_path / "b", resume=True)
    assert resumed["history"] == expected["history"]


def test_checkpoint_every_n_epochs_writes_the_last_epoch_too(tmp_path, monkeypatch):
    epochs_written = []
    real_save = Trainer.save_checkpoint

    def spy(self, epoch, step_in_epoch, partial):
        epochs_written.append(epoch)
        real_save(self, epoch, step_in_epoch, partial)

    monkeypatch.setattr(Trainer, "save_checkpoint", spy)
    tiny_run(tmp_path / "run", epochs=5, checkpoint_every=2)
    assert epochs_written == [2, 4, 5], f"checkpoints after epochs {epochs_written}"


def test_background_saver_snapshots_at_save_time_and_reports_errors(tmp_path):
    live = {"w": torch.zeros(3), "nested": [torch.zeros(2)]}
    snapshot = to_cpu_copy(live)
    live["w"] += 1
    live["nested"][0] += 1
    assert snapshot["w"].sum() == 0 and snapshot["nested"][0].sum() == 0, "not a copy"
    saver = BackgroundSaver()
    weights = torch.zeros(1000)
    saver.save({"w": weights, "meta": [1, {"lr": 0.1}]}, tmp_path / "a.pt")
    weights += 1  # training goes on changing the tensor in place
    saver.save({"w": weights}, tmp_path / "b.pt")
    saver.wait()
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a["w"].sum() == 0, "the write saw a later value: save() must copy at once"
    assert b["w"].sum() == 1000 and a["meta"] == [1, {"lr": 0.1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temporaries
    saver.save({"w": weights}, tmp_path / "missing" / "c.pt")  # a folder that does not exist
    with pytest.raises(RuntimeError, match="does not exist"):
        saver.wait()  # the write's error reaches the caller


def test_compile_is_used_only_with_a_cpu_compiler(tmp_path, monkeypatch):
    """The Trainer's choice, with a stand-in for torch.compile (the first real call imports
    torch's inductor: about 3 s; the slow tier's test below compiles for real)."""
    model = ViTPrompt(5, "vit_tiny_test", num_prompts=2, weights=None)
    calls = []

    def fake_compile(module, mode=None):
        calls.append((module, mode))
        return torch.nn.Sequential(module)  # another module around the same one

    monkeypatch.setattr(trainer_module.torch, "compile", fake_compile)
    monkeypatch.setattr(trainer_module.shutil, "which", lambda name: "/usr/bin/" + name)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    compiled = Trainer(model, make_source(True), make_source(False), tmp_path / "a",
                       TrainConfig(compile=True, compile_mode="max-autotune"))  # fmt: skip
    assert calls == [(model, "max-autotune")], "compile: true with a compiler must compile"
    assert compiled.train_model is compiled.eval_model is not model
    monkeypatch.setattr(trainer_module.shutil, "which", lambda name: None)
    trainer = Trainer(model, make_source(True), make_source(False), tmp_path / "b",
                      TrainConfig(compile=True))  # fmt: skip
    assert len(calls) == 1, "compiled anyway"
    assert trainer.train_model is model and trainer.eval_model is model
    assert "needs a C++ compiler" in (tmp_path / "b" / "train.log").read_text()


@pytest.mark.slow
def test_compile_without_a_cpu_compiler_trains_eagerly_and_says_so(tmp_path, monkeypatch):
    _, model = tiny_run(tmp_path / "first", epochs=1)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    monkeypatch.setattr(trainer_module.shutil, "which", lambda name: "/usr/bin/" + name)
    compiled = Trainer(model, make_source(True), make_source(False), tmp_path / "a",
                       TrainConfig(compile=True))  # fmt: skip
    assert compiled.train_model is not model, "compile: true with a compiler must compile"
    monkeypatch.setattr(trainer_module.shutil, "which", lambda name: None)
    trainer = Trainer(model, make_source(True), make_source(False), tmp_path / "b",
                      TrainConfig(compile=True))  # fmt: skip
    assert trainer.train_model is model and trainer.eval_model is model, "compiled anyway"
    assert "needs a C++ compiler" in (tmp_path / "b" / "train.log").read_text()


def test_accuracy_counts_every_sample(tmp_path):
    _, model = tiny_run(tmp_path / "run", epochs=1)
    source = make_source(False, n=23, batch=8)  # uneven last batch
    trainer = Trainer(model, make_source(True), source, tmp_path / "run", TrainConfig())
    _, acc = trainer.evaluate(source)
    preds = torch.tensor(predict(model, source))
    assert acc == pytest.approx((preds == source.labels).double().mean().item())
    lines = inference(model, source, tmp_path / "test_flower.txt")
    assert (tmp_path / "test_flower.txt").read_text().split() == [str(p) for p in lines]


# ---------------------------------------------------------------- run directories


def test_run_directory_rules(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, resume=False)
    (run / "123.out").write_text("slurm log")  # does not make it a run
    prepare_run_dir(run, resume=False)
    with pytest.raises(UserError, match="--resume"):
        prepare_run_dir(run, resume=True)  # nothing to resume
    (run / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        prepare_run_dir(run, resume=False)


def test_write_predictions_one_int_per_line(tmp_path):
    write_predictions(tmp_path / "p.txt", [3, 1, 101])
    assert (tmp_path / "p.txt").read_text() == "3\n1\n101\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.txt"]  # no temporary file left


def test_flower_loader_reads_the_real_format_and_greyscale(tmp_path):
    import pickle

    import numpy as np

    from custom_dataset import load_flower_split

    images = [np.zeros((30, 40, 3), np.uint8), np.full((50, 20), 7, np.uint8)]
    with open(tmp_path / "val_data.pkl", "wb") as f:
        pickle.dump((images, np.array([3, 101])), f)
    loaded, labels = load_flower_split(tmp_path, "val")
    assert [im.shape for im in loaded] == [(30, 40, 3), (50, 20, 3)]
    assert labels.tolist() == [3, 101] and loaded[1][0, 0].tolist() == [7, 7, 7]


def test_slurm_tasks_become_torch_ranks(monkeypatch):
    from kit.distributed import _env_from_slurm

    # _env_from_slurm writes os.environ: give it a copy, or RANK=1/WORLD_SIZE=2 would leak
    # into every later test's subprocesses (which would then wait for a second rank forever).
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _env_from_slurm()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == (
        "1",
        "2",
        "1",
    )
    assert os.environ["MASTER_PORT"] == str(29500 + 242)


def test_resume_with_other_settings_is_refused(tmp_path):
    from kit.runs import check_resume_config, write_config

    write_config(tmp_path, {"lr": 0.01, "epochs": 100})
    check_resume_config(tmp_path, {"lr": 0.01, "epochs": 100})
    with pytest.raises(UserError, match="differ .* in lr"):
        check_resume_config(tmp_path, {"lr": 0.1, "epochs": 100})


# ---------------------------------------------------------------- stopping: Ctrl-C and resume


def test_first_ctrl_c_asks_for_a_stop_and_the_second_quits_at_once(capfd):
    """Ctrl-C (SIGINT) is a stop request like SIGTERM, announced on stderr; a second
    Ctrl-C raises KeyboardInterrupt at once (an impatient student is never stuck)."""
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            assert stop_requested() and stop_reason() == "Ctrl-C"
            assert "press Ctrl-C again to quit at once" in capfd.readouterr().err
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        clear_stop_request()
    assert signal.getsignal(signal.SIGINT) is before  # restored


def _exit_of_run_main(main, capfd):
    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert not stop_requested(), "run_main must clear the stop request it leaves behind"
    return info.value.code, capfd.readouterr().err


def test_run_main_exit_statuses_and_messages(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "demo_flower.py", "--output_dir", "a b"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def ctrl_c_then_checkpoint():
        os.kill(os.getpid(), signal.SIGINT)
        raise Preempted("checkpoint.pt written at epoch 1 of 3, step 2 of 5")

    code, err = _exit_of_run_main(ctrl_c_then_checkpoint, capfd)
    assert code == 75
    assert err.strip().splitlines()[-1] == (
        "stopped by Ctrl-C: checkpoint.pt written at epoch 1 of 3, step 2 of 5; "
        "continue with: python demo_flower.py --output_dir 'a b' --resume"
    )

    def ctrl_c_twice(run_dir):
        def main():
            prepare_run_dir(run_dir, resume=False)
            (run_dir / "config.yaml").write_text("{}")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the second Ctrl-C did not interrupt")

        return main

    code, err = _exit_of_run_main(ctrl_c_twice(tmp_path / "run"), capfd)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (second Ctrl-C): quit without saving;")
    assert "has no checkpoint yet; restart it from step 0 with:" in last
    assert last.endswith("--output_dir 'a b' --resume")


def test_resume_command_adds_resume_once():
    assert resume_command(["python", "demo_pixmo.py", "--exp_name", "x"]) == (
        "python demo_pixmo.py --exp_name x --resume"
    )
    assert resume_command(["python", "d.py", "--resume"]) == "python d.py --resume"
    assert resume_command(["python", "d.py", "--noresume"]) == "python d.py --resume"


@pytest.mark.parametrize("state", ["empty", "config_only", "checkpoint_only", "both"])
def test_run_directory_messages_never_send_the_user_back_and_forth(tmp_path, state):
    """For every state of a folder exactly one of (rerun, rerun --resume) is accepted, and
    the refused one's message names the accepted one."""
    run = tmp_path / "run"
    run.mkdir()
    if state in ("config_only", "both"):
        (run / "config.yaml").write_text("{}")
    if state in ("checkpoint_only", "both"):
        (run / CHECKPOINT_FILE).write_bytes(b"x")
    accepted = []
    for resume in (False, True):
        try:
            prepare_run_dir(run, resume=resume, create=False)
            accepted.append(resume)
        except UserError as err:
            advice = "drop --resume" if resume else "pass --resume"
            assert advice in str(err), str(err)
    assert len(accepted) == 1 and accepted[0] == (state != "empty")


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path, uninterrupted):
    """A run folder with only config.yaml (the run died before its first checkpoint)
    resumes: from step 0, to the same result as an uninterrupted run."""
    expected, _ = uninterrupted
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("{}")
    resumed, _ = tiny_run(tmp_path / "b", resume=True)
    assert resumed["history"] == expected["history"]
    assert "starting from step 0 with the saved settings" in (tmp_path / "b/train.log").read_text()


@pytest.mark.parametrize("stop_at_step", [7, 10])  # mid-epoch, and at an epoch boundary
def test_stopped_at_and_resumed_from_name_the_same_place(tmp_path, stop_at_step):
    with pytest.raises(Preempted) as info:
        tiny_run(tmp_path / "run", stop_at_step=stop_at_step)
    stopped_at = str(info.value).split(" written at ", 1)[1]
    tiny_run(tmp_path / "run", resume=True)
    log = (tmp_path / "run" / "train.log").read_text()
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and resumed[0].endswith(f" at {stopped_at}"), (stopped_at, resumed)
    # 5 steps per epoch, epochs counted from 1 as in the log's "epoch 2/3" lines
    assert (
        stopped_at == {7: "epoch 2 of 3, step 2 of 5", 10: "the end of epoch 2 of 3"}[stop_at_step]
    )
