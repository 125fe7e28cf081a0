"""What the benchmark scripts (scripts/bench-pull, scripts/bench-push) share:
running and timing commands, the registries and the scratch filesystem they
start, cleanup at exit, building haul. Python 3 standard library only.

Every process and mount started through this module is undone at exit:
call `install_cleanup()` once at the start of main().
"""

import atexit
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import ociimage

MIB = 1 << 20
MB = 1e6
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None

SKOPEO_CACHES = ["/var/lib/containers/cache/blob-info-cache-v1.boltdb",
                 os.path.expanduser("~/.local/share/containers/cache/blob-info-cache-v1.boltdb")]

# ---------------------------------------------------------------- utilities


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name)
    return float(v) if v else default


def rmtree(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def tree_bytes(path):
    """(bytes of regular files, each hard-linked file counted once; number
    of entries) under path."""
    total, n, seen = 0, 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        n += len(dirnames) + len(filenames)
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if (st.st_mode & 0o170000) != 0o100000:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total, n


def du_bytes(path):
    """`du -sb PATH`: apparent size of everything under path (0 if absent)."""
    if not os.path.exists(path):
        return 0
    r = subprocess.run(["du", "-sb", path], capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def clear_skopeo_cache():
    """Delete skopeo's blob-info cache, so that it neither skips nor mounts
    blobs it saw in an earlier run."""
    for c in SKOPEO_CACHES:
        if os.path.exists(c):
            os.unlink(c)


def proc_cpu(pid):
    """utime+stime+cutime+cstime of a live process, in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_io(pid):
    """/proc/PID/io as a dict (rchar, wchar, read_bytes, write_bytes, ...):
    rchar/wchar count every byte the process passed to read/write-like
    system calls, sockets and files alike."""
    out = {}
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = int(v)
    except (OSError, ValueError):
        pass
    return out


def load_avg():
    return os.getloadavg()[0]


def machine_meta():
    """Start-of-run facts for a report."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
            "load_start": load_avg(),
            "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)}


def median_of(rows, key="wall"):
    vals = [r[key] for r in rows if r["rc"] == 0 and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def check_tools(names):
    missing = [t for t in names if not shutil.which(t)]
    if missing:
        raise SystemExit("missing: %s (run scripts/bench-setup)" % " ".join(missing))


class Result:
    def __init__(self, wall, rc, user, sys_, rss_kb, err):
        self.wall, self.rc, self.user, self.sys = wall, rc, user, sys_
        self.rss_kb, self.err = rss_kb, err

    @property
    def ok(self):
        return self.rc == 0


def run_timed(cmd, timeout, env=None, shell=False):
    """Run cmd in its own process group. Wall time is measured here
    (perf_counter), CPU time from wait4(); peak RSS from /usr/bin/time's %M,
    because a child forked from this Python process inherits its high-water
    RSS mark (ru_maxrss would never be below Python's own ~30 MiB)."""
    if shell:
        cmd = ["/bin/bash", "-c", cmd]
    rssf = tempfile.NamedTemporaryFile(prefix="rss-", delete=False)
    rssf.close()
    if TIME:
        cmd = [TIME, "-f", "%M", "-o", rssf.name] + list(cmd)
    errf = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=errf, env=env, start_new_session=True)

    def kill():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    errf.seek(0)
    err = errf.read().decode(errors="replace")[-2000:]
    if p.returncode == -signal.SIGKILL:
        err += "\n(killed after %ds timeout)" % timeout
    rss_kb = ru.ru_maxrss
    try:
        with open(rssf.name) as f:
            lines = [l for l in f.read().split() if l.isdigit()]
        if lines:
            rss_kb = int(lines[-1])
    except OSError:
        pass
    os.unlink(rssf.name)
    return Result(wall, p.returncode, ru.ru_utime, ru.ru_stime, rss_kb, err)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.05)
    return False


# ---------------------------------------------------------------- processes

_children = []  # Popen objects we started, stopped at exit
_cleanup_dirs = []
_cleanup_fns = []  # run after the children stopped, before dirs go


def track(p):
    """Stop process p at exit (unless untracked first)."""
    _children.append(p)


def untrack(p):
    if p in _children:
        _children.remove(p)


def remove_at_exit(path):
    _cleanup_dirs.append(path)


def stop_proc(p, grace=10):
    if p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def cleanup():
    for p in reversed(_children):
        try:
            stop_proc(p, 5)
        except Exception:
            pass
    for fn in reversed(_cleanup_fns):
        try:
            fn()
        except Exception:
            pass
    for d in _cleanup_dirs:
        rmtree(d)


def on_signal(signum, frame):
    sys.exit(128 + signum)  # runs atexit


def install_cleanup():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(cleanup)


class Registry:
    """docker-registry (CNCF distribution) on 127.0.0.1 with its own storage.

    Config and log go to WORKDIR/NAME; the storage to WORKDIR/NAME/data, or
    to `data_dir` when given (e.g. on the scratch filesystem). `reset()`
    restarts it with empty storage on the same port: the fresh, empty
    registry a push benchmark needs (deleting files under a running
    registry would leave its in-memory blob descriptor cache stale)."""

    def __init__(self, workdir, name="registry", data_dir=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.data = data_dir or os.path.join(self.dir, "data")
        self.port = free_port()
        self.host = "127.0.0.1:%d" % self.port
        self.cfg = os.path.join(self.dir, "config.yml")
        with open(self.cfg, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                "storage:\n"
                "  filesystem:\n    rootdirectory: %s\n"
                "  delete:\n    enabled: true\n"
                "  cache:\n    blobdescriptor: inmemory\n"
                "http:\n  addr: 127.0.0.1:%d\n" % (self.data, self.port))
        self.logf = open(os.path.join(self.dir, "registry.log"), "ab")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["docker-registry", "serve", self.cfg],
                                     stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        track(self.proc)
        if not wait_http("http://%s/v2/" % self.host):
            raise SystemExit("registry did not start; see %s/registry.log" % self.dir)

    def stop(self):
        if self.proc is not None:
            stop_proc(self.proc)
            untrack(self.proc)
            self.proc = None

    def reset(self):
        """Restart with empty storage (same port)."""
        self.stop()
        rmtree(self.data)
        self.start()

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def io(self):
        return proc_io(self.proc.pid)

    def blobs_dir(self):
        return os.path.join(self.data, "docker", "registry", "v2", "blobs")

    def blob_url(self, repo, digest):
        return "http://%s/v2/%s/blobs/%s" % (self.host, repo, digest)

    def manifest_digest(self, repo, tag):
        req = urllib.request.Request(
            "http://%s/v2/%s/manifests/%s" % (self.host, repo, tag), method="HEAD",
            headers={"Accept": ociimage.OCI_MANIFEST})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers.get("Docker-Content-Digest")


def scratch_filesystem(workdir, size_gib):
    """Mount a fresh ext4 (journaled, Debian's defaults) on a loop device
    (direct I/O, so no double page cache) at WORK/scratch, for every store the
    tools write. Returns (path, description). Falls back to a plain
    directory, saying why.

    Why: unpacking creates tens of thousands of files per run, and every run
    deletes the previous run's store. On an ext4 *without a journal* (the
    root filesystem of some VMs, this one included) the inode allocator then
    scans the inode table for "recently deleted" inodes (ext4
    recently_deleted(), a 30 s window) and file creation gets several times
    slower, for every tool alike, which buries the differences between them.
    A journaled ext4 has no such penalty and is what a user's disk is."""
    path = os.path.join(workdir, "scratch")
    os.makedirs(path)
    if os.geteuid() != 0:
        return path, "plain directory %s (not root: no loop mount)" % path
    img = os.path.join(workdir, "scratch.img")
    try:
        with open(img, "wb") as f:
            f.truncate(size_gib << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-i", "65536", "-L", "haulbench", "-E",
                        "lazy_itable_init=0,lazy_journal_init=0,nodiscard", img],
                       check=True, capture_output=True)
        dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", img],
                             check=True, capture_output=True, text=True).stdout.strip()
        _cleanup_fns.append(lambda: subprocess.run(["losetup", "-d", dev]))
        subprocess.run(["mount", "-t", "ext4", dev, path], check=True, capture_output=True)
        _cleanup_fns.append(lambda: subprocess.run(["umount", path]))
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", "") or e
        return path, "plain directory %s (loop ext4 failed: %s)" % (path, str(err).strip())
    return path, "fresh ext4 on %s (%d GiB sparse image, loop direct-io)" % (dev, size_gib)


def build_haul(haul, repo):
    """The haul binary: `haul` when given, else `cargo build --release -p
    haul-cli` in `repo` and its target/release/haul."""
    if haul:
        path = os.path.abspath(haul)
    else:
        log("building haul: cargo build --release -p haul-cli")
        r = subprocess.run(["cargo", "build", "--release", "-p", "haul-cli"], cwd=repo)
        if r.returncode != 0:
            raise SystemExit("cargo build failed (use --haul BIN to measure an existing binary)")
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
        path = os.path.join(target, "release", "haul")
    if not os.access(path, os.X_OK):
        raise SystemExit("no haul binary at %s" % path)
    return path


def haul_version(haul):
    return subprocess.run([haul, "--version"], capture_output=True,
                          text=True).stdout.strip() or haul
