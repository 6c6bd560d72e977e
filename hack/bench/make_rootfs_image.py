#!/usr/bin/env python3
"""Packs a root filesystem (a debootstrap'd Debian) into an OCI image archive with
several gzip layers, the way a Dockerfile build would have split it:

  1. usr/lib, usr/lib64, usr/libexec   shared libraries
  2. usr/share                         data, documentation, locales
  3. the rest of usr                   programs
  4. everything else                   etc, var, the root's symlinks
  5. a small top layer                 a new file, whiteouts deleting usr/share/doc
                                       and usr/share/man, an opaque var/log

Left out, as Debian's published images leave them out: apt's package lists and
downloaded .debs, and the contents of dev, proc, sys and tmp. Hard links stay in
one layer. Directory entries are repeated in every layer holding something under
them, with their own owner and mode.

    make_rootfs_image.py --rootfs DIR --output image.tar [--name REF]

`ctr images import` takes the archive as it is. Prints one JSON object: name,
layer count, sizes, diff_ids. Standard library only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile

DEFAULT_NAME = "docker.io/library/rustlayer-bench-debian:bookworm"
CREATED = "2024-01-01T00:00:00Z"
EPOCH = 1704067200

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}

# (comment, path prefixes): the first layer whose prefix matches takes the path.
LAYERS = [
    ("libraries", ["usr/lib", "usr/lib64", "usr/libexec"]),
    ("shared data", ["usr/share"]),
    ("programs", ["usr"]),
    ("system", [""]),
]

# Left out entirely (the directory itself stays).
EMPTIED = ["dev", "proc", "sys", "tmp", "var/lib/apt/lists", "var/cache/apt/archives"]


def under(path, prefix):
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def home_layer(path):
    for n, (_, prefixes) in enumerate(LAYERS):
        if any(under(path, p) for p in prefixes):
            return n
    return len(LAYERS) - 1


def ancestors(path):
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def walk(rootfs):
    """Relative paths of everything under rootfs, parents before children."""
    out = []
    for top, dirs, files in os.walk(rootfs):
        rel_top = os.path.relpath(top, rootfs)

        def rel(name):
            return name if rel_top == "." else f"{rel_top}/{name}"

        out.extend(rel(name) for name in sorted(dirs + files))
        # The emptied directories themselves stay; what is in them does not.
        dirs[:] = sorted(d for d in dirs if rel(d) not in EMPTIED)
    return out


def assign(rootfs, paths):
    """Layer index -> set of paths (with every ancestor directory)."""
    layers = [set() for _ in LAYERS]
    by_inode = {}
    for rel in paths:
        st = os.lstat(os.path.join(rootfs, rel))
        n = home_layer(rel)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            # Every name of a hard-linked file goes where the first one went.
            n = by_inode.setdefault((st.st_dev, st.st_ino), n)
        layers[n].add(rel)
        layers[n].update(ancestors(rel))
    return layers


class HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self):
        pass

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def write_layer(path, fill):
    """Writes a gzip layer with fill(tar); returns (digest, size, diff_id, raw size)."""
    with open(path, "wb") as f:
        compressed = HashingWriter(f)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as gz:
            raw = HashingWriter(gz)
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
    return compressed.digest(), compressed.size, raw.digest(), raw.size


def add_tree_entries(tar, rootfs, paths):
    for rel in sorted(paths):
        full = os.path.join(rootfs, rel)
        info = tar.gettarinfo(full, arcname=rel)
        if info is None:  # sockets
            continue
        info.uname = info.gname = ""
        if info.isreg():
            with open(full, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)


def add_top_layer(tar):
    def entry(name, kind, mode, data=None):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, EPOCH
        info.uid = info.gid = 0
        if data is None:
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    entry("etc", tarfile.DIRTYPE, 0o755)
    entry("etc/rustlayer-bench-release", tarfile.REGTYPE, 0o644, b"rustlayer-bench image\n")
    entry("usr", tarfile.DIRTYPE, 0o755)
    entry("usr/share", tarfile.DIRTYPE, 0o755)
    entry("usr/share/.wh.doc", tarfile.REGTYPE, 0o644, b"")
    entry("usr/share/.wh.man", tarfile.REGTYPE, 0o644, b"")
    entry("var", tarfile.DIRTYPE, 0o755)
    entry("var/log", tarfile.DIRTYPE, 0o755)
    entry("var/log/.wh..wh..opq", tarfile.REGTYPE, 0o644, b"")
    entry("var/log/rustlayer-bench.log", tarfile.REGTYPE, 0o644, b"fresh log\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs", required=True, help="root filesystem to pack")
    ap.add_argument("--output", required=True, help="archive to write")
    ap.add_argument("--name", default=DEFAULT_NAME, help="image reference recorded in it")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.rootfs, "bin/true")) and \
            not os.path.isfile(os.path.join(args.rootfs, "usr/bin/true")):
        sys.exit(f"make_rootfs_image: {args.rootfs} has no bin/true; not a root filesystem?")

    work = args.output + ".parts"
    os.makedirs(work, exist_ok=True)
    layers = []  # (digest, size, diff_id, raw_size, comment, file)
    split = assign(args.rootfs, walk(args.rootfs))
    for n, ((comment, _), paths) in enumerate(zip(LAYERS, split)):
        part = os.path.join(work, f"layer{n}")
        digest, size, diff_id, raw = write_layer(
            part, lambda tar, paths=paths: add_tree_entries(tar, args.rootfs, paths))
        layers.append((digest, size, diff_id, raw, comment, part))
    part = os.path.join(work, "layer-top")
    digest, size, diff_id, raw = write_layer(part, add_top_layer)
    layers.append((digest, size, diff_id, raw, "top: whiteouts, opaque dir", part))

    arch = GO_ARCH.get(platform.machine(), platform.machine())
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/bash"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]},
        "history": [{"created": CREATED, "created_by": f"make_rootfs_image.py: {l[4]}"}
                    for l in layers],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": MT_LAYER, "digest": l[0], "size": l[1]} for l in layers],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha(manifest),
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": args.name,
                            "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()

    tmp = args.output + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def meta(name, data=None, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, EPOCH
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        meta("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        meta("index.json", index)
        meta("blobs", kind=tarfile.DIRTYPE)
        meta("blobs/sha256", kind=tarfile.DIRTYPE)
        for blob in (config, manifest):
            meta("blobs/sha256/" + sha(blob).split(":", 1)[1], blob)
        for digest, size, _, _, _, part in layers:
            info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
            info.size, info.mode, info.mtime = size, 0o644, EPOCH
            with open(part, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, args.output)
    for *_, part in layers:
        os.remove(part)
    os.rmdir(work)
    print(json.dumps({
        "name": args.name,
        "layers": len(layers),
        "compressed_bytes": sum(l[1] for l in layers),
        "uncompressed_bytes": sum(l[3] for l in layers),
        "layer_bytes": [l[3] for l in layers],
        "diff_ids": [l[2] for l in layers],
    }))


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    main()
