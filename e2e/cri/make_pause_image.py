#!/usr/bin/env python3
"""Build the CRI e2e test's sandbox ("pause") image offline: one layer with the
host's static busybox, whose entrypoint sleeps until the sandbox is stopped.
containerd's CRI plugin runs it as every pod's first container.

Reuses e2e/containerd/make_image.py's deterministic layer and archive writers.
Standard library only.

  make_pause_image.py --output pause.tar [--name docker.io/library/rustlayer-pause:e2e]
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # nothing left behind in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "containerd"))
import make_image as mi  # noqa: E402

DEFAULT_NAME = "docker.io/library/rustlayer-pause:e2e"


def build(busybox_path, name, arch):
    with open(busybox_path, "rb") as f:
        busybox = f.read()
    if mi.is_dynamic_elf(busybox):
        raise ValueError(f"{busybox_path} is dynamically linked; install busybox-static")
    layer = mi.Layer("busybox, sleep")
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp"]:
        layer.dir(d)
    layer.file("bin/busybox", busybox, 0o755)
    for applet in ["sh", "sleep"]:
        layer.symlink("bin/" + applet, "busybox")
    raw, gz = layer.finish()
    config = mi.canonical_json({
        "architecture": arch,
        "os": "linux",
        "created": mi.CREATED,
        # The sandbox only holds the pod's namespaces; CRI stops it with SIGKILL.
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [mi.sha256(raw)]},
    })
    manifest = mi.canonical_json({
        "schemaVersion": 2,
        "mediaType": mi.MT_MANIFEST,
        "config": {"mediaType": mi.MT_CONFIG, "digest": mi.sha256(config), "size": len(config)},
        "layers": [{"mediaType": mi.MT_LAYER, "digest": mi.sha256(gz), "size": len(gz)}],
    })
    index = mi.canonical_json({
        "schemaVersion": 2,
        "mediaType": mi.MT_INDEX,
        "manifests": [{
            "mediaType": mi.MT_MANIFEST,
            "digest": mi.sha256(manifest),
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name},
        }],
    })
    blobs = {mi.sha256(gz): gz, mi.sha256(config): config, mi.sha256(manifest): manifest}
    return blobs, index, mi.canonical_json({"imageLayoutVersion": "1.0.0"}), {
        "name": name, "chain_ids": [mi.sha256(raw)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--busybox", default="/bin/busybox")
    parser.add_argument("--arch", default=mi.host_arch())
    args = parser.parse_args()
    try:
        blobs, index, layout, description = build(args.busybox, args.name, args.arch)
    except (OSError, ValueError) as e:
        sys.exit(f"make_pause_image.py: {e}")
    mi.write_archive(args.output, blobs, index, layout)
    json.dump(description, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
