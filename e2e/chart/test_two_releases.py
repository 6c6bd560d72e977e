"""Two releases of the chart on the same nodes: the default one and a second,
containerdConfig.patch.pluginName rustlayer-limited, whose daemon has its own
[overlay] default_size and its own RuntimeClass.

Renders both with Helm's engine and checks that nothing node-level or cluster-wide
collides; runs both releases' patchers (with the environment each release's
DaemonSet gives them) on one containerd config, in turn and at once, reads the
result back with the real containerd of each release (1.6.20, 1.7.24, 2.1.9) and,
as root, runs it; and removes either release's block, leaving the other's.

hack/chart-test.sh runs this module together with e2e/chart/test_chart.py, whose
helpers (the patcher runner, RunningContainerd, the sample configs) it reuses.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_chart as base  # noqa: E402  (found through the path above)

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402

LIMITED = "rustlayer-limited"
# Both with the patcher on and every monitoring object, so their names are compared too.
COMMON = {"containerdConfig": {"patch": {"enabled": True}},
          "metrics": {"service": {"enabled": True}, "serviceMonitor": {"enabled": True},
                      "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
RELEASES = {
    "rustlayer": COMMON,
    LIMITED: base.merge(COMMON, {"containerdConfig": {"patch": {"pluginName": LIMITED}},
                                 "config": {"overlay": {"default_size": "10GiB"}}}),
}
# Host paths every release mounts on purpose: the devices, and containerd's config
# directory, whose one file the patchers take turns to edit.
SHARED_HOST_PATHS = {"/dev", "/etc/containerd"}


# The label the daemon sets on its Node when its config has no [node] ready_label.
DAEMON_DEFAULT_READY_LABEL = "rustlayer.io/ready"


def render_text(name: str, values: dict) -> dict[str, str]:
    """The chart's rendered files, NOTES.txt included, as text."""
    with helm.Chart.load(base.CHART) as chart:
        return dict(chart.render(values, name=name, namespace=base.NAMESPACE, is_install=True))


def render_release(name: str, values: dict) -> list[dict]:
    manifests = render_text(name, values)
    return [o for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
            for o in base.yaml.safe_load_all(text) if o]


def daemon_config_text(objects: list[dict]) -> str:
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and "config.toml" in o.get("data", {}))
    return cm["data"]["config.toml"]


def ready_label(objects: list[dict]) -> str:
    """The Node label the release's daemon sets, as its rendered config tells it."""
    daemon = tomllib.loads(daemon_config_text(objects))
    return daemon.get("node", {}).get("ready_label", DAEMON_DEFAULT_READY_LABEL)


def patcher_env(objects: list[dict]) -> dict[str, str]:
    """What the release's containerd-config init container tells the patcher."""
    pod = base.one(objects, "DaemonSet")["spec"]["template"]["spec"]
    init = next(c for c in pod["initContainers"] if c["name"] == "containerd-config")
    return {e["name"]: e["value"] for e in init["env"] if "value" in e}


def node_claims(objects: list[dict]) -> dict[str, set]:
    """What a release takes on a node or in the cluster, which no other release may take."""
    ds = base.one(objects, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and "config.toml" in o.get("data", {}))
    daemon = tomllib.loads(cm["data"]["config.toml"])
    env = patcher_env(objects)
    ports = set()
    if pod["hostNetwork"]:
        ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        ports.add(int(daemon["metrics_address"].rsplit(":", 1)[1]))
    return {
        "host paths": {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v} - SHARED_HOST_PATHS,
        "daemon root and socket": {daemon["root"], daemon["address"]},
        "containerd names": {env["PLUGIN_NAME"], env["RUNTIME_HANDLER"]},
        "containerd files": {f"{env['CONFIG']}.{env['PLUGIN_NAME']}-backup", f"{env['CONFIG']}.{env['PLUGIN_NAME']}-new"},
        "node ports": ports,
        "node labels": {ready_label(objects)},
        "objects": {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects},
    }


class TwoReleasesRender(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objects = {name: render_release(name, values) for name, values in RELEASES.items()}

    def test_nothing_collides(self):
        """two releases (rustlayer, rustlayer-limited): no host path, socket, root, containerd name or backup file,
        node port, Node label or object name in common"""
        first, second = (node_claims(o) for o in self.objects.values())
        for what in first:
            with self.subTest(f"two releases: no {what} in common"):
                self.assertEqual(first[what] & second[what], set(), what)
        self.assertEqual(second["daemon root and socket"],
                         {"/var/lib/rustlayer-limited", "/run/rustlayer-limited/rustlayer-limited.sock"})
        self.assertEqual(first["daemon root and socket"], {"/var/lib/rustlayer", "/run/rustlayer/rustlayer.sock"})

    def test_host_network_ports(self):
        """two releases with hostNetwork: metrics.port gives each its own node port, probes follow it"""
        claims = []
        for port, (name, values) in zip((9192, 9193), RELEASES.items()):
            objects = render_release(name, base.merge(values, {"hostNetwork": True, "metrics": {"port": port}}))
            claims.append(node_claims(objects)["node ports"])
            ctr = base.one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
            self.assertEqual(ctr["readinessProbe"]["httpGet"]["port"], "metrics")
        self.assertEqual(claims, [{9192}, {9193}])

    def test_second_release(self):
        """the rustlayer-limited release: its plugin name, handler and RuntimeClass, its own default_size"""
        objects = self.objects[LIMITED]
        env = patcher_env(objects)
        self.assertEqual((env["PLUGIN_NAME"], env["RUNTIME_HANDLER"]), (LIMITED, LIMITED))
        self.assertEqual(env["SNAPSHOTTER_ROOT"], "/var/lib/rustlayer-limited")
        rc = base.one(objects, "RuntimeClass")
        self.assertEqual((rc["metadata"]["name"], rc["handler"]), (LIMITED, LIMITED))
        cm = next(o for o in objects if o["kind"] == "ConfigMap" and "config.toml" in o.get("data", {}))
        self.assertEqual(tomllib.loads(cm["data"]["config.toml"])["overlay"], {"default_size": "10GiB"})
        ds = base.one(objects, "DaemonSet")
        root = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "root")
        self.assertEqual(root["hostPath"]["path"], "/var/lib/rustlayer-limited")
        explicit = render_release(LIMITED, base.merge(RELEASES[LIMITED], {
            "runtimeClass": {"name": "limited", "handler": "limited-handler"},
            "config": {"root": "/mnt/limited", "address": "/run/limited/l.sock"}}))
        self.assertEqual(patcher_env(explicit)["RUNTIME_HANDLER"], "limited-handler")
        self.assertEqual(patcher_env(explicit)["SNAPSHOTTER_ROOT"], "/mnt/limited")
        self.assertEqual(base.one(explicit, "RuntimeClass")["metadata"]["name"], "limited")

    def test_second_release_validates(self):
        """the rustlayer-limited release's objects are valid Kubernetes objects (strict)"""
        for obj in self.objects[LIMITED]:
            if obj["kind"] not in base.CRD_SCHEMAS:
                kubernetes_validate.validate(obj, base.KUBE_VERSIONS[-1], strict=True)

    def test_bad_plugin_names_fail(self):
        """a containerdConfig.patch.pluginName that is no bare TOML key (or makes no RuntimeClass handler, or too
        long a socket path) fails rendering with a message saying so"""
        bad = {
            "a.b": "is not a bare TOML key",
            "": "is not a bare TOML key",
            "rust layer": "is not a bare TOML key",
            'a"b': "is not a bare TOML key",
            # A bare TOML key, but no name for a RuntimeClass's handler.
            "Rust_Limited": "no lowercase RFC 1123 label",
            "x" * 49: "longer than a unix socket path may be",
        }
        for name, message in bad.items():
            with self.subTest(f"rendering fails, saying why, for pluginName {name[:20]!r}"):
                with self.assertRaises(helm.HelmRenderError) as caught:
                    render_release(LIMITED, {"containerdConfig": {"patch": {"pluginName": name}}})
                self.assertIn(message, str(caught.exception))
        # Named explicitly, the handler and the RuntimeClass need not follow the plugin name.
        rc = base.one(render_release(LIMITED, {"containerdConfig": {"patch": {"pluginName": "Rust_Limited"}},
                                               "runtimeClass": {"handler": "limited"}}), "RuntimeClass")
        self.assertEqual((rc["metadata"]["name"], rc["handler"]), ("limited", "limited"))


class TwoReleasesNodeLabels(unittest.TestCase):
    """Each release's daemon labels the Node with a label of its own, so one's clean
    shutdown does not unlabel a node where the other still serves."""

    def test_each_release_its_own_label(self):
        """two releases: the default daemon keeps rustlayer.io/ready (no [node] table), the rustlayer-limited one is
        told rustlayer.io/ready-rustlayer-limited in its config; both run --node-integration=on"""
        first, second = (render_release(name, values) for name, values in RELEASES.items())
        self.assertNotIn("node", tomllib.loads(daemon_config_text(first)))
        self.assertEqual(tomllib.loads(daemon_config_text(second))["node"],
                         {"ready_label": "rustlayer.io/ready-rustlayer-limited"})
        self.assertEqual([ready_label(first), ready_label(second)],
                         ["rustlayer.io/ready", "rustlayer.io/ready-rustlayer-limited"])
        for objects in (first, second):
            ctr = base.one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
            self.assertEqual(ctr["args"], ["--node-integration=on"])

    def test_default_renders_as_before(self):
        """the default release: rendering with the default label given explicitly, or with pluginName rustlayer
        given explicitly, is byte for byte the default rendering (same config.toml, so the same checksum/config:
        upgrading rolls no pod)"""
        default = render_text("rustlayer", {})
        for values in ({"nodeIntegration": {"readyLabel": "rustlayer.io/ready"}},
                       {"containerdConfig": {"patch": {"pluginName": "rustlayer"}}}):
            with self.subTest(f"default rendering unchanged by {values}"):
                self.assertEqual(render_text("rustlayer", values), default)
        objects = render_release("rustlayer", {})
        self.assertNotIn("[node]", daemon_config_text(objects))
        self.assertNotIn("ready_label", daemon_config_text(objects))

    def test_explicit_label(self):
        """nodeIntegration.readyLabel overrides the derived label, and the default release gets a [node] table
        only when told another label"""
        objects = render_release(LIMITED, base.merge(RELEASES[LIMITED],
                                                     {"nodeIntegration": {"readyLabel": "example.com/limited"}}))
        self.assertEqual(ready_label(objects), "example.com/limited")
        objects = render_release("rustlayer", {"nodeIntegration": {"readyLabel": "example.com/ready"}})
        self.assertEqual(tomllib.loads(daemon_config_text(objects))["node"], {"ready_label": "example.com/ready"})

    def test_notes_name_the_label(self):
        """NOTES.txt names each release's own label, and how to select nodes by it"""
        for name, values in RELEASES.items():
            notes = next(t for p, t in render_text(name, values).items() if p.endswith("NOTES.txt"))
            label = ready_label(render_release(name, values))
            with self.subTest(f"{name}: NOTES.txt names {label}"):
                self.assertIn(f"labels its Node {label}=true", notes)
                self.assertIn(f"kubectl get nodes -l {label}=true", notes)
        off = render_text(LIMITED, base.merge(RELEASES[LIMITED], {"nodeIntegration": {"enabled": False}}))
        self.assertNotIn("labels its Node", next(t for p, t in off.items() if p.endswith("NOTES.txt")))

    def test_bad_labels_fail(self):
        """a nodeIntegration.readyLabel that is no label key, or a pluginName that derives none, fails rendering
        saying which value to fix"""
        bad = {
            "rustlayer.io/ready limited": "nodeIntegration.readyLabel \"rustlayer.io/ready limited\" is no "
                                          "Kubernetes label key",
            "Rustlayer.io/ready": "is no Kubernetes label key",
            "rustlayer.io/": "is no Kubernetes label key",
            "rustlayer.io/ready-": "is no Kubernetes label key",
            "a/b/c": "is no Kubernetes label key",
            "rustlayer.io/" + "r" * 64: "is no Kubernetes label key",
        }
        for label, message in bad.items():
            with self.subTest(f"rendering fails for nodeIntegration.readyLabel {label[:30]!r}"):
                with self.assertRaises(helm.HelmRenderError) as caught:
                    render_release(LIMITED, base.merge(RELEASES[LIMITED], {"nodeIntegration": {"readyLabel": label}}))
                self.assertIn(message, str(caught.exception))
        with self.assertRaises(helm.HelmRenderError) as caught:
            render_release(LIMITED, {"containerdConfig": {"patch": {"pluginName": "limited_"}},
                                     "runtimeClass": {"handler": "limited"}})
        self.assertIn('the node label "rustlayer.io/ready-limited_" derived from containerdConfig.patch.pluginName '
                      "is no Kubernetes label key", str(caught.exception))
        self.assertIn("set nodeIntegration.readyLabel", str(caught.exception))

    def test_the_daemon_reads_the_rendered_label(self):
        """the real rustlayer binary loads the rustlayer-limited release's rendered config, [node] table
        included, and refuses a label the chart would not render, saying why"""
        binary = Path(os.environ.get("RUSTLAYER_BIN", REPO / "target" / "debug" / "rustlayer"))
        self.assertTrue(binary.is_file(), f"no rustlayer binary at {binary}: cargo build first (or set RUSTLAYER_BIN)")
        rendered = daemon_config_text(render_release(LIMITED, RELEASES[LIMITED]))
        with tempfile.TemporaryDirectory() as scratch:
            socket = Path(scratch) / "none.sock"
            for text, config_error in ((rendered, None),
                                       (rendered.replace("ready-rustlayer-limited", "ready rustlayer-limited"),
                                        "is no Kubernetes label key")):
                config = Path(scratch) / "config.toml"
                config.write_text(text)
                # `ls` reads the config, then dials the socket: nothing serves there.
                out = subprocess.run([str(binary), "ls", "--config", str(config), "--address", str(socket)],
                                     capture_output=True, text=True, timeout=60)
                self.assertNotEqual(out.returncode, 0)
                if config_error:
                    self.assertIn("invalid configuration in", out.stderr)
                    self.assertIn(config_error, out.stderr)
                else:
                    self.assertNotIn("invalid configuration", out.stderr)
                    self.assertIn(str(socket), out.stderr)


class TwoPatchers(unittest.TestCase):
    # The single-release patcher tests' set-up and helpers, not their tests.
    setUp = base.Patcher.setUp
    run_patcher = base.Patcher.run_patcher
    restart_count = base.Patcher.restart_count
    release_dir = base.Patcher.release_dir
    containerd_dump = base.Patcher.containerd_dump
    observe = base.Patcher.observe

    @classmethod
    def setUpClass(cls):
        cls.env = {}
        for name, values in RELEASES.items():
            env = patcher_env(render_release(name, values))
            cls.env[name] = {k: env[k] for k in ("PLUGIN_NAME", "RUNTIME_HANDLER", "SNAPSHOTTER_ADDRESS",
                                                  "SNAPSHOTTER_ROOT", "SNAPSHOTTER_BACKEND")}

    def patch(self, release: str, mode: str, version: str, check: str = "true", **env: str):
        out = self.run_patcher(mode, version, check=check, **self.env[release], **env)
        self.assertEqual(out.returncode, 0, f"{release} {mode}: {out.stderr}{out.stdout}")
        return out

    def test_each_release_default_config(self):
        for release in base.RELEASES:
            with self.subTest(f"containerd {release}: its own `config default` patched by both releases in turn "
                              "holds both proxy plugins (and from 1.7 both handlers, on 2.x both runtime_platforms "
                              "and unpack entries), is read and run by that containerd, and removing either "
                              "release's block leaves the other's (the first byte for byte)"):
                bin_dir = self.release_dir(release)
                default = subprocess.run([bin_dir / "containerd", "config", "default"], capture_output=True,
                                         text=True, timeout=60)
                self.assertEqual(default.returncode, 0, default.stderr)
                self.check_both(default.stdout, release, bin_dir, run=True)

    def test_samples(self):
        samples = {"v2 with another proxy plugin": (base.V2_PROXIES, "1.7.24"), "v3": (base.V3, "2.1.9"),
                   "v3 with the transfer service's own unpack_config": (base.V3_UNPACK, "2.1.9")}
        for what, (text, release) in samples.items():
            with self.subTest(f"patch-containerd.sh, two releases on a {what} config (containerd {release})"):
                self.check_both(text, release, self.release_dir(release))

    def check_both(self, text: str, release: str, bin_dir: Path, run: bool = False) -> None:
        """Both releases' patches on `text`, and their removal in either order; with
        `run` (a `config default`, whose host paths observe() can move aside) the
        patched file is run by that containerd, as root."""
        check = f'"{bin_dir}/containerd" --config "$1" config dump >/dev/null'
        version = base.major_minor(release)
        self.config.write_text(text)
        self.restarts.unlink(missing_ok=True)
        for leftover in self.dir.glob("config.toml.*"):
            leftover.unlink()
        self.patch("rustlayer", "add", release, check)
        after_first = self.config.read_bytes()
        self.patch(LIMITED, "add", release, check)
        both = self.config.read_text()
        self.assertEqual(self.restart_count(), 2)
        self.assertEqual((self.dir / f"config.toml.{LIMITED}-backup").read_bytes(), after_first)
        self.patch(LIMITED, "add", release, check)
        self.assertEqual(self.config.read_text(), both, "a second add of the second release changes nothing")
        self.assertEqual(self.restart_count(), 2)

        dump = self.containerd_dump(bin_dir, self.config)
        for name, env in self.env.items():
            proxy = dump["proxy_plugins"][env["PLUGIN_NAME"]]
            self.assertEqual((proxy["type"], proxy["address"]), ("snapshot", env["SNAPSHOTTER_ADDRESS"]))
            if version < (1, 7):
                continue
            self.assertEqual(proxy["exports"]["root"], env["SNAPSHOTTER_ROOT"])
            cri = (dump["plugins"]["io.containerd.grpc.v1.cri"] if version < (2, 0)
                   else dump["plugins"]["io.containerd.cri.v1.runtime"])["containerd"]
            self.assertEqual(cri["runtimes"][env["RUNTIME_HANDLER"]]["snapshotter"], env["PLUGIN_NAME"])
            if version >= (2, 0):
                images = dump["plugins"]["io.containerd.cri.v1.images"]
                self.assertEqual(images["runtime_platforms"][env["RUNTIME_HANDLER"]]["snapshotter"], env["PLUGIN_NAME"])
                self.assertEqual(images["snapshotter"], "overlayfs")
        if version >= (2, 0):
            unpack = [u["snapshotter"] for u in dump["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]]
            self.assertTrue({"overlayfs", "rustlayer", LIMITED} <= set(unpack), unpack)

        if run and os.geteuid() == 0:
            before, warned_before, _ = self.observe(release, bin_dir, text, "original")
            after, warned_after, _ = self.observe(release, bin_dir, both, "both")
            for name in self.env:
                self.assertEqual(after.pop(("io.containerd.snapshotter.v1", name), None), "ok", name)
            self.assertEqual(after, before, "both patches load the same plugins as the original, plus two proxies")
            self.assertEqual(warned_after - warned_before, set(), "deprecations the patches brought in")
        elif run and base.REQUIRED:
            self.fail("running containerd needs root")

        self.patch(LIMITED, "remove", release, check)
        self.assertEqual(self.config.read_bytes(), after_first, "removing the second leaves the first byte for byte")
        # The other order: the first goes, the second's block stands alone.
        self.patch(LIMITED, "add", release, check)
        self.patch("rustlayer", "remove", release, check)
        dump = self.containerd_dump(bin_dir, self.config)
        self.assertNotIn("rustlayer", dump.get("proxy_plugins", {}))
        self.assertIn(LIMITED, dump["proxy_plugins"])
        if version >= (2, 0):
            unpack = [u["snapshotter"] for u in dump["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]]
            self.assertIn("overlayfs", unpack, "the default snapshotter still unpacks once the first block is gone")
            self.assertIn(LIMITED, unpack)
        self.patch(LIMITED, "remove", release, check)
        self.assertEqual(self.config.read_bytes(), text.encode(), "both removed: the original, byte for byte")

    def test_same_handler_refused(self):
        """patch-containerd.sh: a second release naming the first's runtime handler is refused, nothing changes"""
        self.config.write_text(base.V3)
        self.patch("rustlayer", "add", "2.1.9")
        patched = self.config.read_text()
        out = self.run_patcher("add", "2.1.9", **dict(self.env[LIMITED], RUNTIME_HANDLER="rustlayer"))
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertIn("already written by the rustlayer patcher's block", out.stderr)
        self.assertEqual(self.config.read_text(), patched)
        self.assertEqual(self.restart_count(), 1)

    def test_waits_for_the_lock(self):
        """patch-containerd.sh: while another patcher holds the config directory's lock it waits, and gives up
        after LOCK_TIMEOUT leaving the file alone"""
        self.config.write_text(base.V3)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            out = self.run_patcher("add", "2.1.9", LOCK_TIMEOUT="1", **self.env[LIMITED])
        finally:
            os.close(fd)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertIn("held", out.stderr)
        self.assertEqual(self.config.read_text(), base.V3)
        self.assertEqual(self.restart_count(), 0)
        self.patch(LIMITED, "add", "2.1.9")

    def test_at_once(self):
        """patch-containerd.sh: both releases' patchers started at the same moment, 20 times: both blocks land"""
        env = dict(os.environ, CONFIG=str(self.config), CONTAINERD_VERSION="2.1.9", CHECK_CMD="true",
                   RESTART_CMD=f"echo restart >> {self.restarts}", HOST_EXEC="false")
        for _ in range(20):
            self.config.write_text(base.V3)
            runs = [subprocess.Popen(["/bin/sh", str(base.PATCHER), "add"], env=dict(env, **self.env[name]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for name in self.env]
            for run in runs:
                _, err = run.communicate(timeout=60)
                self.assertEqual(run.returncode, 0, err)
            doc = tomllib.loads(self.config.read_text())
            self.assertEqual(set(doc["proxy_plugins"]), {"rustlayer", LIMITED})


def main() -> int:
    # test_chart's runner runs the test classes of its own module, with its
    # "ok - ..." lines and one summary: these join them there.
    for case in (TwoReleasesRender, TwoReleasesNodeLabels, TwoPatchers):
        setattr(base, case.__name__, case)
    return base.main()


if __name__ == "__main__":
    sys.exit(main())
