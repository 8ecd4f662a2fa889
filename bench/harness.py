"""Shared helpers for the benchmark and drill scripts: real processes on loopback.

Everything here starts the release binaries (`cargo build --release` first) and Debian's
PostgreSQL; nothing talks to any address but 127.0.0.1.
"""
import base64, json, os, shutil, signal, socket, subprocess, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/tessera")


# A caller with a client secret and a grant to one target: what the drills issue tokens for.
DRILL_MESH = """
[[workload]]
id = "spiffe://example.org/drill/caller"
owner = "drill"
purpose = "issues tokens while the server is killed"

[[workload]]
id = "spiffe://example.org/drill/target"
owner = "drill"
purpose = "audience"

[[grant]]
from = "spiffe://example.org/drill/caller"
to = "spiffe://example.org/drill/target"
why = "crash drill"

[[client]]
id = "caller"
workload = "spiffe://example.org/drill/caller"
auth = "client_secret"
"""


def summary(benchmark, measured, peer="", goal="", met=None):
    """One row of the table `bench/all` prints at the end (appended to the file named by
    `TESSERA_BENCH_SUMMARY`; nothing when a benchmark runs alone)."""
    path = os.environ.get("TESSERA_BENCH_SUMMARY")
    if not path:
        return
    verdict = "" if met is None else ("met" if met else "**not met**")
    with open(path, "a") as f:
        f.write(json.dumps({"benchmark": benchmark, "measured": measured, "peer": peer, "goal": goal, "verdict": verdict}) + "\n")


def build(*packages):
    """Builds the release binaries of these packages (the CLI always)."""
    args = ["cargo", "build", "--release", "-q", "-p", "tessera-cli"]
    for p in packages:
        args += ["-p", p]
    subprocess.check_call(args, cwd=ROOT)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn_ready(cmd, prefix, env=None, stderr=subprocess.DEVNULL, timeout=60):
    """Starts `cmd` and waits for its ready line; returns (process, line)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{' '.join(cmd[:3])} exited before its ready line (status {p.wait()})")
        if line.startswith(prefix):
            return p, line.strip()
    p.kill()
    raise SystemExit(f"{' '.join(cmd[:3])} printed no ready line in {timeout} s")


def field(line, name):
    """`name=value` from a ready line."""
    return next(f.split("=", 1)[1] for f in line.split() if f.startswith(name + "="))


def tessera(data, *args, stdin=None, check=True, timeout=None):
    """Runs an admin or user command against the server whose data folder is `data`."""
    out = subprocess.run([BIN, *args, "--data", data], capture_output=True, text=True, input=stdin, timeout=timeout)
    if check and out.returncode != 0:
        raise SystemExit(f"tessera {' '.join(args)}: {out.stderr.strip()}")
    return out


def post_form(url, data, auth=None, timeout=10):
    """POSTs a form; returns (status, JSON body or None). Connection errors raise OSError."""
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode(), method="POST")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        except ValueError:
            return e.code, None


def jwt_claims(token):
    """The payload of a JWT, unverified (the scripts only read what the server said)."""
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def kill9(p):
    """SIGKILL, as a crash: no shutdown code runs."""
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


class Postgres:
    """A private PostgreSQL cluster on a free loopback port, stopped on exit."""

    def __init__(self, work, password="drill-admin-password"):
        self.work, self.password = work, password
        self.data = os.path.join(work, "pg")
        os.makedirs(self.data)
        pw = os.path.join(work, "pgpw")
        with open(pw, "w") as f:
            f.write(password)
        if os.getuid() == 0:
            os.chmod(work, 0o755)
            for p in (work, self.data, pw):
                shutil.chown(p, "postgres", "postgres")
        self._as_pg([pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pw}",
                     "--no-instructions"])
        self.port = free_port()
        self._as_pg([pg_bin("pg_ctl"), "-D", self.data, "-o",
                     f"-p {self.port} -k {work} -c listen_addresses=127.0.0.1 -c max_connections=300",
                     "-l", os.path.join(work, "pg.log"), "-w", "start"])
        self.env = dict(os.environ, PGPASSWORD=password)

    def url(self, db):
        return f"postgres://postgres:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self, db):
        self.psql("postgres", f"CREATE DATABASE {db}")
        return self.url(db)

    def psql(self, db, sql):
        """Runs SQL; returns the rows as lists of strings (unaligned, tab-separated)."""
        out = subprocess.run(["psql", self.url(db), "-XAtF", "\t", "-c", sql], capture_output=True, text=True,
                             env=self.env, check=True)
        return [l.split("\t") for l in out.stdout.splitlines() if l]

    def stop(self):
        try:
            self._as_pg([pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"])
        except subprocess.CalledProcessError:
            pass

    @staticmethod
    def _as_pg(cmd):
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, check=True, capture_output=True, text=True)


def pg_bin(name):
    base = "/usr/lib/postgresql"
    for v in sorted(os.listdir(base), reverse=True) if os.path.isdir(base) else []:
        p = os.path.join(base, v, "bin", name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"no {name}: apt-get install postgresql")


def workdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def start_server(data, database_url=None, extra=(), log="warn", stderr=subprocess.DEVNULL):
    """`tessera server --dev` on a free port; returns (process, base URL)."""
    cmd = [BIN, "server", "--dev", "--listen", "127.0.0.1:0", "--data", data, *extra]
    if database_url:
        cmd += ["--database-url", database_url]
    p, line = spawn_ready(cmd, "tessera: ready url=", env=dict(os.environ, TESSERA_LOG=log), stderr=stderr)
    return p, field(line, "url")
