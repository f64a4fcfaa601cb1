//! The monitoring kit in `deploy/`: promtool accepts the Prometheus rules and their unit tests
//! pass, the Grafana dashboard is importable JSON whose queries parse, and the rules, their
//! tests, the dashboard and deploy/README.md name only metrics listed in docs/metrics.md (and the
//! dashboard shows every one of them), so the kit can not drift away from the code.
//!
//! promtool comes from Debian's `prometheus` package, installed by scripts/setup.sh; `PROMTOOL`
//! may name another binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RULES: &str = "deploy/prometheus/livewatch.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/livewatch.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/livewatch.json";
const README: &str = "deploy/README.md";
const CATALOGUE: &str = "docs/metrics.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs promtool from the repository root; fails (never skips) when it is not installed.
fn promtool(args: &[&str]) -> String {
    let bin = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let out = match Command::new(&bin).args(args).current_dir(root()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found ({}): run scripts/setup.sh, which installs it \
             (Debian package `prometheus`)",
            Path::new(&bin).display()
        ),
        Err(e) => panic!("cannot run {}: {e}", Path::new(&bin).display()),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let text = promtool(&["check", "rules", RULES]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn rule_unit_tests_pass() {
    let text = promtool(&["test", "rules", RULES_TEST]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// The rules file split into rules: (`alert` or `record`, name, the rule's lines).
fn rules() -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in read(RULES).lines() {
        let t = line.trim_start();
        let head = ["- alert:", "- record:"]
            .into_iter()
            .find(|h| t.starts_with(h));
        if let Some(h) = head {
            let kind = h[2..h.len() - 1].to_string();
            out.push((kind, t[h.len()..].trim().to_string(), String::new()));
        } else if t.starts_with("- name:") {
            out.push(("group".into(), String::new(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.2.push_str(line);
            last.2.push('\n');
        }
    }
    out.retain(|r| r.0 != "group");
    out
}

#[test]
fn every_alert_has_severity_annotations_a_unit_test_and_a_readme_entry() {
    let tests = read(RULES_TEST);
    let readme = read(README);
    let alerts: Vec<_> = rules().into_iter().filter(|r| r.0 == "alert").collect();
    assert!(
        alerts.len() >= 10,
        "only {} alerting rules found",
        alerts.len()
    );
    let mut problems = Vec::new();
    for (_, name, body) in &alerts {
        if !(body.contains("severity: critical") || body.contains("severity: warning")) {
            problems.push(format!("{name}: no `severity: critical|warning` label"));
        }
        for key in ["summary:", "description:"] {
            if !body.contains(key) {
                problems.push(format!("{name}: no {key} annotation"));
            }
        }
        if !tests.contains(&format!(
            "alertname: {name}\n        exp_alerts:\n          - exp_labels"
        )) {
            problems.push(format!("{name}: no case in {RULES_TEST} where it fires"));
        }
        if !tests.contains(&format!("alertname: {name}\n        exp_alerts: []")) {
            problems.push(format!(
                "{name}: no case in {RULES_TEST} where it stays quiet"
            ));
        }
        if !readme.contains(name.as_str()) {
            problems.push(format!("{name}: not described in {README}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn exprs(d: &Value) -> Vec<String> {
    panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect()
}

#[test]
fn dashboard_is_importable_grafana_json() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(d["uid"], "livewatch");
    assert!(
        d["__inputs"]
            .as_array()
            .expect("__inputs")
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input"
    );
    assert!(
        d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
        "no DS_PROMETHEUS data source variable (needed when the file is provisioned)"
    );

    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        boxes.push((title.to_string(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: panel data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title}: query data source"
            );
            assert!(
                !t["expr"].as_str().unwrap_or("").trim().is_empty(),
                "{title}: empty query"
            );
        }
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let overlap = a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4;
            assert!(!overlap, "panels overlap: {} and {}", a.0, b.0);
        }
    }
}

/// promtool has no command that parses a lone expression offline, so each dashboard query
/// (Grafana's variables replaced) becomes a recording rule for `promtool check rules`.
#[test]
fn dashboard_queries_are_valid_promql() {
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs(&d).iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(!e.contains('$'), "unknown Grafana variable in {e}");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

/// The metric names a text mentions: `livewatch_[a-z0-9_]+` tokens, and separately the
/// recorded series (`level:livewatch_...:operations`) it mentions.
fn names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let b = text.as_bytes();
    let (mut metrics, mut recorded) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0;
    while let Some(off) = text[i..].find("livewatch_") {
        let start = i + off;
        let mut end = start + "livewatch_".len();
        while end < b.len() && word(b[end]) {
            end += 1;
        }
        i = end;
        if (start > 0 && word(b[start - 1])) || end == start + "livewatch_".len() {
            continue; // inside another word, or the bare prefix (`livewatch_*`)
        }
        if start > 0 && b[start - 1] == b':' {
            let mut s = start - 1;
            while s > 0 && word(b[s - 1]) {
                s -= 1;
            }
            let mut e = end;
            if e < b.len() && b[e] == b':' {
                e += 1;
                while e < b.len() && (word(b[e]) || b[e] == b':') {
                    e += 1;
                }
            }
            recorded.insert(text[s..e].to_string());
        } else {
            metrics.insert(text[start..end].to_string());
        }
    }
    (metrics, recorded)
}

/// The metric names of the catalogue table in docs/metrics.md.
fn catalogue() -> BTreeSet<String> {
    let names: BTreeSet<String> = read(CATALOGUE)
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("livewatch_"))
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 20,
        "{CATALOGUE}: only {} metrics in its table",
        names.len()
    );
    names
}

/// The catalogue entry a series name belongs to (histogram series carry suffixes).
fn documented(name: &str, catalogue: &BTreeSet<String>) -> Option<String> {
    if catalogue.contains(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| catalogue.contains(*base))
        .map(str::to_string)
}

#[test]
fn deploy_names_only_documented_metrics() {
    let catalogue = catalogue();
    let defined: BTreeSet<String> = rules()
        .into_iter()
        .filter(|r| r.0 == "record")
        .map(|r| r.1)
        .collect();
    let mut problems = Vec::new();
    for file in [RULES, RULES_TEST, DASHBOARD, README] {
        let (metrics, recorded) = names(&read(file));
        for m in &metrics {
            if documented(m, &catalogue).is_none() {
                problems.push(format!("{file}: `{m}` is not in {CATALOGUE}"));
            }
        }
        for r in &recorded {
            if !defined.contains(r) {
                problems.push(format!(
                    "{file}: recorded series `{r}` is not defined in {RULES}"
                ));
            }
        }
    }
    // a recorded series is named level:metric:operations after the metric it aggregates
    for r in &defined {
        let metric = r.split(':').nth(1).unwrap_or("");
        let total = format!("{metric}_total");
        if documented(metric, &catalogue).is_none() && !catalogue.contains(&total) {
            problems.push(format!(
                "{RULES}: recorded series `{r}` names no metric of {CATALOGUE}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboard_shows_every_documented_metric() {
    let (metrics, _) = names(&exprs(&dashboard()).join("\n"));
    let shown: BTreeSet<String> = metrics
        .iter()
        .filter_map(|m| documented(m, &catalogue()))
        .collect();
    let missing: Vec<_> = catalogue().difference(&shown).cloned().collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} has no panel for these metrics of {CATALOGUE}: {missing:?}"
    );
}
