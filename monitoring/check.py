#!/usr/bin/env python3
"""Checks of the monitoring files (run by `make test`): the Grafana dashboard is valid
JSON, and every api_key_mgmt metric that it and the alert rules use is one that
monitoring/queries.yaml makes the exporter export (<query>_<column> of a non-label
column). Exits non-zero with the names that do not exist."""
import json
import pathlib
import re
import sys

here = pathlib.Path(__file__).parent
exported = set()
query = None
for line in (here / "queries.yaml").read_text().splitlines():
    if re.match(r"^[a-z_]+:$", line):
        query = line[:-1]
    m = re.match(r"^    - ([a-z_]+):$", line)
    if m:
        exported.add((query, m.group(1)))
usage = {}
lines = (here / "queries.yaml").read_text().splitlines()
for i, line in enumerate(lines):
    m = re.match(r"^    - ([a-z_]+):$", line)
    if m:
        usage[m.group(1)] = lines[i + 1].split('"')[1]
names = set()
query = None
for line in lines:
    if re.match(r"^[a-z_]+:$", line):
        query = line[:-1]
    m = re.match(r"^    - ([a-z_]+):$", line)
    if m and usage.get(m.group(1)) != "LABEL":
        names.add(f"{query}_{m.group(1)}")

dashboard = json.loads((here / "grafana-dashboard.json").read_text())
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
exprs += re.findall(r"expr: *\|?\n?((?:.|\n)*?)(?:\n *for:|\n *labels:)", (here / "alerts.yml").read_text())
used = {n for e in exprs for n in re.findall(r"\bapi_key_mgmt_[a-z_]+", e)}
missing = sorted(used - names)
if missing:
    sys.exit(f"monitoring: not exported by queries.yaml: {', '.join(missing)}")
print(f"monitoring: {len(dashboard['panels'])} dashboard panels and the alert rules use "
      f"{len(used)} metrics, all exported ({len(names)} in queries.yaml)")
