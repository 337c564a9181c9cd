"""k8s/: every overlay renders, validates against the Kubernetes and KubeRay schemas, and
keeps its security properties. Offline: kubectl's kustomize renders, nothing is applied."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ON_CI, REPO

K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
# The KubeRay project's CRDs live beside the repository (not copied into it); a clone
# elsewhere points at them with RUNYARD_KUBERAY_SCHEMAS.
KUBERAY_SCHEMAS = Path(os.environ.get("RUNYARD_KUBERAY_SCHEMAS") or REPO.parent / "shared" / "schemas" / "kuberay")
CLUSTER = "runyard"
RAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
RAY_PORTS = (8265, 10001)  # dashboard / Jobs API, Ray client
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|STORE_URI$")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def need(found, what: str):
    """A missing tool fails under CI and skips elsewhere, with the reason."""
    if not found:
        (pytest.fail if ON_CI else pytest.skip)(f"{what} is missing")
    return found


@cache
def _render(path: Path) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return ()
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def validator():
    try:
        import kubernetes_validate
    except ImportError:
        need(False, "kubernetes-validate (the dev extra)")
    return kubernetes_validate


def render(overlay: str) -> tuple[dict, ...]:
    need(shutil.which("kubectl"), "kubectl (apt-get install kubectl)")
    return _render(K8S / "overlays" / overlay)


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind: str, name: str) -> dict:
    [found] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_specs(objs):
    """(where, pod spec, extra labels the operator adds) for every pod the manifests describe."""
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Deployment":
            yield name, o["spec"]["template"]["spec"], {}
        elif o["kind"] == "RayCluster":
            head = {"ray.io/cluster": o["metadata"]["name"], "ray.io/node-type": "head"}
            yield f"{name} head", o["spec"]["headGroupSpec"]["template"]["spec"], head
            for g in o["spec"]["workerGroupSpecs"]:
                worker = {"ray.io/cluster": o["metadata"]["name"], "ray.io/node-type": "worker"}
                yield f"{name} group {g['groupName']}", g["template"]["spec"], worker
        elif o["kind"] == "RayJob":
            yield f"{name} submitter", o["spec"]["submitterPodTemplate"]["spec"], {}


def containers(objs):
    """(where, container, pod spec) for every container, the autoscaler sidecar included."""
    for where, spec, _ in pod_specs(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where} {c['name']}", c, spec
    for rc in of_kind(objs, "RayCluster"):
        if rc["spec"].get("enableInTreeAutoscaling"):
            yield "autoscaler", rc["spec"]["autoscalerOptions"], {}


def head_pod_labels(objs) -> dict:
    rc = one(objs, "RayCluster", CLUSTER)
    labels = rc["spec"]["headGroupSpec"]["template"].get("metadata", {}).get("labels", {})
    return {**labels, "ray.io/cluster": CLUSTER, "ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


# --------------------------------------------------------------------------- rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part_in_its_namespace(overlay):
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "NetworkPolicy", "ServiceAccount", "Role",
            "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "Namespace"} <= kinds
    assert {d["metadata"]["name"] for d in of_kind(objs, "Deployment")} == {"runyard-mlflow", "runyard-serve"}
    namespace = f"runyard-{overlay}"
    assert one(objs, "Namespace", namespace)
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == namespace, f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_against_kubernetes_1_32(overlay):
    kubernetes_validate = validator()
    checked = 0
    for o in render(overlay):
        if o["kind"] in RAY_KINDS:
            continue
        # strict: a field the API does not know is an error, not silently dropped
        assert kubernetes_validate.validate(o, "1.32.0", strict=True) == "1.32"
        checked += 1
    assert checked >= 15


def test_kubernetes_validation_catches_a_bad_object():
    kubernetes_validate = validator()
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": "http"}], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, "1.32.0", strict=True)


@cache
def crd_schema(kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 1 MB files: libyaml when it is there
    crd = yaml.load((KUBERAY_SCHEMAS / RAY_KINDS[kind]).read_text(), Loader=loader)
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert version["name"] == "v1"
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(node, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would prune: keys a structural schema does not declare."""
    found = []
    if isinstance(node, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in node.items():
            if props is not None and key in props:
                found += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}")
    elif isinstance(node, list) and "items" in schema:
        for i, item in enumerate(node):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def ray_schema_errors(obj: dict) -> list[str]:
    import jsonschema

    schema = crd_schema(obj["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    return errors + [f"{p}: unknown field" for p in unknown_fields(obj, schema)]


def need_kuberay_schemas():
    need(KUBERAY_SCHEMAS.is_dir() and all((KUBERAY_SCHEMAS / f).is_file() for f in RAY_KINDS.values()),
         f"the KubeRay CRD schemas ({KUBERAY_SCHEMAS})")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_objects_validate_against_the_crds(overlay):
    need_kuberay_schemas()
    objs = render(overlay)
    ray_objs = [o for o in objs if o["kind"] in RAY_KINDS]
    assert {o["kind"] for o in ray_objs} == set(RAY_KINDS)
    for o in ray_objs:
        assert o["apiVersion"] == "ray.io/v1"
        assert ray_schema_errors(o) == [], f"{o['kind']}/{o['metadata']['name']}"


def test_crd_validation_catches_a_bad_raycluster():
    need_kuberay_schemas()
    rc = json.loads(json.dumps(one(render("dev"), "RayCluster", CLUSTER)))
    del rc["spec"]["workerGroupSpecs"][0]["groupName"]            # required
    rc["spec"]["authOptions"]["mode"] = "password"                 # not in the enum
    rc["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"        # a typo the API would drop
    errors = "\n".join(ray_schema_errors(rc))
    assert "'groupName' is a required property" in errors
    assert "'password' is not one of" in errors
    assert ".spec.headGroupSpec.serviceTyp: unknown field" in errors


# --------------------------------------------------------------------------- security properties


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_inlined(overlay):
    objs = render(overlay)
    assert [o for o in of_kind(objs, "Secret") if o.get("data") or o.get("stringData")] == []
    for where, c, _ in containers(objs):
        for env in c.get("env", []):
            if SECRET_LIKE.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} not from a Secret"
    for cm in of_kind(objs, "ConfigMap"):
        assert not [k for k in cm.get("data", {}) if SECRET_LIKE.search(k.upper())], cm["metadata"]["name"]
    assert [s for o in objs for s in strings(o) if URL_WITH_PASSWORD.search(s)] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_is_reachable_only_inside_the_cluster(overlay):
    objs = render(overlay)
    assert of_kind(objs, "Ingress") == []
    for svc in of_kind(objs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    rc = one(objs, "RayCluster", CLUSTER)
    head = rc["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert rc["spec"]["authOptions"]["mode"] == "token"
    # the submitter authenticates with the same token Secret the cluster uses
    job = one(objs, "RayJob", "runyard-train")
    [sub] = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    token = {e["name"]: e for e in sub["env"]}["RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == rc["spec"]["authOptions"]["secretName"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": CLUSTER}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_without_privilege_escalation(overlay):
    seen = 0
    for where, c, pod in containers(render(overlay)):
        ctx, pod_ctx = c.get("securityContext", {}), pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1000)) != 0, where
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert not ctx.get("privileged", False), where
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
        seen += 1
    assert seen >= 7  # head, 2 worker groups, autoscaler, submitter, mlflow, serve


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_requests_what_it_limits(overlay):
    for where, c, _ in containers(render(overlay)):
        req, lim = c["resources"].get("requests", {}), c["resources"].get("limits", {})
        assert {"cpu", "memory"} <= set(req), where
        assert req == lim, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_groups_autoscale_and_the_gpu_group_gets_gpus(overlay):
    rc = one(render(overlay), "RayCluster", CLUSTER)
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"]
    [gpu] = groups["gpu"]["template"]["spec"]["containers"]
    assert int(gpu["resources"]["requests"]["nvidia.com/gpu"]) >= 1
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"]
    [cpu] = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu["resources"]["requests"]


def admitted_peers(policies, pod_labels: dict, port: int) -> list[dict] | None:
    """The `from` peers that may reach ``port`` on a pod; None: no policy isolates it."""
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return None
    peers = []
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port and pp.get("protocol", "TCP") == "TCP" for pp in ports):
                continue
            peers += rule.get("from") or [{"anywhere": True}]
    return peers


def in_namespace(peer: dict) -> bool:
    return set(peer) == {"podSelector"}


def kuberay_operator(peer: dict) -> bool:
    ns = peer.get("namespaceSelector", {})
    return (set(peer) == {"namespaceSelector", "podSelector"} and set(ns) == {"matchLabels"}
            and set(ns["matchLabels"]) == {"kubernetes.io/metadata.name"}
            and peer["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "kuberay-operator")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_the_ray_head(overlay):
    objs = render(overlay)
    policies = of_kind(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    head = head_pod_labels(objs)
    for port in RAY_PORTS:
        peers = admitted_peers(policies, head, port)
        assert peers, f"port {port}: no policy admits anyone (or none selects the head)"
        assert [p for p in peers if not (in_namespace(p) or kuberay_operator(p))] == [], port
        assert any(in_namespace(p) and p["podSelector"] == {} for p in peers), port
    # other ports of the head (GCS, raylet, object manager): Ray's own pods only
    peers = admitted_peers(policies, head, 6379)
    assert peers and all(in_namespace(p) and selects(p["podSelector"], {"ray.io/cluster": CLUSTER})
                         and not selects(p["podSelector"], {}) for p in peers)
    # an unrelated pod of another app is isolated as well
    assert admitted_peers(policies, {"app": "other"}, 8265) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(overlay):
    objs = render(overlay)
    assert of_kind(objs, "ClusterRole") == [] and of_kind(objs, "ClusterRoleBinding") == []
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objs, "ServiceAccount")}
    for role in of_kind(objs, "Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {field}"
            assert not {"create", "delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert not {"secrets", "roles", "rolebindings", "pods/exec"} & set(rule["resources"])
    for rb in of_kind(objs, "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role"
        assert all(s["kind"] == "ServiceAccount" and s["name"] in accounts for s in rb["subjects"])
    with_token = []
    for where, spec, _ in pod_specs(objs):
        sa = spec.get("serviceAccountName")
        assert sa in accounts, f"{where}: service account {sa!r} not in the manifests"
        if spec.get("automountServiceAccountToken", accounts[sa].get("automountServiceAccountToken", True)):
            with_token.append(where)
    assert with_token == [f"RayCluster/{CLUSTER} head"]  # the autoscaler; nobody else calls the API


# --------------------------------------------------------------------------- wiring


def env_of(container: dict, configmaps: dict) -> dict:
    """name -> literal value or ('secret'|'configmap', name, key), envFrom ConfigMaps included."""
    env = {}
    for ref in container.get("envFrom", []):
        env.update(configmaps[ref["configMapRef"]["name"]]["data"])
    for e in container.get("env", []):
        src = e.get("valueFrom", {})
        if "secretKeyRef" in src:
            env[e["name"]] = ("secret", src["secretKeyRef"]["name"], src["secretKeyRef"]["key"])
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
        else:
            env[e["name"]] = e.get("value")
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runyard_pods_get_the_shared_tracking_server_and_storage(overlay):
    from runyard.config import ENV_SETTINGS

    objs = render(overlay)
    configmaps = {cm["metadata"]["name"]: cm for cm in of_kind(objs, "ConfigMap")}
    svc = one(objs, "Service", "runyard-mlflow")
    tracking = f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    rc = one(objs, "RayCluster", CLUSTER)
    runyard_pods = [c for where, c, _ in containers(objs) if where.startswith(f"RayCluster/{CLUSTER}")
                    and where != "autoscaler"] + one(objs, "Deployment", "runyard-serve")["spec"]["template"][
                        "spec"]["containers"]
    assert len(runyard_pods) == 4
    for c in runyard_pods:
        env = env_of(c, configmaps)
        assert env["MLFLOW_TRACKING_URI"] == tracking
        assert env["MLFLOW_TRACKING_USERNAME"][:2] == ("secret", "runyard-mlflow-client")
        assert env["MLFLOW_TRACKING_PASSWORD"][:2] == ("secret", "runyard-mlflow-client")
        assert env["RUNYARD_ARTIFACT_ROOT"].startswith("s3://")
        assert {"RUNYARD_ARTIFACT_ROOT", "RUNYARD_STORAGE_PATH"} <= set(env) and set(ENV_SETTINGS) <= set(env)
    # the storage path is on the volume every Ray node mounts
    storage = configmaps["runyard-env"]["data"]["RUNYARD_STORAGE_PATH"]
    for where, spec, _ in pod_specs([rc]):
        [mount] = [m for c in spec["containers"] for m in c["volumeMounts"] if storage.startswith(m["mountPath"])]
        [vol] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert vol["persistentVolumeClaim"]["claimName"] == "runyard-shared", where
    assert one(objs, "PersistentVolumeClaim", "runyard-shared")["spec"]["accessModes"] == ["ReadWriteMany"]
    dvc = configmaps["runyard-dvc"]["data"]["config"]
    assert "url = s3://" in dvc and "remote = storage" in dvc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_runs_with_auth_and_serving_speaks_the_scoring_protocol(overlay):
    objs = render(overlay)
    [mlflow] = one(objs, "Deployment", "runyard-mlflow")["spec"]["template"]["spec"]["containers"]
    assert mlflow["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in mlflow["args"]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "runyard-mlflow-db"
    [serve] = one(objs, "Deployment", "runyard-serve")["spec"]["template"]["spec"]["containers"]
    cmd = serve["command"] + serve["args"]
    assert cmd[:2] == ["runyard", "serve"] and re.fullmatch(r"\w+@\w+", cmd[2])
    port = int(cmd[cmd.index("--port") + 1])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert serve["ports"][0]["containerPort"] == port
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ping"
    svc = one(objs, "Service", "runyard-serve")
    assert svc["spec"]["ports"][0]["targetPort"] in (port, serve["ports"][0]["name"])
    # the job registers the model serving loads, under the alias runyard gives it
    model, alias = cmd[2].split("@")
    entry = one(objs, "RayJob", "runyard-train")["spec"]["entrypoint"]
    assert f"register@{model}" in entry
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert model in params["experiments"] and alias == params["mlflow"]["champion_alias"]


def documented_secrets() -> dict[str, set[str]]:
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        m = re.search(r"create secret generic ([\w-]+)(.*)", line)
        if m:
            found[m.group(1)] = set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", m.group(2)))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_referenced_is_created_by_the_readme(overlay):
    objs = render(overlay)
    refs = set()
    for _, c, _ in containers(objs):
        for e in c.get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                refs.add((ref["name"], ref["key"]))
    for _, spec, _ in pod_specs(objs):
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs |= {(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]}
    rc = one(objs, "RayCluster", CLUSTER)
    refs.add((rc["spec"]["authOptions"]["secretName"], "auth_token"))
    docs = documented_secrets()
    assert {name for name, _ in refs} == set(docs)
    assert [r for r in refs if r[1] not in docs[r[0]]] == []


def test_prod_is_bigger_than_dev_and_pins_a_release():
    dev, prod = (one(render(o), "RayCluster", CLUSTER) for o in OVERLAYS)
    for d, p in zip(dev["spec"]["workerGroupSpecs"], prod["spec"]["workerGroupSpecs"], strict=True):
        assert p["maxReplicas"] > d["maxReplicas"], p["groupName"]
    cpu = lambda rc: rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]  # noqa: E731
    assert int(cpu(prod)) > int(cpu(dev))
    tags = {c["image"].rsplit(":", 1)[1] for _, c, _ in containers(render("prod")) if "image" in c}
    assert len(tags) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", tags.pop())  # one release for every Ray node


# --------------------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (K8S / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_pins_cpu_torch_first_and_runs_as_non_root():
    steps = dockerfile_instructions()
    runs = [i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg]
    torch = [i for i in runs if "torch==2.13.0" in steps[i][1]]
    project = [i for i in runs if re.search(r"pip install \.(\s|$|\[)", steps[i][1])]
    assert torch and project and torch[0] < project[0]
    assert any(op == "ARG" and "download.pytorch.org/whl/cpu" in arg for op, arg in steps)  # CPU by default
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the Ray containers run as that user: the manifests' runAsUser matches
    assert users[-1].split(":")[0] == "1000"


def test_dockerfile_copies_only_existing_files_the_dockerignore_lets_through():
    ignore = [ln.strip() for ln in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*"  # an allow-list: no venv, data, models or mlruns in the context
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for op, arg in dockerfile_instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        for src in arg.split()[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert any(src == a or src.startswith(a + "/") for a in allowed), f"COPY {src}: dockerignored"
