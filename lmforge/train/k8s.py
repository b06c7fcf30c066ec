"""Training on Kubernetes: an indexed Job with one pod per node, and a headless Service that gives
pod 0 a stable name for the c10d rendezvous.

:func:`render_job` builds the two objects (plain dicts, what ``kubectl apply`` reads); the pod of
completion index ``i`` is node ``i`` (``NODE_RANK``) and is reachable as ``<name>-<i>.<name>``, so
every agent meets at ``MASTER_ADDR = <name>-0.<name>``. :func:`submit` creates them with the
``kubernetes`` Python client when it is installed, else with ``kubectl create`` (an object of
that name that exists is refused, never changed); :class:`K8sJob` watches the Job, tails pod 0's
log (rank 0 reports) and deletes both objects on cancel.

No shell runs in the pod: the argv is the container's command. Kubernetes itself expands
``$(VAR)`` in commands and environment values; here only ``$MASTER_ADDR``, ``$NODE_RANK``,
``$NNODES``, ``$NPROC_PER_NODE`` and ``$JOB_COMPLETION_INDEX`` (also ``${...}``) in argv items
become such references, every other ``$`` is escaped, so nothing else is ever substituted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import yaml

from lmforge.errors import LmforgeError

# Variables set in every pod that an argv item may reference.
POD_VARS = ("MASTER_ADDR", "NODE_RANK", "NNODES", "NPROC_PER_NODE", "JOB_COMPLETION_INDEX")
_ARG_VAR_RE = re.compile(r"\$(?:\{(" + "|".join(POD_VARS) + r")\}|(" + "|".join(POD_VARS)
                         + r")(?![A-Za-z0-9_]))")
# A Service name (RFC 1035 label); pod hostnames <name>-<index> must also be labels (63 chars).
_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|K|M|G|T|P|E)?$")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
INSTANCE_LABEL = "app.kubernetes.io/instance"
CONTAINER = "trainer"
# How long poll() tolerates an unreachable API server before it gives up.
UNREACHABLE_GRACE_S = 300.0
_CALL_TIMEOUT_S = 60


def rendezvous_host(name: str) -> str:
    """The DNS name of pod 0 of job ``name`` (its hostname under the headless Service)."""
    return f"{name}-0.{name}"


def pod_arg(arg: str) -> str:
    """``arg`` for a container command: the pod variables become ``$(VAR)`` (Kubernetes expands
    them), every other ``$`` is doubled so that Kubernetes leaves it as it is."""
    parts, pos = [], 0
    for m in _ARG_VAR_RE.finditer(arg):
        parts.append(arg[pos:m.start()].replace("$", "$$"))
        parts.append(f"$({m.group(1) or m.group(2)})")
        pos = m.end()
    parts.append(arg[pos:].replace("$", "$$"))
    return "".join(parts)


def _check_name(name: str, nnodes: int) -> None:
    longest = f"{name}-{nnodes - 1}"
    if not _DNS_LABEL_RE.match(name) or len(longest) > 63:
        raise LmforgeError(f"k8s: job name {name!r} must be lower-case letters, digits and '-', "
                           f"start with a letter, and leave its pod names ({longest!r}) "
                           "within 63 characters")


def render_job(argv: Sequence[str], env: dict[str, str], *, name: str, image: str, nnodes: int,
               nproc_per_node: int, namespace: str = "default", gpus_per_node: int = 0,
               cpu: str | None = None, memory: str | None = None,
               service_account: str | None = None,
               volumes: dict[str, str] | None = None) -> list[dict]:
    """The headless Service and the indexed Job that run ``argv`` once per node on ``nnodes``
    pods (``completions = parallelism = nnodes``; one failed pod fails the Job, the asset's retry
    resumes from its checkpoint). ``cpu``/``memory`` are requests per pod (``memory`` also its
    limit), ``gpus_per_node`` its ``nvidia.com/gpu`` limit. ``volumes`` maps a mount path to a
    PersistentVolumeClaim: the artifact store, mounted where the config and data paths in
    ``argv``/``env`` point (the pods read the run's config and write its messages there)."""
    _check_name(name, nnodes)
    if not _DNS_LABEL_RE.match(namespace) or len(namespace) > 63:
        raise LmforgeError(f"k8s: namespace {namespace!r} is not a DNS label")
    if not argv:
        raise LmforgeError("k8s: the command to run is empty")
    if not image or any(c.isspace() for c in image):
        raise LmforgeError(f"k8s: image {image!r} is not an image reference")
    if nnodes < 1 or nproc_per_node < 1 or gpus_per_node < 0:
        raise LmforgeError(f"k8s: nnodes and nproc_per_node must be >= 1 and gpus_per_node >= 0, "
                           f"got {nnodes}, {nproc_per_node}, {gpus_per_node}")
    for what, qty in (("cpu", cpu), ("memory", memory)):
        if qty is not None and not _QUANTITY_RE.match(qty):
            raise LmforgeError(f"k8s: {what} {qty!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    if service_account is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                                     service_account):
        raise LmforgeError(f"k8s: service account {service_account!r} is not a DNS name")
    volumes = volumes or {}
    for mount, claim in volumes.items():
        if not mount.startswith("/") or mount.rstrip("/") in ("", "/dev/shm"):
            raise LmforgeError(f"k8s: volume mount path {mount!r} must be absolute (and not / or "
                               "/dev/shm)")
        if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", claim) or len(claim) > 253:
            raise LmforgeError(f"k8s: persistent volume claim {claim!r} is not a DNS name")
    ours = set(POD_VARS)
    bad = [k for k in env if not _ENV_NAME_RE.match(k) or k in ours]
    if bad:
        raise LmforgeError(f"k8s: environment variable {bad[0]!r} is not a name or is one the "
                           "pods set themselves")
    labels = {"app.kubernetes.io/name": "lmforge-train", INSTANCE_LABEL: name,
              "app.kubernetes.io/managed-by": "lmforge"}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    pod_env = [{"name": k, "value": str(v).replace("$", "$$")} for k, v in env.items()]
    pod_env += [
        {"name": "MASTER_ADDR", "value": rendezvous_host(name)},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}},
        {"name": "NNODES", "value": str(nnodes)},
        {"name": "NPROC_PER_NODE", "value": str(nproc_per_node)},
    ]
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    limits = {k: v for k, v in (("memory", memory),) if v is not None}
    if gpus_per_node:
        limits["nvidia.com/gpu"] = str(gpus_per_node)
    container: dict[str, Any] = {
        "name": CONTAINER, "image": image, "command": [pod_arg(a) for a in argv], "env": pod_env,
        # The ranks of one node share tensors through /dev/shm, which is 64 MiB by default.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]
        + [{"name": f"shared-{i}", "mountPath": mount} for i, mount in enumerate(volumes)],
    }
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,  # with the Service: pod i is <name>-i.<name>
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        + [{"name": f"shared-{i}", "persistentVolumeClaim": {"claimName": claim}}
           for i, claim in enumerate(volumes.values())],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": "None", "selector": {INSTANCE_LABEL: name},
                 # Pod 0 must resolve before it is Ready: the others rendezvous while it starts.
                 "publishNotReadyAddresses": True},
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {"completionMode": "Indexed", "completions": nnodes, "parallelism": nnodes,
                 "backoffLimit": 0,
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }
    return json.loads(json.dumps([service, job]))  # independent copies of the shared dicts


def to_yaml(specs: Iterable[dict]) -> str:
    """The objects as one multi-document YAML stream (``kubectl apply -f``)."""
    return yaml.safe_dump_all(list(specs), sort_keys=False)


# ---------------------------------------------------------------------------------- transports


class PythonClient:
    """The cluster through the ``kubernetes`` package (kubeconfig, or the pod's service account)."""

    def __init__(self):
        import kubernetes

        # As load_config(), but reading $KUBECONFIG now, not when kubernetes was imported.
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            if os.environ.get("KUBECONFIG") or os.path.exists(kubeconfig):
                kubernetes.config.load_kube_config(config_file=kubeconfig)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):  # in a pod: its service account
                kubernetes.config.load_incluster_config()
            else:
                raise LmforgeError("k8s: no Kubernetes configuration: no $KUBECONFIG or "
                                   "~/.kube/config, and not running in a pod")
        except kubernetes.config.ConfigException as e:
            raise LmforgeError(f"k8s: no Kubernetes configuration: {' '.join(str(e).split())}") from None
        self.api = kubernetes.client.ApiClient()
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self._api_exception = kubernetes.client.ApiException

    def _call(self, what: str, fn, *args, missing_ok: bool = False, **kwargs):
        try:
            return fn(*args, _request_timeout=_CALL_TIMEOUT_S, **kwargs)
        except self._api_exception as e:
            if missing_ok and e.status == 404:
                return None
            hint = " (one of that name exists: delete it or choose another name)" if e.status == 409 else ""
            raise LmforgeError(f"k8s: {what}: {e.status} {e.reason}{hint}") from None
        except Exception as e:  # urllib3 connection errors: one line, not a traceback
            raise LmforgeError(f"k8s: {what}: {' '.join(str(e).split())[:300]}") from None

    def create(self, spec: dict, namespace: str) -> None:
        create = (self.core.create_namespaced_service if spec["kind"] == "Service"
                  else self.batch.create_namespaced_job)
        self._call(f"create {spec['kind']} {spec['metadata']['name']}", create, namespace, spec)

    def get_job(self, name: str, namespace: str) -> dict | None:
        job = self._call(f"read job {name}", self.batch.read_namespaced_job, name, namespace,
                         missing_ok=True)
        return None if job is None else self.api.sanitize_for_serialization(job)

    def pods(self, name: str, namespace: str) -> list[dict]:
        pods = self._call(f"list pods of {name}", self.core.list_namespaced_pod, namespace,
                          label_selector=f"{INSTANCE_LABEL}={name}")
        return self.api.sanitize_for_serialization(pods).get("items", [])

    def logs(self, pod: str, namespace: str, since: float | None) -> str:
        kwargs = {"timestamps": True, "container": CONTAINER}
        if since is not None:  # a minute of overlap for clock skew; duplicates are dropped
            kwargs["since_seconds"] = max(1, math.ceil(time.time() - since) + 60)
        return self._call(f"logs of {pod}", self.core.read_namespaced_pod_log, pod, namespace,
                          **kwargs) or ""

    def delete(self, kind: str, name: str, namespace: str) -> None:
        """Delete a Job (foreground: its pods first) or a Service; one that is gone is fine."""
        if kind == "Job":
            self._call(f"delete job {name}", self.batch.delete_namespaced_job, name, namespace,
                       propagation_policy="Foreground", missing_ok=True)
        else:
            self._call(f"delete service {name}", self.core.delete_namespaced_service, name,
                       namespace, missing_ok=True)


class Kubectl:
    """The cluster through ``kubectl`` (its current context)."""

    def __init__(self):
        self.exe = shutil.which("kubectl")
        if self.exe is None:
            raise LmforgeError("k8s: neither the kubernetes Python package nor kubectl is "
                               "installed (pip install kubernetes, or put kubectl on PATH)")

    def _run(self, what: str, *args: str, stdin: str | None = None) -> str:
        try:
            proc = subprocess.run([self.exe, *args], input=stdin, capture_output=True, text=True,
                                  timeout=_CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LmforgeError(f"k8s: {what}: kubectl did not answer in {_CALL_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            raise LmforgeError(f"k8s: {what}: {lines[-1] if lines else f'kubectl exit {proc.returncode}'}")
        return proc.stdout

    def create(self, spec: dict, namespace: str) -> None:
        # create, not apply: an object of that name that exists is refused, never changed
        self._run(f"create {spec['kind']} {spec['metadata']['name']}", "create", "-n", namespace,
                  "-f", "-", stdin=to_yaml([spec]))

    def get_job(self, name: str, namespace: str) -> dict | None:
        out = self._run(f"get job {name}", "get", "job", name, "-n", namespace,
                        "--ignore-not-found", "-o", "json")
        return json.loads(out) if out.strip() else None

    def pods(self, name: str, namespace: str) -> list[dict]:
        out = self._run(f"get pods of {name}", "get", "pods", "-n", namespace, "-l",
                        f"{INSTANCE_LABEL}={name}", "-o", "json")
        return json.loads(out).get("items", [])

    def logs(self, pod: str, namespace: str, since: float | None) -> str:
        args = ["logs", pod, "-n", namespace, "-c", CONTAINER, "--timestamps"]
        if since is not None:  # whole seconds, a minute early; duplicates are dropped
            start = datetime.fromtimestamp(math.floor(since) - 60, tz=timezone.utc)
            args.append(f"--since-time={start.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return self._run(f"logs of {pod}", *args)

    def delete(self, kind: str, name: str, namespace: str) -> None:
        self._run(f"delete {kind} {name}", "delete", kind.lower(), name, "-n", namespace,
                  "--ignore-not-found", "--cascade=foreground", "--wait=false")


def client() -> PythonClient | Kubectl:
    """The Python client when it is installed, else kubectl; one line saying what is missing."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return Kubectl()
    return PythonClient()


# ---------------------------------------------------------------------------------- the job


def _log_time(stamp: str) -> tuple[int, int]:
    """A kubelet log timestamp (RFC 3339, up to nanoseconds, trailing zeros trimmed) as
    (seconds, nanoseconds): comparable, unlike the strings."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return int(seconds), int((frac + "000000000")[:9])


def new_log_lines(text: str, last: tuple[int, int] | None,
                  seen: int) -> tuple[list[str], tuple[int, int] | None, int]:
    """The lines of a timestamped log fetch (``kubectl logs --timestamps``) that come after
    ``last`` (a timestamp) and the ``seen`` lines already returned with exactly that timestamp;
    with the new ``last`` and ``seen``. The fetches overlap (a since-time is whole seconds, and
    clocks differ), so this is what makes each line come once."""
    new: list[str] = []
    count = 0
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        try:
            t = _log_time(stamp)
        except ValueError:  # not a timestamped line
            continue
        if last is not None and t < last:
            continue
        if t != last:
            last, seen, count = t, 0, 0
        count += 1
        if count <= seen:  # returned by an earlier call
            continue
        seen = count
        new.append(line)
    return new, last, seen


class K8sJob:
    """A submitted indexed Job: its state from the API, the log of its pod 0."""

    def __init__(self, name: str, namespace: str, api: PythonClient | Kubectl):
        self.id = name
        self.namespace = namespace
        self.api = api
        self.state: str | None = None
        self._code: int | None = None
        self._cancelled = False
        self._reachable_at = time.monotonic()
        self._pod0: str | None = None
        self._last: tuple[int, int] | None = None  # timestamp of the last line returned
        self._seen_at_last = 0  # lines returned with exactly that timestamp
        self._log_error: str | None = None  # the last error reading the log, said once

    def __repr__(self) -> str:
        return f"K8sJob(name={self.id}, namespace={self.namespace}, state={self.state})"

    def poll(self) -> int | None:
        """The Job's exit code once its pods are gone: 0 when Complete, the first failed
        container's code (else 1) when Failed, 143 once a cancelled Job is deleted; else None."""
        if self._code is not None:
            return self._code
        try:
            job = self.api.get_job(self.id, self.namespace)
        except LmforgeError:
            if time.monotonic() - self._reachable_at > UNREACHABLE_GRACE_S:
                raise
            return None
        self._reachable_at = time.monotonic()
        if job is None:
            if not self._cancelled:
                raise LmforgeError(f"k8s: job {self.id} in {self.namespace} was deleted by "
                                   "someone else")
            self.state, self._code = "Deleted", 128 + 15
            return self._code
        done = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []
                if c.get("status") == "True" and c.get("type") in ("Complete", "Failed")}
        if "Complete" in done:
            self.state, self._code = "Complete", 0
        elif "Failed" in done:
            self.state, self._code = "Failed", self._failed_code()
        else:
            self.state = "Deleting" if job["metadata"].get("deletionTimestamp") else "Active"
        return self._code

    def _failed_code(self) -> int:
        for pod in self.api.pods(self.id, self.namespace):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code:
                    return int(code)
        return 1

    def cancel(self) -> None:
        """Delete the Job (its pods first) and the Service; nothing to do once it ended."""
        if self._code is not None:
            return
        self._cancelled = True
        self.api.delete("Job", self.id, self.namespace)
        self.api.delete("Service", self.id, self.namespace)

    def read_new_log_lines(self) -> list[str]:
        """Pod 0's lines since the last call (rank 0 prints the progress); none before it runs.
        An API error is one line of its own (once), not the step's end: :meth:`poll` decides
        when the cluster has been away too long."""
        try:
            if self._pod0 is None:
                pods = [p for p in self.api.pods(self.id, self.namespace)
                        if (p["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION) == "0"
                        and (p.get("status") or {}).get("phase") not in (None, "Pending")]
                if not pods:
                    return []
                self._pod0 = pods[0]["metadata"]["name"]
            since = None if self._last is None else self._last[0] + self._last[1] / 1e9
            text = self.api.logs(self._pod0, self.namespace, since)
        except LmforgeError as e:
            said, self._log_error = (str(e) if str(e) != self._log_error else None), str(e)
            return [f"[lmforge] {said}"] if said and not self._cancelled else []
        self._log_error = None
        new, self._last, self._seen_at_last = new_log_lines(text, self._last, self._seen_at_last)
        return new


def submit(specs: list[dict], namespace: str) -> K8sJob:
    """Create the Service and the Job of :func:`render_job` in ``namespace``; the Job to watch."""
    jobs = [s for s in specs if s.get("kind") == "Job"]
    if len(jobs) != 1:
        raise LmforgeError("k8s: the specs must hold exactly one Job (render_job's output)")
    elsewhere = [s["metadata"].get("namespace") for s in specs
                 if s["metadata"].get("namespace") not in (None, namespace)]
    if elsewhere:
        raise LmforgeError(f"k8s: the specs are for namespace {elsewhere[0]!r}, not {namespace!r}")
    api = client()
    created: list[dict] = []
    try:
        for spec in sorted(specs, key=lambda spec: spec["kind"] == "Job"):  # the Service first
            api.create(spec, namespace)
            created.append(spec)
    except LmforgeError:  # nothing half-made left behind (and nothing that was there touched)
        for spec in created:
            with contextlib.suppress(LmforgeError):
                api.delete(spec["kind"], spec["metadata"]["name"], namespace)
        raise
    return K8sJob(jobs[0]["metadata"]["name"], namespace, api)
