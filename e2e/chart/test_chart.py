"""Checks of the Helm chart (charts/rustlayer) and its containerd config patcher.

Renders the chart with Helm's own engine (the helm-python-sdk package), validates
every object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict),
asserts what the DaemonSet, RBAC and ConfigMap must say, and runs
files/patch-containerd.sh on sample containerd configs in a temporary directory,
with the real containerd parsing the result where it can.

Run by hack/chart-test.sh, which provides those packages. Prints "ok - ...",
"not ok - ..." or "skip - ... (reason)" per check and a summary line.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import unittest
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rustlayer"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
PATCHER = CHART / "files" / "patch-containerd.sh"
RELEASE, NAMESPACE = "rustlayer", "kube-system"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with these values, NOTES.txt aside."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        objects.extend(o for o in yaml.safe_load_all(text) if o)
    return objects


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_toml(objects: list[dict]) -> dict:
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == RELEASE)
    return tomllib.loads(cm["data"]["config.toml"])


class Lint(unittest.TestCase):
    def lint(self, values: dict | None) -> None:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        # Severity 1 is information ("icon is recommended"); 2 and 3 are problems.
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(problems, [])
        self.assertEqual(report["errors"], [])

    def test_lint_default_values(self):
        """helm lint --strict, default values"""
        self.lint(None)

    def test_lint_all_on_values(self):
        """helm lint --strict, ci/all-on-values.yaml"""
        self.lint(load_yaml(ALL_ON))

    def test_lint_reports_bad_values(self):
        """helm lint reports values the schema rejects"""
        report = helm.lint(CHART, {"config": {"backend": "zfs"}}, strict=True)
        self.assertTrue(
            [m for m in report["messages"] if m["severity"] == 3] or report["errors"], report
        )


# CRDs kubernetes-validate has no schema for. Their shape, as far as the chart
# uses it, checked against the Prometheus Operator's monitoring.coreos.com/v1 API.
DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRMAP},
}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": STRMAP},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "relabelings": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "action": {"enum": ["replace", "keep", "drop", "labelmap"]},
                                            "sourceLabels": {
                                                "type": "array",
                                                "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                            },
                                            "targetLabel": {"type": "string"},
                                            "replacement": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": DURATION,
                                            "keep_firing_for": DURATION,
                                            "labels": STRMAP,
                                            "annotations": STRMAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


class KubernetesSchemas(unittest.TestCase):
    def check(self, values: dict | None, label: str) -> None:
        for obj in render(values):
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] in CRD_SCHEMAS:
                with self.subTest(f"{label}: {name} has the Prometheus Operator's v1 shape "
                                  "(own schema: kubernetes-validate knows no CRDs)"):
                    jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
                continue
            for version in KUBE_VERSIONS:
                with self.subTest(f"{label}: {name} is a valid Kubernetes {version} object (strict)"):
                    kubernetes_validate.validate(obj, version, strict=True)

    def test_default_values(self):
        """every object rendered with default values validates"""
        self.check(None, "defaults")

    def test_all_on_values(self):
        """every object rendered with ci/all-on-values.yaml validates"""
        self.check(load_yaml(ALL_ON), "all on")


class DaemonSet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objects = render()
        cls.ds = one(cls.objects, "DaemonSet")
        cls.pod = cls.ds["spec"]["template"]["spec"]
        cls.ctr = cls.pod["containers"][0]

    def test_privileged_without_host_pid_or_network(self):
        """DaemonSet: privileged container, hostPID and hostNetwork off by default"""
        self.assertIs(self.ctr["securityContext"]["privileged"], True)
        self.assertIs(self.pod["hostPID"], False)
        self.assertIs(self.pod["hostNetwork"], False)
        self.assertNotIn("initContainers", self.pod)

    def test_command(self):
        """DaemonSet: rustlayer serve --config /etc/rustlayer/config.toml"""
        self.assertEqual(self.ctr["command"], ["rustlayer", "serve", "--config", "/etc/rustlayer/config.toml"])
        self.assertEqual(self.ctr["args"], ["--node-integration=on"])

    def test_host_paths_and_propagation(self):
        """DaemonSet: root (Bidirectional), socket dir and /dev from the host at the same paths"""
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        mounts = {m["name"]: m for m in self.ctr["volumeMounts"]}
        expected = {"root": "/var/lib/rustlayer", "socket": "/run/rustlayer", "dev": "/dev"}
        for name, path in expected.items():
            self.assertEqual(volumes[name]["hostPath"]["path"], path, name)
            self.assertEqual(mounts[name]["mountPath"], path, name)
        self.assertEqual(mounts["root"]["mountPropagation"], "Bidirectional")
        self.assertEqual(volumes["config"]["configMap"]["name"], RELEASE)
        self.assertEqual(mounts["config"]["mountPath"], "/etc/rustlayer")
        self.assertTrue(mounts["config"]["readOnly"])

    def test_every_node(self):
        """DaemonSet: tolerates every taint, system-node-critical, RollingUpdate maxUnavailable 1"""
        self.assertEqual(self.pod["tolerations"], [{"operator": "Exists"}])
        self.assertEqual(self.pod["priorityClassName"], "system-node-critical")
        self.assertEqual(
            self.ds["spec"]["updateStrategy"], {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
        )
        self.assertIn("memory", self.ctr["resources"]["limits"])
        self.assertIn("cpu", self.ctr["resources"]["requests"])

    def test_probes_on_the_metrics_port(self):
        """DaemonSet: liveness /healthz, readiness /readyz on the port metrics_address names"""
        port = self.ctr["ports"][0]
        self.assertEqual((port["name"], port["containerPort"]), ("metrics", 9192))
        self.assertEqual(self.ctr["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})
        self.assertEqual(self.ctr["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
        self.assertEqual(config_toml(self.objects)["metrics_address"], "0.0.0.0:9192")

    def test_downward_api(self):
        """DaemonSet: NODE_NAME from spec.nodeName, POD_NAMESPACE from metadata.namespace"""
        env = {e["name"]: e for e in self.ctr["env"]}
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")
        self.assertEqual(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace")

    def test_config_change_rolls_the_pods(self):
        """DaemonSet: a changed config (log_format) changes the pod template"""
        other = one(render({"config": {"logFormat": "json"}}), "DaemonSet")
        self.assertNotEqual(
            self.ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
            other["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        )

    def test_patcher_init_container(self):
        """DaemonSet: the containerd patcher is an opt-in init container, with hostPID only then, told the backend"""
        objects = render({"containerdConfig": {"patch": {"enabled": True}}})
        pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
        self.assertIs(pod["hostPID"], True)
        probe, init = pod["initContainers"]
        # The daemon's own start-up probe, with remap_ids on, in the daemon's
        # image and on its root, answers for the patcher whether layers can be
        # idmapped on the node (Patcher.test_chart_probe_on_this_kernel runs it).
        self.assertEqual(probe["name"], "idmap-probe")
        self.assertEqual(probe["image"], pod["containers"][0]["image"])
        self.assertIs(probe["securityContext"]["privileged"], True)
        self.assertIn("remap_ids = true", probe["command"][-1])
        self.assertIn("rustlayer check --config /run/rustlayer-patch/probe.toml --output json", probe["command"][-1])
        self.assertEqual({m["name"]: m["mountPath"] for m in probe["volumeMounts"]},
                         {"config": "/etc/rustlayer", "root": "/var/lib/rustlayer",
                          "containerd-patch-state": "/run/rustlayer-patch"})
        self.assertEqual(init["command"], ["sh", "/opt/rustlayer/patch-containerd.sh", "add"])
        env = {e["name"]: e["value"] for e in init["env"]}
        self.assertEqual(env["IDMAP_CHECK"], "/run/rustlayer-patch/check.json")
        self.assertEqual(env["DAEMON_CONFIG"], "/etc/rustlayer/config.toml")
        self.assertEqual(env["DAEMON_CONFIG_OUT"], "/run/rustlayer-patch/config.toml")
        # The daemon reads the patcher's copy of its config, remap_ids as containerd declares.
        daemon = pod["containers"][0]
        self.assertEqual(daemon["command"], ["rustlayer", "serve", "--config", "/run/rustlayer-patch/config.toml"])
        self.assertIn({"name": "containerd-patch-state", "mountPath": "/run/rustlayer-patch", "readOnly": True},
                      daemon["volumeMounts"])
        self.assertEqual(env["CONFIG"], "/host/etc/containerd/config.toml")
        self.assertEqual(env["HOST_CONFIG"], "/etc/containerd/config.toml")
        self.assertEqual(env["SNAPSHOTTER_ADDRESS"], "/run/rustlayer/rustlayer.sock")
        self.assertEqual(env["RUNTIME_HANDLER"], "rustlayer")
        self.assertEqual(env["SNAPSHOTTER_BACKEND"], "overlay")
        self.assertNotIn("RESTART_CMD", env)
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["containerd-config"]["hostPath"]["path"], "/etc/containerd")
        scripts = [o for o in objects if o["kind"] == "ConfigMap" and "patch-containerd.sh" in o["data"]]
        self.assertEqual(len(scripts), 1)
        self.assertEqual(scripts[0]["data"]["patch-containerd.sh"].strip(), PATCHER.read_text().strip())
        self.assertEqual(volumes["containerd-patch"]["configMap"]["name"], scripts[0]["metadata"]["name"])
        self.assertEqual(volumes["containerd-patch-state"], {"name": "containerd-patch-state", "emptyDir": {}})
        without = one(render(), "DaemonSet")["spec"]["template"]["spec"]
        self.assertEqual(without["containers"][0]["command"][-1], "/etc/rustlayer/config.toml")
        removing = render({"containerdConfig": {"patch": {"enabled": True, "mode": "remove", "restart": False}},
                           "config": {"backend": "devmapper"}})
        (init,) = one(removing, "DaemonSet")["spec"]["template"]["spec"]["initContainers"]
        self.assertEqual(init["command"][-1], "remove", "no probe when the patcher takes rustlayer out")
        self.assertIn("RESTART_CMD", {e["name"] for e in init["env"]})
        # The patcher declares "rebase" only for the overlay backend.
        self.assertEqual({e["name"]: e["value"] for e in init["env"]}["SNAPSHOTTER_BACKEND"], "devmapper")


class Rbac(unittest.TestCase):
    def test_least_privilege(self):
        """RBAC: nodes get/patch, events create/patch (core and events.k8s.io), nothing else"""
        objects = render()
        role = one(objects, "ClusterRole")
        self.assertEqual(
            role["rules"],
            [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        )
        binding = one(objects, "ClusterRoleBinding")
        sa = one(objects, "ServiceAccount")
        self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
        self.assertEqual(
            binding["subjects"], [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
        )
        self.assertNotIn("Role", kinds(objects))
        self.assertNotIn("RoleBinding", kinds(objects))

    def test_node_integration_off(self):
        """RBAC: nodeIntegration.enabled=false renders no ClusterRole, no token, --node-integration=off"""
        objects = render({"nodeIntegration": {"enabled": False}})
        self.assertNotIn("ClusterRole", kinds(objects))
        self.assertNotIn("ClusterRoleBinding", kinds(objects))
        pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
        self.assertIs(pod["automountServiceAccountToken"], False)
        self.assertEqual(pod["containers"][0]["args"], ["--node-integration=off"])


class ConfigToml(unittest.TestCase):
    def test_defaults(self):
        """ConfigMap: config.toml parses to exactly the daemon's keys with the default values"""
        self.assertEqual(
            config_toml(render()),
            {
                "root": "/var/lib/rustlayer",
                "address": "/run/rustlayer/rustlayer.sock",
                "backend": "overlay",
                "metrics_address": "0.0.0.0:9192",
                "log_format": "text",
            },
        )

    def test_all_on(self):
        """ConfigMap: socket_group and the [devmapper] table come from values, typed"""
        values = load_yaml(ALL_ON)
        self.assertEqual(
            config_toml(render(values)),
            {
                "root": "/var/lib/rustlayer",
                "address": "/run/rustlayer/rustlayer.sock",
                "backend": "devmapper",
                "metrics_address": "0.0.0.0:9192",
                "log_format": "json",
                "socket_group": 1000,
                "devmapper": values["config"]["devmapper"],
            },
        )

    def test_quoting_and_ipv6(self):
        """ConfigMap: a root with a space stays one TOML string; an IPv6 metrics address is bracketed"""
        toml = config_toml(render({"config": {"root": "/var/lib/rust layer"}, "metrics": {"bindAddress": "::"}}))
        self.assertEqual(toml["root"], "/var/lib/rust layer")
        self.assertEqual(toml["metrics_address"], "[::]:9192")

    def test_overlay_size_limits(self):
        """ConfigMap: the [overlay] size limits come from values, typed; left out by default"""
        self.assertNotIn("overlay", config_toml(render()))
        limits = {"default_size": "10GiB", "default_inodes": 500000, "enforce_size": True}
        self.assertEqual(config_toml(render({"config": {"overlay": limits}}))["overlay"], limits)
        self.assertEqual(
            config_toml(render({"config": {"overlay": {"default_size": 1073741824}}}))["overlay"],
            {"default_size": 1073741824},
        )

    def test_overlay_size_limits_reach_the_daemon(self):
        """the rendered [overlay] table is read by the real rustlayer binary: with enforce_size, a default size
        on a root without project quotas fails `rustlayer check`, saying it cannot be applied"""
        binary = Path(os.environ.get("RUSTLAYER_BIN", REPO / "target" / "debug" / "rustlayer"))
        if os.geteuid() != 0:
            self.skipTest("rustlayer check mounts overlay: needs root")
        self.assertTrue(binary.is_file(), f"no rustlayer binary at {binary}: cargo build first (or set RUSTLAYER_BIN)")
        objects = render({"config": {"overlay": {"default_size": "64MiB", "enforce_size": True}}})
        cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == RELEASE)
        with tempfile.TemporaryDirectory() as scratch:
            config = Path(scratch) / "config.toml"
            config.write_text(cm["data"]["config.toml"])
            check = subprocess.run(
                [str(binary), "check", "--config", str(config), "--root", str(Path(scratch) / "root"),
                 "--address", str(Path(scratch) / "none.sock")],
                capture_output=True, text=True, timeout=120,
            )
        line = next((l for l in check.stdout.splitlines() if l.startswith("project quotas")), "")
        if "on:" in line:
            self.skipTest(f"this machine's temporary directory has project quotas: {line}")
        self.assertIn("FAIL", line, check.stdout + check.stderr)
        self.assertIn("default size cannot be applied", line)

    def test_integer_sizes(self):
        """ConfigMap: byte sizes given as integers stay integers"""
        toml = config_toml(render({"config": {"devmapper": {"base_image_size": 17179869184}}}))
        self.assertEqual(toml["devmapper"], {"base_image_size": 17179869184})


class ValuesSchema(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.chart = helm.Chart.load(CHART)

    @classmethod
    def tearDownClass(cls):
        cls.chart.close()

    def test_accepts_shipped_values(self):
        """values.schema.json accepts the defaults and ci/all-on-values.yaml"""
        self.chart.validate_schema(self.chart.values)
        self.chart.validate_schema(self.chart.merge_values(load_yaml(ALL_ON)))

    def test_covers_every_value(self):
        """values.schema.json describes every key of values.yaml"""
        schema = self.chart.schema

        def walk(values: dict, node: dict, path: str) -> None:
            props = node.get("properties", {})
            for key, value in values.items():
                self.assertIn(key, props, f"{path}{key} is not in values.schema.json")
                if isinstance(value, dict) and value and props[key].get("properties"):
                    walk(value, props[key], f"{path}{key}.")

        walk(load_yaml(CHART / "values.yaml"), schema, "")

    def test_readme_lists_every_value(self):
        """the chart README's values table lists every value"""
        readme = (CHART / "README.md").read_text()
        opaque = {"resources", "tolerations", "nodeSelector", "affinity", "devmapper", "overlay"}

        def walk(values: dict, path: str) -> None:
            for key, value in values.items():
                if isinstance(value, dict) and value and key not in opaque:
                    walk(value, f"{path}{key}.")
                else:
                    self.assertIn(f"| `{path}{key}` |", readme, f"{path}{key} is not in the README's table")

        walk(load_yaml(CHART / "values.yaml"), "")

    def test_rejects(self):
        """values.schema.json rejects bad values"""
        bad = {
            "unknown top-level key": {"replicas": 2},
            "unknown nested key": {"config": {"roots": "/x"}},
            "unknown devmapper key": {"config": {"devmapper": {"pool": "x"}}},
            "wrong type (port as string)": {"metrics": {"port": "9192"}},
            "wrong type (enabled as string)": {"nodeIntegration": {"enabled": "yes"}},
            "backend not overlay/devmapper": {"config": {"backend": "zfs"}},
            "relative root": {"config": {"root": "var/lib/rustlayer"}},
            "size without a known unit": {"config": {"devmapper": {"base_image_size": "10 parsecs"}}},
            "min_free_percent over 99": {"config": {"devmapper": {"min_free_percent": 100}}},
            "unknown overlay key": {"config": {"overlay": {"max_size": "1GiB"}}},
            "default_inodes of zero": {"config": {"overlay": {"default_inodes": 0}}},
            "default_size without a known unit": {"config": {"overlay": {"default_size": "1 GB of disk"}}},
            "enforce_size as a string": {"config": {"overlay": {"enforce_size": "yes"}}},
            "runtime handler not a bare TOML key": {"runtimeClass": {"handler": "a.b"}},
            "patch mode not add/remove": {"containerdConfig": {"patch": {"mode": "replace"}}},
        }
        for why, values in bad.items():
            with self.subTest(f"values.schema.json rejects: {why}"):
                with self.assertRaises(helm.HelmValuesError):
                    self.chart.validate_schema(self.chart.merge_values(values))


class OptIn(unittest.TestCase):
    def test_defaults_render_the_minimum(self):
        """defaults: DaemonSet, ConfigMap, ServiceAccount, RBAC and RuntimeClass only"""
        self.assertEqual(
            kinds(render()),
            ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "RuntimeClass", "ServiceAccount"],
        )

    def test_runtime_class(self):
        """RuntimeClass: handler from values, left out when disabled"""
        rc = one(render({"runtimeClass": {"name": "fast", "handler": "fast-handler"}}), "RuntimeClass")
        self.assertEqual((rc["metadata"]["name"], rc["handler"]), ("fast", "fast-handler"))
        self.assertNotIn("RuntimeClass", kinds(render({"runtimeClass": {"enabled": False}})))

    def test_monitoring(self):
        """all on: Service, ServiceMonitor (job rustlayer, node as instance), dashboard with the sidecar label"""
        objects = render(load_yaml(ALL_ON))
        svc = one(objects, "Service")
        sm = one(objects, "ServiceMonitor")
        self.assertEqual(sm["spec"]["selector"]["matchLabels"], svc["spec"]["selector"])
        (endpoint,) = sm["spec"]["endpoints"]
        self.assertEqual(endpoint["port"], svc["spec"]["ports"][0]["name"])
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        self.assertEqual(relabel["job"]["replacement"], "rustlayer")
        self.assertEqual(relabel["instance"]["sourceLabels"], ["__meta_kubernetes_pod_node_name"])
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        dash = next(o for o in objects if o["kind"] == "ConfigMap" and "rustlayer.json" in o.get("data", {}))
        self.assertEqual(dash["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(dash["metadata"]["namespace"], "monitoring")
        self.assertEqual(
            json.loads(dash["data"]["rustlayer.json"]), json.loads((CHART / "dashboards/rustlayer.json").read_text())
        )
        other = render({"metrics": {"dashboard": {"enabled": True, "sidecarLabel": "dash", "sidecarLabelValue": "yes"}}})
        labels = [o["metadata"]["labels"] for o in other if o["kind"] == "ConfigMap" and "rustlayer.json" in o["data"]]
        self.assertEqual(labels[0]["dash"], "yes")

    def test_prometheus_rule_is_the_rules_file(self):
        """PrometheusRule: groups equal rules/rustlayer-alerts.yaml"""
        rule = one(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
        self.assertEqual(rule["spec"]["groups"], load_yaml(CHART / "rules/rustlayer-alerts.yaml")["groups"])


# --- files/patch-containerd.sh ---------------------------------------------

V2_16 = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""

V2_PROXIES = """# kubeadm node, systemd cgroups, another snapshotter already proxied
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true

[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
"""

V3 = """version = 3

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true
"""

# The transfer service already lists its snapshotters (overlayfs and a stargz
# proxy): rustlayer joins them, nothing else is written.
V3_UNPACK = """version = 3

[plugins.'io.containerd.transfer.v1.local']
  max_concurrent_downloads = 3

  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'overlayfs'
    differ = 'walking'

  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'stargz'

[proxy_plugins.stargz]
  type = 'snapshot'
  address = '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock'
"""

# rustlayer's 2.x tables written by hand, in single-quoted keys: kept, not doubled.
V3_HAND = """version = 3

[plugins.'io.containerd.cri.v1.images'.runtime_platforms.rustlayer]
  platform = 'linux/amd64'
  snapshotter = 'rustlayer'

[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = 'linux/amd64'
  snapshotter = 'rustlayer' # by hand
"""

# Written by hand, as the README shows, and with no final newline.
V2_HAND = """version = 2

[proxy_plugins."rustlayer"]
  type = "snapshot"
  address = "/run/rustlayer/rustlayer.sock\""""

V1_RUNTIME = ("io.containerd.grpc.v1.cri", "containerd", "runtimes", "rustlayer")
V2_RUNTIME = ("io.containerd.cri.v1.runtime", "containerd", "runtimes", "rustlayer")

SAMPLES = {
    # name: (text, containerd version, expected runtime table or None, systemd
    # cgroup, the transfer service's unpack_config snapshotters afterwards or None)
    "v2, containerd 1.6 (Debian's config)": (V2_16, "1.6.20~ds1", None, None, None),
    "v2, containerd 1.7, other proxy plugins, systemd cgroups": (V2_PROXIES, "v1.7.22", V1_RUNTIME, True, None),
    "v3, containerd 2.1": (V3, "2.1.4", V2_RUNTIME, True, ["overlayfs", "rustlayer"]),
    "v3, containerd 2.1, the transfer service's own unpack_config": (
        V3_UNPACK, "2.1.9", V2_RUNTIME, False, ["overlayfs", "stargz", "rustlayer"]),
    "v3, containerd 2.1, runtime_platforms and unpack_config already written by hand": (
        V3_HAND, "2.1.9", V2_RUNTIME, False, ["rustlayer"]),
    "v2, proxy plugin already written by hand, no final newline": (V2_HAND, "1.7.22", V1_RUNTIME, False, None),
}

# The releases hack/chart-test.sh fetches with hack/containerd-fetch.sh and names
# in CONTAINERD_RELEASES ("1.6.20=/usr/bin 1.7.24=/.../usr/bin ...").
RELEASES = ("1.6.20", "1.7.24", "2.1.9")
# As root (hack/test.sh, CI) a check that cannot run fails instead of skipping.
REQUIRED = os.geteuid() == 0
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}


def check_json(probe: str) -> str:
    """What the chart's idmap-probe writes: `rustlayer check --output json` (an
    array of check, ok, detail) on a node whose probe `idmaps` or `cannot idmap`
    overlay lower layers, on the devmapper backend (`no idmap check`), compact
    (`..., compact`), or `empty` (the probe wrote nothing)."""
    if probe == "empty":
        return ""
    checks = [{"check": "kernel", "ok": True, "detail": "Linux 6.1.0"},
              {"check": "root", "ok": True, "detail": "/var/lib/rustlayer is a private directory"}]
    if probe == "no idmap check":
        checks.append({"check": "thin pool", "ok": True, "detail": "pool p"})
    else:
        idmaps = probe.startswith("idmaps")
        checks.append({"check": "idmapped layers", "ok": idmaps,
                       "detail": "overlayfs mounts on idmapped lower layers; remap_ids is on" if idmaps else
                       "idmapped mount: Invalid argument; remap_ids is on: turn it off"})
    checks.append({"check": "daemon", "ok": False, "detail": "not serving"})
    return json.dumps(checks) if probe.endswith("compact") else json.dumps(checks, indent=2)


def node_platform() -> str:
    """The platform the patcher writes for this machine: containerd's default."""
    return "linux/" + GO_ARCH.get(os.uname().machine, os.uname().machine)


def release_dirs() -> dict[str, Path]:
    dirs = {}
    for item in os.environ.get("CONTAINERD_RELEASES", "").split():
        version, _, path = item.partition("=")
        dirs[version] = Path(path)
    return dirs


def major_minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor.split("~")[0])


def dig(doc: dict, path: tuple) -> dict | None:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def bare_table(header: str) -> str:
    """A TOML table header without its brackets, quotes and spaces."""
    return "".join(c for c in header.split("#")[0] if c not in " \t\"'[]")


# Settings of containerd's `config default` that point at the host's own
# containerd (its directories and sockets), pointed into a private directory so
# the real containerd can run the patched config beside anything else.
HOST_PATHS = {
    ("", "root"): "root",
    ("", "state"): "state",
    ("grpc", "address"): "containerd.sock",
    ("plugins.io.containerd.internal.v1.opt", "path"): "opt",
    ("plugins.io.containerd.nri.v1.nri", "socket_path"): "nri.sock",
    ("plugins.io.containerd.grpc.v1.cri.cni", "conf_dir"): "net.d",
    ("plugins.io.containerd.cri.v1.runtime.cni", "conf_dir"): "net.d",
}


def private_copy(text: str, run_dir: Path) -> str:
    """The config with HOST_PATHS moved under run_dir, every other line as it was."""
    out, table = [], ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            table = bare_table(stripped)
        elif "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if (table, key) in HOST_PATHS:
                indent = line[: len(line) - len(line.lstrip())]
                line = f'{indent}{key} = "{run_dir / HOST_PATHS[(table, key)]}"\n'
        out.append(line)
    return "".join(out)


class RunningContainerd:
    """The real containerd on a config, until the with block ends."""

    def __init__(self, bin_dir: Path, config: Path, run_dir: Path):
        self.bin_dir, self.config, self.run_dir = bin_dir, config, run_dir
        self.socket = run_dir / "containerd.sock"
        self.log = run_dir / "containerd.log"

    def __enter__(self) -> "RunningContainerd":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.bin_dir / "containerd", "--config", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not self.socket.is_socket():
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd not serving after 60 s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def ctr(self, *args: str) -> str:
        out = subprocess.run(
            [self.bin_dir / "ctr", "-a", self.socket, *args], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {out.stderr}\n{self.log_tail()}")
        return out.stdout


class Patcher(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="patch-containerd-"))
        self.addCleanup(shutil.rmtree, self.dir)
        self.config = self.dir / "config.toml"
        self.restarts = self.dir / "restarts"

    def run_patcher(self, mode: str, version: str, check: str = "true", **env: str) -> subprocess.CompletedProcess:
        full_env = dict(
            os.environ,
            CONFIG=str(self.config),
            CONTAINERD_VERSION=version,
            CHECK_CMD=check,
            RESTART_CMD=f"echo restart >> {self.restarts}",
            HOST_EXEC="false",
            **env,
        )
        return subprocess.run(
            ["/bin/sh", str(PATCHER), mode], env=full_env, capture_output=True, text=True, timeout=60
        )

    def restart_count(self) -> int:
        return len(self.restarts.read_text().splitlines()) if self.restarts.exists() else 0

    def release_dir(self, release: str) -> Path:
        """The directory holding `release`'s containerd and ctr, or a skip (a
        failure as root) when hack/chart-test.sh could not provide it."""
        found = release_dirs().get(release)
        if found is None or not (found / "containerd").is_file():
            why = f"no containerd {release} (hack/chart-test.sh fetches it with hack/containerd-fetch.sh)"
            if REQUIRED:
                self.fail(why)
            self.skipTest(why)
        return found

    def containerd_dump(self, bin_dir: Path, path: Path) -> dict:
        """containerd's own reading of a config file; it must not warn about it."""
        out = subprocess.run(
            [bin_dir / "containerd", "--config", str(path), "config", "dump"], capture_output=True, text=True,
            timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("deprecat", out.stderr.lower(), out.stderr)
        return tomllib.loads(out.stdout)

    def test_samples(self):
        for name, (text, version, runtime_path, systemd, unpack) in SAMPLES.items():
            with self.subTest(f"patch-containerd.sh on {name}: add, add again, remove"):
                self.config.write_text(text)
                self.restarts.unlink(missing_ok=True)
                (self.dir / "config.toml.rustlayer-backup").unlink(missing_ok=True)
                first = self.run_patcher("add", version)
                self.assertEqual(first.returncode, 0, first.stderr + first.stdout)
                self.assertEqual(self.restart_count(), 1, "a changed file restarts containerd once")
                self.assertEqual((self.dir / "config.toml.rustlayer-backup").read_text(), text, "backup kept")
                patched = self.config.read_text()
                doc = tomllib.loads(patched)
                self.assertEqual(doc["proxy_plugins"]["rustlayer"]["type"], "snapshot")
                self.assertEqual(doc["proxy_plugins"]["rustlayer"]["address"], "/run/rustlayer/rustlayer.sock")
                wrote_proxy = 'proxy_plugins."rustlayer"' not in text
                self.assertEqual(patched.count("[proxy_plugins"), text.count("[proxy_plugins") + wrote_proxy)
                if wrote_proxy:
                    self.assertEqual("exports" in doc["proxy_plugins"]["rustlayer"], "1.6" not in version)
                # 2.1 never sends Commit a parent: no capability to declare.
                self.assertNotIn("capabilities", doc["proxy_plugins"]["rustlayer"])
                runtime = dig(doc, ("plugins",) + runtime_path) if runtime_path else None
                if runtime_path is None:
                    self.assertNotIn("runtimes.rustlayer", patched)
                    self.assertIn("no per-runtime snapshotter", first.stdout + first.stderr)
                else:
                    self.assertEqual(runtime["snapshotter"], "rustlayer")
                    self.assertEqual(runtime["runtime_type"], "io.containerd.runc.v2")
                    self.assertIs(runtime["options"]["SystemdCgroup"], systemd)
                platform = dig(doc, ("plugins", "io.containerd.cri.v1.images", "runtime_platforms", "rustlayer"))
                entries = dig(doc, ("plugins", "io.containerd.transfer.v1.local", "unpack_config"))
                if unpack is None:
                    self.assertIsNone(platform, "runtime_platforms is containerd 2.x's")
                    self.assertIsNone(entries, "the patcher writes no unpack_config for containerd 1.x")
                else:
                    expected_platform = "linux/amd64" if "runtime_platforms" in text else node_platform()
                    self.assertEqual(platform, {"platform": expected_platform, "snapshotter": "rustlayer"})
                    self.assertEqual([e["snapshotter"] for e in entries], unpack)
                    self.assertEqual(patched.count("runtime_platforms"), 1)
                # The default snapshotter is never rustlayer: pods without the
                # RuntimeClass, the DaemonSet's own included, must not need it.
                self.assertNotIn('snapshotter = "rustlayer"', patched.split("runtimes.rustlayer]")[0])
                self.assertEqual(dig(doc, ("plugins", "io.containerd.cri.v1.images", "snapshotter")),
                                 "overlayfs" if "'io.containerd.cri.v1.images']" in text else None)
                self.assertEqual(patched[: len(text)], text, "the original text is untouched before the block")

                second = self.run_patcher("add", version)
                self.assertEqual(second.returncode, 0, second.stderr)
                self.assertEqual(self.config.read_text(), patched, "second add changes nothing")
                self.assertEqual(self.restart_count(), 1, "second add does not restart containerd")

                removed = self.run_patcher("remove", version)
                self.assertEqual(removed.returncode, 0, removed.stderr)
                self.assertEqual(self.config.read_bytes(), text.encode(), "remove restores the file byte for byte")
                self.assertEqual(self.restart_count(), 2, "remove restarts containerd")
                again = self.run_patcher("remove", version)
                self.assertEqual(again.returncode, 0, again.stderr)
                self.assertEqual(self.restart_count(), 2, "a second remove is a no-op")

    def test_capabilities(self):
        cases = {
            # (containerd version, backend, what the node's probe found): the capabilities declared
            ("1.7.24", "overlay", "idmaps"): None,
            ("2.1.9", "overlay", None): None,
            ("2.1.9", "overlay", "idmaps"): ["remap-ids"],
            ("2.1.9", "overlay", "idmaps, compact"): ["remap-ids"],
            ("2.1.9", "overlay", "cannot idmap"): None,
            ("2.1.9", "overlay", "empty"): None,
            ("2.2.0", "overlay", "idmaps"): ["rebase", "remap-ids"],
            ("2.2.0", "overlay", None): ["rebase"],
            ("2.2.0", "devmapper", "no idmap check"): None,
            ("3.0.0", "overlay", "cannot idmap"): ["rebase"],
        }
        daemon_config = self.dir / "daemon.toml"
        daemon_config.write_text('root = "/var/lib/rustlayer"\nremap_ids = true\n\n[devmapper]\npool_name = "p"\n')
        out_config = self.dir / "daemon-out.toml"
        for (version, backend, probe), expected in cases.items():
            with self.subTest(f"patch-containerd.sh: containerd {version}, {backend} backend, probe "
                              f"{probe or 'not run'} declares {expected or 'no capabilities'} (rebase needs 2.2 "
                              "and overlay; remap-ids 2.0 and a probe that idmapped layers), and the daemon's "
                              "remap_ids says the same"):
                self.config.write_text(V3 if version[0] != "1" else V2_PROXIES)
                out_config.unlink(missing_ok=True)
                check = self.dir / "check.json"
                check.unlink(missing_ok=True)
                if probe is not None:
                    check.write_text(check_json(probe))
                out = self.run_patcher("add", version, SNAPSHOTTER_BACKEND=backend, IDMAP_CHECK=str(check),
                                       DAEMON_CONFIG=str(daemon_config), DAEMON_CONFIG_OUT=str(out_config))
                self.assertEqual(out.returncode, 0, out.stderr)
                patched = self.config.read_text()
                self.assertEqual(tomllib.loads(patched)["proxy_plugins"]["rustlayer"].get("capabilities"), expected)
                written = tomllib.loads(out_config.read_text())
                self.assertIs(written["remap_ids"], "remap-ids" in (expected or []), out.stdout + out.stderr)
                self.assertEqual((written["root"], written["devmapper"]), ("/var/lib/rustlayer", {"pool_name": "p"}),
                                 "the rest of the daemon's config is kept")
                removed = self.run_patcher("remove", version, DAEMON_CONFIG=str(daemon_config),
                                           DAEMON_CONFIG_OUT=str(out_config))
                self.assertEqual(removed.returncode, 0, removed.stderr)
                self.assertIs(tomllib.loads(out_config.read_text())["remap_ids"], False, "after remove")

    def test_chart_probe_on_this_kernel(self):
        """the chart's idmap-probe script, run with the real rustlayer binary on this kernel (which idmaps overlay
        lower layers), makes the patcher declare remap-ids on 2.1.9 and set the daemon's remap_ids = true"""
        binary = Path(os.environ.get("RUSTLAYER_BIN", REPO / "target" / "debug" / "rustlayer"))
        if os.geteuid() != 0:
            self.skipTest("the probe mounts overlay: needs root")
        self.assertTrue(binary.is_file(), f"no rustlayer binary at {binary}: cargo build first (or set RUSTLAYER_BIN)")
        objects = render({"containerdConfig": {"patch": {"enabled": True}}})
        pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
        script = pod["initContainers"][0]["command"][-1]
        state, root = self.dir / "state", self.dir / "root"
        state.mkdir()
        daemon_config = self.dir / "daemon.toml"
        daemon_config.write_text(f'root = "{root}"\naddress = "{self.dir}/absent.sock"\n')
        script = (script.replace("/etc/rustlayer/config.toml", str(daemon_config))
                  .replace("/run/rustlayer-patch", str(state)).replace("rustlayer check", f"{binary} check"))
        probe = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
        self.assertEqual(probe.returncode, 0, probe.stderr)
        self.config.write_text(V3)
        out = self.run_patcher("add", "2.1.9", IDMAP_CHECK=str(state / "check.json"),
                               DAEMON_CONFIG=str(daemon_config), DAEMON_CONFIG_OUT=str(state / "config.toml"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(tomllib.loads(self.config.read_text())["proxy_plugins"]["rustlayer"].get("capabilities"),
                         ["remap-ids"], (state / "check.json").read_text())
        self.assertIs(tomllib.loads((state / "config.toml").read_text())["remap_ids"], True)

    def test_each_release_loads_its_patched_default(self):
        for release in RELEASES:
            with self.subTest(f"containerd {release}: its own `config default`, patched, is read back with the "
                              "proxy plugin, the handler's snapshotter (and on 2.x runtime_platforms and both "
                              "unpack_config entries), runs without errors or deprecations, and remove restores it"):
                self.check_release(release)

    def check_release(self, release: str) -> None:
        bin_dir = self.release_dir(release)
        containerd = bin_dir / "containerd"
        default = subprocess.run([containerd, "config", "default"], capture_output=True, text=True, timeout=60)
        self.assertEqual(default.returncode, 0, default.stderr)
        self.config.write_text(default.stdout)
        for leftover in (self.restarts, self.dir / "config.toml.rustlayer-backup"):
            leftover.unlink(missing_ok=True)
        # That containerd itself is the check the patcher runs before it replaces the file.
        # A node whose probe idmapped layers: 2.x declares remap-ids.
        check = self.dir / "check.json"
        check.write_text(check_json("idmaps"))
        out = self.run_patcher("add", release, check=f'"{containerd}" --config "$1" config dump >/dev/null',
                               IDMAP_CHECK=str(check))
        self.assertEqual(out.returncode, 0, out.stderr + out.stdout)
        self.assertEqual(self.restart_count(), 1)
        patched = self.config.read_text()
        dump = self.containerd_dump(bin_dir, self.config)

        proxy = dump["proxy_plugins"]["rustlayer"]
        self.assertEqual((proxy["type"], proxy["address"]), ("snapshot", "/run/rustlayer/rustlayer.sock"))
        version = major_minor(release)
        if version < (1, 7):
            self.assertNotIn("exports", proxy, "1.6 has no exports on proxy plugins")
            cri = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
            self.assertNotIn("rustlayer", cri["runtimes"], "1.6 has no per-runtime snapshotter")
        else:
            self.assertEqual(proxy["exports"]["root"], "/var/lib/rustlayer")
            # Neither 1.7 nor 2.1 sends Commit a parent: no rebase; 2.x idmaps layers.
            self.assertEqual(proxy.get("capabilities") or [], ["remap-ids"] if version >= (2, 0) else [])
            if version < (2, 0):
                cri = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
            else:
                cri = dump["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]
                images = dump["plugins"]["io.containerd.cri.v1.images"]
                self.assertEqual(images["snapshotter"], "overlayfs", "the default snapshotter is unchanged")
                self.assertEqual(images["runtime_platforms"]["rustlayer"],
                                 {"platform": node_platform(), "snapshotter": "rustlayer"})
                unpack = dump["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
                self.assertEqual([(u["platform"], u["snapshotter"], u["differ"]) for u in unpack],
                                 [(node_platform(), "overlayfs", "walking"), (node_platform(), "rustlayer", "walking")])
            self.assertEqual(cri["runtimes"]["rustlayer"]["snapshotter"], "rustlayer")
            self.assertEqual(cri["runtimes"]["rustlayer"]["runtime_type"], "io.containerd.runc.v2")
        self.assertEqual("remap-ids" in patched, version >= (2, 0))

        self.check_running(release, bin_dir, default.stdout, patched)

        removed = self.run_patcher("remove", release)
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertEqual(self.config.read_bytes(), default.stdout.encode(), "remove restores the file byte for byte")

    def check_running(self, release: str, bin_dir: Path, default: str, patched: str) -> None:
        """containerd runs the patched config (its host paths moved aside) as it
        runs its own default: the same plugins load, plus rustlayer's proxy with
        its exports and on 2.x the CRI and transfer plugins that read the new
        tables, and nothing patched is deprecated."""
        if os.geteuid() != 0:
            why = "running containerd needs root"
            if REQUIRED:
                self.fail(why)
            self.skipTest(why)
        before, warned_before, _ = self.observe(release, bin_dir, default, "default")
        after, warned_after, detail = self.observe(release, bin_dir, patched, "patched")
        self.assertEqual(after.pop(("io.containerd.snapshotter.v1", "rustlayer"), None), "ok")
        self.assertEqual(after, before, "the patched config loads the same plugins, with the same outcome")
        loaded = [("io.containerd.grpc.v1", "cri")]
        if major_minor(release) >= (2, 0):
            loaded += [("io.containerd.transfer.v1", "local"), ("io.containerd.cri.v1", "images"),
                       ("io.containerd.cri.v1", "runtime")]
        for plugin in loaded:
            self.assertEqual(after.get(plugin), "ok", plugin)
        self.assertEqual(warned_after - warned_before, set(), "deprecations the patch brought in")
        if major_minor(release) >= (1, 7):
            self.assertRegex(detail, r"(?m)^\s+root\s+/var/lib/rustlayer$")
            if major_minor(release) >= (2, 0):
                self.assertRegex(detail, r"(?m)^\s*Capabilities:\s+remap-ids$", "containerd declares remap-ids")
            else:
                self.assertNotIn("Capabilities", detail)

    def observe(self, release: str, bin_dir: Path, text: str, label: str) -> tuple[dict, set, str]:
        """Runs containerd on `text`: each plugin's status, the deprecations it
        reports (1.7+; 1.6 only logs them), and rustlayer's plugin details."""
        run_dir = self.dir / f"run-{release}-{label}"
        run_config = self.dir / f"run-{release}-{label}.toml"
        run_config.write_text(private_copy(text, run_dir))
        with RunningContainerd(bin_dir, run_config, run_dir) as running:
            rows = [line.split() for line in running.ctr("plugins", "ls").splitlines()[1:]]
            status = {(row[0], row[1]): row[-1] for row in rows}
            if major_minor(release) >= (1, 7):
                # ctr prints nothing when there is nothing deprecated.
                listed = running.ctr("deprecations", "list", "--format", "json").strip()
                warned = {d["id"] for d in (json.loads(listed) if listed else [])}
                detail = running.ctr("plugins", "ls", "-d", "id==rustlayer")
            else:
                log = running.log.read_text(errors="replace").splitlines()
                warned = {line.split(" msg=", 1)[-1] for line in log if "deprecat" in line.lower()}
                detail = ""
        return status, warned, detail

    def test_real_containerd_reads_other_proxies(self):
        """patch-containerd.sh: containerd 1.7.24 reads the patched v2 config with another proxy plugin kept"""
        bin_dir = self.release_dir("1.7.24")
        self.config.write_text(V2_PROXIES)
        out = self.run_patcher("add", "1.7.24", check=f'"{bin_dir}/containerd" --config "$1" config dump >/dev/null')
        self.assertEqual(out.returncode, 0, out.stderr)
        dump = self.containerd_dump(bin_dir, self.config)
        self.assertEqual(dump["proxy_plugins"]["rustlayer"]["address"], "/run/rustlayer/rustlayer.sock")
        self.assertEqual(dump["proxy_plugins"]["stargz"]["type"], "snapshot")
        cri = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
        self.assertIn("rustlayer", cri["runtimes"])
        self.assertEqual(cri["snapshotter"], "overlayfs", "the default snapshotter is unchanged")

    def test_rejected_config_is_left_alone(self):
        """patch-containerd.sh: a config containerd rejects is not written, and nothing restarts"""
        self.config.write_text(V2_16)
        out = self.run_patcher("add", "1.7.22", check="exit 1")
        self.assertNotEqual(out.returncode, 0)
        self.assertEqual(self.config.read_text(), V2_16)
        self.assertEqual(self.restart_count(), 0)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["config.toml", "config.toml.rustlayer-backup"])

    def test_refusals(self):
        """patch-containerd.sh: refuses version 1 configs, a missing file, a v3 config on containerd 1.x, an
        inline unpack_config, an unknown backend"""
        inline = V3 + "\n[plugins.'io.containerd.transfer.v1.local']\n  unpack_config = []\n"
        cases = {
            "version 1": ('[plugins.cri]\n  sandbox_image = "pause"\n', "1.7.0", {}),
            "v3 on 1.7": (V3, "1.7.0", {}),
            "unknown version": (V2_16, "not-a-version", {}),
            "unpack_config as an inline array": (inline, "2.1.9", {}),
            "backend not overlay/devmapper": (V3, "2.2.0", {"SNAPSHOTTER_BACKEND": "zfs"}),
        }
        for why, (text, version, env) in cases.items():
            with self.subTest(f"patch-containerd.sh refuses: {why}"):
                self.config.write_text(text)
                out = self.run_patcher("add", version, **env)
                self.assertNotEqual(out.returncode, 0, out.stdout)
                self.assertEqual(self.config.read_text(), text)
                self.assertEqual(self.restart_count(), 0)
        self.config.unlink()
        out = self.run_patcher("add", "1.7.0")
        self.assertNotEqual(out.returncode, 0)
        self.assertFalse(self.config.exists())

    def test_shellcheck(self):
        """shellcheck: patch-containerd.sh (POSIX sh) and every shell script under hack/ and .ci/ are clean"""
        if not shutil.which("shellcheck"):
            if REQUIRED:
                self.fail("no shellcheck (Debian package shellcheck)")
            self.skipTest("no shellcheck (Debian package shellcheck)")
        out = subprocess.run(["shellcheck", "-s", "sh", str(PATCHER)], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout)
        unclean = []
        for script in shell_scripts():
            # busybox's ash is closest to dash; shellcheck cannot tell from its shebang.
            shell = ["-s", "dash"] if script.read_bytes().startswith(b"#!/bin/busybox") else []
            out = subprocess.run(["shellcheck", "-x", *shell, str(script.relative_to(REPO))], cwd=REPO,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                unclean.append(out.stdout)
        self.assertEqual(unclean, [])


def shell_scripts() -> list[Path]:
    """hack/'s and .ci/'s shell scripts: *.sh, and files with a shell's shebang."""
    found = []
    for path in sorted([*(REPO / "hack").rglob("*"), *(REPO / ".ci").glob("*")]):
        if not path.is_file():
            continue
        first = path.read_bytes().split(b"\n", 1)[0].rstrip()
        if path.suffix == ".sh" or (first.startswith(b"#!") and first.endswith((b"sh", b"bash"))):
            found.append(path)
    return found


class Result(unittest.TextTestResult):
    """One "ok - ..." / "not ok - ..." / "skip - ..." line per check and subcheck."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0
        self.with_subtests: set[str] = set()

    @staticmethod
    def describe(test) -> str:
        return test.shortDescription() or test.id().split(".", 1)[-1]

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def details(self, err) -> None:
        text = "".join(traceback.format_exception_only(err[0], err[1]))
        for text in text.rstrip().splitlines()[-12:]:
            self.line("    " + text)

    def addSuccess(self, test):
        super().addSuccess(test)
        if test.id() not in self.with_subtests:
            self.passed += 1
            self.line(f"ok - {self.describe(test)}")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        self.with_subtests.add(test.id())
        name = subtest._message if isinstance(subtest._message, str) else self.describe(test)
        if err is None:
            self.passed += 1
            self.line(f"ok - {name}")
        else:
            self.line(f"not ok - {name}")
            self.details(err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.line(f"not ok - {self.describe(test)}")
        self.details(err)

    def addError(self, test, err):
        super().addError(test, err)
        self.line(f"not ok - {self.describe(test)} (error)")
        self.details(err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.line(f"skip - {self.describe(test)} ({reason})")

    # The per-test lines above replace unittest's own progress output.
    def startTest(self, test):
        unittest.TestResult.startTest(self, test)

    def printErrors(self):
        pass


def main() -> int:
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = Result(unittest.runner._WritelnDecorator(sys.stdout), True, 0)  # noqa: SLF001
    suite.run(result)
    failed = len(result.failures) + len(result.errors)
    print(f"chart-test: {result.passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
