#!/usr/bin/env python3
"""Assemble the rustlayer image as an OCI image-layout archive, without a
container engine.

Two steps, so the slow one runs once:

  build_image.py layer --rootfs DIR --output base.tar.gz
      packs a root filesystem (a Debian base made by hack/build-image.sh) into
      a gzip layer and prints {"digest", "diff_id", "size"} as JSON;

  build_image.py image --base base.tar.gz --base-json base.json \
      --binary target/release/rustlayer --name ghcr.io/rustlayer/rustlayer:0.1.0 \
      --version 0.1.0 --revision <git sha> --output rustlayer.oci.tar
      adds the binary as a second layer at /usr/local/bin/rustlayer and writes
      the archive: oci-layout, index.json (the manifest named by
      org.opencontainers.image.ref.name and io.containerd.image.name, as
      `ctr images import` and `kind load image-archive` read it) and blobs.

Entries are sorted, owned by numeric ids with no names, stamped with one fixed
mtime, and gzip headers carry no time: the same inputs give the same bytes.
Standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

# 2024-01-01T00:00:00Z, or SOURCE_DATE_EPOCH when the caller pins one.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1704067200"))

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

DESCRIPTION = "A containerd snapshotter: overlay and devmapper backends behind containerd's snapshots API"
SOURCE = "https://github.com/rustlayer/rustlayer"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def normalize(info):
    info.mtime = EPOCH
    info.uname = info.gname = ""
    # PAX headers would otherwise carry the host's atime/ctime.
    info.pax_headers = {}
    return info


class HashingWriter:
    """A file object that gzips what it is given and hashes both sides, so a
    layer of a few hundred MiB never sits in memory."""

    def __init__(self, out):
        self.raw_hash = hashlib.sha256()
        self.gz_hash = hashlib.sha256()
        self.size = 0
        self.out = out
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self, mtime=0, compresslevel=6)

    # Called by GzipFile with compressed bytes.
    def write(self, data):
        self.gz_hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self):
        self.out.flush()

    def tar_sink(self):
        writer = self

        class Sink:
            def write(self, data):
                writer.raw_hash.update(data)
                writer.gz.write(data)
                return len(data)

        return Sink()

    def close(self):
        self.gz.close()
        return {
            "digest": "sha256:" + self.gz_hash.hexdigest(),
            "diff_id": "sha256:" + self.raw_hash.hexdigest(),
            "size": self.size,
        }


def walk_sorted(root):
    """Every path under root (relative), parents before children, sorted."""
    out = []

    def visit(rel):
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            child = os.path.join(rel, name) if rel else name
            out.append(child)
            st = os.lstat(os.path.join(root, child))
            if stat.S_ISDIR(st.st_mode):
                visit(child)

    visit("")
    return out


def pack_rootfs(rootfs, output):
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        writer = HashingWriter(f)
        with tarfile.open(fileobj=writer.tar_sink(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel in walk_sorted(rootfs):
                full = os.path.join(rootfs, rel)
                info = tar.gettarinfo(full, arcname=rel)
                if info is None:  # a socket: nothing an image can carry
                    continue
                normalize(info)
                if info.isreg():
                    with open(full, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
        result = writer.close()
    os.replace(tmp, output)
    return result


def binary_layer(binary):
    """The release binary at /usr/local/bin/rustlayer, directories included so
    the layer stands on its own."""
    with open(binary, "rb") as f:
        data = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["usr", "usr/local", "usr/local/bin"]:
            info = normalize(tarfile.TarInfo(d))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = normalize(tarfile.TarInfo("usr/local/bin/rustlayer"))
        info.mode, info.size = 0o755, len(data)
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return raw, out.getvalue()


def write_archive(path, index, oci_layout, blobs):
    """blobs: digest -> bytes, or digest -> path of a file to stream in."""
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def entry(name, size=None):
            info = normalize(tarfile.TarInfo(name))
            info.uid = info.gid = 0
            if size is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.mode, info.size = 0o644, size
            return info

        tar.addfile(entry("oci-layout", len(oci_layout)), io.BytesIO(oci_layout))
        tar.addfile(entry("index.json", len(index)), io.BytesIO(index))
        tar.addfile(entry("blobs"))
        tar.addfile(entry("blobs/sha256"))
        for digest in sorted(blobs):
            name = "blobs/sha256/" + digest.split(":", 1)[1]
            blob = blobs[digest]
            if isinstance(blob, bytes):
                tar.addfile(entry(name, len(blob)), io.BytesIO(blob))
            else:
                with open(blob, "rb") as f:
                    tar.addfile(entry(name, os.fstat(f.fileno()).st_size), f)
    os.replace(tmp, path)


def build_image(args):
    with open(args.base_json) as f:
        base = json.load(f)
    raw, gz = binary_layer(args.binary)
    bin_desc = {"digest": sha256(gz), "diff_id": sha256(raw), "size": len(gz)}

    created = args.created
    labels = {
        "org.opencontainers.image.title": "rustlayer",
        "org.opencontainers.image.description": DESCRIPTION,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": "debian:bookworm (debootstrap minbase)",
    }
    config = canonical_json({
        "architecture": args.arch,
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["rustlayer"],
            "Cmd": ["serve"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [base["diff_id"], bin_desc["diff_id"]]},
        "history": [
            {"created": created, "created_by": "hack/build-image.sh: debootstrap --variant=minbase "
             + " ".join(base.get("packages", []))},
            {"created": created, "created_by": "hack/build-image.sh: COPY target/release/rustlayer /usr/local/bin/"},
        ],
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": MT_LAYER, "digest": base["digest"], "size": base["size"]},
            {"mediaType": MT_LAYER, "digest": bin_desc["digest"], "size": bin_desc["size"]},
        ],
        "annotations": {k: v for k, v in labels.items() if k != "org.opencontainers.image.base.name"},
    })
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha256(manifest),
            "size": len(manifest),
            "platform": {"architecture": args.arch, "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": args.name,
                "io.containerd.image.name": args.name,
            },
        }],
    })
    blobs = {
        base["digest"]: args.base,
        bin_desc["digest"]: gz,
        sha256(config): config,
        sha256(manifest): manifest,
    }
    write_archive(args.output, index, canonical_json({"imageLayoutVersion": "1.0.0"}), blobs)
    json.dump({
        "name": args.name,
        "manifest": sha256(manifest),
        "config": sha256(config),
        "diff_ids": [base["diff_id"], bin_desc["diff_id"]],
    }, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    layer = sub.add_parser("layer", help="pack a root filesystem into a gzip layer")
    layer.add_argument("--rootfs", required=True)
    layer.add_argument("--output", required=True)
    image = sub.add_parser("image", help="the base layer plus the binary, as an OCI archive")
    image.add_argument("--base", required=True, help="the base layer (.tar.gz)")
    image.add_argument("--base-json", required=True, help="what `layer` printed for it")
    image.add_argument("--binary", required=True)
    image.add_argument("--name", required=True, help="image reference, with a tag")
    image.add_argument("--version", required=True)
    image.add_argument("--revision", default="")
    image.add_argument("--arch", default="amd64")
    image.add_argument("--created", default="2024-01-01T00:00:00Z")
    image.add_argument("--output", required=True)
    args = parser.parse_args()

    if args.cmd == "layer":
        json.dump(pack_rootfs(args.rootfs, args.output), sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        build_image(args)


if __name__ == "__main__":
    main()
