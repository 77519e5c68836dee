"""Checks on the Kubernetes objects `helm template` renders from deploy/helm/strata.

check_case(case, docs, ...) returns a list of problems (empty: all good); MUTATIONS are broken
copies of a rendering that the checks must each notice (mutation_self_test).
"""
import copy
import json
import re

import yaml

# What each values case of check_chart.CASES must render.
BASE = dict(mode="etcd", etcd="bundled", etcd_tls=False, anti="required", zone="nodeLabel",
            pdb=True, service_monitor=False, cold=False, rdma=False, gpu=False, dashboard=True,
            replicas=3, auth=False, tls=False, cool_class="local-nvme", settle=None,
            worker_cert=True)
EXPECT = {
    "default": BASE,
    "production": dict(BASE, etcd_tls=True, service_monitor=True, cold=True, rdma=True,
                       replicas=6, auth=True, tls=True),
    "production-1MiB-blocks": dict(BASE, etcd_tls=True, service_monitor=True, cold=True,
                                   rdma=True, replicas=6, auth=True, tls=True),
    "minimal": dict(BASE, mode="single", etcd=None, anti="preferred", zone="none", pdb=False,
                    dashboard=False, replicas=1, cool_class=None),
    "vllm-gpu-worker": dict(BASE, etcd_tls=True, service_monitor=True, cold=True, rdma=True,
                            replicas=6, auth=True, tls=True, gpu=True),
    "gpu-worker-ca-only": dict(BASE, etcd_tls=True, service_monitor=True, cold=True, rdma=True,
                               replicas=6, auth=True, tls=True, gpu=True, worker_cert=False),
    "external-etcd": dict(BASE, etcd=["etcd-a.db:2379", "etcd-b.db:2379"]),
    "external-etcd-tls": dict(BASE, etcd=["etcd-a.db:2379"], etcd_tls=True),
    "static": dict(BASE, mode="static", etcd=None, replicas=4),
    "zone-pod-label": dict(BASE, zone="podLabel"),
    "zone-fixed": dict(BASE, zone="fixed"),
    "service-monitor": dict(BASE, service_monitor=True),
    "long-name": BASE,
    "settle-at-ceiling": dict(BASE, settle="5m"),
}
DASHBOARD_NEEDS = {  # what the issue asks the dashboard to show -> a metric it must query
    "tier usage": "strata_tier_used_bytes", "hit ratio": "strata_lookup_blocks_total",
    "evictions": "strata_evictions_total", "latency": "strata_op_latency_seconds_bucket",
    "transfer GB/s": "strata_transfer_bytes_total"}
UNITS = {"": 1, "B": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
         "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def size_bytes(text):
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", str(text).strip())
    if not m or m.group(2) not in UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text).strip())
    scale = {None: 0.001, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return int(m.group(1)) * scale


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def component(doc):
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def store_statefulset(docs):
    found = [d for d in of_kind(docs, "StatefulSet") if component(d) == "store"]
    assert len(found) == 1, f"want one store StatefulSet, got {len(found)}"
    return found[0]


def container(workload, name):
    spec = workload["spec"]["template"]["spec"]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['metadata']['name']}: no container {name}")


def node_config_text(docs):
    cms = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    assert len(cms) == 1, "want one <release>-config ConfigMap"
    return cms[0]["data"]["strata.yaml"]


def dashboard_metrics(docs):
    names = set()
    for cm in of_kind(docs, "ConfigMap"):
        for text in cm.get("data", {}).values():
            if '"panels"' in text:
                for p in json.loads(text)["panels"]:
                    for t in p.get("targets", []):
                        names |= set(re.findall(r"\bstrata_[a-z0-9_]+", t["expr"]))
    return sorted(names)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def mounted_source(pod_spec, c, path):
    """(volume, relative path) of the mount of `c` that holds file `path`, or (None, None)."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    if best is None:
        return None, None
    rel = path[len(best["mountPath"].rstrip("/")):].lstrip("/") or best.get("subPath", "")
    vols = {v["name"]: v for v in pod_spec.get("volumes", [])}
    return vols.get(best["name"], {"name": best["name"]}), rel


class Checker:
    def __init__(self, case, docs, release, namespace):
        self.case, self.docs, self.ns = case, docs, namespace
        self.want = EXPECT[case]
        self.problems = []

    def expect(self, ok, what):
        if not ok:
            self.problems.append(what)
        return ok

    def run(self):
        try:
            self.sts = store_statefulset(self.docs)
            self.pod = self.sts["spec"]["template"]["spec"]
            self.node = container(self.sts, "storenode")
            self.cfg = yaml.safe_load(node_config_text(self.docs))
        except (AssertionError, KeyError) as e:
            return [f"basic structure: {e}"]
        for check in (self.names, self.kinds, self.secrets_not_inlined, self.services, self.probes,
                      self.resources, self.placement, self.shutdown, self.volumes,
                      self.config_file, self.identity, self.etcd, self.pdb, self.monitoring,
                      self.client_config, self.gpu_workers):
            try:
                check()
            except (AssertionError, KeyError, IndexError, TypeError, ValueError) as e:
                self.problems.append(f"{check.__name__}: {type(e).__name__} {e}")
        return self.problems

    def names(self):
        # Kubernetes refuses a Service name over 63 characters, and a StatefulSet's over 52
        # (its pods' controller-revision-hash label adds 11) — after `helm template` passed.
        for d in self.docs:
            name, kind = d["metadata"]["name"], d["kind"]
            limit = 52 if kind == "StatefulSet" else 63
            self.expect(len(name) <= limit, f"{kind} {name}: {len(name)} characters, over {limit}")

    def kinds(self):
        kinds = {d["kind"] for d in self.docs}
        for k in ("StatefulSet", "Service", "ConfigMap", "ServiceAccount"):
            self.expect(k in kinds, f"no {k} rendered")
        self.expect(self.sts["spec"]["replicas"] == self.want["replicas"],
                    f"store replicas {self.sts['spec']['replicas']}, want {self.want['replicas']}")

    def secrets_not_inlined(self):
        self.expect(not of_kind(self.docs, "Secret"), "the chart renders a Secret (must reference)")
        self.expect("cluster_token" not in self.cfg, "cluster_token inlined in strata.yaml")
        text = yaml.safe_dump_all(self.docs)
        self.expect("PRIVATE KEY" not in text and "hunter2" not in text, "key material inlined")
        for e in self.node.get("env", []):
            if e["name"] == "STRATA_CLUSTER_TOKEN":
                self.expect("secretKeyRef" in e.get("valueFrom", {}),
                            "STRATA_CLUSTER_TOKEN not from a secretKeyRef")
        if self.want["auth"]:
            self.expect(any(e["name"] == "STRATA_CLUSTER_TOKEN" for e in self.node.get("env", [])),
                        "auth case without STRATA_CLUSTER_TOKEN from a Secret")

    def services(self):
        labels = self.sts["spec"]["template"]["metadata"]["labels"]
        self.expect(selects(self.sts["spec"]["selector"]["matchLabels"], labels),
                    "StatefulSet selector does not match its pod labels")
        svcs = {s["metadata"]["name"]: s for s in of_kind(self.docs, "Service")}
        head = svcs.get(self.sts["spec"]["serviceName"])
        if not self.expect(head is not None, "serviceName names no rendered Service"):
            return
        self.expect(head["spec"].get("clusterIP") == "None", "governing Service not headless")
        self.expect(head["spec"].get("publishNotReadyAddresses") is True,
                    "headless Service hides not-ready pods (peers cannot resolve them)")
        for s in svcs.values():
            if component(s) != "store":
                continue
            self.expect(selects(s["spec"]["selector"], labels),
                        f"Service {s['metadata']['name']} selects no store pod")
            for p in s["spec"]["ports"]:
                self.expect(port_number(self.node, p["targetPort"]) is not None,
                            f"Service {s['metadata']['name']} port {p['name']}: no such "
                            "container port")

    def probes(self):
        http = int(self.cfg["http_listen"].rsplit(":", 1)[1])
        grpc = int(self.cfg["listen"].rsplit(":", 1)[1])
        for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                           ("startupProbe", "/healthz")):
            probe = self.node.get(kind, {}).get("httpGet", {})
            self.expect(probe.get("path") == path, f"{kind} path {probe.get('path')}, want {path}")
            self.expect(port_number(self.node, probe.get("port")) == http,
                        f"{kind} port {probe.get('port')} is not http_listen's {http}")
        self.expect(port_number(self.node, "grpc") == grpc, "container port grpc != listen")

    def resources(self):
        req = self.node["resources"]["requests"]
        lim = self.node["resources"]["limits"]
        warm = size_bytes(self.cfg["warm_bytes"])
        self.expect(req.get("memory") == lim.get("memory"), "memory request != limit")
        self.expect(size_bytes(lim["memory"]) >= warm + (256 << 20),
                    f"memory limit {lim['memory']} does not cover warm_bytes {warm} + overhead")
        # Every block takes at least min_block_charge (the node's default: 16 KiB; at most
        # max_block_bytes, default 16 MiB) of its tier's budget and about 1 KiB of index RAM
        # (docs/design/tiers.md, "Index memory").
        budgets = warm + sum(size_bytes(self.cfg.get(k, 0)) for k in ("cool_bytes", "cold_bytes"))
        charge = min(size_bytes(self.cfg.get("min_block_charge", "16KiB")),
                     size_bytes(self.cfg.get("max_block_bytes", "16MiB")))
        index = -(-budgets // charge) << 10
        self.expect(size_bytes(lim["memory"]) >= warm + index + (256 << 20),
                    f"memory limit {lim['memory']} does not cover the tiers' index ({index >> 20} "
                    f"MiB for {budgets >> 20} MiB of budgets at {charge >> 10} KiB a block)")
        # The node's own check at start (store_node.cc): past it, it warns that the kernel
        # may kill it, and bytes in flight can take it there (node defaults: 1 GiB, 512 MiB).
        inflight = size_bytes(self.cfg.get("max_inflight_bytes", "1GiB"))
        grpc_memory = size_bytes(self.cfg.get("grpc_memory_bytes", "512MiB"))
        self.expect(size_bytes(lim["memory"]) >= warm + inflight + grpc_memory,
                    f"memory limit {lim['memory']} under warm_bytes + max_inflight_bytes + "
                    f"grpc_memory_bytes ({(warm + inflight + grpc_memory) >> 20} MiB)")
        self.expect("cpu" in req, "no cpu request")
        rdma = req.get("rdma/hca") == 1 and lim.get("rdma/hca") == 1
        self.expect(rdma == self.want["rdma"], f"rdma/hca resource {rdma}")
        caps = self.node.get("securityContext", {}).get("capabilities", {}).get("add", [])
        self.expect(("IPC_LOCK" in caps) == self.want["rdma"], "IPC_LOCK iff RDMA")

    def placement(self):
        labels = self.sts["spec"]["template"]["metadata"]["labels"]
        anti = self.pod.get("affinity", {}).get("podAntiAffinity", {})
        kind = None
        for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []):
            if t["topologyKey"] == "kubernetes.io/hostname" and \
                    selects(t["labelSelector"]["matchLabels"], labels):
                kind = "required"
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
            term = t["podAffinityTerm"]
            if term["topologyKey"] == "kubernetes.io/hostname" and \
                    selects(term["labelSelector"]["matchLabels"], labels):
                kind = kind or "preferred"
        self.expect(kind == self.want["anti"],
                    f"host anti-affinity {kind}, want {self.want['anti']}")

    def shutdown(self):
        drain = duration_s(self.cfg["drain_timeout"])
        pre = self.node.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = int(pre[1]) if pre[:1] == ["sleep"] else 0
        grace = self.pod.get("terminationGracePeriodSeconds", 30)
        self.expect(grace >= drain + sleep + 5,
                    f"terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + 5")

    def volumes(self):
        vcts = {v["metadata"]["name"]: v for v in self.sts["spec"].get("volumeClaimTemplates", [])}
        for key in ("cool_path", "cold_path"):
            if key not in self.cfg:
                continue
            vol, _ = mounted_source(self.pod, self.node, self.cfg[key])
            ok = vol is not None and vol["name"] in vcts and "emptyDir" not in vol
            self.expect(ok, f"{key} {self.cfg[key]} is not on a volumeClaimTemplate")
        self.expect(("cold_path" in self.cfg) == self.want["cold"], "cold tier presence")
        self.expect("cool_path" in self.cfg, "no cool tier")
        if "cool" in vcts:
            cls = vcts["cool"]["spec"].get("storageClassName")
            self.expect(cls == self.want["cool_class"], f"cool storage class {cls}")
            self.expect(size_bytes(vcts["cool"]["spec"]["resources"]["requests"]["storage"]) >=
                        size_bytes(self.cfg["cool_bytes"]), "cool_bytes exceeds the volume")
        for key in ("tls_cert", "tls_key", "tls_client_ca", "auth_principals_file"):
            if key not in self.cfg:
                continue
            vol, rel = mounted_source(self.pod, self.node, self.cfg[key])
            items = [i["path"] for i in (vol or {}).get("secret", {}).get("items", [])]
            self.expect(vol is not None and "secret" in vol and rel in items,
                        f"{key} {self.cfg[key]} is not a file of a mounted Secret")
        self.expect(("tls_cert" in self.cfg) == self.want["tls"], "tls presence")
        self.expect((self.cfg.get("auth_mode") == "required") == self.want["auth"], "auth mode")

    def config_file(self):
        argv = self.node.get("command", []) + self.node.get("args", [])
        if argv[:2] == ["/bin/sh", "-c"]:
            argv = argv[2].split("exec ", 1)[1].split()
        path = argv[argv.index("--config") + 1]
        vol, rel = mounted_source(self.pod, self.node, path)
        name = (vol or {}).get("configMap", {}).get("name", "")
        self.expect(name.endswith("-config") and rel == "strata.yaml",
                    f"--config {path} is not the ConfigMap's strata.yaml")
        # Only a settle the values name is written: an image from before the option refuses
        # the key, and without it the node takes its own default.
        settle = self.cfg.get("rebalance_settle")
        self.expect(settle == self.want["settle"],
                    f"rebalance_settle {settle!r} in strata.yaml, want {self.want['settle']!r}")

    def identity(self):
        env = {e["name"]: e for e in self.node.get("env", [])}
        ref = env.get("STRATA_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
        self.expect(ref.get("fieldPath") == "metadata.name", "node_id is not the pod name")
        head = self.sts["spec"]["serviceName"]
        want = (f"$(STRATA_NODE_ID).{head}.{self.ns}.svc.cluster.local:"
                f"{self.cfg['listen'].rsplit(':', 1)[1]}")
        got = env.get("STRATA_ADVERTISE_ADDRESS", {}).get("value")
        self.expect(got == want, f"advertise_address {got}, want {want}")
        inits = [c["name"] for c in self.pod.get("initContainers", [])]
        zone = self.want["zone"]
        zenv = env.get("STRATA_ZONE", {})
        roles = of_kind(self.docs, "ClusterRole")
        if zone == "nodeLabel":
            self.expect("zone" in inits and "$(cat /var/run/strata/zone)" in
                        " ".join(self.node.get("args", [])), "zone init container + wrapper")
            rules = [r for c in roles for r in c["rules"]]
            self.expect(rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
                        f"node-reader ClusterRole rules {rules}")
            token = [m for m in self.node.get("volumeMounts", []) if m["name"] == "api-token"]
            self.expect(not token and self.pod.get("automountServiceAccountToken") is False,
                        "the store container must not get an API token")
        else:
            self.expect("zone" not in inits and not roles, "zone lookup without nodeLabel")
        if zone == "podLabel":
            self.expect(zenv.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") ==
                        "metadata.labels['topology.kubernetes.io/zone']", "zone pod label env")
        if zone == "fixed":
            self.expect(zenv.get("value") == "rack-7", "fixed zone env")
        if zone == "none":
            self.expect(not zenv, "zone none sets STRATA_ZONE")

    def etcd(self):
        want, mode = self.want["etcd"], self.want["mode"]
        self.expect(self.cfg["cluster_mode"] == mode, f"cluster_mode {self.cfg['cluster_mode']}")
        etcd_sts = [d for d in of_kind(self.docs, "StatefulSet") if component(d) == "etcd"]
        self.expect(bool(etcd_sts) == (want == "bundled"), f"etcd StatefulSet for {want}")
        if mode == "static":
            members = self.cfg["cluster_members"].split(",")
            pods = [f"{self.sts['metadata']['name']}-{i}" for i in range(self.want["replicas"])]
            self.expect([m.split("=")[0] for m in members] == pods, "static members != pods")
        if mode != "etcd":
            self.expect("etcd_endpoints" not in self.cfg, "etcd_endpoints outside etcd mode")
            return
        endpoints = self.cfg["etcd_endpoints"].split(",")
        proxies = [c for c in self.pod.get("initContainers", []) if c["name"] == "etcd-proxy"]
        self.expect(bool(proxies) == self.want["etcd_tls"], "etcd-proxy sidecar iff etcd TLS")
        if self.want["etcd_tls"] and proxies:
            p = proxies[0]
            self.expect(p.get("restartPolicy") == "Always", "etcd-proxy is not a native sidecar")
            listen = [a.split("=", 1)[1] for a in p["command"] if a.startswith("--listen-addr=")]
            self.expect(endpoints == listen, f"node dials {endpoints}, proxy listens on {listen}")
            server = [a.split("=", 1)[1] for a in p["command"] if a.startswith("--endpoints=")]
            endpoints = server[0].split(",") if server else []
            self.expect(any(a.startswith("--cert=") for a in p["command"]), "proxy without cert")
        if want == "bundled" and etcd_sts:
            e = etcd_sts[0]
            dns = f"{e['spec']['serviceName']}.{self.ns}.svc.cluster.local"
            pods = [f"{e['metadata']['name']}-{i}.{dns}:2379" for i in range(3)]
            self.expect(endpoints == pods, f"etcd endpoints {endpoints}, want {pods}")
            self.expect(e["spec"]["replicas"] == 3 and e["spec"]["podManagementPolicy"] ==
                        "Parallel", "bundled etcd: 3 members started in parallel")
            cmd = container(e, "etcd")["command"]
            init = [a for a in cmd if a.startswith("--initial-cluster=")][0]
            self.expect(init.count("=") == 4, f"initial cluster {init}")
            scheme = "https" if self.want["etcd_tls"] else "http"
            self.expect(f"--listen-client-urls={scheme}://0.0.0.0:2379" in cmd, "etcd scheme")
            self.expect(any(component(p) == "etcd" for p in of_kind(self.docs,
                                                                   "PodDisruptionBudget")),
                        "no etcd PodDisruptionBudget")
        elif isinstance(want, list):
            self.expect(endpoints == want, f"external etcd endpoints {endpoints}, want {want}")

    def pdb(self):
        labels = self.sts["spec"]["template"]["metadata"]["labels"]
        pdbs = [p for p in of_kind(self.docs, "PodDisruptionBudget") if component(p) == "store"]
        self.expect(bool(pdbs) == self.want["pdb"], f"store PDB present={bool(pdbs)}")
        for p in pdbs:
            self.expect(selects(p["spec"]["selector"]["matchLabels"], labels), "PDB selects none")
            self.expect(p["spec"].get("maxUnavailable") == 1, "PDB maxUnavailable != 1")

    def monitoring(self):
        sms = of_kind(self.docs, "ServiceMonitor")
        self.expect(bool(sms) == self.want["service_monitor"], f"{len(sms)} ServiceMonitors")
        svcs = of_kind(self.docs, "Service")
        for sm in sms:
            chosen = [s for s in svcs if selects(sm["spec"]["selector"]["matchLabels"],
                                                 s["metadata"]["labels"])]
            ok = len(chosen) == 1 and chosen[0]["spec"].get("clusterIP") == "None"
            self.expect(ok, f"ServiceMonitor {sm['metadata']['name']} selects {len(chosen)}")
            names = {p["name"] for c in chosen for p in c["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                self.expect(ep["port"] in names, f"ServiceMonitor port {ep['port']} unknown")
        metrics = dashboard_metrics(self.docs)
        self.expect(bool(metrics) == self.want["dashboard"], "dashboard presence")
        if self.want["dashboard"]:
            for what, name in DASHBOARD_NEEDS.items():
                self.expect(name in metrics, f"dashboard shows no {what} ({name})")

    def client_config(self):
        cms = [c for c in of_kind(self.docs, "ConfigMap")
               if c["metadata"]["name"].endswith("-client")]
        if not self.expect(len(cms) == 1, "no client ConfigMap"):
            return
        data = cms[0]["data"]
        self.expect(data["STRATA_CLUSTER_NAME"] == self.cfg["cluster_name"], "client cluster name")
        key = {"etcd": "etcd_endpoints", "static": "cluster_members"}.get(self.want["mode"])
        if key:
            self.expect(data.get("STRATA_" + key.upper()) == self.cfg[key], f"client {key}")

    def gpu_workers(self):
        deps = [d for d in of_kind(self.docs, "Deployment")
                if str(component(d)).startswith("gpu-worker")]
        self.expect(bool(deps) == self.want["gpu"], "GPU worker Deployment presence")
        cms = {c["metadata"]["name"] for c in of_kind(self.docs, "ConfigMap")}
        for d in deps:
            spec = d["spec"]["template"]["spec"]
            eng = container(d, "engine")
            lim = eng["resources"]["limits"]
            self.expect(lim.get("nvidia.com/gpu", 0) >= 1 and lim.get("rdma/hca") == 1,
                        f"worker limits {lim}")
            refs = [e["configMapRef"]["name"] for e in eng.get("envFrom", [])]
            self.expect(refs and all(r in cms for r in refs), "worker envFrom a missing map")
            env = {e["name"] for e in eng.get("env", [])}
            self.expect({"UCX_NET_DEVICES", "STRATA_AGENT_PEER_ADVERTISE"} <= env, "worker env")
            self.expect(eng["readinessProbe"]["httpGet"]["path"] == "/readyz", "worker probe")
            proxy = [c for c in spec.get("initContainers", []) if c["name"] == "etcd-proxy"]
            self.expect(bool(proxy) == self.want["etcd_tls"], "worker etcd-proxy iff etcd TLS")
            values = {e["name"]: e for e in eng.get("env", [])}
            if self.want["tls"]:  # the client's CA and certificate are files of a Secret
                cert = ("STRATA_TLS_CERT", "STRATA_TLS_KEY")
                keys = ("STRATA_TLS_CA",) + (cert if self.want["worker_cert"] else ())
                for key in keys:
                    path = values.get(key, {}).get("value", "")
                    vol, rel = mounted_source(spec, eng, path)
                    items = [i["path"] for i in (vol or {}).get("secret", {}).get("items", [])]
                    self.expect(rel in items, f"worker {key} {path!r} not a file of a Secret")
                # A Secret volume naming a key its Secret lacks is never mounted (FailedMount).
                vols = [v for v in spec.get("volumes", []) if v["name"] == "client-tls"]
                items = sorted(i["key"] for v in vols for i in v["secret"].get("items", []))
                want = ["ca.crt"] + (["tls.crt", "tls.key"] if self.want["worker_cert"] else [])
                self.expect(items == want and all((k in values) == (k in keys) for k in cert),
                            f"worker TLS files {items}, want {want}")
            if self.want["auth"]:
                self.expect("secretKeyRef" in values.get("STRATA_TOKEN", {}).get("valueFrom", {}),
                            "worker STRATA_TOKEN not from a Secret")


def check_case(case, docs, release, namespace):
    return Checker(case, docs, release, namespace).run()


def _store(docs):
    return store_statefulset(docs)


def _node(docs):
    return container(_store(docs), "storenode")


def _set_config(docs, key, value):
    cm = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")][0]
    cfg = yaml.safe_load(cm["data"]["strata.yaml"])
    cfg[key] = value
    cm["data"]["strata.yaml"] = yaml.safe_dump(cfg)


def _drop(docs, kind, comp):
    docs[:] = [d for d in docs if not (d["kind"] == kind and component(d) == comp)]


# name -> (a phrase the problem report must contain, a change to a correct rendering).
def _node_args(d):
    args = _node(d)["args"]
    args[0] = args[0].replace("/etc/strata/strata.yaml", "/tmp/strata.yaml")


MUTATIONS = {
    "readiness probe on /healthz": ("readinessProbe path", lambda d: _node(d)["readinessProbe"][
        "httpGet"].update(path="/healthz")),
    "liveness probe on the gRPC port": ("livenessProbe port", lambda d: _node(d)["livenessProbe"][
        "httpGet"].update(port="grpc")),
    "http_listen moved, probes not": ("not http_listen's 9000",
                                      lambda d: _set_config(d, "http_listen", "0.0.0.0:9000")),
    "no startup probe": ("startupProbe path", lambda d: _node(d).pop("startupProbe")),
    "memory limit below warm_bytes": ("does not cover warm_bytes", lambda d: _node(d)[
        "resources"].update(requests=dict(_node(d)["resources"]["requests"], memory="4Gi"),
                            limits=dict(_node(d)["resources"]["limits"], memory="4Gi"))),
    "memory limit without the index": ("tiers' index", lambda d: _set_config(
        d, "min_block_charge", "4KiB")),
    "max_block_bytes below the charge": ("tiers' index", lambda d: _set_config(
        d, "max_block_bytes", "16KiB")),
    "anti-affinity dropped": ("host anti-affinity", lambda d: _store(d)["spec"]["template"][
        "spec"].pop("affinity")),
    "anti-affinity on another app": ("host anti-affinity", lambda d: _store(d)["spec"]["template"][
        "spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "labelSelector"]["matchLabels"].update({"app.kubernetes.io/name": "other"})),
    "store PDB dropped": ("store PDB", lambda d: _drop(d, "PodDisruptionBudget", "store")),
    "grace period shorter than the drain": ("terminationGracePeriodSeconds", lambda d: _store(d)[
        "spec"]["template"]["spec"].update(terminationGracePeriodSeconds=20)),
    "cool volumeClaimTemplate dropped": ("not on a volumeClaimTemplate",
                                         lambda d: _store(d)["spec"].pop("volumeClaimTemplates")),
    "cool_path outside the volume": ("not on a volumeClaimTemplate",
                                     lambda d: _set_config(d, "cool_path", "/data/cool")),
    "cluster token inlined": ("cluster_token inlined",
                              lambda d: _set_config(d, "cluster_token", "hunter2")),
    "a Secret rendered": ("renders a Secret",
                          lambda d: d.append({"kind": "Secret", "metadata": {"name": "s"}})),
    "ServiceMonitor while disabled": ("ServiceMonitors", lambda d: d.append(
        {"kind": "ServiceMonitor", "metadata": {"name": "m"},
         "spec": {"selector": {"matchLabels": {}}, "endpoints": []}})),
    "etcd endpoint typo": ("etcd endpoints",
                           lambda d: _set_config(d, "etcd_endpoints", "etcd:2379")),
    "etcd bundled StatefulSet dropped": ("etcd StatefulSet",
                                         lambda d: _drop(d, "StatefulSet", "etcd")),
    "node id not the pod name": ("not the pod name", lambda d: _node(d)["env"].pop(0)),
    "headless Service hides not-ready pods": ("hides not-ready pods", lambda d: [
        s["spec"].update(publishNotReadyAddresses=False) for s in of_kind(d, "Service")]),
    "dashboard without latency": ("no latency", lambda d: [
        cm["data"].update({k: v.replace("strata_op_latency_seconds_bucket", "up")
                           for k, v in cm["data"].items()}) for cm in of_kind(d, "ConfigMap")]),
    "--config path not the ConfigMap": ("is not the ConfigMap's", _node_args),
    "API token mounted into the node": ("must not get an API token", lambda d: _node(d)[
        "volumeMounts"].append({"name": "api-token",
                                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})),
}


def mutation_self_test(docs, release, namespace):
    """Yields (mutation, missed): missed when no reported problem names what was broken."""
    assert not check_case("default", docs, release, namespace), "self-test needs a clean render"
    for name, (phrase, mutate) in MUTATIONS.items():
        broken = copy.deepcopy(docs)
        mutate(broken)
        yield name, not any(phrase in p for p in check_case("default", broken, release, namespace))
