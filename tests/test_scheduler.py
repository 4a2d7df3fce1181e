"""Scheduler metadata read from realistic environments (what SLURM, Kubernetes and torchrun set)."""

from __future__ import annotations

import os
import pwd

import pytest

from wattwise import scheduler

OS_USER = pwd.getpwuid(os.getuid()).pw_name

# What `sbatch --array=0-7 -A ml-lab -p gpu` gives task 4 of array job 81234 (its own job id is
# 81238), inside the batch script, trimmed to what is read plus some noise.
SLURM_ARRAY_TASK = {
    "SLURM_JOB_ID": "81238",
    "SLURM_JOBID": "81238",
    "SLURM_ARRAY_JOB_ID": "81234",
    "SLURM_ARRAY_TASK_ID": "4",
    "SLURM_ARRAY_TASK_COUNT": "8",
    "SLURM_JOB_ACCOUNT": "ml-lab",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_NODELIST": "gpu-[03-04]",
    "SLURM_NODELIST": "gpu-[03-04]",
    "SLURM_JOB_USER": "alice",
    "SLURM_JOB_NAME": "sweep-lr",
    "SLURM_CLUSTER_NAME": "hopper",
    "SLURMD_NODENAME": "gpu-03",
    "SLURM_PROCID": "0",
    "SLURM_SUBMIT_DIR": "/home/alice/exp",
    "USER": "alice",
}
# `srun -n 2 python train.py` inside an allocation: step 0, the second task, older variable names.
SLURM_SRUN_STEP = {
    "SLURM_JOBID": "90001",
    "SLURM_STEPID": "0",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "1",
    "SLURM_NODELIST": "cn17",
    "SLURM_JOB_USER": "bob",
    "SLURM_JOB_PARTITION": "debug",
    "SLURMD_NODENAME": "cn17",
}
K8S_POD = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "HOSTNAME": "train-resnet-7f9c-abcde",
    "POD_NAME": "train-resnet-7f9c-xk2lp",
    "NODE_NAME": "node-pool-a-3",
}
TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "exp42",
    "TORCHELASTIC_RESTART_COUNT": "1",
    "TORCHELASTIC_MAX_RESTARTS": "3",
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "ROLE_NAME": "default",
    "ROLE_RANK": "5",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29500",
}


def test_slurm_array_task_joins_as_sacct_names_it(tmp_path):
    got = scheduler.collect(SLURM_ARRAY_TASK, namespace_file=tmp_path / "none")
    assert got["job_id"] == "81234_4"  # `sacct -j 81234_4`
    assert got["user"] == "alice"
    assert got["os_user"] == OS_USER
    assert got["slurm"] == {
        "job_id": "81238",
        "array_job_id": "81234",
        "array_task_id": "4",
        "account": "ml-lab",
        "partition": "gpu",
        "node_list": "gpu-[03-04]",
        "user": "alice",
        "step_id": None,  # the batch script itself is no srun step
        "job_name": "sweep-lr",
        "cluster": "hopper",
        "node_name": "gpu-03",
        "proc_id": "0",
    }
    assert "kubernetes" not in got and "torchrun" not in got


def test_plain_srun_step_with_the_older_names():
    got = scheduler.collect(SLURM_SRUN_STEP)
    assert (got["job_id"], got["user"]) == ("90001", "bob")
    slurm = got["slurm"]
    assert (slurm["job_id"], slurm["step_id"], slurm["proc_id"]) == ("90001", "0", "1")
    assert slurm["node_list"] == "cn17" and slurm["array_job_id"] is None


def test_kubernetes_pod_namespace_from_the_service_account_file(tmp_path):
    ns = tmp_path / "namespace"
    ns.write_text("research\n")
    got = scheduler.collect(K8S_POD, namespace_file=ns)
    assert got["kubernetes"] == {
        "pod": "train-resnet-7f9c-xk2lp",
        "namespace": "research",
        "node": "node-pool-a-3",
    }
    assert got["job_id"] == "train-resnet-7f9c-xk2lp"
    assert got["user"] == OS_USER  # no scheduler user: the OS user
    # POD_NAMESPACE (downward API) wins over the file; without POD_NAME the hostname is the pod
    env = {k: v for k, v in K8S_POD.items() if k != "POD_NAME"} | {"POD_NAMESPACE": "team-b"}
    got = scheduler.collect(env, namespace_file=ns)
    assert got["kubernetes"]["pod"] == "train-resnet-7f9c-abcde"
    assert got["kubernetes"]["namespace"] == "team-b"


def test_kubernetes_only_when_its_environment_is_there(tmp_path):
    env = {k: v for k, v in K8S_POD.items() if not k.startswith("KUBERNETES_")}
    ns = tmp_path / "namespace"
    ns.write_text("research")
    assert "kubernetes" not in scheduler.collect(env, namespace_file=ns)


def test_torchrun_ids_and_ranks():
    got = scheduler.collect(TORCHRUN)
    assert got["torchrun"] == {
        "run_id": "exp42",
        "restart_count": 1,
        "max_restarts": 3,
        "rank": 5,
        "local_rank": 1,
        "world_size": 8,
        "local_world_size": 4,
        "group_rank": 1,
        "role": "default",
        "role_rank": 5,
    }
    assert got["job_id"] == "exp42"
    # torchrun's default rendezvous id is "none": no job id from it
    assert scheduler.collect({**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"})["job_id"] is None


def test_torchrun_inside_a_slurm_job_keeps_slurms_job_id():
    got = scheduler.collect({**SLURM_SRUN_STEP, **TORCHRUN})
    assert got["job_id"] == "90001" and got["torchrun"]["rank"] == 5


def test_no_scheduler_at_all(tmp_path):
    got = scheduler.collect({}, namespace_file=tmp_path / "none")
    assert got == {"user": OS_USER, "job_id": None, "os_user": OS_USER}
    # plain RANK/WORLD_SIZE (e.g. a hand-made DDP launch) is not torchrun
    assert "torchrun" not in scheduler.collect({"RANK": "0", "WORLD_SIZE": "2"})


def test_os_user_never_fails(monkeypatch):
    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # a container's uid with no passwd entry
    assert scheduler.collect({"LOGNAME": "carol"})["user"] == "carol"
    assert scheduler.collect({})["user"] is None


def test_defaults_to_this_process_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM", "KUBERNETES", "TORCHELASTIC")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert scheduler.collect()["job_id"] == "777"


def test_flatten_gives_every_column_whatever_was_recorded():
    flat = scheduler.flatten(scheduler.collect(SLURM_ARRAY_TASK))
    assert flat["slurm_job_id"] == "81238" and flat["slurm_array_task_id"] == "4"
    assert flat["kubernetes_pod"] is None and flat["torchrun_rank"] is None
    assert list(flat) == list(scheduler.flatten({}))
    assert len(flat) == sum(len(names) for names in scheduler.FIELDS.values())


@pytest.mark.parametrize("env", [SLURM_ARRAY_TASK, K8S_POD, TORCHRUN, {}])
def test_result_is_json_text_safe(env):
    import json

    got = scheduler.collect(env)
    assert json.loads(json.dumps(got)) == got
