#!/usr/bin/env python3
"""Lints and renders deploy/helm/strata with the real helm binary and inspects the objects.

For every values case it runs `helm template`, checks the rendered Kubernetes objects
(chart_checks.py) and writes, for the C++ test that loads them through the node's own parser
(tests/helm/rendered_config_test.cc), OUT/<case>/strata.yaml, env, args and expect. It also
renders values that must be refused, and runs the checks on deliberately broken copies of the
default rendering to prove each check can fail.

Exit status: 0 all checks passed, 1 a check failed, 77 skipped (only with STRATA_NO_HELM=1).
"""
import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, reported loudly
    print("check_chart: python3 yaml module missing (Debian package python3-yaml)", file=sys.stderr)
    sys.exit(1)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import chart_checks  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "strata"
EXAMPLES = CHART / "examples"
RELEASE, NAMESPACE = "kv", "inference"

# name -> (values files, --set arguments). Release "kv" in namespace "inference".
CASES = {
    "default": ([], []),
    "production": (["production.yaml"], []),
    # The node charges at most max_block_bytes a block: the index the chart counts grows.
    "production-1MiB-blocks": (["production.yaml"], ["store.config.max_block_bytes=1MiB"]),
    "minimal": (["minimal.yaml"], []),
    "vllm-gpu-worker": (["production.yaml", "vllm-gpu-worker.yaml"], []),
    # Workers that verify the nodes without a certificate of their own: a Secret of ca.crt.
    "gpu-worker-ca-only": (["production.yaml", "vllm-gpu-worker.yaml"],
                           ["gpuWorkers.tls.clientCert=false"]),
    "external-etcd": ([], ["etcd.bundled=false",
                           "etcd.external.endpoints={etcd-a.db:2379,etcd-b.db:2379}"]),
    "external-etcd-tls": ([], ["etcd.bundled=false", "etcd.external.endpoints={etcd-a.db:2379}",
                               "etcd.tls.enabled=true", "etcd.tls.clientSecretName=etcd-client"]),
    "static": ([], ["cluster.mode=static", "store.replicas=4"]),
    "zone-pod-label": ([], ["store.zone.source=podLabel"]),
    "zone-fixed": ([], ["store.zone.source=fixed", "store.zone.value=rack-7"]),
    "service-monitor": ([], ["metrics.serviceMonitor.enabled=true"]),
    "long-name": ([], ["fullnameOverride=" + "a" * 60]),
    # The longest settle the node takes (helm_node_config_test starts a node with it).
    "settle-at-ceiling": ([], ["cluster.rebalanceSettle=5m"]),
}

# Values the chart must refuse, with a phrase of the error.
REFUSED = [
    (["cluster.mode=single"], "store.replicas to 1"),
    (["cluster.replicas=5"], "exceeds store.replicas"),
    (["store.config.node_id=x"], "set per pod"),
    (["store.config.cluster_token=hunter2"], "a secret"),
    (["store.config.warm_bytes=32GiB"], "set by the chart from its values"),
    (["store.config.http_listen=0.0.0.0:9090"], "set by the chart from its values"),
    (["store.warm.size=8G"], "/store/warm/size"),  # values.schema.json pattern
    (["etcd.bundled=false"], "etcd.external.endpoints"),
    (["store.tls.enabled=true"], "store.tls.secretName"),
    (["store.cool.enabled=false", "store.cold.enabled=true"], "needs store.cool.enabled"),
    (["store.auth.mode=required"], "principalsSecret"),
    (["store.auth.mode=required", "store.auth.principalsSecret=p"], "clusterTokenSecret"),
    (["store.tls.enabled=true", "store.tls.secretName=t"], "clientCaSecretName"),
    (["store.tls.enabled=true", "store.tls.secretName=t", "store.tls.clientCaSecretName=c",
      "gpuWorkers.enabled=true", "gpuWorkers.image.repository=e", "gpuWorkers.image.tag=v1"],
     "gpuWorkers.tls.secretName"),
    (["store.zone.source=fixed"], "store.zone.value"),
    (["etcd.tls.enabled=true", "etcd.tls.serverSecretName=s"], "clientSecretName"),
    (["cluster.mode=gossip"], "/cluster/mode"),  # values.schema.json enum
    (["store.antiAffinity=never"], "antiAffinity"),
    (["store.ucx.lanes=65"], "/store/ucx/lanes"),  # values.schema.json maximum
    (["store.config.min_block_charge=4KiB"], "set by the chart from its values"),
    (["store.minBlockCharge=64K"], "/store/minBlockCharge"),  # values.schema.json pattern
    # values.schema.json pattern: the node refuses a settle over 5 minutes at start.
    (["cluster.rebalanceSettle=6m"], "/cluster/rebalanceSettle"),
    (["cluster.rebalanceSettle=301s"], "/cluster/rebalanceSettle"),
    # values.schema.json patterns and template checks: what the node refuses at start.
    (["cluster.etcdLease=999ms"], "/cluster/etcdLease"),
    (["cluster.etcdLease=0s"], "/cluster/etcdLease"),
    (["cluster.rebalanceInterval=99ms"], "/cluster/rebalanceInterval"),
    (["store.warm.highWatermarkPct=75"], "lowWatermarkPct 80: want below"),
    (["store.diskLowWatermarkPct=95"], "diskLowWatermarkPct 95: want below"),
    (["store.warm.size=8Mi"], "want at least max_block_bytes"),
    (["store.warm.size=64Mi", "store.config.max_block_bytes=128MiB"], "want at least"),
    (["store.cool.size=1Mi"], "under 1 MiB"),
    (["store.config.session_idel=10m"], "store.config.session_idel: not an option"),
    (["store.tls.enabled=true", "store.tls.secretName=t", "store.tls.clientCaSecretName=c",
      "store.tls.requireClientCert=true", "gpuWorkers.enabled=true",
      "gpuWorkers.image.repository=e", "gpuWorkers.image.tag=v1", "gpuWorkers.tls.secretName=w",
      "gpuWorkers.tls.clientCert=false"], "the store requires client certificates"),
]


def find_helm():
    if os.environ.get("STRATA_HELM"):
        return os.environ["STRATA_HELM"]
    got = subprocess.run(["bash", str(REPO / "scripts" / "get_helm.sh"), "--print"],
                         capture_output=True, text=True)
    sys.stderr.write(got.stderr)
    if got.returncode != 0 or not got.stdout.strip():
        return None
    return got.stdout.strip().splitlines()[-1]


def helm(helm_bin, *args):
    return subprocess.run([helm_bin, *args], capture_output=True, text=True)


def values_args(files, sets):
    out = []
    for f in files:
        out += ["-f", str(EXAMPLES / f)]
    for s in sets:
        out += ["--set", s]
    return out


def render(helm_bin, files, sets):
    r = helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             *values_args(files, sets))
    docs = [d for d in yaml.safe_load_all(r.stdout) if d] if r.returncode == 0 else []
    return r.returncode, docs, r.stderr


def simulate_pod_env(container, pod_name):
    """The container's environment as the kubelet would build it, with stand-in values."""
    env = {}
    field = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE,
             "spec.nodeName": "host-0", "status.podIP": "10.1.2.3"}
    for e in container.get("env", []):
        if "value" in e:
            v = str(e["value"])
            for k, known in env.items():  # $(VAR) refers to variables defined before
                v = v.replace(f"$({k})", known)
            env[e["name"]] = v
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            label = path.startswith("metadata.labels[")  # the zone label (podLabel)
            env[e["name"]] = field.get(path, "zone-a" if label else "")
        elif "secretKeyRef" in src:
            env[e["name"]] = "from-secret-" + src["secretKeyRef"]["name"]
        else:
            raise AssertionError(f"env {e['name']}: unexpected source {src}")
    return env


def command_line(container, env):
    """argv of the store node process and the variables the shell wrapper adds."""
    cmd = list(container.get("command", [])) + list(container.get("args", []))
    if cmd[:2] == ["/bin/sh", "-c"]:
        script = cmd[2]
        assert "$(cat /var/run/strata/zone)" in script, "shell wrapper without the zone file"
        env = dict(env, STRATA_ZONE="zone-a")
        cmd = shlex.split(script.split("exec ", 1)[1])
    return cmd, env


def write_node_inputs(out_dir, case, docs):
    """OUT/<case>/{strata.yaml,env,args,expect}: what rendered_config_test.cc parses."""
    sts = chart_checks.store_statefulset(docs)
    node = chart_checks.container(sts, "storenode")
    pod = sts["metadata"]["name"] + "-0"
    argv, env = command_line(node, simulate_pod_env(node, pod))
    assert argv[0] == "strata-storenode", argv
    config_path = argv[argv.index("--config") + 1]
    text = chart_checks.node_config_text(docs)
    d = out_dir / case
    d.mkdir(parents=True, exist_ok=True)
    (d / "strata.yaml").write_text(text)
    (d / "env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    (d / "args").write_text("".join(
        (str(d / "strata.yaml") if a == config_path else a) + "\n" for a in argv[1:]))
    cfg = yaml.safe_load(text)
    expect = {"node_id": pod, "zone": env.get("STRATA_ZONE", ""),
              "advertise_address": env.get("STRATA_ADVERTISE_ADDRESS", ""),
              "cluster_mode": cfg["cluster_mode"], "warm_bytes": cfg["warm_bytes"],
              "min_block_charge": cfg["min_block_charge"],
              "etcd_endpoints": cfg.get("etcd_endpoints", ""),
              "cluster_token": env.get("STRATA_CLUSTER_TOKEN", "")}
    (d / "expect").write_text("".join(f"{k}={v}\n" for k, v in expect.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="folder for the rendered node inputs")
    args = ap.parse_args()
    if os.environ.get("STRATA_NO_HELM") == "1":
        print("check_chart: SKIPPED (STRATA_NO_HELM=1)")
        return 77
    helm_bin = find_helm()
    if helm_bin is None:
        print("check_chart: FAILED: no helm binary (scripts/get_helm.sh could not fetch it); "
              "set STRATA_NO_HELM=1 to skip the chart tests deliberately", file=sys.stderr)
        return 1
    print("check_chart: " + helm(helm_bin, "version", "--short").stdout.strip())
    out_dir = pathlib.Path(args.out)
    shutil.rmtree(out_dir, ignore_errors=True)  # never leave an old rendering to be tested
    out_dir.mkdir(parents=True)
    failures = []

    for files in ([], ["minimal.yaml"], ["production.yaml"],
                  ["production.yaml", "vllm-gpu-worker.yaml"]):
        r = helm(helm_bin, "lint", "--strict", str(CHART), *values_args(files, []))
        label = "helm lint --strict " + (" ".join(files) or "(default values)")
        if r.returncode != 0 or "[WARNING]" in r.stdout or "[ERROR]" in r.stdout:
            failures.append(f"{label}: {r.stdout}{r.stderr}")
        else:
            print(f"ok   {label}")

    rendered = {}
    for case, (files, sets) in CASES.items():
        rc, docs, err = render(helm_bin, files, sets)
        if rc != 0:
            failures.append(f"{case}: helm template failed: {err}")
            continue
        rendered[case] = docs
        problems = chart_checks.check_case(case, docs, RELEASE, NAMESPACE)
        failures += [f"{case}: {p}" for p in problems]
        if not problems:
            print(f"ok   {case}: {len(docs)} objects pass every check")
        write_node_inputs(out_dir, case, docs)
    (out_dir / "cases.txt").write_text("".join(f"{c}\n" for c in rendered))
    if "default" in rendered:
        names = chart_checks.dashboard_metrics(rendered["default"])
        (out_dir / "dashboard_metrics.txt").write_text("".join(f"{n}\n" for n in names))

    for sets, phrase in REFUSED:
        rc, _, err = render(helm_bin, [], sets)
        if rc == 0 or phrase not in err:
            failures.append(f"refused {sets}: rc={rc}, want an error naming {phrase!r}: {err}")
        else:
            print(f"ok   refused {' '.join(sets)}")

    # Every check must be able to fail: broken copies of the default rendering (which must
    # pass them first; its problems are reported above).
    if "default" in rendered and not any(f.startswith("default: ") for f in failures):
        missed = [name for name, m in
                  chart_checks.mutation_self_test(rendered["default"], RELEASE, NAMESPACE) if m]
        failures += [f"self-test: the checks did not notice '{name}'" for name in missed]
        if not missed:
            print(f"ok   self-test: {len(chart_checks.MUTATIONS)} broken renderings each caught")

    if failures:
        print("\n".join(f"FAIL {f}" for f in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
