#!/usr/bin/env python3
"""The picture of the monitoring section (docs/monitoring.png), drawn from real data.

Starts a throwaway cluster (PostgreSQL 15, library preloaded) and Debian's
prometheus-postgres-exporter with monitoring/queries.yaml, drives three minutes' worth
of traffic in three phases with pgbench (normal traffic; then a burst of strings that
are not keys and a rate-limited client; then charges running into a cap), scrapes the
exporter every second, and plots the same series as the Grafana dashboard's main
panels from those scrapes.

    python3 -m pip install matplotlib && python3 tools/monitoring_picture.py [OUT.png]

Needs `make install` (the extension in PostgreSQL 15) and root or the postgres user.
"""
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = "/usr/lib/postgresql/15/bin"
DIR = "/tmp/api_key_mgmt/monitoring-picture"
PORT = 54395
EXPORTER_PORT = 19187
PHASE = 20  # seconds per phase


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def psql(sql):
    return sh(f"{BIN}/psql", "-X", "-q", "-At", "-h", DIR, "-p", str(PORT), "-U", "postgres",
              "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql).strip()


def pgbench(script, seconds, clients, rate=None):
    path = pathlib.Path(DIR) / f"bench-{abs(hash(script))}.sql"
    path.write_text(script)
    args = [f"{BIN}/pgbench", "-n", "-h", DIR, "-p", str(PORT), "-U", "postgres", "-c", str(clients),
            "-T", str(seconds), "-f", str(path), "postgres"]
    if rate:
        args[1:1] = ["-R", str(rate)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{EXPORTER_PORT}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(api_key_mgmt_[a-z_]+)(?:\{([^}]*)\})? (\S+)$', line)
        if m:
            labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
            labels.pop("server", None)
            out[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
    return out


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "monitoring.png")
    subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", DIR], check=False)
    subprocess.run(["rm", "-rf", DIR], check=True)
    sh(str(ROOT / "tests/cluster.sh"), "start", DIR, str(PORT))
    try:
        psql("CREATE EXTENSION api_key_mgmt; CREATE ROLE exporter LOGIN IN ROLE api_key_mgmt_monitor;")
        tenant = psql("SELECT api_key_mgmt.create_tenant('Acme', '{*}', 'acme')")
        key = psql(f"SELECT api_key FROM api_key_mgmt.issue_api_key('{tenant}', 'web', '{{*}}')")
        limited = psql(f"SELECT key_id || ' ' || api_key FROM api_key_mgmt.issue_api_key('{tenant}', 'batch', '{{*}}')").split()
        psql(f"SELECT api_key_mgmt.set_rate_limit('{limited[0]}', 'per_second', 20, '1 second')")
        capped = psql(f"SELECT key_id FROM api_key_mgmt.issue_api_key('{tenant}', 'capped', '{{*}}')")
        psql(f"SELECT api_key_mgmt.set_key_caps('{capped}', 30)")
        env = dict(os.environ, DATA_SOURCE_NAME=f"host={DIR} port={PORT} user=exporter dbname=postgres sslmode=disable")
        exporter = subprocess.Popen(
            ["/usr/bin/prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}",
             f"--extend.query-path={ROOT / 'monitoring/queries.yaml'}", "--disable-default-metrics",
             "--disable-settings-metrics"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    scrape()
                    break
                except OSError:
                    time.sleep(0.2)
            samples = []
            stop = threading.Event()

            def scraper():
                start = time.time()
                while not stop.is_set():
                    samples.append((time.time() - start, scrape()))
                    time.sleep(1)

            t = threading.Thread(target=scraper)
            t.start()
            ok = f"SELECT (api_key_mgmt.validate_api_key('{key}', 'agents:chat')).code;\n"
            charge = f"SELECT (api_key_mgmt.charge_api_key('{capped}', 'agents:chat', 0.05)).code;\n"
            junk = "SELECT (api_key_mgmt.validate_api_key('sk_live_' || md5(random()::text))).code;\n"
            burst = f"SELECT (api_key_mgmt.validate_api_key('{limited[1]}', NULL, NULL, NULL, 1)).code;\n"
            procs = [pgbench(ok, 3 * PHASE, 2, rate=400), pgbench(charge, 3 * PHASE, 1, rate=10)]
            time.sleep(PHASE)
            procs += [pgbench(junk, PHASE, 2, rate=150), pgbench(burst, PHASE, 1, rate=60)]
            time.sleep(PHASE)
            procs += [pgbench(charge, PHASE, 1, rate=40)]
            for p in procs:
                p.wait()
            time.sleep(3)
            stop.set()
            t.join()
        finally:
            exporter.kill()
    finally:
        subprocess.run([str(ROOT / "tests/cluster.sh"), "stop", DIR], check=False)
    plot(samples, out)
    print(out)


def rate(samples, name, label=None):
    """Per-second rate of a counter (summed over series matching label) between scrapes."""
    def total(s):
        return sum(v for (n, ls), v in s.items() if n == name and (label is None or label in ls))
    xs, ys = [], []
    for (t0, a), (t1, b) in zip(samples, samples[1:]):
        xs.append(t1)
        ys.append(max(total(b) - total(a), 0) / max(t1 - t0, 1e-9))
    return xs, ys


def labels_of(samples, name, key):
    return sorted({dict(ls)[key] for _, s in samples for (n, ls) in s if n == name and dict(ls).get(key)})


def plot(samples, out):
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    fig.suptitle("api_key_mgmt, scraped from postgres_exporter every second (monitoring/queries.yaml)", fontsize=12)
    ax = axes[0][0]
    for code in labels_of(samples, "api_key_mgmt_validations_total", "code"):
        xs, ys = rate(samples, "api_key_mgmt_validations_total", ("code", code))
        if max(ys, default=0) > 0:
            ax.plot(xs, ys, label=code)
    ax.set_title("Validations per second, by code")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    xs, refused = rate(samples, "api_key_mgmt_validations_total")
    _, ok = rate(samples, "api_key_mgmt_validations_total", ("code", "ok"))
    ax.plot(xs, [r - o for r, o in zip(refused, ok)], color="tab:red", label="refused (every code but ok)")
    for decision in ("allowed", "limited"):
        xs, ys = rate(samples, "api_key_mgmt_rate_limit_decisions_total", ("decision", decision))
        ax.plot(xs, ys, linestyle="--", label=f"rate limit: {decision}")
    ax.set_title("Refusals and rate-limit decisions per second")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    for code in labels_of(samples, "api_key_mgmt_charges_total", "code"):
        xs, ys = rate(samples, "api_key_mgmt_charges_total", ("code", code))
        if max(ys, default=0) > 0:
            ax.plot(xs, ys, label=code)
    ax.set_title("Charges per second, by outcome")
    ax.legend(fontsize=8)
    ax.set_xlabel("seconds")
    ax = axes[1][1]
    xs = [t for t, _ in samples]
    spent = [sum(v for (n, ls), v in s.items() if n == "api_key_mgmt_charges_total" and ("code", "ok") in ls) for _, s in samples]
    ax.plot(xs, spent, color="tab:green", label="charges admitted (total)")
    ax.set_title("Charges admitted (0.05 each; daily cap 30 = 600)")
    ax.legend(fontsize=8)
    ax.set_xlabel("seconds")
    for a in axes.flat:
        a.grid(alpha=0.3)
        for edge in (PHASE, 2 * PHASE):
            a.axvline(edge, color="grey", linewidth=0.6, linestyle=":")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
