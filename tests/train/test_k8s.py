"""The Kubernetes backend's rendered objects (there is no cluster here): an indexed Job whose pod i
is node i and finds pod 0 under the headless Service, the torchrun rendezvous argv as the pods
will see it after Kubernetes' own $(VAR) expansion, the resources, valid names, and a round trip
through the kubernetes client's models (the API's field names and types) as an offline schema."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import yaml

from lmforge.errors import LmforgeError
from lmforge.train import k8s, launch

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def kube_expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container's command and env values (kubelet's
    third_party/forked/golang/expansion): $(VAR) of a defined VAR is replaced, $$ is $,
    anything else is kept."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    name = value[i + 2:end]
                    out.append(env[name] if name in env else f"$({name})")
                    i = end + 1
                    continue
        out.append(value[i])
        i += 1
    return "".join(out)


def pod_view(specs: list[dict], index: int) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of the pod with completion index ``index``, as it runs."""
    job = next(s for s in specs if s["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container["env"]:  # in order: a value may reference earlier ones
        if "value" in var:
            env[var["name"]] = kube_expand(var["value"], env)
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == f"metadata.annotations['{k8s.INDEX_ANNOTATION}']"
            env[var["name"]] = str(index)
    env["JOB_COMPLETION_INDEX"] = str(index)  # the Job controller adds it to indexed pods
    return [kube_expand(a, env) for a in container["command"]], env


NAME = "lmforge-pretrain-1a2b"
ODD = "it's \"q\" $(touch /pwned) $HOME $$ `x`"


def render(**kw) -> list[dict]:
    argv = launch.command("lmforge.train.pretrain", "/artifacts/run/config.json", 2, "torchrun",
                          nnodes=3, rdzv_endpoint=f"{k8s.rendezvous_host(NAME)}:29400",
                          rdzv_id=NAME)
    args = dict(name=NAME, image="registry.example/lmforge:1.0", nnodes=3, nproc_per_node=2)
    args.update(kw)
    return k8s.render_job(argv, {"HF_HUB_OFFLINE": "1", "DAGSTER_PIPES_CONTEXT": "eyJ4IjoxfQ==",
                                 "ODD": ODD}, **args)


def test_an_indexed_job_and_its_headless_service():
    service, job = render()
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert service["metadata"]["name"] == job["metadata"]["name"] == NAME
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"] == "default"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0  # one failed node fails the run; the retry resumes
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # pod i is <name>-i.<name>: the subdomain is the headless Service, which selects the pods
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert [c["name"] for c in pod["containers"]] == [k8s.CONTAINER]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/lmforge:1.0"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm"}
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert "serviceAccountName" not in pod and "resources" not in container


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_pod_is_a_node_that_meets_pod_0(index):
    argv, env = pod_view(render(), index)
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes=3"]
    assert "--nproc-per-node=2" in argv and "--rdzv-backend=c10d" in argv
    assert f"--rdzv-endpoint={NAME}-0.{NAME}:29400" in argv
    assert f"--rdzv-id={NAME}" in argv
    assert argv[-4:] == ["-m", "lmforge.train.pretrain", "--config", "/artifacts/run/config.json"]
    assert env["MASTER_ADDR"] == k8s.rendezvous_host(NAME) == f"{NAME}-0.{NAME}"
    assert env["NODE_RANK"] == str(index)
    assert (env["NNODES"], env["NPROC_PER_NODE"]) == ("3", "2")
    assert env["HF_HUB_OFFLINE"] == "1" and env["DAGSTER_PIPES_CONTEXT"] == "eyJ4IjoxfQ=="
    assert env["ODD"] == ODD  # Kubernetes substitutes nothing in it


def test_argv_references_to_the_pod_variables_expand_and_nothing_else():
    argv = ["train", "--master=$MASTER_ADDR:29400", "--rank=${NODE_RANK}", "--n=$NNODES",
            "$(id)", "$HOME", "$$", "$(MASTER_ADDR)", "$MASTER_ADDRESS", "$JOB_COMPLETION_INDEX"]
    specs = k8s.render_job(argv, {}, name="t", image="i", nnodes=2, nproc_per_node=1)
    seen, _ = pod_view(specs, 1)
    assert seen == ["train", "--master=t-0.t:29400", "--rank=1", "--n=2", "$(id)", "$HOME", "$$",
                    "$(MASTER_ADDR)", "$MASTER_ADDRESS", "1"]


def test_resources_gpus_and_service_account():
    job = render(cpu="16", memory="64Gi", gpus_per_node=2, service_account="trainer",
                 namespace="ml")[1]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "16", "memory": "64Gi"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}
    assert pod["serviceAccountName"] == "trainer"
    assert job["metadata"]["namespace"] == "ml"
    only_gpu = render(gpus_per_node=8)[1]["spec"]["template"]["spec"]["containers"][0]
    assert only_gpu["resources"] == {"limits": {"nvidia.com/gpu": "8"}}


def test_the_artifact_store_is_mounted_from_a_claim():
    pod = render(volumes={"/artifacts": "lmforge-store"})[1]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert {mounts[n]: c for n, c in claims.items()} == {"/artifacts": "lmforge-store"}
    for bad, message in (({"artifacts": "c"}, "must be absolute"), ({"/dev/shm": "c"}, "absolute"),
                         ({"/a": "Bad_Claim"}, "not a DNS name")):
        with pytest.raises(LmforgeError, match=message):
            render(volumes=bad)


def test_every_name_is_valid_dns():
    specs = render(nnodes=12)
    job = specs[1]
    hostnames = [f"{NAME}-{i}" for i in range(job["spec"]["completions"])]
    names = [s["metadata"]["name"] for s in specs] + hostnames
    pod = job["spec"]["template"]["spec"]
    names += [c["name"] for c in pod["containers"]] + [v["name"] for v in pod["volumes"]]
    for n in names:
        assert DNS_LABEL.match(n) and len(n) <= 63, n
    for labels in (s["metadata"]["labels"] for s in specs):
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values())
    longest = "a" * 60
    k8s.render_job(["x"], {}, name=longest, image="i", nnodes=10, nproc_per_node=1)  # a-9: 62
    with pytest.raises(LmforgeError, match="within 63 characters"):
        k8s.render_job(["x"], {}, name=longest + "b", image="i", nnodes=100, nproc_per_node=1)


@pytest.mark.parametrize("kw, message", [
    ({"name": "Train_1"}, "lower-case letters"),
    ({"name": "1train"}, "start with a letter"),
    ({"name": "train-"}, "lower-case letters"),
    ({"namespace": "My NS"}, "not a DNS label"),
    ({"image": ""}, "not an image reference"),
    ({"nnodes": 0}, "must be >= 1"),
    ({"nproc_per_node": 0}, "must be >= 1"),
    ({"gpus_per_node": -1}, "gpus_per_node >= 0"),
    ({"cpu": "lots"}, "not a Kubernetes quantity"),
    ({"memory": "64 GB"}, "not a Kubernetes quantity"),
    ({"service_account": "Bad Account"}, "not a DNS name"),
])
def test_bad_input_is_one_line(kw, message):
    with pytest.raises(LmforgeError, match=message) as e:
        render(**kw)
    assert "\n" not in str(e.value)


def test_env_names_are_checked():
    for env in ({"MASTER_ADDR": "elsewhere"}, {"A-B": "1"}, {"NODE_RANK": "0"}):
        with pytest.raises(LmforgeError, match="pods set themselves"):
            k8s.render_job(["x"], env, name="t", image="i", nnodes=1, nproc_per_node=1)
    with pytest.raises(LmforgeError, match="command to run is empty"):
        k8s.render_job([], {}, name="t", image="i", nnodes=1, nproc_per_node=1)


def test_yaml_is_what_kubectl_reads():
    specs = render(cpu="500m", memory="2Gi")
    text = k8s.to_yaml(specs)
    assert text.count("\n---\n") == 1
    assert list(yaml.safe_load_all(text)) == specs


def test_the_objects_match_the_kubernetes_api_models():
    """An offline schema check: the kubernetes client's V1Service / V1Job models take every field
    (a misspelt or misplaced key would be dropped, a wrong type changed, a missing required field
    refused) and give back exactly the rendered object."""
    kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes package (pip install "
                                     "kubernetes) holds the API models this check uses")
    api = kubernetes.client.ApiClient()
    for spec in render(cpu="8", memory="32Gi", gpus_per_node=4, service_account="sa",
                       volumes={"/artifacts": "store", "/data": "data"}):
        model = api._ApiClient__deserialize(spec, f"V1{spec['kind']}")
        assert api.sanitize_for_serialization(model) == spec
    broken = render()[1]
    broken["spec"]["template"]["spec"]["containers"][0]["envv"] = broken["spec"]["template"][
        "spec"]["containers"][0].pop("env")
    assert api.sanitize_for_serialization(api._ApiClient__deserialize(broken, "V1Job")) != broken


def test_repeated_log_fetches_give_each_line_once():
    stamp = "2026-12-01T10:00:0{}Z"
    first = "\n".join([f"{stamp.format('0.5')} step 1", "2026-12-01T10:00:00.500000001Z step 2",
                       "2026-12-01T10:00:00.500000001Z step 3"]) + "\n"
    lines, last, seen = k8s.new_log_lines(first, None, 0)
    assert lines == ["step 1", "step 2", "step 3"]
    # the next fetch starts a minute early: the same lines again, then a new one at the same
    # nanosecond, then later ones; a line without a timestamp (kubectl's warning) is skipped
    second = first + "2026-12-01T10:00:00.500000001Z step 4\nnot a log line\n" \
        "2026-12-01T10:00:01Z step 5\n"
    lines, last, seen = k8s.new_log_lines(second, last, seen)
    assert lines == ["step 4", "step 5"]
    assert k8s.new_log_lines(second, last, seen)[0] == []


def test_submitting_without_a_cluster_is_one_line(monkeypatch, tmp_path):
    specs = render()
    empty = tmp_path / "kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(empty))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if importlib.util.find_spec("kubernetes") is not None:  # the Python client's path
        with pytest.raises(LmforgeError, match="no Kubernetes configuration") as e:
            k8s.submit(specs, "default")
        assert "\n" not in str(e.value)
    with pytest.raises(LmforgeError, match="for namespace 'default', not 'ml'"):
        k8s.submit(specs, "ml")
    # the kubectl path (this machine has kubectl; its empty config points nowhere)
    if k8s.shutil.which("kubectl"):
        with pytest.raises(LmforgeError, match="k8s: create Service lmforge-pretrain-1a2b: .*") as e:
            k8s.Kubectl().create(specs[0], "default")
        assert "\n" not in str(e.value)
    # neither the package nor kubectl
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LmforgeError, match="neither the kubernetes Python package nor kubectl"):
        k8s.submit(specs, "default")


def test_an_unreachable_api_server_is_waited_for_then_one_line(monkeypatch, tmp_path):
    """A Job whose API server stops answering (nothing listens on its port): poll() keeps waiting
    for the grace period, the log reader says the error once, then poll() gives up in one line."""
    pytest.importorskip("kubernetes", reason="the Python client path needs the kubernetes package")
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LmforgeError, match="k8s: create Service t: .*[Cc]onnection refused") as e:
        k8s.submit(k8s.render_job(["x"], {}, name="t", image="i", nnodes=1, nproc_per_node=1),
                   "default")
    assert "\n" not in str(e.value)
    job = k8s.K8sJob("t", "default", k8s.client())
    assert job.poll() is None
    said = job.read_new_log_lines()
    assert len(said) == 1 and said[0].startswith("[lmforge] k8s: list pods of t:")
    assert job.read_new_log_lines() == []  # the same error is not repeated
    monkeypatch.setattr(k8s, "UNREACHABLE_GRACE_S", 0.0)
    with pytest.raises(LmforgeError, match="k8s: read job t: ") as e:
        job.poll()
    assert "\n" not in str(e.value)
