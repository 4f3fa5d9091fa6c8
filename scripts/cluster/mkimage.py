#!/usr/bin/env python3
"""Writes a docker-archive image tarball (what `ctr images import` and `docker load` read) holding
the given binaries, the shared libraries they load (from ldd) and a minimal /etc, with the first
binary as the entrypoint. No image can be pulled on the test machines: this is how the cluster
tests get the pause image and the project's images.

    mkimage.py --tag switchboard.local/media-node:dev --out media-node.tar BIN [BIN...]
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile


def shared_libs(binary):
    """The absolute paths ldd resolves for `binary` (empty for a static one)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(p)
                break
    return libs


def add_file(tar, src, dst, mode=None):
    real = os.path.realpath(src)
    info = tar.gettarinfo(real, arcname=dst.lstrip("/"))
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    if mode is not None:
        info.mode = mode
    with open(real, "rb") as f:
        tar.addfile(info, f)


def add_bytes(tar, dst, data, mode=0o644):
    info = tarfile.TarInfo(dst.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, dst, mode=0o755):
    info = tarfile.TarInfo(dst.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = 0
    tar.addfile(info)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bindir", default="/usr/local/bin")
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as t:
        seen = set()
        for d in ["/etc", "/tmp", "/usr", "/usr/local", a.bindir, "/lib64",
                  "/lib", "/lib/x86_64-linux-gnu", "/var", "/var/run"]:
            add_dir(t, d, 0o1777 if d == "/tmp" else 0o755)
        add_bytes(t, "/etc/passwd", b"root:x:0:0:root:/:/sbin/nologin\n"
                  b"nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n")
        add_bytes(t, "/etc/group", b"root:x:0:\nnonroot:x:65532:\n")
        add_bytes(t, "/etc/nsswitch.conf", b"hosts: files dns\n")
        for b in a.binaries:
            add_file(t, b, os.path.join(a.bindir, os.path.basename(b)), 0o755)
            for lib in shared_libs(b):
                if lib not in seen:
                    seen.add(lib)
                    add_file(t, lib, lib)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

    entry = os.path.join(a.bindir, os.path.basename(a.binaries[0]))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [entry],
            "Env": ["PATH=" + a.bindir + ":/usr/bin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/cluster/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": ["layer.tar"]}]

    with tarfile.open(a.out, mode="w") as out:
        add_bytes(out, config_name, config_bytes)
        add_bytes(out, "layer.tar", layer_bytes)
        add_bytes(out, "manifest.json", json.dumps(manifest).encode())
    print(f"{a.tag}: {a.out} ({len(layer_bytes) // 1024} KiB layer)")


if __name__ == "__main__":
    main()
