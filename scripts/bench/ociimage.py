"""Build benchmark images of real file trees as OCI image layouts.

Used by scripts/bench-pull and scripts/bench-push (through imageset.py). Python 3
standard library only; `pigz` is used for compression when installed (it is
much faster on several cores), else `gzip`, both at level 1 with -n so that
the output does not depend on file names or times.

An image is a list of layers; a layer is a list of paths relative to / taken
from a sorted walk of real directories on this machine (deterministic
selection), cut into chunks by an uncompressed byte budget, plus optional
incompressible data from a seeded PRNG. Each layer is written as a tar stream
(Python's tarfile, PAX format, owner root, hard links kept) piped through the
compressor; the uncompressed stream is hashed on the way (the diffID), the
compressed blob is hashed afterwards (its digest). The result is a valid OCI
image layout: oci-layout, index.json (ref name "latest"), blobs/sha256/*,
readable by skopeo (`oci:DIR:latest`) and umoci.

Built images are cached: `build_image` writes into DIR.tmp and renames it to
DIR when complete, so a directory that exists is a finished image.
"""

import hashlib
import json
import os
import platform
import random
import shutil
import stat
import subprocess
import tarfile
import time

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

RANDOM_FILE_MB = 64


def compressor():
    """The gzip level 1 command: pigz when installed, else gzip."""
    if shutil.which("pigz"):
        return ["pigz", "-1", "-n", "-c"]
    return ["gzip", "-1", "-n", "-c"]


def walk(top):
    """Yield (relpath, lstat) for every dir, regular file and symlink under
    `top`, in a deterministic order (sorted, parents before children)."""
    try:
        st = os.lstat(top)
    except OSError:
        return
    yield os.path.relpath(top, "/"), st
    try:
        names = sorted(os.listdir(top))
    except OSError:
        return
    for name in names:
        path = os.path.join(top, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from walk(path)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            yield os.path.relpath(path, "/"), st


def chunk_files(tops, budgets, skip_bytes=0):
    """Cut a sorted walk of the directories `tops` into consecutive chunks:
    chunk i takes files until it holds budgets[i] bytes of file content.
    The first `skip_bytes` of content are skipped (so that images can take
    different slices of the same tree). Each chunk lists the directories
    leading to its files (parents first) so that every layer is a complete
    tar stream. Hard links to a file already in the chunk count nothing
    (tar stores them as links). Returns a list of lists of relative paths; stops early when
    the tree runs out."""
    chunks = []
    cur, cur_dirs, cur_bytes = [], set(), 0
    seen = set()  # inodes already in the chunk: hard links cost no bytes
    i = 0
    skipped = 0

    def gen():
        for top in tops:
            yield from walk(top)

    for rel, st in gen():
        if i >= len(budgets):
            break
        if stat.S_ISDIR(st.st_mode):
            continue
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        if size and st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                size = 0
            seen.add((st.st_dev, st.st_ino))
        if skipped < skip_bytes:
            skipped += size
            continue
        # parents first
        parts = rel.split("/")[:-1]
        for k in range(1, len(parts) + 1):
            d = "/".join(parts[:k])
            if d not in cur_dirs:
                cur_dirs.add(d)
                cur.append(d)
        cur.append(rel)
        cur_bytes += size
        if cur_bytes >= budgets[i]:
            chunks.append(cur)
            cur, cur_dirs, cur_bytes = [], set(), 0
            seen = set()
            i += 1
    if cur and i < len(budgets):
        chunks.append(cur)
    return chunks


class _HashingPipe:
    """File-like object: hashes and counts what is written, forwards it."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.sha.update(b)
        self.n += len(b)
        self.out.write(b)
        return len(b)

    def flush(self):
        pass


def _normalize(ti):
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_layer(paths, random_mb, seed, tmp_blob):
    """Write one gzip layer to tmp_blob. Returns (diff_id, uncompressed
    size). `paths` are relative to /; `random_mb` MiB of incompressible
    data are appended as files bench-random/NNN of RANDOM_FILE_MB each."""
    with open(tmp_blob, "wb") as out:
        proc = subprocess.Popen(compressor(), stdin=subprocess.PIPE, stdout=out)
        pipe = _HashingPipe(proc.stdin)
        with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=1 << 20) as tar:
            tar.copybufsize = 1 << 20
            for rel in paths:
                try:
                    tar.add("/" + rel, arcname=rel, recursive=False,
                            filter=_normalize)
                except (OSError, tarfile.TarError):
                    continue  # vanished or unreadable: skip it
            if random_mb:
                rng = random.Random(seed)
                ti = tarfile.TarInfo("bench-random")
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                ti.mtime = 1700000000
                tar.addfile(_normalize(ti))
                left = random_mb
                n = 0
                while left > 0:
                    mb = min(RANDOM_FILE_MB, left)
                    ti = tarfile.TarInfo("bench-random/%03d" % n)
                    ti.size = mb << 20
                    ti.mode = 0o644
                    ti.mtime = 1700000000
                    tar.addfile(_normalize(ti), _RandomReader(rng, ti.size))
                    left -= mb
                    n += 1
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("compressor failed: %s" % " ".join(compressor()))
    return "sha256:" + pipe.sha.hexdigest(), pipe.n


class _RandomReader:
    def __init__(self, rng, size):
        self.rng, self.left = rng, size

    def read(self, n=-1):
        if n < 0 or n > self.left:
            n = self.left
        n = min(n, 4 << 20)
        self.left -= n
        return self.rng.randbytes(n) if n else b""


def _put_blob(layout, data_or_path):
    """Store bytes or move a file into layout/blobs/sha256; return
    (digest, size)."""
    bdir = os.path.join(layout, "blobs", "sha256")
    os.makedirs(bdir, exist_ok=True)
    if isinstance(data_or_path, bytes):
        hexd = hashlib.sha256(data_or_path).hexdigest()
        with open(os.path.join(bdir, hexd), "wb") as f:
            f.write(data_or_path)
        return "sha256:" + hexd, len(data_or_path)
    hexd = sha256_file(data_or_path)
    size = os.path.getsize(data_or_path)
    os.replace(data_or_path, os.path.join(bdir, hexd))
    return "sha256:" + hexd, size


def _goarch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm",
            "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}.get(m, m)


def build_image(dest, layers, log=print):
    """Build an OCI layout at `dest` unless it already exists.

    `layers` is a list of dicts: {"paths": [...], "random_mb": int,
    "seed": int}. Returns the image summary (see `summary`)."""
    if os.path.isfile(os.path.join(dest, "bench-image.json")):
        return summary(dest)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    descs, diff_ids, unc = [], [], []
    for i, layer in enumerate(layers):
        t0 = time.monotonic()
        tmp_blob = os.path.join(tmp, "layer.tmp")
        diff_id, usize = write_layer(layer["paths"], layer.get("random_mb", 0),
                                     layer.get("seed", i), tmp_blob)
        digest, size = _put_blob(tmp, tmp_blob)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
        diff_ids.append(diff_id)
        unc.append(usize)
        log("  layer %d/%d: %.1f MB -> %.1f MB gzip in %.1fs" % (
            i + 1, len(layers), usize / 1e6, size / 1e6, time.monotonic() - t0))
    config = {
        "architecture": _goarch(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "haul bench layer %d" % i} for i in range(len(layers))],
    }
    cdigest, csize = _put_blob(tmp, json.dumps(config, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
        "layers": descs,
    }
    mdigest, msize = _put_blob(tmp, json.dumps(manifest, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    }
    with open(os.path.join(tmp, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f)
    info = {
        "manifest": mdigest, "config": cdigest,
        "layers": [{"digest": d["digest"], "size": d["size"], "diff_id": di,
                    "uncompressed": u} for d, di, u in zip(descs, diff_ids, unc)],
    }
    with open(os.path.join(tmp, "bench-image.json"), "w") as f:
        json.dump(info, f, indent=1)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return summary(dest)


def summary(dest):
    """The bench-image.json of a built layout plus totals."""
    with open(os.path.join(dest, "bench-image.json")) as f:
        info = json.load(f)
    info["layout"] = dest
    info["compressed"] = sum(l["size"] for l in info["layers"])
    info["uncompressed"] = sum(l["uncompressed"] for l in info["layers"])
    return info
