"""The dashboard (config/grafana/callrelay.json) and the alert rules (config/prometheus/alerts.yml)
query only metrics the server exports: after a relayed call, every metric name (and every label
value an expression selects with `=` or an alternation `=~"a|b"`) is on /metrics. With promtool
on PATH, the rules, the Prometheus configuration and every dashboard expression (Grafana's
variables replaced) also pass `promtool check`."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml

import harness as h
from harness import PatternVideoTrack

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config/grafana/callrelay.json"
ALERTS = ROOT / "config/prometheus/alerts.yml"
PROMETHEUS = ROOT / "config/prometheus.yml"

# Series Prometheus makes itself for every target (not on /metrics).
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target, plus the metric of each `label_values` variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p['title']!r}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.match(rf"label_values\(\s*({NAME}(?:\{{[^}}]*\}})?)\s*,", q)
        if m:
            out.append((f"variable {var['name']!r}", m.group(1)))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [
        (f"alert {r.get('alert') or r.get('record')!r}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names (in matchers or by/without/on/ignoring lists),
    numbers or durations."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?(?![\w:])", " ", s)  # numbers
    names = set()
    for m in re.finditer(NAME, s):
        if m.group(0).lower() in KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def selected_labels(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) that `metric{label="value"}` or `metric{label=~"a|b"}` (each
    plain alternative) requires, leaving out Grafana variables and target labels."""
    out = []
    for m in re.finditer(rf"({NAME})\s*\{{([^}}]*)\}}", expr):
        metric = m.group(1)
        for label, op, value in re.findall(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', m.group(2)):
            if label in TARGET_LABELS or "$" in value or op not in ("=", "=~"):
                continue
            values = value.split("|") if op == "=~" else [value]
            for v in values:
                if re.fullmatch(r"[\w\-]+", v):
                    out.append((metric, label, v))
    return out


def exported(text: str) -> dict[str, list[dict[str, str]]]:
    """/metrics as {sample name: [labels of each sample]} (histograms give _bucket, _sum, _count)."""
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(rf"({NAME})(\{{(.*)\}})?\s", line)
        assert m, f"unparsable /metrics line: {line!r}"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.setdefault(m.group(1), []).append(labels)
    return out


def test_the_extractor_sees_names_not_functions_or_labels():
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(callrelay_x_bucket{instance=~"$i",'
        'route="a"}[$__rate_interval]))) / clamp_min(sum(increase(b_total[5m])), 1e-9) > 0.2 '
        "and on (instance) up == 0"
    )
    assert metric_names(expr) == {"callrelay_x_bucket", "b_total", "up"}
    assert selected_labels(expr) == [("callrelay_x_bucket", "route", "a")]
    assert selected_labels('m{outcome=~"failed|timed_out",job="callrelay"}') == [
        ("m", "outcome", "failed"),
        ("m", "outcome", "timed_out"),
    ]


async def test_every_queried_metric_exists_after_a_relayed_call(server):
    queries = dashboard_exprs() + alert_exprs()
    assert len(queries) > 30, queries
    async with asyncio.timeout(60), h.Session(server) as s:
        await s.relayed_pair(PatternVideoTrack(320, 240, 90, 200))

        async def flushed():
            v = await h.metrics(server)
            return v if h.metric(v, "callrelay_rtp_bytes_received_total", kind="video") > 0 else None

        values = await h.eventually(flushed, what="RTP bytes received counted")
        for pc in ("publish", "subscribe"):
            connected = h.metric(values, "callrelay_sfu_connections_total", pc=pc, outcome="connected", transport="udp")
            assert connected >= 1, f"{pc} connection not counted as connected"
        assert h.metric(values, "callrelay_database_up") == 1
        status, text = await h.api(server, "GET", "/metrics")
        assert status == 200
    series = exported(text)

    missing: dict[str, list[str]] = {}
    missing_labels: dict[str, list[str]] = {}
    checked = set()
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for name in names:
            checked.add(name)
            if name not in series and name not in SYNTHETIC:
                missing.setdefault(name, []).append(where)
        for metric, label, value in selected_labels(expr):
            if metric in series and not any(l.get(label) == value for l in series[metric]):
                missing_labels.setdefault(f'{metric}{{{label}="{value}"}}', []).append(where)
    print(f"\n{len(queries)} expressions, {len(checked)} metrics checked: {', '.join(sorted(checked))}")
    report = [f"  {n} (queried by {', '.join(sorted(set(w)))})" for n, w in sorted(missing.items())]
    report += [f"  {n} (queried by {', '.join(sorted(set(w)))})" for n, w in sorted(missing_labels.items())]
    if report:
        print("missing from /metrics:\n" + "\n".join(report))
    assert not report, "queried but not on /metrics after a relayed call:\n" + "\n".join(report)


def test_promtool_accepts_rules_config_and_dashboard_queries():
    promtool = shutil.which("promtool")
    if not promtool:
        msg = (
            "PROMTOOL NOT ON PATH: `promtool check rules/config` and the dashboard's PromQL "
            "syntax check were SKIPPED (apt-get install prometheus provides it)"
        )
        warnings.warn(msg, stacklevel=1)
        print(f"\n!!! {msg}")
        pytest.skip(msg)

    def check(*args: str):
        r = subprocess.run([promtool, "check", *args], capture_output=True, text=True, timeout=60)
        print(r.stdout, r.stderr)
        assert r.returncode == 0, f"promtool check {' '.join(args)}:\n{r.stdout}{r.stderr}"

    check("rules", str(ALERTS))
    check("config", str(PROMETHEUS))
    # The dashboard's expressions as recording rules, so promtool parses each one.
    rules = [
        {
            "record": f"callrelay_dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dashboard_rules.yml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        check("rules", path)
