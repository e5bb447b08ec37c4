"""Every registered model family through every path, parametrised over ``list_models()``.

A family registered today is tested today: a train step (fp32, bf16 autocast, MixUp targets), the state
dict round trip through ``best_sc.pt``, its CPU inference copy, real DDP with the CPU SyncBatchNorm,
``torch.compile``, and an end-to-end run (train, exact resume, predict, streaming, ONNX and TorchScript
export with parity, the latency benchmark). Each family runs at its registered tiny size
(``ModelFamily.test_size``) with the front end its paper used (``ModelFamily.features``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from support import REPO, train_on_one_thread

from sctrain.artifacts.best import load_best, save_best
from sctrain.audio.augment import mixup
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.features import feature_shape
from sctrain.config import Config, ConfigError, ModelConfig, load_config
from sctrain.inference.loading import load_model
from sctrain.models.registry import count_parameters, cpu_inference_copy, create_model, get_family, list_models
from sctrain.training.checkpoint.files import list_states, load_state

FAMILIES = list_models()


def family_overrides(name: str) -> list[str]:
    family = get_family(name)
    return ([f"model.name={name}"] + [f"model.{name}.{k}={v}" for k, v in family.test_size.items()]
            + [f"features.{k}={v}" for k, v in family.features.items()])


def family_config(name: str, *overrides: str) -> Config:
    return load_config(None, [*family_overrides(name), *overrides])


def tiny_net(cfg: Config, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(cfg.model, cfg.features, num_classes)


def random_features(cfg: Config, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, *feature_shape(cfg.features), generator=torch.Generator().manual_seed(seed))


def without_dropout(net: torch.nn.Module) -> torch.nn.Module:
    """Dropout draws differ between a sharded and a whole batch: turn it off where outputs are compared."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return net


def test_every_family_has_its_config_section():
    sections = {f.name: f.type for f in dataclasses.fields(ModelConfig) if f.name != "name"}
    assert sections == {name: get_family(name).config for name in FAMILIES}
    assert ModelConfig().name == "kwsnet"  # the default stays the seed's CNN
    for name in FAMILIES:  # every section defaults to the family's own dataclass, and its keys are config keys
        family = get_family(name)
        assert getattr(ModelConfig(), name) == family.config()
        assert load_config(None, [f"model.{name}.{k}={v}" for k, v in family.test_size.items()]).model == \
            ModelConfig(**{name: family.config(**family.test_size)})


@pytest.mark.parametrize("name", FAMILIES)
def test_every_variant_is_a_valid_setting(name):
    family = get_family(name)
    for variant, values in family.variants.items():
        # With the family's own front end: a shape rule that needs it (BC-ResNet's 40 mels) is checked at config time.
        features = [f"features.{k}={v}" for k, v in family.features.items()]
        settings = [f"model.{name}.{k}={v}" for k, v in values.items()]
        cfg = load_config(None, [f"model.name={name}", *features, *settings])
        assert getattr(cfg.model, name) == family.config(**values), variant


def test_a_family_is_one_module(tmp_path):
    """A module dropped into sctrain.models is found, configured, listed, built and its mistakes reported,
    with no other file touched (run in a fresh process: the registry of this one stays as it is)."""
    (tmp_path / "toynet.py").write_text(TOY_FAMILY)
    proc = subprocess.run([sys.executable, "-c", TOY_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *listing, params, error, unknown = proc.stdout.strip().split("\n")
    assert listing[-2].split()[:2] == ["toynet", "A"] and listing[-1].split() == ["input", "tokens,", "no", "BatchNorm"]
    assert params == "params 19"  # Linear(4 mels, width 2) + Linear(2, 3): model.toynet.width reached the builder
    assert error == "config section 'model.toynet': width 3 is odd"
    assert unknown.startswith("unknown config key 'model.toynet.depth'")


TOY_FAMILY = textwrap.dedent("""
    from dataclasses import dataclass
    from torch import nn
    from sctrain.config import _require, doc
    from sctrain.models.folding import PlainNet
    from sctrain.models.registry import register_model


    @dataclass
    class ToyConfig:
        width: int = doc(4, "hidden units")

        def __post_init__(self):
            _require(self.width >= 1, "model.toynet.width", "must be >= 1")


    @register_model("toynet", config=ToyConfig, cpu_copy=PlainNet, batchnorm=False, input="tokens")
    def build_toynet(cfg, num_classes, n_features, frames):
        \"\"\"A toy: mean over time, one linear layer.\"\"\"
        if cfg.width % 2:
            raise ValueError(f"width {cfg.width} is odd")
        return nn.Sequential(nn.Flatten(1, 2), nn.AdaptiveAvgPool1d(1), nn.Flatten(1), nn.Linear(n_features, cfg.width),
                             nn.Linear(cfg.width, num_classes))
""")

TOY_SCRIPT = textwrap.dedent("""
    import sys
    import sctrain.models
    sctrain.models.__path__.append(sys.argv[1])
    from sctrain.cli.train import main
    from sctrain.config import ConfigError, load_config
    from sctrain.models.registry import count_parameters, create_model
    main(["--list-models"])
    cfg = load_config(None, ["model.name=toynet", "model.toynet.width=2", "features.n_mels=4"])
    print("params", count_parameters(create_model(cfg.model, cfg.features, 3)))
    for overrides in (["model.name=toynet", "model.toynet.width=3"], ["model.toynet.depth=3"]):
        try:
            cfg = load_config(None, overrides)
            create_model(cfg.model, cfg.features, 3)
        except ConfigError as e:
            print(e)
""")


def test_unknown_family_is_one_line():
    with pytest.raises(ConfigError, match=r"model.name.*must be one of .*kwsnet.*got 'resnet'"):
        load_config(None, ["model.name=resnet"])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step(name, precision):
    cfg = family_config(name)
    net = tiny_net(cfg).train()
    x, y = random_features(cfg, 6), torch.tensor([0, 1, 2, 3, 4, 0])
    x, soft = mixup(x, y, 5, alpha=0.4)  # soft targets, as MixUp batches train
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), soft)
    loss.backward()
    assert logits.shape == (6, 5) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_through_best_checkpoint(name, tmp_path):
    cfg = family_config(name)
    net = tiny_net(cfg).eval()
    save_best(tmp_path / "best_sc.pt", net, ["a", "b", "c", "d", "e"], cfg.to_dict(), {"epoch": 0})
    loaded = load_model(tmp_path / "best_sc.pt")
    assert type(loaded.net) is type(net) and loaded.config.model.name == name
    wave = torch.randn(3, SAMPLE_RATE, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded.classifier(wave), net(loaded.features(wave)))


@pytest.mark.parametrize("name", FAMILIES)
def test_cpu_inference_copy_matches(name):
    cfg = family_config(name)
    net = tiny_net(cfg).train()
    with torch.no_grad():  # a few training batches, so BatchNorm's running statistics are not the identity
        for seed in range(3):
            net(random_features(cfg, 8, seed))
    net.eval()
    copy = cpu_inference_copy(cfg.model, net)
    x = random_features(cfg, 4, seed=9)
    with torch.no_grad():
        reference, fast = net(x), copy(x)
    assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-4), (fast - reference).abs().max()
    assert isinstance(type(copy).description, str)


DDP_SCRIPT = textwrap.dedent("""
    import copy, json, sys
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from sctrain.config import load_config
    from sctrain.models.registry import create_model
    from sctrain.models.syncbn import convert_sync_batchnorm
    from sctrain.audio.features import feature_shape

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, overrides in json.loads(sys.argv[2]).items():
        cfg = load_config(None, overrides)
        torch.manual_seed(0)
        net = create_model(cfg.model, cfg.features, 5)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.p = 0.0
        reference = copy.deepcopy(net).train()
        x = torch.randn(8, 1, *feature_shape(cfg.features), generator=torch.Generator().manual_seed(3))
        y = torch.arange(8) % 5
        F.cross_entropy(reference(x), y).backward()  # one process, the whole batch
        ddp = DistributedDataParallel(convert_sync_batchnorm(net, torch.device("cpu")).train())
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)
        F.cross_entropy(ddp(x[part]), y[part]).backward()  # DDP averages the ranks' gradients
        grad = max(float((a.grad - b.grad).abs().max()) for a, b in zip(net.parameters(), reference.parameters()))
        buffers = [(a, b) for (k, a), (_, b) in zip(net.state_dict().items(), reference.state_dict().items())
                   if "running_" in k]
        stats = max([float((a - b).abs().max()) for a, b in buffers] or [0.0])
        results[name] = {"grad_diff": grad, "stats_diff": stats, "bn_buffers": len(buffers)}
    if rank == 0:
        open(sys.argv[1], "w").write(json.dumps(results))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_ddp_with_cpu_syncbn_equals_one_process(tmp_path):
    script, out = tmp_path / "ddp.py", tmp_path / "out.json"
    script.write_text(DDP_SCRIPT)
    overrides = {name: family_overrides(name) for name in FAMILIES}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), json.dumps(overrides)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == FAMILIES
    for name, r in results.items():
        assert r["grad_diff"] < 1e-4 and r["stats_diff"] < 1e-5, (name, r)
    assert all((r["bn_buffers"] > 0) == get_family(name).batchnorm for name, r in results.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_torch_compile_captures_one_graph(name):
    """Dynamo captures forward and backward as one graph (no graph break); the ``aot_eager`` backend runs it
    without inductor's code generation, which is the same for every family and costs ~40 s per compile
    here (:func:`test_trainer_compiles_with_inductor` runs it once, through the trainer)."""
    cfg = family_config(name)
    net = without_dropout(tiny_net(cfg)).train()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = random_features(cfg, 4)
    eager_out = net(x)
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    assert torch.allclose(compiled_out, eager_out, atol=1e-4, rtol=1e-3)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ------------------------------------------------------------------------------------------ end to end

E2E = ["train.epochs=1", "train.batch_size=16", "train.eval_batch_size=64", "data.num_workers=0",
       "train.checkpoint_every=2", "train.keep_last=5", "train.lr=0.003", "train.warmup_epochs=0.5",
       "latency.iters=2", "latency.large_batch=4", "tracking.report=false", "tracking.mode=disabled",
       "tracking.log_examples=0", "train.log_every=2"]


def run_family(name: str, root: Path, out: Path, *overrides: str) -> dict:
    return train_on_one_thread(family_config(name, f"data.root={root}", f"output_dir={out}", *E2E, *overrides))


@pytest.fixture(scope="module")
def e2e_runs(synthetic_root, tmp_path_factory):
    """One uninterrupted run per family, trained lazily (a family's run is shared by its tests)."""
    runs = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"run_{name}")
            runs[name] = out, run_family(name, synthetic_root, out)
        return runs[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_end_to_end_run_writes_a_best_checkpoint_and_latency(name, e2e_runs):
    out, results = e2e_runs(name)
    assert results["model"] == name and results["steps"] == 6
    assert results["params"] == count_parameters(load_model(out / "best_sc.pt").net)
    assert results["latency_ms_p50"] > 0 and 0.0 <= results["test_acc"] <= 1.0


@pytest.mark.slow
def test_trainer_compiles_with_inductor(synthetic_root, tmp_path):
    results = run_family(ModelConfig().name, synthetic_root, tmp_path, "train.compile=true", "train.max_steps=2",
                         "latency.enabled=false")
    assert results["steps"] == 2 and 0.0 <= results["test_acc"] <= 1.0
    assert not any(k.startswith("_orig_mod.") for k in load_best(tmp_path / "best_sc.pt")["model"])


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_exact_resume(name, e2e_runs, synthetic_root, tmp_path):
    reference, _ = e2e_runs(name)
    run_family(name, synthetic_root, tmp_path, "train.max_steps=3")  # stops mid-epoch, after a state at step 2
    assert load_state(list_states(tmp_path)[0])["progress"]["global_step"] == 3
    run_family(name, synthetic_root, tmp_path)  # the same command without the limit resumes and finishes
    # The last states, not best_sc.pt: the interrupted run also evaluated at step 3, which may have been best.
    last, ref_last = load_state(list_states(tmp_path)[0]), load_state(list_states(reference)[0])
    assert last["progress"] == ref_last["progress"]
    for key, tensor in ref_last["model"].items():
        assert torch.equal(last["model"][key], tensor), f"{name}: {key} differs after resume"


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_predict_stream_export_and_latency_bench(name, e2e_runs, synthetic_root, tmp_path):
    from sctrain.bench.latency import main as latency_main
    from sctrain.inference import export
    from sctrain.inference.predict import predict_file
    from sctrain.inference.streaming import StreamingDetector

    out, _ = e2e_runs(name)
    model = load_model(out / "best_sc.pt")
    clips = sorted(p for p in synthetic_root.glob("*/*.wav") if not p.parent.name.startswith("_"))[:8]
    assert predict_file(model, clips[0])["top"][0]["label"] in model.labels
    stream = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in clips[:3]])
    detector = StreamingDetector(model)
    detector.process(stream)
    assert detector.windows > 0 and detector.real_time_factor > 0
    audio = export.clip_batch(clips)
    for fmt in ("onnx", "torchscript"):
        result = export.write_checked(model, tmp_path / f"m{export.SUFFIX[fmt]}", fmt, "audio", audio, atol=1e-3)
        assert result["argmax_agree"] == len(clips), (fmt, result)
    report = tmp_path / "latency.json"
    assert latency_main([str(out / "best_sc.pt"), "--iters", "3", "--large-batch", "4", "--no-compile", "--no-onnx",
                         "--no-torchscript", "--stream-seconds", "2", "--json", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["model"] == name and figures["cpu_copy"] == type(model.cpu_net).description


@pytest.mark.parametrize("name", FAMILIES)
def test_recipe_config_builds_its_family(name):
    cfg = load_config(REPO / "configs" / "models" / f"{name}.yaml")
    assert cfg.model.name == name
    for key, value in get_family(name).features.items():  # the recipe uses the front end its paper used
        assert getattr(cfg.features, key) == value, key
    create_model(cfg.model, cfg.features, 12)


def test_kwsnet_recipe_is_the_default_config():
    recipe, default = (load_config(REPO / "configs" / p).to_dict() for p in ("models/kwsnet.yaml", "default.yaml"))
    assert {**recipe, "output_dir": None} == {**default, "output_dir": None}


def test_a_checkpoint_from_before_the_registry_still_loads():
    """tests/data/best_sc_before_registry.pt was written by the code before the model registry (commit 7bd0f7d:
    config ``model.width``, section ``bench``); it loads as the kwsnet it was, with the same outputs."""
    model = load_model(REPO / "tests" / "data" / "best_sc_before_registry.pt")
    assert model.config.model.name == "kwsnet" and model.config.model.kwsnet.width == 4
    assert model.config.latency.enabled is True and model.labels == ["no", "yes", "_silence_"]
    x = torch.randn(2, 1, 40, 101, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the logits the old code computed for this input
        assert torch.allclose(model.net(x), torch.tensor([[0.0252, -0.0586, 0.0103], [0.0293, -0.0651, 0.0106]]),
                              atol=1e-4)
