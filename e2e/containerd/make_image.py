#!/usr/bin/env python3
"""Build a small OCI image-layout archive offline, for the containerd e2e test.

The image has three gzip layers that exercise what a snapshotter must get right
when containerd unpacks layers onto it:

  1. a busybox userland (/bin/busybox copied from the host, it is static, plus
     symlinks to it), /etc/doomed, /etc/motd ("old") and /data/{a,b,sub/c};
  2. an OCI whiteout deleting /etc/doomed, /etc/motd rewritten ("new") and a
     new file /etc/added;
  3. an opaque /data (data/.wh..wh..opq) holding only data/fresh.

So the merged root must have no /etc/doomed, /etc/motd = "new" and /data with
only "fresh" in it. With --filler-mib N a fourth layer adds N MiB of
incompressible files under /filler (16 KiB each, 256 to a directory), for
measurements where an image's size matters.

The archive is what `ctr images import` reads: oci-layout, index.json and
blobs/sha256/*, the manifest named by an org.opencontainers.image.ref.name (and
io.containerd.image.name) annotation. Everything is deterministic: fixed
mtimes, uid/gid 0, sorted JSON, gzip without a timestamp; the same busybox
gives the same bytes.

Standard library only. Prints one JSON object to stdout describing the image
(name, manifest digest, diff_ids, chain_ids) so a test can check what
containerd did with it:

  make_image.py --output image.tar [--name docker.io/library/x:latest]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile

# 2023-11-14T22:13:20Z: a fixed time for every tar entry and the config.
EPOCH = 1700000000
CREATED = "2023-11-14T22:13:20Z"
DEFAULT_NAME = "docker.io/library/rustlayer-e2e:latest"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# Applets the test uses (and a few more for poking around by hand).
APPLETS = [
    "[", "cat", "echo", "env", "false", "find", "grep", "head", "id", "ls",
    "mkdir", "printf", "readlink", "rm", "sh", "sleep", "sort", "stat", "test",
    "touch", "tr", "true", "wc",
]


class Layer:
    """An uncompressed layer tar built entry by entry, in the order added."""

    def __init__(self, comment):
        self.comment = comment
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)

    def _info(self, name, kind, mode):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def dir(self, name, mode=0o755):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        if isinstance(data, str):
            data = data.encode()
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name, target):
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def whiteout(self, path):
        """OCI whiteout: an empty regular file named .wh.<name> beside it."""
        parent, base = os.path.split(path)
        self.file(os.path.join(parent, ".wh." + base), b"")

    def opaque(self, directory):
        """OCI opaque marker: hides everything lower layers put in directory."""
        self.file(os.path.join(directory, ".wh..wh..opq"), b"")

    def finish(self):
        """Returns (uncompressed tar bytes, gzip bytes)."""
        self.tar.close()
        raw = self.buf.getvalue()
        out = io.BytesIO()
        # mtime=0 and no file name keep the gzip header byte-for-byte stable.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
            gz.write(raw)
        return raw, out.getvalue()


def base_layer(busybox):
    layer = Layer("busybox userland, /etc/doomed, /etc/motd=old, /data/{a,b,sub/c}")
    # Mount points runc would otherwise create in the container's own layer.
    for d in ["bin", "dev", "etc", "proc", "root", "run", "sys"]:
        layer.dir(d, 0o700 if d == "root" else 0o755)
    layer.dir("tmp", 0o1777)
    layer.file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        layer.symlink("bin/" + applet, "busybox")
    layer.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    layer.file("etc/group", "root:x:0:\n")
    layer.file("etc/doomed", "doomed\n")
    layer.file("etc/motd", "old\n")
    layer.dir("data")
    layer.file("data/a", "a\n")
    layer.file("data/b", "b\n")
    layer.dir("data/sub")
    layer.file("data/sub/c", "c\n")
    return layer


def whiteout_layer():
    layer = Layer("whiteout /etc/doomed, /etc/motd=new, add /etc/added")
    layer.dir("etc")
    layer.whiteout("etc/doomed")
    layer.file("etc/motd", "new\n")
    layer.file("etc/added", "added\n")
    return layer


def opaque_layer():
    layer = Layer("opaque /data holding only /data/fresh")
    layer.dir("data")
    # The marker first: the spec asks for whiteouts before their siblings.
    layer.opaque("data")
    layer.file("data/fresh", "fresh\n")
    return layer


def filler_layer(mib):
    import random  # only here: the other layers use no randomness at all

    layer = Layer(f"{mib} MiB of files under /filler")
    rng = random.Random(mib)  # seeded: the same size gives the same bytes
    layer.dir("filler")
    size, count = 16 * 1024, mib * 64
    for i in range(count):
        if i % 256 == 0:
            layer.dir(f"filler/{i // 256:03d}")
        layer.file(f"filler/{i // 256:03d}/{i:06d}", rng.randbytes(size))
    return layer


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def chain_ids(diff_ids):
    """The OCI ChainIDs: the names containerd gives the committed snapshots."""
    chain = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(sha256(f"{chain[-1]} {diff_id}".encode()))
    return chain


def host_arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def is_dynamic_elf(data):
    """True for an ELF executable with a PT_INTERP (dynamic loader) header: it
    would not run in an image that has no libc."""
    if data[:4] != b"\x7fELF":
        return False
    wide, order = data[4] == 2, "little" if data[5] == 1 else "big"
    u = lambda off, n: int.from_bytes(data[off:off + n], order)  # noqa: E731
    phoff, phentsize, phnum = (u(32, 8), u(54, 2), u(56, 2)) if wide else (u(28, 4), u(42, 2), u(44, 2))
    return any(u(phoff + i * phentsize, 4) == 3 for i in range(phnum))  # 3 = PT_INTERP


def build(busybox_path, name, arch, filler_mib=0):
    with open(busybox_path, "rb") as f:
        busybox = f.read()
    if is_dynamic_elf(busybox):
        raise ValueError(f"{busybox_path} is dynamically linked; the image needs a static "
                         "busybox (Debian: busybox-static)")
    layers = [base_layer(busybox), whiteout_layer(), opaque_layer()]
    if filler_mib:
        layers.append(filler_layer(filler_mib))

    blobs = {}  # digest -> bytes
    layer_descs, diff_ids, history = [], [], []
    for layer in layers:
        raw, gz = layer.finish()
        digest = sha256(gz)
        blobs[digest] = gz
        layer_descs.append({"mediaType": MT_LAYER, "digest": digest, "size": len(gz)})
        diff_ids.append(sha256(raw))
        history.append({"created": CREATED, "created_by": "make_image.py", "comment": layer.comment})

    config = canonical_json({
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    })
    config_digest = sha256(config)
    blobs[config_digest] = config

    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
    })
    manifest_digest = sha256(manifest)
    blobs[manifest_digest] = manifest

    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            # ctr keeps a full reference in ref.name as the image's name;
            # io.containerd.image.name says the same in containerd's own terms.
            "annotations": {
                "org.opencontainers.image.ref.name": name,
                "io.containerd.image.name": name,
            },
        }],
    })
    oci_layout = canonical_json({"imageLayoutVersion": "1.0.0"})

    description = {
        "name": name,
        "manifest": manifest_digest,
        "config": config_digest,
        "layers": [d["digest"] for d in layer_descs],
        "diff_ids": diff_ids,
        "chain_ids": chain_ids(diff_ids),
    }
    return blobs, index, oci_layout, description


def write_archive(path, blobs, index, oci_layout):
    """The image layout as an uncompressed tar, written atomically."""
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name, data=None):
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))

        add("oci-layout", oci_layout)
        add("index.json", index)
        add("blobs")
        add("blobs/sha256")
        for digest in sorted(blobs):
            add("blobs/sha256/" + digest.split(":", 1)[1], blobs[digest])
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the OCI archive (tar) to write")
    parser.add_argument("--name", default=DEFAULT_NAME, help="image reference [%(default)s]")
    parser.add_argument("--busybox", default="/bin/busybox",
                        help="a static busybox binary [%(default)s] (Debian: busybox-static)")
    parser.add_argument("--arch", default=host_arch(), help="image architecture [%(default)s]")
    parser.add_argument("--filler-mib", type=int, default=0,
                        help="add a fourth layer of this many MiB of files [none]")
    args = parser.parse_args()
    if args.filler_mib < 0:
        parser.error("--filler-mib must not be negative")

    try:
        blobs, index, oci_layout, description = build(args.busybox, args.name, args.arch,
                                                      args.filler_mib)
    except FileNotFoundError as e:
        sys.exit(f"make_image.py: {e} (install busybox-static, or pass --busybox)")
    except ValueError as e:
        sys.exit(f"make_image.py: {e}")
    write_archive(args.output, blobs, index, oci_layout)
    json.dump(description, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
