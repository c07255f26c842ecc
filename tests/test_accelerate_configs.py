"""Every `accelerate_configs/*.yaml` loads with accelerate's own config loader and sets what its name promises; the
single-process file launches on this CPU and `ddp.yaml` starts a real 2-process gloo group on it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, prepare_multi_gpu_env

from tests.utils import tiny_model

CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"

EXPECTED = {
    "single_process.yaml": (DistributedType.NO, 1, "no"),
    "ddp.yaml": (DistributedType.MULTI_GPU, 8, "bf16"),
    "fsdp2.yaml": (DistributedType.FSDP, 8, "bf16"),
    "zero2.yaml": (DistributedType.DEEPSPEED, 8, "bf16"),
    "zero3.yaml": (DistributedType.DEEPSPEED, 8, "bf16"),
}

PROBE = textwrap.dedent(
    """
    import gc
    import json
    import os
    import sys
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    state = accelerator.state
    model = torch.nn.Linear(2, 1, bias=False)
    model = accelerator.prepare(model)
    # Rank r feeds ones * (r + 1): the weight gradient is r + 1 alone, the mean over ranks once DDP syncs it.
    x = torch.full((1, 2), float(state.process_index + 1))
    accelerator.backward(model(x).sum())
    grad = accelerator.unwrap_model(model).weight.grad[0, 0].item()
    ranks = accelerator.gather(torch.tensor([state.process_index])).tolist()
    report = {"type": state.distributed_type.value, "backend": state.backend, "device": str(state.device),
              "world": state.num_processes, "ranks": ranks, "grad": grad}
    # One file per rank: lines that two processes print to one pipe can interleave.
    with open(f"{sys.argv[1]}/rank{state.process_index}.json", "w") as handle:
        json.dump(report, handle)
    # Drop the DDP wrapper before the process group goes: torch 2.13 otherwise aborts now and then at exit
    # ("terminate called without an active exception") after all the work is done.
    del model
    gc.collect()
    accelerator.end_training()
    # and still did once in ten runs (in a full suite): leave before interpreter teardown meets gloo's threads (the
    # report is written and closed; nothing after this line is under test)
    os._exit(0)
    """
)


def launch_args(config: Path, *extra: str):
    """What `accelerate launch --config_file config` resolves its arguments to, without starting anything."""
    args = launch_command_parser().parse_args(["--config_file", str(config), *extra, "script.py"])
    return _validate_launch_command(args)[0]


def test_every_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    config = load_config_from_file(str(CONFIGS / name))
    distributed_type, num_processes, mixed_precision = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.num_processes == num_processes
    assert config.mixed_precision == mixed_precision
    assert config.num_machines == 1


@pytest.mark.parametrize("name", ["fsdp2.yaml", "zero2.yaml", "zero3.yaml"])
def test_plugin_keys_are_launcher_options(name):
    # accelerate copies these sections onto its launch arguments without checking them: a misspelt key is silently
    # ignored, so compare against the options `accelerate launch` defines.
    config = load_config_from_file(str(CONFIGS / name))
    options = {action.dest for action in launch_command_parser()._actions}
    keys = set(config.fsdp_config) | set(config.deepspeed_config)
    assert keys and keys <= options, keys - options


def test_fsdp2_wraps_minimind_decoder_layers():
    env = prepare_multi_gpu_env(launch_args(CONFIGS / "fsdp2.yaml"))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["MiniMindDecoderLayer"]
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    # Resolving the class names against a real model fails if no module of that class exists.
    plugin.set_auto_wrap_policy(tiny_model())
    assert {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == {
        "MiniMindDecoderLayer"
    }


@pytest.mark.parametrize(("name", "stage", "zero3_init"), [("zero2.yaml", 2, False), ("zero3.yaml", 3, True)])
def test_deepspeed_stage(name, stage, zero3_init):
    args = launch_args(CONFIGS / name)
    assert args.use_deepspeed and args.zero_stage == stage and args.zero3_init_flag is zero3_init
    assert args.offload_optimizer_device == args.offload_param_device == "none"


def run_launch(tmp_path, *launch: str, env_extra=None) -> list[dict]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    run = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", "0", *launch, str(script)]
        + [str(reports)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(reports.glob("rank*.json"))]


def test_single_process_launches_on_cpu(tmp_path):
    (state,) = run_launch(tmp_path, "--config_file", str(CONFIGS / "single_process.yaml"))
    assert state["type"] == "NO" and state["device"] == "cpu"
    assert state["world"] == 1 and state["ranks"] == [0] and state["grad"] == 1.0


def test_ddp_yaml_runs_two_gloo_processes_on_cpu(tmp_path):
    # Without ACCELERATE_USE_CPU each of the two processes would come up alone (DistributedType.NO, world 1) and
    # train the same data twice; with it they form one gloo group.
    states = run_launch(
        tmp_path,
        "--config_file",
        str(CONFIGS / "ddp.yaml"),
        "--num_processes",
        "2",
        env_extra={"ACCELERATE_USE_CPU": "true"},
    )
    assert len(states) == 2
    for state in states:
        assert state["type"] == "MULTI_CPU" and state["backend"] == "gloo" and state["world"] == 2
        assert state["ranks"] == [0, 1]
        assert state["grad"] == 1.5  # (1 + 2) / 2: gradients were all-reduced across the two processes
