"""Distributed training with real processes (DDP over gloo on the CPU), launched as users launch it.

Covers: ``accelerate launch --config_file launch/cpu2.yaml`` and ``torchrun --nproc_per_node 2`` runs that
train, evaluate and write one best_sc.pt with identical weights on both ranks; gradient equivalence of
2 processes x batch B with 1 process x batch 2B (SyncBatchNorm, sampler- and loss-balanced); distributed
evaluation equal to a one-process evaluation on splits of odd size; a two-"machine" run on localhost; errors
that stop every rank at once with one message. This file doubles as the torchrun driver for the runtime
primitives (``python -m torch.distributed.run ... tests/test_distributed.py --driver OUT``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO, TIMEOUT, free_port, run

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
BATCH = 8      # per process; the one-process reference runs 2 x BATCH
STEPS = 2       # optimizer steps compared; AdamW amplifies float noise with every step (see assert_same_training)
# Tiny and fast: width 8, no loader workers, no latency benchmark; eval batches of 4 leave a ragged last
# batch on each rank's shard of the 11-clip splits.
TINY = ["--config", "configs/debug.yaml", "model.kwsnet.width=8", "data.num_workers=0", "latency.enabled=false",
        "tracking.report=false", "tracking.wandb=false", "train.eval_batch_size=4", "train.resume=never",
        "train.log_every=1"]
# Same data order and deterministic steps: no augmentation, no dropout, constant LR, one short epoch.
EXACT = ["augment.shift_p=0", "augment.noise_p=0", "augment.mask_p=0", "augment.gain_db=0", "augment.mixup_p=0",
         "model.kwsnet.dropout=0", "train.schedule=constant", "train.warmup_epochs=0", "train.epochs=1",
         f"train.max_steps={STEPS}"]

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------- helpers

def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def rank_lines(output: str, local_rank: int) -> list[str]:
    """Lines a worker wrote, as torchrun's ``--tee 3`` prefixes them."""
    return [line for line in output.splitlines() if line.startswith(f"[default{local_rank}]:")]


def load_weights(out: Path) -> dict:
    return torch.load(out / "best_sc.pt", map_location="cpu", weights_only=True)["model"]


def initial_weights(num_classes: int) -> dict:
    """The weights every run starts from (Run seeds torch with train.seed, then builds the model)."""
    from sctrain.config import FeatureConfig, KWSNetConfig, ModelConfig
    from sctrain.models.registry import create_model
    torch.manual_seed(0)
    return create_model(ModelConfig(kwsnet=KWSNetConfig(width=8, dropout=0)), FeatureConfig(), num_classes).state_dict()


def assert_same_training(one: dict, two: dict, init: dict) -> None:
    """Weights agree up to float noise, measured against how far training moved them.

    A max-abs comparison would be brittle: AdamW divides by sqrt(v), so an element whose gradient is almost
    zero turns summation-order noise (batch 8 vs 16 kernels, all-reduce order) into an update of a sizeable
    fraction of lr, and the noise grows with the steps. Norm ratios are robust. Observed after 2 steps:
    ~1e-3 over all parameters (<5e-3 for any one tensor); a real mismatch gives ~0.06 over all parameters
    and 0.3 for the worst tensor (per-rank class-weighted loss means), ~0.4 / 1 (no SyncBatchNorm).
    """
    assert one.keys() == two.keys()
    diff2 = moved2 = 0.0
    for name in one:
        if not one[name].is_floating_point():
            assert torch.equal(one[name], two[name]), name  # num_batches_tracked
            continue
        diff = torch.linalg.vector_norm((one[name] - two[name]).double()).item()
        moved = torch.linalg.vector_norm((one[name] - init[name]).double()).item()
        assert moved > 0, f"{name} did not train"
        assert diff <= 5e-2 * moved, f"{name}: |1 proc - 2 procs| = {diff:.3g}, moved {moved:.3g}"
        diff2, moved2 = diff2 + diff ** 2, moved2 + moved ** 2
    assert diff2 ** 0.5 <= 1e-2 * moved2 ** 0.5, f"all weights: |1 proc - 2 procs| = {diff2 ** 0.5:.3g}, " \
                                                  f"moved {moved2 ** 0.5:.3g}"


def digests(folder: Path) -> list[dict]:
    files = sorted(folder.glob("rank*.json"))
    return [json.loads(f.read_text()) for f in files]


def assert_rank0_outputs(out: Path, output: str, world: int) -> None:
    """One writer: one best_sc.pt, one results record, no duplicated train records, bar and summary once."""
    assert (out / "best_sc.pt").is_file()
    assert sorted(p.name for p in out.glob("*.pt")) == ["best_sc.pt"]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == world
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("results") == 1
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert len(steps) == len(set(steps)) == results["steps"], steps
    assert output.count("sctrain: done.") == 1


def assert_bar_only_on_rank0(output: str) -> None:
    assert any("epoch 1/" in line for line in rank_lines(output, 0)), "rank 0 shows the progress bar"
    for rank in range(1, 8):
        assert not any("epoch 1/" in line or "sctrain: done" in line for line in rank_lines(output, rank))


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """4 words x 25 clips: 78 train, 11 validation, 11 test clips (odd: 2 ranks get unequal shards).
    Left unpacked, so the first launch packs it (once per node)."""
    from sctrain.data.synthetic import write_synthetic_dataset
    return write_synthetic_dataset(tmp_path_factory.mktemp("dist") / "sc", words=4, per_word=25, seed=0,
                                   noise_files=1, workers=1)


@pytest.fixture(scope="module")
def accelerate_run(data_root, tmp_path_factory):
    """2 processes via accelerate + launch/cpu2.yaml, SyncBatchNorm, sampler-balanced."""
    tmp = tmp_path_factory.mktemp("accel")
    out, dump = tmp / "run", tmp / "weights"
    proc = run([*ACCELERATE, "--config_file", "launch/cpu2.yaml", "--main_process_port", str(free_port()),
                "--tee", "3", "--log_dir", str(tmp / "logs"), "-m", "sctrain", *TINY, *EXACT,
                f"data.root={data_root}", f"output_dir={out}", f"train.batch_size={BATCH}", "train.sync_bn=true",
                "train.balance=sampler"], env={"SCTRAIN_DUMP_WEIGHTS_DIR": str(dump)})
    return out, dump, ok(proc)


@pytest.fixture(scope="module")
def torchrun_run(data_root, accelerate_run, tmp_path_factory):
    """2 processes via plain torchrun, SyncBatchNorm, class-weighted loss."""
    tmp = tmp_path_factory.mktemp("torchrun")
    out, dump = tmp / "run", tmp / "weights"
    proc = run([*TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                "--tee", "3", "--log-dir", str(tmp / "logs"), "-m", "sctrain", *TINY, *EXACT,
                f"data.root={data_root}", f"output_dir={out}", f"train.batch_size={BATCH}", "train.sync_bn=true",
                "train.balance=loss"], env={"SCTRAIN_DUMP_WEIGHTS_DIR": str(dump)})
    return out, dump, ok(proc)


def single_process(data_root: Path, out: Path, balance: str) -> Path:
    ok(run([sys.executable, "-m", "sctrain", *TINY, *EXACT, f"data.root={data_root}", f"output_dir={out}",
            f"train.batch_size={2 * BATCH}", f"train.balance={balance}"]))
    return out


# ------------------------------------------------------------------------------------------- tests

def test_accelerate_launch_trains_evaluates_and_writes_once(accelerate_run):
    out, dump, output = accelerate_run
    assert_rank0_outputs(out, output, world=2)
    assert_bar_only_on_rank0(output)
    ranks = digests(dump)
    assert [d["rank"] for d in ranks] == [0, 1] and all(d["world_size"] == 2 for d in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"], "model weights differ between ranks"
    assert output.count("packed 100 clips") == 1  # the first launch packed the dataset, once


def test_torchrun_trains_with_class_weighted_loss(torchrun_run):
    out, dump, output = torchrun_run
    assert_rank0_outputs(out, output, world=2)
    assert_bar_only_on_rank0(output)
    ranks = digests(dump)
    assert len(ranks) == 2 and ranks[0]["digest"] == ranks[1]["digest"]


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_two_processes_match_one_process_with_twice_the_batch(balance, accelerate_run, torchrun_run, data_root,
                                                              tmp_path):
    two = (accelerate_run if balance == "sampler" else torchrun_run)[0]
    one = single_process(data_root, tmp_path / "one", balance)
    a, b = load_weights(one), load_weights(two)
    assert json.loads((one / "results.json").read_text())["steps"] == STEPS
    assert_same_training(a, b, initial_weights(len(json.loads((one / "results.json").read_text())["labels"])))


@pytest.mark.parametrize("split", ["validation", "test"])
def test_distributed_evaluation_equals_one_process(split, accelerate_run):
    """The 2-rank confusion matrices logged by the run equal a one-process evaluation of best_sc.pt."""
    from sctrain.audio.assets import AugmentAssets
    from sctrain.audio.frontend import FrontEnd
    from sctrain.config import load_config
    from sctrain.data.dataset import eval_loader
    from sctrain.data.pack import load_dataset
    from sctrain.models.registry import create_model
    from sctrain.training.evaluate import evaluate

    out = accelerate_run[0]
    cfg = load_config(out / "config.yaml")
    data = load_dataset(cfg.data, progress=False)
    assert len(data.split(split)) % 2 == 1, "the split must not divide evenly between the 2 ranks"
    model = create_model(cfg.model, cfg.features, len(data.labels))
    model.load_state_dict(load_weights(out))
    frontend = FrontEnd(cfg.features, cfg.augment, AugmentAssets.for_config(cfg.augment, noise=data.background))
    single = evaluate(model, frontend, eval_loader(data.split(split), 64, 1, 0), data.labels, torch.device("cpu"))

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["kind"] == "eval" and r["split"] == split][-1]
    assert np.array_equal(np.array(logged["confusion"]), single.confusion)
    assert logged["count"] == single.count == len(data.split(split))
    assert logged["acc"] == single.accuracy
    assert logged["per_class_acc"] == single.per_class_accuracy
    assert logged["loss"] == pytest.approx(single.loss, rel=1e-5)


def test_two_machines_on_one_host(data_root, tmp_path):
    """Two launches with --num_machines 2 --machine_rank 0/1 (one process each) train one model together."""
    out, dump, port = tmp_path / "run", tmp_path / "weights", free_port()
    procs = []
    for machine in (0, 1):
        cmd = [*ACCELERATE, "--config_file", "launch/multinode.yaml", "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "--tee", "3", "--log_dir", str(tmp_path / f"logs{machine}"), "-m", "sctrain", *TINY,
               f"data.root={data_root}", f"output_dir={out}", f"train.batch_size={BATCH}", "train.epochs=2"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "SCTRAIN_DUMP_WEIGHTS_DIR": str(dump)}))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("the two-machine run hung")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    assert_rank0_outputs(out, outputs[0], world=2)
    assert any("epoch 2/2" in line for line in rank_lines(outputs[0], 0))
    assert "epoch 1/" not in outputs[1] and "sctrain: done" not in outputs[1]
    ranks = digests(dump)
    # Augmentation on, per-rank BatchNorm (no sync_bn): rank 0's running statistics are copied to every rank
    # before evaluation, so both end with identical weights *and* buffers.
    assert len(ranks) == 2 and ranks[0]["digest"] == ranks[1]["digest"], \
        [k for k in ranks[0]["tensors"] if ranks[0]["tensors"][k] != ranks[1]["tensors"][k]]


@pytest.mark.parametrize("bad, message", [
    (["data.root=/nonexistent/sc", "data.download=false"], "/nonexistent/sc"),
    (["train.epochs=0"], "train.epochs"),
])
def test_an_error_stops_every_rank_with_one_message(bad, message, tmp_path):
    start = time.monotonic()
    proc = run([*ACCELERATE, "--config_file", "launch/cpu2.yaml", "--main_process_port", str(free_port()),
                "-m", "sctrain", *TINY, f"output_dir={tmp_path / 'run'}", *bad], timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in output.splitlines() if "sctrain: error:" in line]
    assert len(errors) == 1 and message in errors[0], output[-3000:]
    # Workers exit with the error code, not a Python traceback or a crash in their process-group teardown.
    assert re.search(r"\[rank\d+\]: Traceback", output) is None, output[-3000:]
    assert "SIGABRT" not in output and "SIGSEGV" not in output, output[-3000:]
    assert time.monotonic() - start < 150


def test_runtime_primitives_under_torchrun(tmp_path):
    """once_per_node order and failure paths, thread split, gloo, GlobalBatchNorm2d, sync_buffers."""
    proc = run([*TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                str(Path(__file__)), "--driver", str(tmp_path)])
    ok(proc)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    from sctrain.training.distributed import cpu_cores
    for r in (r0, r1):
        assert r["world"] == 2 and r["backend"] == "gloo" and r["device"] == "cpu"
        assert r["threads"] == max(1, cpu_cores() // 2)
    # The node's main process finished fn before the other rank started it.
    assert r1["work"]["start"] >= r0["work"]["end"]
    assert r0["work"]["packed"] and not r1["work"]["packed"]
    # The failing rank sees its own error; the other a quiet OtherRankFailed; nobody hangs.
    assert (r0["main_fails"], r1["main_fails"]) == ("FileNotFoundError", "OtherRankFailed")
    assert (r0["other_fails"], r1["other_fails"]) == ("OtherRankFailed", "PermissionError")
    assert r0["global_sum"] == r1["global_sum"] == 3.0
    assert r0["synced_buffer"] == r1["synced_buffer"] == 0.0
    assert r0["bn_max_error"] < 1e-5, r0["bn_max_error"]


def test_eval_shards_cover_every_clip_once():
    from sctrain.data.dataset import EvalShard
    for size in (11, 12, 1):
        for world in (1, 2, 3, 8):
            parts = [list(EvalShard(size, world, r)) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(size))


def test_scaling_benchmark_window_and_counts(tmp_path):
    from sctrain.bench.scaling import BenchError, process_counts, window_rate
    assert process_counts(None, 0) == [1, 2] and process_counts(None, 4) == [1, 2, 4]
    assert process_counts("2,4", 8) == [1, 2, 4]
    with pytest.raises(BenchError, match="needs 8 GPUs"):
        process_counts("8", 2)
    metrics = tmp_path / "metrics.jsonl"
    rows = [(2, 0, 10.0), (4, 0, 20.0), (6, 0, 40.0)]  # (step, epoch, clips/s over the 2 steps before)
    metrics.write_text("".join(json.dumps({"kind": "train", "step": s, "epoch": e, "clips_per_s": r}) + "\n"
                               for s, e, r in rows))
    # 4 steps after step 2: 2 at 20/s and 2 at 40/s -> 4 / (2/20 + 2/40) = 26.67 (not the mean, 30).
    assert window_rate(metrics, 2, 4) == pytest.approx(80 / 3)
    metrics.write_text(metrics.read_text().replace('"step": 6, "epoch": 0', '"step": 6, "epoch": 1'))
    with pytest.raises(BenchError, match="epoch boundary"):
        window_rate(metrics, 2, 4)


def test_scaling_benchmark_runs_one_and_two_processes(data_root, tmp_path):
    out = tmp_path / "scaling.json"
    proc = run([sys.executable, "-m", "sctrain.bench", "scaling", "--root", str(data_root), "--config",
                "configs/debug.yaml", "--steps", "2", "--warmup", "2", "--batch-size", str(BATCH), "--out", str(out),
                "model.kwsnet.width=8", "data.num_workers=0"])
    output = ok(proc)
    result = json.loads(out.read_text())
    assert json.loads(output.strip().splitlines()[-1]) == result
    assert [p["processes"] for p in result["points"]] == [1, 2]
    assert all(p["clips_per_s"] > 0 for p in result["points"])
    assert result["efficiency"]["1"] == 1.0 and result["efficiency"]["2"] > 0


# ------------------------------------------------------------------------------------------- driver

def _driver(out: Path) -> None:
    """Run under torchrun with 2 processes; each rank writes rank<R>.json for the test to check."""
    import torch.distributed as dist
    from torch import nn

    from sctrain.config import load_config
    from sctrain.models.syncbn import convert_sync_batchnorm
    from sctrain.training.distributed import (
        OtherRankFailed,
        global_sum,
        make_accelerator,
        once_per_node,
        shutdown,
        sync_buffers,
    )

    acc = make_accelerator(load_config(None, []))
    rank, report = acc.process_index, {}
    report.update(world=acc.num_processes, backend=dist.get_backend(), device=acc.device.type,
                  threads=torch.get_num_threads())

    def work():
        start = time.time()
        if acc.is_local_main_process:
            time.sleep(0.5)  # "packing": the other rank must not start before this ends
        return {"start": start, "end": time.time(), "packed": acc.is_local_main_process}
    report["work"] = once_per_node(acc, work)

    def outcome(fn) -> str:
        try:
            once_per_node(acc, fn)
            return "returned"
        except (OtherRankFailed, FileNotFoundError, PermissionError) as e:
            return type(e).__name__

    def main_fails():
        if acc.is_local_main_process:
            raise FileNotFoundError("no dataset here")

    def other_fails():
        if not acc.is_local_main_process:
            raise PermissionError("cache not readable")
    report["main_fails"], report["other_fails"] = outcome(main_fails), outcome(other_fails)
    report["global_sum"] = global_sum(acc, torch.tensor(float(rank + 1))).item()

    bn = nn.Sequential(nn.BatchNorm2d(3))
    bn[0].running_mean.fill_(float(rank))
    sync_buffers(acc, bn)
    report["synced_buffer"] = bn[0].running_mean[0].item()

    # GlobalBatchNorm2d on 2 ranks x 4 samples == BatchNorm2d on all 8: outputs, input and parameter
    # gradients, running statistics.
    x = torch.randn(8, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    g = torch.randn(8, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    ref = nn.BatchNorm2d(3)
    nn.init.uniform_(ref.weight, 0.5, 1.5, generator=torch.Generator().manual_seed(2))
    gbn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    gbn.load_state_dict(ref.state_dict())
    xr = x[4 * rank:4 * rank + 4].clone().requires_grad_()
    y_train = gbn(xr)
    (y_train * g[4 * rank:4 * rank + 4]).sum().backward()
    y_eval = gbn.eval()(xr.detach())  # eval mode: running statistics, no collective
    parts = [torch.cat([xr.grad.flatten(), y_train.detach().flatten(), y_eval.flatten()]),
             torch.cat([gbn.weight.grad, gbn.bias.grad])]
    gathered = [[torch.zeros_like(p) for _ in range(2)] for p in parts]
    for p, into in zip(parts, gathered):
        dist.all_gather(into, p)
    if rank == 0:
        xf = x.clone().requires_grad_()
        y_ref_train = ref(xf)
        (y_ref_train * g).sum().backward()
        expected = [xf.grad, y_ref_train.detach(), ref.eval()(x)]
        n = xf.grad[:4].numel()
        errors = [
            max((gathered[0][r][k * n:(k + 1) * n] - e[4 * r:4 * r + 4].flatten()).abs().max().item()
                for r in range(2) for k, e in enumerate(expected)),
            ((gathered[1][0] + gathered[1][1]) - torch.cat([ref.weight.grad, ref.bias.grad])).abs().max().item(),
            (gbn.running_var - ref.running_var).abs().max().item(),
            (gbn.running_mean - ref.running_mean).abs().max().item(),
        ]
        report["bn_max_error"] = max(errors)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        _driver(Path(sys.argv[2]))
    else:
        sys.exit("usage: torchrun --nproc_per_node 2 tests/test_distributed.py --driver OUT_DIR")
