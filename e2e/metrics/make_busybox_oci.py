#!/usr/bin/env python3
"""Writes a tiny one-layer OCI image archive (an OCI image layout in a tar) holding
the host's statically linked busybox as /bin/busybox, with /bin/sh and /bin/echo
linked to it. `ctr images import` takes the archive as it is.

    make_busybox_oci.py --output image.tar [--name docker.io/library/x:latest]
                        [--busybox /bin/busybox]

Standard library only; the output is byte-for-byte reproducible.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import struct
import sys
import tarfile

MTIME = 1_600_000_000  # fixed, so the digests do not change from run to run

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


def is_static_elf(path):
    """True if the ELF file at path has no PT_INTERP (needs no dynamic loader)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(0x20)
            (phoff,) = struct.unpack(endian + "Q", f.read(8))
            f.seek(0x36)
        else:
            f.seek(0x1C)
            (phoff,) = struct.unpack(endian + "I", f.read(4))
            f.seek(0x2A)
        phentsize, phnum = struct.unpack(endian + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
        return True


def layer_tar(busybox):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def entry(name, kind, mode, data=None, link=None):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if link is not None:
                info.linkname = link
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)

        entry("bin", tarfile.DIRTYPE, 0o755)
        with open(busybox, "rb") as f:
            entry("bin/busybox", tarfile.REGTYPE, 0o755, data=f.read())
        for applet in ("sh", "echo", "cat", "ls"):
            entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        entry("tmp", tarfile.DIRTYPE, 0o1777)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True, help="archive to write")
    ap.add_argument("--name", default="docker.io/library/rustlayer-metrics-e2e:latest",
                    help="image reference recorded in the archive")
    ap.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox",
                    help="statically linked busybox to put in the image")
    args = ap.parse_args()

    if not os.path.isfile(args.busybox):
        sys.exit(f"make_busybox_oci: no busybox at {args.busybox} (Debian package busybox-static)")
    if not is_static_elf(args.busybox):
        sys.exit(f"make_busybox_oci: {args.busybox} is not statically linked "
                 "(Debian package busybox-static)")

    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    raw = layer_tar(args.busybox)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(raw)
    layer = gz.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer_digest = blob(layer)

    arch = GO_ARCH.get(platform.machine(), platform.machine())
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "created": "2020-09-13T12:26:40Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": "make_busybox_oci.py"}],
    }, sort_keys=True).encode()
    config_digest = blob(config)

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = blob(manifest)

    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": args.name,
                            "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()

    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    files += [(f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in sorted(blobs.items())]
    tmp = args.output + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.output)
    print(args.name)


if __name__ == "__main__":
    main()
