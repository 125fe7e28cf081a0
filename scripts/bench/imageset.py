"""The benchmark image set shared by scripts/bench-pull and scripts/bench-push:
"several", "many" and "big", OCI layouts of real file trees from /usr built
(once, cached) with ociimage.build_image, their size options and --quick
sizes, and pushing them to a registry with skopeo.

      several  5 layers of ~150 MB of files each (bin, libs, share, ...)
      many     40 small layers of ~2 MB of files each (/usr/share)
      big      1 layer of ~2300 MiB of files (~1 GiB gzip)
"""

import glob
import os
import subprocess
import time

import ociimage
from common import MIB, env_float, env_int, log

IMAGE_FORMAT_VERSION = "v2"  # bump to invalidate cached images
NAMES = ("several", "many", "big")


def add_image_args(ap):
    """The --images option and the size options (with $BENCH_* defaults)."""
    ap.add_argument("--images", default=",".join(NAMES),
                    help="comma-separated subset of " + ",".join(NAMES))
    g = ap.add_argument_group("image sizes (MB = MiB of file content before tar+gzip)")
    g.add_argument("--several-layers", type=int, default=env_int("BENCH_SEVERAL_LAYERS", 5),
                   help="[$BENCH_SEVERAL_LAYERS]")
    g.add_argument("--several-layer-mb", type=float,
                   default=env_float("BENCH_SEVERAL_LAYER_MB", 150),
                   help="[$BENCH_SEVERAL_LAYER_MB]")
    g.add_argument("--many-layers", type=int, default=env_int("BENCH_MANY_LAYERS", 40),
                   help="[$BENCH_MANY_LAYERS]")
    g.add_argument("--many-layer-mb", type=float, default=env_float("BENCH_MANY_LAYER_MB", 2),
                   help="[$BENCH_MANY_LAYER_MB]")
    g.add_argument("--big-mb", type=float, default=env_float("BENCH_BIG_MB", 2300),
                   help="files in the big layer (2300 gives ~1 GiB of gzip from /usr) "
                        "[$BENCH_BIG_MB]")
    g.add_argument("--big-random-mb", type=int, default=env_int("BENCH_BIG_RANDOM_MB", 0),
                   help="incompressible data added to the big layer [$BENCH_BIG_RANDOM_MB]")


def finish_image_args(ap, a):
    """After parse_args: --quick sizes, a.images as a list (checked)."""
    if a.quick:
        a.several_layer_mb, a.many_layer_mb, a.big_mb = 6, 0.25, 64
        a.big_random_mb = min(a.big_random_mb, 16)
    a.images = [x for x in a.images.split(",") if x]
    for x in a.images:
        if x not in NAMES:
            ap.error("unknown image %r" % x)


def image_specs(a):
    """name -> list of layer dicts for ociimage.build_image, and a cache key."""
    mb = lambda x: int(x * MIB)  # noqa: E731
    specs = {}
    # several: one slice of a different part of /usr per layer
    sources = [
        ["/usr/bin", "/usr/sbin", "/usr/libexec", "/usr/local/bin", "/usr/lib"],
        ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"],
        ["/usr/share", "/usr/lib"],
        sorted(glob.glob("/usr/lib/python3*")) + ["/usr/lib/gcc"]
        + sorted(glob.glob("/usr/lib/llvm-*")) + ["/usr/lib"],
        ["/usr/include", "/usr/lib/jvm", "/usr/local", "/usr/lib"],
    ]
    several = []
    for i in range(a.several_layers):
        src = sources[i % len(sources)]
        skip = (i // len(sources)) * mb(a.several_layer_mb)
        several.append(lambda src=src, skip=skip: ociimage.chunk_files(
            src, [mb(a.several_layer_mb)], skip)[0])
    specs["several"] = ("%dx%gMB" % (a.several_layers, a.several_layer_mb), several, 0)
    many = lambda: ociimage.chunk_files(  # noqa: E731
        ["/usr/share", "/usr/lib"], [mb(a.many_layer_mb)] * a.many_layers)
    specs["many"] = ("%dx%gMB" % (a.many_layers, a.many_layer_mb), many, 0)
    big = lambda: [ociimage.chunk_files(["/usr"], [mb(a.big_mb)])[0]]  # noqa: E731
    specs["big"] = ("1x%gMB+%drandom" % (a.big_mb, a.big_random_mb), big, a.big_random_mb)
    return specs


def build_images(a, names):
    """Build (or find in a.cache/images) the layouts; name -> summary."""
    specs = image_specs(a)
    out = {}
    for name in names:
        key, paths_fn, random_mb = specs[name]
        dest = os.path.join(a.cache, "images", "%s-%s-%s" % (name, key, IMAGE_FORMAT_VERSION))
        if os.path.isfile(os.path.join(dest, "bench-image.json")):
            out[name] = ociimage.summary(dest)
            continue
        log("building image %s (%s) with %s ..." % (name, key, ociimage.compressor()[0]))
        t0 = time.monotonic()
        if isinstance(paths_fn, list):
            chunks = [f() for f in paths_fn]
        else:
            chunks = paths_fn()
        layers = [{"paths": c, "random_mb": 0, "seed": i} for i, c in enumerate(chunks)]
        if random_mb:
            layers[-1]["random_mb"] = random_mb
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        out[name] = ociimage.build_image(dest, layers, log=log)
        log("  built in %.0fs: %s" % (time.monotonic() - t0, dest))
    return out


def push_images(reg, images, names, repo_prefix="bench/"):
    """skopeo copy each layout to REGISTRY/bench/NAME:latest (not timed) and
    check that the registry holds the built manifest."""
    for name in names:
        t0 = time.monotonic()
        r = subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                            "oci:%s:latest" % images[name]["layout"],
                            "docker://%s/%s%s:latest" % (reg.host, repo_prefix, name)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("pushing %s failed: %s" % (name, r.stderr))
        got = reg.manifest_digest(repo_prefix + name, "latest")
        if got != images[name]["manifest"]:
            log("warning: registry has manifest %s for %s, built %s" % (
                got, name, images[name]["manifest"]))
        log("pushed %s to %s in %.1fs" % (name, reg.host, time.monotonic() - t0))


def blob_list(image):
    """[(digest, size, path in the layout)] of the layers and the config."""
    bdir = os.path.join(image["layout"], "blobs", "sha256")
    out = [(l["digest"], l["size"], os.path.join(bdir, l["digest"].split(":")[1]))
           for l in image["layers"]]
    cpath = os.path.join(bdir, image["config"].split(":")[1])
    out.append((image["config"], os.path.getsize(cpath), cpath))
    return out
