"""Checks of deploy/ that run without a Docker engine or a cluster (test venv python).

- every compose file (and the CPU override) passes `docker-compose config`; the flags the compose
  files and the Kubernetes manifests pass to lmhead binaries are flags those binaries accept;
- `promtool check config` / `check rules` on the Prometheus files;
- every metric named by the Grafana dashboard and the alert rules is exported by a running server;
- the Kubernetes YAML parses and its fields fit together (probes, GPU, headless service, HPA,
  ServiceMonitor, grace period);
- the compose topology natively on loopback: the server, a real Prometheus (Debian's package)
  scraping it with the same alert rules, and the decoder simulator; Prometheus's HTTP API must
  show lmhead_weight_saved_bytes and the request counters arriving.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import yaml

import lmhead_testlib as lib

DEPLOY = os.path.join(lib.SOURCE_DIR, "deploy")
COMPOSE = os.path.join(DEPLOY, "docker-compose.yml")
COMPOSE_CPU = os.path.join(DEPLOY, "docker-compose.cpu.yml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path):
    with open(path) as f:
        return f.read()


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path) as f:
        return list(yaml.safe_load_all(f))


def accepted_flags(binary):
    text = subprocess.run([lib.binary(binary), "--helpfull"], capture_output=True, text=True).stdout
    text += subprocess.run([lib.binary(binary), "--helpfull"], capture_output=True, text=True).stderr
    return set(re.findall(r"^\s+--([a-z_0-9]+) ", text, re.M))


def flag_names(args):
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def metrics_text(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def exported_metrics(text):
    """Metric names of a /metrics text, with histogram series (_bucket/_sum/_count) too."""
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))


def named_metrics(expr):
    return set(re.findall(r"\b(lmhead_[a-z0-9_]+)", expr))


class ComposeTest(unittest.TestCase):
    def config(self, *files):
        r = subprocess.run(["docker-compose", *sum((["-f", f] for f in files), []), "config"],
                           capture_output=True, text=True, cwd=DEPLOY)
        self.assertEqual(r.returncode, 0, r.stderr)
        return yaml.safe_load(r.stdout)

    def test_compose_files_are_valid_and_complete(self):
        gpu = self.config(COMPOSE)
        services = gpu["services"]
        for name in ("lmhead", "prometheus", "grafana", "decoder", "checkpoint"):
            self.assertIn(name, services)
        devices = services["lmhead"]["deploy"]["resources"]["reservations"]["devices"]
        self.assertEqual(devices[0]["capabilities"], ["gpu"])
        self.assertNotIn("container_name", services["lmhead"], "fixed names break --scale")
        self.assertNotIn("ports", services["lmhead"], "published host ports break --scale")
        self.assertIn("--target=dns:///lmhead:50051", services["decoder"]["command"])
        cpu = self.config(COMPOSE, COMPOSE_CPU)["services"]
        self.assertEqual(cpu["lmhead"]["profiles"], ["gpu"])  # parked: not started with the override
        self.assertNotIn("deploy", cpu["lmhead-cpu"])
        self.assertIn("lmhead", cpu["lmhead-cpu"]["networks"]["default"]["aliases"])
        self.assertIn("--backend=cpu", cpu["lmhead-cpu"]["command"])

    def test_flags_passed_to_binaries_exist(self):
        server = accepted_flags("lmhead-server")
        services = self.config(COMPOSE, COMPOSE_CPU)["services"]
        for name in ("lmhead", "lmhead-cpu"):
            for flag in flag_names(services[name]["command"]):
                self.assertIn(flag, server, f"{name}: lmhead-server has no --{flag}")
        decoder = accepted_flags("lmhead-decoder-sim")
        for flag in flag_names(services["decoder"]["command"]):
            self.assertIn(flag, decoder, f"decoder: lmhead-decoder-sim has no --{flag}")
        make = accepted_flags("lmhead-make-checkpoint")
        for flag in flag_names(" ".join(services["checkpoint"]["command"]).split()):
            self.assertIn(flag, make)
        deployment = next(d for d in load_yaml_all(os.path.join(DEPLOY, "k8s/deployment.yaml"))
                          if d["kind"] == "Deployment")
        for flag in flag_names(deployment["spec"]["template"]["spec"]["containers"][0]["args"]):
            self.assertIn(flag, server, f"k8s: lmhead-server has no --{flag}")
        dockerfile = read(os.path.join(DEPLOY, "Dockerfile"))
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
        for flag in flag_names(cmd):
            self.assertIn(flag, server)
        self.assertRegex(dockerfile, r"(?m)^USER lmhead$")
        self.assertRegex(dockerfile, r"(?m)^HEALTHCHECK .*\n.*lmhead health")


class ShardedDeploymentTest(unittest.TestCase):
    """The sharded compose profile and k8s manifests: every shard of the head, in replicas, with
    valid flags, and a client that reaches all of them."""

    def test_compose_sharded_profile(self):
        r = subprocess.run(["docker-compose", "-f", COMPOSE, "config"], capture_output=True, text=True, cwd=DEPLOY)
        self.assertEqual(r.returncode, 0, r.stderr)
        services = yaml.safe_load(r.stdout)["services"]
        server = accepted_flags("lmhead-server")
        shards = {}
        for name, svc in services.items():
            if not name.startswith("lmhead-shard"):
                continue
            self.assertEqual(svc["profiles"], ["sharded"])
            for flag in flag_names(svc["command"]):
                self.assertIn(flag, server)
            shard = [a for a in svc["command"] if a.startswith("--shard=")][0]
            alias = svc["networks"]["default"]["aliases"][0]
            shards.setdefault(shard, set()).add(alias)
            self.assertIn("devices", svc["deploy"]["resources"]["reservations"])
        self.assertEqual(shards, {"--shard=0/2": {"lmhead-shard0"}, "--shard=1/2": {"lmhead-shard1"}})
        decoder = services["decoder-sharded"]["command"]
        self.assertIn("--shards=dns:///lmhead-shard0:50051;dns:///lmhead-shard1:50051", decoder)
        for flag in flag_names(decoder):
            self.assertIn(flag, accepted_flags("lmhead-decoder-sim"))
        prom = load_yaml(os.path.join(DEPLOY, "prometheus/prometheus.yml"))
        self.assertEqual(set(prom["scrape_configs"][0]["dns_sd_configs"][0]["names"]),
                         {"lmhead", "lmhead-shard0", "lmhead-shard1"})

    def test_k8s_sharded_manifests(self):
        docs = load_yaml_all(os.path.join(DEPLOY, "k8s/sharded/lmhead-sharded.yaml"))
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        self.assertEqual(set(deployments), {"lmhead-shard-0", "lmhead-shard-1"})
        server = accepted_flags("lmhead-server")
        for i in range(2):
            dep, svc = deployments[f"lmhead-shard-{i}"], services[f"lmhead-shard-{i}"]
            self.assertGreaterEqual(dep["spec"]["replicas"], 2)
            container = dep["spec"]["template"]["spec"]["containers"][0]
            self.assertIn(f"--shard={i}/2", container["args"])
            for flag in flag_names(container["args"]):
                self.assertIn(flag, server)
            self.assertEqual(svc["spec"]["clusterIP"], "None")
            self.assertEqual(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"])
            self.assertEqual(container["readinessProbe"]["grpc"]["port"], 50051)


class PrometheusFilesTest(unittest.TestCase):
    def test_promtool_accepts_config_and_rules(self):
        for args in (["check", "config", "prometheus/prometheus.yml"], ["check", "rules", "prometheus/alerts.yml"]):
            r = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=DEPLOY)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class MetricNamesTest(unittest.TestCase):
    """Every metric the dashboard and the alerts use is one the server exports."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lmhead_deploy_")
        lib.make_checkpoint(os.path.join(cls.tmp, "ckpt"), 512, 64)
        with lib.Server(os.path.join(cls.tmp, "ckpt")) as server:
            cls.exported = exported_metrics(metrics_text(server.metrics_port))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_dashboard_panels_use_exported_metrics(self):
        dashboard = json.loads(read(os.path.join(DEPLOY, "grafana/dashboards/lmhead.json")))
        titles = [p["title"] for p in dashboard["panels"]]
        for wanted in ("Memory saved against BF16", "Resident vs BF16 bytes (per replica)", "Rows/s",
                       "Request latency", "Batch size (rows per GEMM)", "Queue depth", "Errors by code"):
            self.assertIn(wanted, titles)
        for panel in dashboard["panels"]:
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                names = named_metrics(target["expr"])
                self.assertTrue(names, f"{panel['title']}: no lmhead metric in {target['expr']}")
                for name in names:
                    self.assertIn(name, self.exported, f"panel '{panel['title']}' uses {name}")

    def test_alert_rules_use_exported_metrics(self):
        rules = load_yaml(os.path.join(DEPLOY, "prometheus/alerts.yml"))["groups"][0]["rules"]
        self.assertEqual({r["alert"] for r in rules},
                         {"LmheadNotServing", "LmheadQueueSaturated", "LmheadRejectingWork", "LmheadHighErrorRate"})
        for rule in rules:
            for name in named_metrics(rule["expr"]):
                self.assertIn(name, self.exported, f"alert {rule['alert']} uses {name}")


class KubernetesTest(unittest.TestCase):
    def load(self):
        docs = {}
        for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
            if not name.endswith(".yaml"):
                continue
            for doc in load_yaml_all(os.path.join(DEPLOY, "k8s", name)):
                self.assertIn("apiVersion", doc, name)
                docs[doc["kind"]] = doc
        return docs

    def test_manifests_fit_together(self):
        docs = self.load()
        deployment, service = docs["Deployment"], docs["Service"]
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        self.assertEqual(container["resources"]["limits"]["nvidia.com/gpu"], 1)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(container[probe]["grpc"]["port"], ports["grpc"], probe)
        self.assertEqual(container["readinessProbe"]["grpc"]["service"], "lmhead.v1.LmHead")
        grace = [a for a in container["args"] if a.startswith("--shutdown_grace=")][0]
        self.assertGreater(pod["spec"]["terminationGracePeriodSeconds"], int(grace.split("=")[1].rstrip("s")))
        self.assertEqual(pod["metadata"]["annotations"]["prometheus.io/port"], str(ports["metrics"]))
        # Headless service over the deployment's pods, ports by name.
        self.assertEqual(service["spec"]["clusterIP"], "None")
        self.assertEqual(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"])
        self.assertTrue(set(p["targetPort"] for p in service["spec"]["ports"]) <= set(ports))
        # ServiceMonitor scrapes the service's metrics port.
        monitor = docs["ServiceMonitor"]
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        self.assertEqual(monitor["spec"]["endpoints"][0]["port"], "metrics")
        # The HPA scales this deployment on queued rows, a metric the server exports.
        hpa = docs["HorizontalPodAutoscaler"]
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
        self.assertEqual(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], "lmhead_queued_rows")
        self.assertIn("lmhead_queued_rows", docs["ConfigMap"]["data"]["config.yaml"])
        self.assertEqual(docs["PodDisruptionBudget"]["spec"]["selector"], deployment["spec"]["selector"])


class NativeTopologyTest(unittest.TestCase):
    """The compose topology on loopback: server + Debian's Prometheus + decoder simulator."""

    def test_prometheus_receives_lmhead_metrics(self):
        tmp = tempfile.mkdtemp(prefix="lmhead_topology_")
        procs = []
        try:
            ckpt = os.path.join(tmp, "ckpt")
            lib.make_checkpoint(ckpt, 2048, 128)
            with lib.Server(ckpt) as server:
                prom_port = free_port()
                config = load_yaml(os.path.join(DEPLOY, "prometheus/prometheus.yml"))
                # Same rules and intervals; the DNS discovery of compose becomes the loopback target.
                config["rule_files"] = [os.path.join(DEPLOY, "prometheus/alerts.yml")]
                config["scrape_configs"][0].pop("dns_sd_configs")
                config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]
                config["scrape_configs"][1]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
                with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
                    yaml.safe_dump(config, f)
                prom_log = os.path.join(tmp, "prometheus.log")
                with open(prom_log, "w") as log:
                    procs.append(subprocess.Popen(
                        ["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                         f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT))
                procs.append(subprocess.Popen(
                    [lib.binary("lmhead-decoder-sim"), f"--target={server.target}", "--sequences=4",
                     "--steps_per_second=50", "--duration=60s", "--sample=temperature=0.8,top_p=0.95"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

                def query(expr):
                    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                    try:
                        with urllib.request.urlopen(url, timeout=5) as response:
                            body = json.load(response)
                    except OSError:
                        return None
                    result = body["data"]["result"]
                    return float(result[0]["value"][1]) if result else None

                deadline = time.time() + 60
                saved = streamed = None
                while time.time() < deadline:
                    saved = query("lmhead_weight_saved_bytes")
                    streamed = query('sum(lmhead_requests_total{rpc="StreamLogits",code="OK"})')
                    if saved and streamed and streamed > 0:
                        break
                    time.sleep(1)
                self.assertEqual(saved, 2048 * 128 * 2 - (2048 * 128 + 2048 * 4), read(prom_log)[-2000:])
                self.assertGreater(streamed or 0, 0)
                with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as response:
                    rules = json.load(response)
                names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
                self.assertIn("LmheadQueueSaturated", names)
                for p in procs:
                    p.terminate()
                    p.wait(timeout=30)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
