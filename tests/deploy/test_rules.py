"""Prometheus config and alert rules, checked by promtool: the config and the rules
parse, each alert fires on synthetic series of its failure and stays silent on healthy
ones (deploy/prometheus/tests/camseg_test.yml), and the copies agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.tools import DEPLOY, run, tool

RULES = DEPLOY / "prometheus" / "rules" / "camseg.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*_test.yml"))


def alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules() -> None:
    out = run(tool("promtool"), "check", "rules", str(RULES)).stdout
    assert "SUCCESS" in out


def test_promtool_checks_the_compose_config(tmp_path: Path) -> None:
    """The compose Prometheus config, with its rule glob pointed at the repository's rules."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # where compose mounts them
    cfg["rule_files"] = [str(RULES.parent / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(cfg))
    out = run(tool("promtool"), "check", "config", str(local)).stdout
    assert "1 rule files found" in out and "SUCCESS" in out
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert jobs == {"camseg-server": ["server:9100"], "camseg-worker": ["worker:9101"],
                    "camseg-dicom-listener": ["dicom-listener:9102"]}


def test_promtool_checks_the_kubernetes_config(tmp_path: Path) -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())
    cfg["rule_files"] = [str(RULES.parent / "*.yml")]
    local = tmp_path / "prometheus-k8s.yml"
    local.write_text(yaml.safe_dump(cfg))
    assert "SUCCESS" in run(tool("promtool"), "check", "config", str(local)).stdout
    assert {j["job_name"] for j in cfg["scrape_configs"]} == {"camseg-server", "camseg-worker",
                                                              "camseg-dicom-listener"}


def test_promtool_unit_tests_fire_each_alert_and_stay_silent_on_healthy_series() -> None:
    assert len(RULE_TESTS) == 3
    out = run(tool("promtool"), "test", "rules", *(f.name for f in RULE_TESTS), cwd=RULE_TESTS[0].parent).stdout
    assert out.count("SUCCESS") == len(RULE_TESTS)
    cases = [c for f in RULE_TESTS for t in yaml.safe_load(f.read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert set(alerts()) == fired, "every alert must have a case where it fires"
    # the alerts that read rates, ages or health have a healthy case in which they stay silent
    assert {"CamsegServerDown", "CamsegNotServing", "CamsegWorkerDown", "CamsegQueueBacklogGrowing",
            "CamsegTasksFailing", "CamsegRetrainingOverdue", "CamsegModelRefused", "CamsegHeatmapsSlow",
            "CamsegDicomListenerDown", "CamsegDicomSeriesFailing", "CamsegDicomSendsBackingUp"} <= silent


def test_the_kubernetes_prometheus_rule_is_the_rules_file() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "base" / "monitoring.yaml").read_text()))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_every_alert_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    missing = [a for a in alerts() if f"`{a}`" not in readme]
    assert not missing, f"deploy/README.md does not explain {missing}"


def test_alerts_read_recorded_series_of_their_own_group_recorded_before_them() -> None:
    """Groups run independently; within one, rules run in order. An alert reading a series
    recorded in another group (or later) can miss it at an evaluation and reset its `for`
    (promtool showed exactly that at a 30-minute evaluation interval)."""
    import re

    for group in yaml.safe_load(RULES.read_text())["groups"]:
        recorded: set[str] = set()
        for rule in group["rules"]:
            used = set(re.findall(r"\bcamseg:[a-z0-9_:]+", rule["expr"]))
            assert used <= recorded, (rule.get("alert") or rule["record"], used - recorded)
            if "record" in rule:
                recorded.add(rule["record"])
