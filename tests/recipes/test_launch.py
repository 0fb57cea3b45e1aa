"""The launch scripts under stand-in cluster commands (small scripts on PATH that record how they were called)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted((ROOT / "launch").glob("*.sh")) + [ROOT / "launch" / "slurm.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def stand_ins(bin_dir: Path, log: Path) -> None:
    """srun runs its command; torchrun records its arguments and waits (exit code $TORCHRUN_EXIT, 0 on SIGTERM);
    scancel --signal forwards the signal to torchrun as srun would; scontrol answers hostnames and records requeue."""
    scripts = {
        "srun": f"""echo "srun $* SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK" >> {log}
while [ "${{1#--}}" != "$1" ]; do shift; done
exec "$@"
""",
        "torchrun": f"""echo "torchrun $*" >> {log}
echo $$ > {log}.torchrun_pid
trap 'echo "torchrun got TERM" >> {log}; exit 0' TERM
[ -n "${{TORCHRUN_EXIT:-}}" ] && exit "$TORCHRUN_EXIT"
while true; do sleep 0.1; done
""",
        "scancel": f"""echo "scancel $*" >> {log}
kill -TERM "$(cat {log}.torchrun_pid)"
""",
        "scontrol": f"""if [ "$1" = show ]; then printf 'node-a\\nnode-b\\n'; else echo "scontrol $*" >> {log}; fi
""",
    }
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)


def sbatch(tmp_path: Path, **env) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "calls.log"
    stand_ins(tmp_path / "bin", log)
    slurm = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_CPUS_PER_TASK": "8"}
    environment = {**os.environ, **slurm, **env, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    script = ["bash", "launch/slurm.sbatch", "recipes/configs/tiny_cpu.yaml", "train.max_steps=3"]
    return subprocess.Popen(script, cwd=ROOT, env=environment, stdout=subprocess.PIPE, text=True), log


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_slurm_script_passes_cpus_shutdown_timeout_and_resume(tmp_path):
    process, log = sbatch(tmp_path, TORCHRUN_EXIT="3")
    assert process.wait(timeout=30) == 3  # a failed run fails the job, and is not requeued
    calls = log.read_text()
    assert "SRUN_CPUS_PER_TASK=8" in calls
    torchrun = next(line for line in calls.splitlines() if line.startswith("torchrun "))
    assert "--rdzv_endpoint node-a:29500" in torchrun and "--nnodes 2" in torchrun and "--rdzv_id 42" in torchrun
    assert "--shutdown_timeout 600" in torchrun
    assert torchrun.endswith(
        "recipes/finetune.py --config recipes/configs/tiny_cpu.yaml resume=latest train.max_steps=3"
    )
    assert "requeue" not in calls


def test_slurm_sigterm_reaches_the_workers_and_requeues_the_job(tmp_path):
    process, log = sbatch(tmp_path)
    wait_for(Path(f"{log}.torchrun_pid"))
    process.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends to the batch script
    assert process.wait(timeout=30) == 0
    calls = log.read_text().splitlines()
    assert "scancel --signal=TERM 42" in calls and "torchrun got TERM" in calls
    assert calls[-1] == "scontrol requeue 42"  # after the step ended, not before
    assert "requeueing job 42" in process.stdout.read()


def test_multinode_takes_the_address_of_the_hostfiles_first_host(tmp_path):
    recorder = tmp_path / "deepspeed"
    recorder.write_text(f'#!/usr/bin/env bash\necho "$*" > {tmp_path / "args"}\n')
    recorder.chmod(0o755)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\n\nlocalhost slots=8\nnode-b slots=8\n")
    env = {k: v for k, v in os.environ.items() if k != "MASTER_ADDR"} | {"DEEPSPEED": str(recorder)}
    subprocess.run(["bash", "launch/multinode.sh", str(hostfile), "CONFIG", "a.b=1"], cwd=ROOT, env=env, check=True)
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--master_addr") + 1] in ("127.0.0.1", "::1")
    assert args[-3:] == ["--config", "CONFIG", "a.b=1"]
    subprocess.run(
        ["bash", "launch/multinode.sh", str(hostfile), "C"], cwd=ROOT, env=env | {"MASTER_ADDR": "node0.example"}
    )
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--master_addr") + 1] == "node0.example"
    hostfile.write_text("no-such-host.invalid slots=8\n")
    failed = subprocess.run(
        ["bash", "launch/multinode.sh", str(hostfile), "C"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 2 and "set MASTER_ADDR" in failed.stderr


def test_local_sh_picks_a_free_master_port_unless_one_is_given(tmp_path):
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "deepspeed"
    stand_in.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "calls.log"}\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "DEEPSPEED": str(stand_in)}
    env.pop("MASTER_PORT", None)
    for extra in ({}, {}, {"MASTER_PORT": "12345"}):
        script = ["bash", "launch/local.sh", "2", "recipes/configs/tiny_cpu.yaml"]
        subprocess.run(script, cwd=ROOT, env={**env, **extra}, check=True)
    ports = [line.split("--master_port ")[1].split()[0] for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert ports[2] == "12345" and all(p.isdigit() and 1024 < int(p) < 65536 for p in ports[:2])


def test_a_master_port_in_use_is_named_with_a_free_one(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    command = [deepspeed, "--num_gpus", "2", "--master_port", str(port), "recipes/finetune.py", "--config",
               "recipes/configs/tiny_cpu.yaml", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
               "train.warmup_steps=0"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    busy.close()
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"the master port 127.0.0.1:{port} is already in use" in result.stderr and "--master_port " in result.stderr
    assert "Traceback" not in result.stderr


def test_the_supervisor_kills_and_names_what_outlives_its_launcher(tmp_path):
    """A process the launcher started in a session of its own (as torchrun starts its ranks) and left behind is
    still found (the supervisor is its subreaper), named and killed after the grace time."""
    pid_file = tmp_path / "pid"
    launcher = f"setsid sleep 300 & echo $! > {pid_file}; exit 0"
    env = {**os.environ, "CGC_LEFTOVER_GRACE_S": "2"}
    command = [sys.executable, "launch/supervise.py", "bash", "-c", launcher]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    left = int(pid_file.read_text())
    assert result.returncode == 0 and f"processes [{left}] of the job outlived its launcher by 2 s" in result.stderr
    assert not Path(f"/proc/{left}").exists()  # killed and reaped
