//! The Azure deployment artefacts in `dashboards/azure/` agree with what the
//! Azure Monitor exporter sends (`encode::azure::COLUMNS`):
//!
//! - the custom table (`table.json`) and the DCR's stream declaration
//!   (`dcr.json`) hold exactly `COLUMNS`, same names, order and types, and
//!   the DCR passes the stream unchanged into `SightlineFlows_CL`;
//! - no column name is reserved, and every one is a valid Log Analytics name;
//! - every KQL query that ships (workbook items, `queries.kql`, query pack
//!   bodies) uses only columns that exist, checked by a small KQL tokenizer
//!   and a pipe-stage walker that tracks the names each stage leaves;
//! - the three query sources carry the same queries;
//! - the ARM templates refer only to parameters and variables they declare.
//!
//! Nothing here reaches Azure: the templates are checked against their
//! documented shapes only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use sightline_export::encode::azure::{COLUMNS, RESERVED};

/// The custom table every query reads.
const TABLE: &str = "SightlineFlows_CL";
/// The stream the relay posts to and the DCR declares.
const STREAM: &str = "Custom-SightlineFlows";
/// Monitoring Metrics Publisher, the role that may post to a DCR.
const MONITORING_METRICS_PUBLISHER: &str = "3913510d-42f4-4e42-8a64-420c390055eb";
const DEPLOYMENT_SCHEMA: &str = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#";
const TEMPLATES: [&str; 4] = ["table.json", "dcr.json", "workbook.json", "querypack.json"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards/azure")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("dashboards/azure/{file}: {e}"))
}

fn load(file: &str) -> Value {
    serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("dashboards/azure/{file} is not JSON: {e}"))
}

/// The one resource of `ty` in a template.
fn resource<'a>(template: &'a Value, file: &str, ty: &str) -> &'a Value {
    let found: Vec<&Value> = template["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: resources"))
        .iter()
        .filter(|r| r["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(ty)))
        .collect();
    assert_eq!(found.len(), 1, "{file}: exactly one {ty} resource");
    found[0]
}

/// (name, type) of a `columns` array.
fn columns_of(v: &Value, what: &str) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: columns is not an array"))
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_else(|| panic!("{what}: a column without a name: {c}"));
            let ty = c["type"].as_str().unwrap_or_else(|| panic!("{what}: column {name} has no type"));
            (name.to_owned(), ty.to_owned())
        })
        .collect()
}

fn expected_columns() -> Vec<(String, String)> {
    COLUMNS.iter().map(|(n, t)| ((*n).to_owned(), t.arm_name().to_owned())).collect()
}

fn column_names() -> Vec<&'static str> {
    COLUMNS.iter().map(|(n, _)| *n).collect()
}

/// Log Analytics: a letter first, then up to 44 alphanumerics or `_`.
fn valid_column_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 45
}

fn check_column_names(names: &[(String, String)], what: &str) {
    for (name, _) in names {
        assert!(!name.starts_with('_'), "{what}: column {name} starts with _ (Azure's standard columns)");
        assert!(!RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)), "{what}: column {name} is a reserved name");
        assert!(valid_column_name(name), "{what}: column {name} is not a valid Log Analytics column name");
    }
}

// ---------------------------------------------------------------- the table

#[test]
fn table_holds_exactly_the_exported_columns() {
    let t = load("table.json");
    let table = resource(&t, "table.json", "Microsoft.OperationalInsights/workspaces/tables");
    assert_eq!(t["parameters"]["tableName"]["defaultValue"], TABLE, "table.json: tableName defaults to {TABLE}");
    assert!(t["parameters"]["workspaceName"]["type"] == "string", "table.json: a workspaceName parameter");
    assert_eq!(t["parameters"]["plan"]["allowedValues"], serde_json::json!(["Analytics", "Basic"]), "table.json: plan Analytics|Basic");
    assert_eq!(t["parameters"]["retentionInDays"]["type"], "int", "table.json: a retentionInDays parameter");
    assert_eq!(table["properties"]["plan"], "[parameters('plan')]");
    assert_eq!(table["properties"]["schema"]["name"], "[parameters('tableName')]");
    let columns = columns_of(&table["properties"]["schema"]["columns"], "table.json");
    assert_eq!(columns, expected_columns(), "table.json: schema.columns must be encode::azure::COLUMNS (names, order, types)");
    check_column_names(&columns, "table.json");
}

// ------------------------------------------------------------------ the DCR

#[test]
fn dcr_declares_the_exported_columns_and_passes_them_unchanged() {
    let t = load("dcr.json");
    let dcr = resource(&t, "dcr.json", "Microsoft.Insights/dataCollectionRules");
    assert_eq!(dcr["kind"], "Direct", "dcr.json: kind Direct, so that the DCR has its own logsIngestion endpoint");
    let p = &dcr["properties"];

    let streams = p["streamDeclarations"].as_object().expect("dcr.json: streamDeclarations");
    assert_eq!(streams.keys().collect::<Vec<_>>(), [STREAM], "dcr.json: one stream declaration, {STREAM}");
    let columns = columns_of(&streams[STREAM]["columns"], "dcr.json");
    assert_eq!(columns, expected_columns(), "dcr.json: {STREAM} columns must be encode::azure::COLUMNS (names, order, types)");
    check_column_names(&columns, "dcr.json");

    let destinations = p["destinations"]["logAnalytics"].as_array().expect("dcr.json: destinations.logAnalytics");
    assert_eq!(destinations.len(), 1, "dcr.json: one Log Analytics destination");
    assert_eq!(destinations[0]["workspaceResourceId"], "[parameters('workspaceResourceId')]");
    let destination = destinations[0]["name"].as_str().expect("dcr.json: the destination's name");

    let flows = p["dataFlows"].as_array().expect("dcr.json: dataFlows");
    assert_eq!(flows.len(), 1, "dcr.json: one data flow");
    let flow = &flows[0];
    assert_eq!(flow["streams"], serde_json::json!([STREAM]));
    assert_eq!(flow["destinations"], serde_json::json!([destination]));
    assert_eq!(flow["transformKql"], "source", "dcr.json: rows land unchanged");
    assert_eq!(flow["outputStream"], format!("Custom-{TABLE}"));

    // A DCE is optional: the property is null unless the parameter is set.
    assert_eq!(t["parameters"]["dataCollectionEndpointId"]["defaultValue"], "");
    assert!(p["dataCollectionEndpointId"].as_str().is_some_and(|e| e.contains("empty(parameters('dataCollectionEndpointId'))")));

    // What the export config needs.
    let outputs = &t["outputs"];
    assert!(outputs["immutableId"]["value"].as_str().is_some_and(|v| v.ends_with(".immutableId]")), "dcr.json: output immutableId");
    assert!(
        outputs["logsIngestionEndpoint"]["value"].as_str().is_some_and(|v| v.contains(".endpoints.logsIngestion")),
        "dcr.json: output the DCR's logsIngestion endpoint"
    );
    assert_eq!(t["variables"]["streamName"], STREAM);
    assert_eq!(outputs["stream"]["value"], "[variables('streamName')]");
}

#[test]
fn dcr_role_assignment_is_conditional_on_a_principal() {
    let t = load("dcr.json");
    let ra = resource(&t, "dcr.json", "Microsoft.Authorization/roleAssignments");
    assert_eq!(ra["condition"], "[not(empty(parameters('principalId')))]", "dcr.json: the role assignment only with a principal");
    assert_eq!(t["parameters"]["principalId"]["defaultValue"], "");
    assert_eq!(t["variables"]["monitoringMetricsPublisher"], MONITORING_METRICS_PUBLISHER);
    assert_eq!(
        ra["properties"]["roleDefinitionId"],
        "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', variables('monitoringMetricsPublisher'))]"
    );
    assert_eq!(ra["properties"]["principalId"], "[parameters('principalId')]");
    assert!(ra["scope"].as_str().is_some_and(|s| s.contains("Microsoft.Insights/dataCollectionRules/")), "dcr.json: scoped to the DCR");
}

#[test]
fn exported_columns_are_valid_and_unreserved() {
    check_column_names(&expected_columns(), "encode::azure::COLUMNS");
    let mut seen = BTreeSet::new();
    for (name, _) in COLUMNS {
        assert!(seen.insert(name.to_ascii_lowercase()), "COLUMNS: {name} twice (column names are case-insensitive)");
    }
}

// -------------------------------------------------------- template hygiene

/// Every string in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

/// The names in `function('name')` calls inside ARM expressions.
fn references(s: &str, function: &str) -> Vec<String> {
    let pattern = format!("{function}('");
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&pattern) {
        let preceded_by_word = rest[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric());
        rest = &rest[i + pattern.len()..];
        let Some(end) = rest.find('\'') else { break };
        if !preceded_by_word {
            out.push(rest[..end].to_owned());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn templates_refer_only_to_what_they_declare() {
    for file in TEMPLATES {
        let t = load(file);
        assert_eq!(t["$schema"], DEPLOYMENT_SCHEMA, "{file}: a 2019-04-01 deployment template");
        assert!(t["contentVersion"].is_string(), "{file}: contentVersion");
        let resources = t["resources"].as_array().unwrap_or_else(|| panic!("{file}: resources"));
        for r in resources {
            for key in ["type", "apiVersion", "name"] {
                assert!(r[key].is_string(), "{file}: a resource without {key}: {r}");
            }
        }
        let mut all = Vec::new();
        strings(&t, &mut all);
        for s in all.iter().filter(|s| s.starts_with('[') && !s.starts_with("[[")) {
            assert!(s.ends_with(']'), "{file}: expression {s} is not closed");
            for p in references(s, "parameters") {
                assert!(t["parameters"].get(&p).is_some(), "{file}: {s} uses parameter {p}, which is not declared");
            }
            for v in references(s, "variables") {
                assert!(t["variables"].get(&v).is_some(), "{file}: {s} uses variable {v}, which is not declared");
            }
        }
        for (name, p) in t["parameters"].as_object().into_iter().flatten() {
            assert!(["string", "int", "bool", "object", "array", "securestring"].contains(&p["type"].as_str().unwrap_or("")), "{file}: parameter {name} type");
            if let Some(d) = p.get("defaultValue")
                && let Some(allowed) = p.get("allowedValues").and_then(Value::as_array)
            {
                assert!(allowed.contains(d), "{file}: parameter {name}'s default is not allowed");
            }
        }
    }
}

// ------------------------------------------------------ the three sources

/// (name, description, body) of every query in `queries.kql`: blocks
/// separated by blank lines, each starting with `// name:` and
/// `// description:` lines; comment-only blocks (the header) are skipped.
fn kql_file_queries() -> Vec<(String, String, String)> {
    let text = read("queries.kql");
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if !line.trim().is_empty() {
            block.push(line);
            continue;
        }
        if block.is_empty() {
            continue;
        }
        if let Some(name) = block[0].strip_prefix("// name:") {
            let description = block
                .get(1)
                .and_then(|l| l.strip_prefix("// description:"))
                .unwrap_or_else(|| panic!("queries.kql: {name}: a `// description:` line after the name"));
            let body = block[2..].join("\n");
            assert!(!body.trim().is_empty(), "queries.kql: {name} has no body");
            out.push((name.trim().to_owned(), description.trim().to_owned(), body));
        } else {
            assert!(block.iter().all(|l| l.starts_with("//")), "queries.kql: a query block without a `// name:` line: {}", block[0]);
        }
        block.clear();
    }
    out
}

/// The workbook as it ships: `serializedData` is the template's
/// `workbookContent` variable, serialized by ARM.
fn workbook_content() -> Value {
    let t = load("workbook.json");
    let wb = resource(&t, "workbook.json", "Microsoft.Insights/workbooks");
    assert_eq!(wb["kind"], "shared");
    assert_eq!(wb["properties"]["serializedData"], "[string(variables('workbookContent'))]", "workbook.json: serializedData");
    assert_eq!(wb["properties"]["category"], "workbook");
    assert_eq!(wb["properties"]["sourceId"], "[parameters('workspaceResourceId')]");
    t["variables"]["workbookContent"].clone()
}

/// (title, query) of every query item of the workbook, groups included.
fn workbook_queries() -> Vec<(String, String)> {
    fn walk(items: &[Value], out: &mut Vec<(String, String)>) {
        for item in items {
            let c = &item["content"];
            match item["type"].as_u64() {
                Some(3) => {
                    let title = c["title"].as_str().unwrap_or_else(|| panic!("workbook: query item {} has no title", item["name"])).to_owned();
                    let query = c["query"].as_str().unwrap_or_else(|| panic!("workbook: {title} has no query")).to_owned();
                    assert_eq!(c["version"], "KqlItem/1.0", "workbook: {title}");
                    assert_eq!(c["queryType"], 0, "workbook: {title} is a Logs (KQL) query");
                    assert_eq!(c["resourceType"], "microsoft.operationalinsights/workspaces", "workbook: {title}");
                    assert_eq!(c["timeContextFromParameter"], "TimeRange", "workbook: {title} follows the time range");
                    out.push((title, query));
                }
                Some(12) => walk(c["items"].as_array().map(Vec::as_slice).unwrap_or_default(), out),
                _ => {}
            }
        }
    }
    let content = workbook_content();
    let mut out = Vec::new();
    walk(content["items"].as_array().expect("workbook: items"), &mut out);
    out
}

/// (displayName, description, body) of every query of the query pack.
fn querypack_queries() -> Vec<(String, String, String)> {
    let t = load("querypack.json");
    resource(&t, "querypack.json", "Microsoft.OperationalInsights/queryPacks");
    let mut names = BTreeSet::new();
    t["resources"]
        .as_array()
        .expect("querypack.json: resources")
        .iter()
        .filter(|r| r["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.OperationalInsights/queryPacks/queries")))
        .map(|r| {
            let p = &r["properties"];
            let name = p["displayName"].as_str().expect("querypack.json: displayName").to_owned();
            assert!(names.insert(r["name"].as_str().unwrap_or_default().to_owned()), "querypack.json: {name}: resource name used twice");
            assert!(r["name"].as_str().is_some_and(|n| n.contains("guid(")), "querypack.json: {name}: query names are GUIDs");
            assert_eq!(p["related"]["categories"], serde_json::json!(["network"]), "querypack.json: {name}");
            let description = p["description"].as_str().unwrap_or_else(|| panic!("querypack.json: {name}: description")).to_owned();
            let body = p["body"].as_str().unwrap_or_else(|| panic!("querypack.json: {name}: body")).to_owned();
            (name, description, body)
        })
        .collect()
}

#[test]
fn workbook_has_a_time_range_and_valid_content() {
    let content = workbook_content();
    assert_eq!(content["version"], "Notebook/1.0");
    assert_eq!(content["fallbackResourceIds"], serde_json::json!(["[parameters('workspaceResourceId')]"]));
    let items = content["items"].as_array().expect("workbook: items");
    let time_range = items
        .iter()
        .filter(|i| i["type"] == 9)
        .flat_map(|i| i["content"]["parameters"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == "TimeRange")
        .expect("workbook: a TimeRange parameter");
    assert_eq!(time_range["type"], 4, "workbook: TimeRange is a time-range picker");
    let mut names = BTreeSet::new();
    for item in items {
        let name = item["name"].as_str().expect("workbook: every item has a name");
        assert!(names.insert(name), "workbook: item name {name} twice");
    }
    // ARM evaluates strings that start with `[` inside variables: only the
    // fallback resource id may.
    let mut all = Vec::new();
    strings(&content, &mut all);
    let expressions: Vec<&String> = all.iter().filter(|s| s.starts_with('[')).collect();
    assert_eq!(expressions, ["[parameters('workspaceResourceId')]"], "workbook: an unintended ARM expression in workbookContent");
    let panels: Vec<String> = workbook_queries().into_iter().map(|(t, _)| t).collect();
    for needed in ["Flows over time by verdict", "Drops by workload and reason", "Top talkers", "Policy denials by policy", "DNS errors"] {
        assert!(panels.iter().any(|p| p == needed), "workbook: a panel {needed}");
    }
}

#[test]
fn the_three_query_sources_carry_the_same_queries() {
    let file = kql_file_queries();
    let pack = querypack_queries();
    let workbook = workbook_queries();
    assert!(file.len() >= 5, "queries.kql holds {} queries", file.len());
    let names = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(names(pack.iter().map(|q| &q.0).collect()), names(file.iter().map(|q| &q.0).collect()), "querypack.json vs queries.kql: names");
    assert_eq!(names(workbook.iter().map(|q| &q.0).collect()), names(file.iter().map(|q| &q.0).collect()), "workbook.json vs queries.kql: names");
    for ((name, description, body), (_, pack_description, pack_body)) in file.iter().zip(&pack) {
        assert_eq!(pack_body.trim_end(), body.trim_end(), "querypack.json: {name}: body differs from queries.kql");
        assert_eq!(pack_description, description, "querypack.json: {name}: description differs from queries.kql");
    }
    for ((name, _, body), (_, query)) in file.iter().zip(&workbook) {
        assert_eq!(query.trim_end(), body.trim_end(), "workbook.json: {name}: query differs from queries.kql");
    }
}

#[test]
fn every_shipped_query_uses_only_existing_columns() {
    let columns = column_names();
    let mut failures = Vec::new();
    let mut checked = 0;
    let sources = kql_file_queries()
        .into_iter()
        .map(|(n, _, b)| (format!("queries.kql / {n}"), b))
        .chain(querypack_queries().into_iter().map(|(n, _, b)| (format!("querypack.json / {n}"), b)))
        .chain(workbook_queries().into_iter().map(|(n, b)| (format!("workbook.json / {n}"), b)));
    for (name, body) in sources {
        checked += 1;
        if let Err(e) = check_query(&name, &body, TABLE, &columns) {
            failures.extend(e);
        }
    }
    assert!(checked >= 15, "{checked} queries checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------ KQL checker

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A string literal's value (escapes not decoded).
    Str(String),
    Num,
    /// A workbook parameter, `{TimeRange}` or `{TimeRange:grain}`.
    Param(String),
    Punct(&'static str),
}

/// Operators spelled with a hyphen.
const HYPHENATED: &[&str] = &[
    "mv-expand",
    "mv-apply",
    "project-away",
    "project-keep",
    "project-rename",
    "project-reorder",
    "make-series",
    "top-nested",
    "top-hitters",
    "parse-where",
    "parse-kv",
];

const PUNCT2: &[&str] = &["==", "!=", "=~", "!~", "<=", ">=", "..", "=>", "<>"];
const PUNCT1: &[&str] = &["|", "(", ")", "[", "]", "{", "}", ",", ";", "=", "<", ">", "+", "-", "*", "/", "%", ".", ":", "!", "@", "?"];

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Splits a query into tokens; comments are dropped.
fn tokenize(q: &str) -> Result<Vec<Tok>, String> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if q[i..].starts_with("//") {
            i = q[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if c == b'"' || c == b'\'' || ((c == b'@' || c == b'h' || c == b'H') && matches!(b.get(i + 1), Some(b'"' | b'\''))) {
            // "…", '…' (backslash escapes); @"…" verbatim (doubled quote);
            // h"…" obfuscated.
            let verbatim = c == b'@';
            let start = if c == b'"' || c == b'\'' { i } else { i + 1 };
            let quote = b[start];
            let mut j = start + 1;
            let mut value = String::new();
            loop {
                let Some(&d) = b.get(j) else { return Err(format!("unterminated string at {i}")) };
                if d == quote {
                    if verbatim && b.get(j + 1) == Some(&quote) {
                        value.push(quote as char);
                        j += 2;
                        continue;
                    }
                    break;
                }
                if d == b'\\' && !verbatim {
                    j += 2;
                    continue;
                }
                value.push(d as char);
                j += 1;
            }
            out.push(Tok::Str(value));
            i = j + 1;
        } else if c.is_ascii_digit() {
            // Numbers, with a fraction and a unit (5m, 1.5h, 100ms, 1e3).
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                j += 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
            }
            while j < b.len() && is_ident_char(b[j]) {
                j += 1;
            }
            out.push(Tok::Num);
            i = j;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let mut j = i + 1;
            while j < b.len() && is_ident_char(b[j]) {
                j += 1;
            }
            let mut word = &q[i..j];
            for h in HYPHENATED {
                if h.starts_with(&format!("{word}-")) && q[i..].starts_with(h) && !b.get(i + h.len()).is_some_and(|&c| is_ident_char(c)) {
                    word = h;
                    j = i + h.len();
                }
            }
            out.push(Tok::Ident(word.to_owned()));
            i = j;
        } else if c == b'{' {
            // A workbook parameter: {Name} or {Name:format}.
            let close = q[i..].find('}').map(|n| i + n);
            let inner = close.map(|e| &q[i + 1..e]);
            match inner {
                Some(inner)
                    if inner.split(':').next().is_some_and(|n| !n.is_empty() && n.bytes().all(is_ident_char))
                        && inner.bytes().all(|c| is_ident_char(c) || c == b':' || c == b'-') =>
                {
                    out.push(Tok::Param(inner.split(':').next().unwrap_or_default().to_owned()));
                    i = close.unwrap_or(b.len()) + 1;
                }
                _ => {
                    out.push(Tok::Punct("{"));
                    i += 1;
                }
            }
        } else if let Some(p) = PUNCT2.iter().find(|p| q[i..].starts_with(**p)) {
            out.push(Tok::Punct(p));
            i += 2;
        } else if let Some(p) = PUNCT1.iter().find(|p| p.as_bytes()[0] == c) {
            out.push(Tok::Punct(p));
            i += 1;
        } else {
            return Err(format!("unexpected character {:?} at {i}", q[i..].chars().next().unwrap_or('?')));
        }
    }
    Ok(out)
}

/// Names that are KQL's own (operators, keywords, functions, types), never
/// columns.
#[rustfmt::skip]
const KQL_NAMES: &[&str] = &[
    // tabular operators and their keywords
    "where", "filter", "extend", "project", "project-away", "project-keep", "project-rename", "project-reorder", "summarize", "by",
    "mv-expand", "mv-apply", "render", "order", "sort", "asc", "desc", "nulls", "first", "last", "top", "limit", "take", "distinct",
    "count", "let", "to", "typeof", "bagexpansion", "with_itemindex", "kind", "array", "bag", "with", "as", "serialize", "on",
    // charts
    "timechart", "barchart", "columnchart", "piechart", "table", "areachart", "linechart", "scatterchart", "stacked", "unstacked",
    // logical and string operators
    "and", "or", "not", "in", "has", "has_any", "has_all", "has_cs", "hasprefix", "hassuffix", "contains", "contains_cs",
    "startswith", "startswith_cs", "endswith", "endswith_cs", "matches", "regex", "between", "like",
    // literals and types
    "true", "false", "null", "bool", "boolean", "int", "long", "real", "double", "decimal", "string", "datetime", "timespan",
    "dynamic", "guid",
    // aggregations
    "sum", "sumif", "countif", "dcount", "dcountif", "avg", "avgif", "min", "max", "minif", "maxif", "arg_max", "arg_min",
    "make_set", "make_list", "make_bag", "percentile", "percentiles", "stdev", "variance", "any", "take_any", "hll",
    // scalar functions
    "ago", "now", "bin", "bin_at", "floor", "ceiling", "round", "abs", "log10", "exp", "pow", "sqrt", "tostring", "toint",
    "tolong", "toreal", "todouble", "tobool", "todatetime", "totimespan", "todynamic", "toguid", "parse_json", "todecimal",
    "coalesce", "iff", "iif", "case", "isnotempty", "isempty", "isnotnull", "isnull", "strcat", "strcat_array", "strlen",
    "substring", "split", "tolower", "toupper", "trim", "replace_string", "extract", "format_datetime", "startofday",
    "startofweek", "startofmonth", "endofday", "datetime_diff", "array_length", "array_concat", "pack_array", "pack",
    "bag_pack", "bag_keys", "set_has_element", "gettype", "hash", "ipv4_is_private", "ipv4_is_in_range", "parse_ipv4",
    "format_ipv4", "row_number", "prev", "next", "toscalar",
];

/// Splits tokens at top-level occurrences of `sep` (outside brackets).
fn split_top(tokens: &[Tok], is_sep: impl Fn(&Tok) -> bool) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Tok::Punct("(" | "[" | "{") => depth += 1,
            Tok::Punct(")" | "]" | "}") => depth -= 1,
            t if depth == 0 && is_sep(t) => {
                out.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&tokens[start..]);
    out
}

fn commas(tokens: &[Tok]) -> Vec<&[Tok]> {
    if tokens.is_empty() { Vec::new() } else { split_top(tokens, |t| *t == Tok::Punct(",")) }
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// `Name = expr` → (Some(Name), expr); otherwise (None, item).
fn alias(item: &[Tok]) -> (Option<String>, &[Tok]) {
    match (item.first(), item.get(1)) {
        (Some(Tok::Ident(n)), Some(Tok::Punct("="))) => (Some(n.clone()), &item[2..]),
        _ => (None, item),
    }
}

/// The column a bare item names: `Col` alone.
fn single_ident(item: &[Tok]) -> Option<&str> {
    match item {
        [Tok::Ident(n)] => Some(n),
        _ => None,
    }
}

/// One query's walk: the names each stage can see, and what went wrong.
struct Checker<'a> {
    query: &'a str,
    /// `let` names: scalars and functions, visible everywhere after.
    lets: BTreeSet<String>,
    /// `let` names bound to tabular expressions, with their columns.
    tables: BTreeMap<String, BTreeSet<String>>,
    errors: Vec<String>,
}

impl Checker<'_> {
    fn error(&mut self, what: String) {
        self.errors.push(format!("{}: {what}", self.query));
    }

    /// Every identifier in an expression is a KQL name, a member after a
    /// dot, a `let` name or a known column.
    fn expr(&mut self, tokens: &[Tok], known: &BTreeSet<String>) {
        for (i, t) in tokens.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| &tokens[p]);
            match t {
                Tok::Ident(name) => {
                    if prev == Some(&Tok::Punct(".")) {
                        continue; // a member: IP.source, L7.dns.rcode
                    }
                    let call = tokens.get(i + 1) == Some(&Tok::Punct("("));
                    if call {
                        if !KQL_NAMES.contains(&name.as_str()) && !self.lets.contains(name) {
                            self.error(format!("unknown function `{name}`"));
                        }
                    } else if !KQL_NAMES.contains(&name.as_str()) && !self.lets.contains(name) && !known.contains(name) {
                        self.error(format!("unknown column `{name}`"));
                    }
                }
                // ['Column name']: a quoted column, unless it indexes something.
                Tok::Punct("[") if !matches!(prev, Some(Tok::Ident(_) | Tok::Punct(")" | "]") | Tok::Param(_))) => {
                    if let (Some(Tok::Str(name)), Some(Tok::Punct("]"))) = (tokens.get(i + 1), tokens.get(i + 2))
                        && !known.contains(name)
                    {
                        self.error(format!("unknown column `{name}`"));
                    }
                }
                _ => {}
            }
        }
    }

    /// The column name KQL gives an aggregation without an alias:
    /// `count()` → `count_`, `sum(X)` → `sum_X`; `arg_max(A, B, …)` → A, B, …
    fn aggregate_names(item: &[Tok], known: &BTreeSet<String>) -> Vec<String> {
        let Some(f) = ident(item.first()) else { return Vec::new() };
        if item.get(1) != Some(&Tok::Punct("(")) || item.last() != Some(&Tok::Punct(")")) {
            return Vec::new();
        }
        let args = commas(&item[2..item.len() - 1]);
        if f == "arg_max" || f == "arg_min" {
            if args.iter().any(|a| *a == [Tok::Punct("*")]) {
                return known.iter().cloned().collect();
            }
            return args.iter().filter_map(|a| single_ident(a).map(str::to_owned)).collect();
        }
        match args.as_slice() {
            [] => vec![format!("{f}_")],
            [a] => single_ident(a).map(|a| vec![format!("{f}_{a}")]).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Walks `source | stage | …`; the names after the last stage.
    fn pipeline(&mut self, tokens: &[Tok], table: &str, columns: &BTreeSet<String>) -> BTreeSet<String> {
        let stages = split_top(tokens, |t| *t == Tok::Punct("|"));
        let mut known = match stages[0] {
            [Tok::Ident(t)] if t == table => columns.clone(),
            [Tok::Ident(t)] if self.tables.contains_key(t) => self.tables[t].clone(),
            other => {
                self.error(format!("does not start with the table {table}: {other:?}"));
                return BTreeSet::new();
            }
        };
        for stage in &stages[1..] {
            let Some(op) = ident(stage.first()) else {
                self.error(format!("a stage without an operator: {stage:?}"));
                continue;
            };
            let rest = &stage[1..];
            match op {
                "where" | "filter" | "take" | "limit" => self.expr(rest, &known),
                "order" | "sort" | "top" => {
                    if !rest.contains(&Tok::Ident("by".into())) {
                        self.error(format!("`{op}` without `by`"));
                    }
                    self.expr(rest, &known);
                }
                "render" => {}
                "extend" | "serialize" => {
                    for item in commas(rest) {
                        let (name, expr) = alias(item);
                        self.expr(expr, &known);
                        if let Some(name) = name {
                            known.insert(name);
                        }
                    }
                }
                "project" | "distinct" => {
                    let mut next = BTreeSet::new();
                    for item in commas(rest) {
                        let (name, expr) = alias(item);
                        self.expr(expr, &known);
                        if let Some(name) = name.or_else(|| single_ident(expr).map(str::to_owned)) {
                            next.insert(name);
                        }
                    }
                    known = next;
                }
                "project-away" | "project-keep" | "project-reorder" => {
                    let mut listed = BTreeSet::new();
                    for item in commas(rest) {
                        match single_ident(item) {
                            Some(n) if known.contains(n) => {
                                listed.insert(n.to_owned());
                            }
                            Some(n) => self.error(format!("`{op}` of unknown column `{n}`")),
                            None => self.error(format!("`{op}` supports plain column names only: {item:?}")),
                        }
                    }
                    match op {
                        "project-away" => known.retain(|n| !listed.contains(n)),
                        "project-keep" => known = listed,
                        _ => {}
                    }
                }
                "project-rename" => {
                    for item in commas(rest) {
                        match alias(item) {
                            (Some(new), [Tok::Ident(old)]) if known.contains(old) => {
                                known.remove(old);
                                known.insert(new);
                            }
                            _ => self.error(format!("`project-rename` of an unknown column: {item:?}")),
                        }
                    }
                }
                "summarize" => {
                    let parts = split_top(rest, |t| *t == Tok::Ident("by".into()));
                    if parts.len() > 2 {
                        self.error("`summarize` with two `by`".to_owned());
                    }
                    let mut next = BTreeSet::new();
                    for item in commas(parts[0]) {
                        let (name, expr) = alias(item);
                        self.expr(expr, &known);
                        match name {
                            Some(name) => {
                                next.insert(name);
                            }
                            None => next.extend(Self::aggregate_names(expr, &known)),
                        }
                    }
                    for item in parts.get(1).map(|p| commas(p)).unwrap_or_default() {
                        let (name, expr) = alias(item);
                        self.expr(expr, &known);
                        let implied = match expr {
                            [Tok::Ident(n)] => Some(n.clone()),
                            [Tok::Ident(f), Tok::Punct("("), Tok::Ident(n), ..] if ["bin", "bin_at", "floor"].contains(&f.as_str()) => Some(n.clone()),
                            _ => None,
                        };
                        if let Some(n) = name.or(implied) {
                            next.insert(n);
                        }
                    }
                    known = next;
                }
                "mv-expand" => {
                    let mut rest = rest;
                    // bagexpansion=…, kind=…, with_itemindex=Name
                    while let [Tok::Ident(k), Tok::Punct("="), Tok::Ident(v), tail @ ..] = rest {
                        match k.as_str() {
                            "bagexpansion" | "kind" => {}
                            "with_itemindex" => {
                                known.insert(v.clone());
                            }
                            _ => break,
                        }
                        rest = tail;
                    }
                    // … limit N
                    if let [head @ .., Tok::Ident(l), Tok::Num] = rest
                        && l == "limit"
                    {
                        rest = head;
                    }
                    let mut added = Vec::new();
                    for item in commas(rest) {
                        // … to typeof(T)
                        let item = match item {
                            [head @ .., Tok::Ident(to), Tok::Ident(ty), Tok::Punct("("), Tok::Ident(_), Tok::Punct(")")] if to == "to" && ty == "typeof" => {
                                head
                            }
                            _ => item,
                        };
                        let (name, expr) = alias(item);
                        self.expr(expr, &known);
                        if let Some(name) = name {
                            added.push(name);
                        } else if single_ident(expr).is_none() {
                            self.error(format!("`mv-expand` of an expression needs a name: {expr:?}"));
                        }
                    }
                    known.extend(added);
                }
                "count" => known = BTreeSet::from(["Count".to_owned()]),
                other => self.error(format!("operator `{other}` is not supported by this checker")),
            }
        }
        known
    }
}

/// Checks that a query only uses columns that exist: the table's at the
/// start, then whatever each stage keeps or introduces. Ok(the names after
/// the last stage), or every problem, each naming the query.
fn check_query(name: &str, query: &str, table: &str, columns: &[&str]) -> Result<BTreeSet<String>, Vec<String>> {
    let tokens = tokenize(query).map_err(|e| vec![format!("{name}: {e}")])?;
    let columns: BTreeSet<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let mut c = Checker { query: name, lets: BTreeSet::new(), tables: BTreeMap::new(), errors: Vec::new() };
    let statements: Vec<&[Tok]> = split_top(&tokens, |t| *t == Tok::Punct(";")).into_iter().filter(|s| !s.is_empty()).collect();
    let Some((last, lets)) = statements.split_last() else {
        return Err(vec![format!("{name}: empty query")]);
    };
    for statement in lets {
        match statement {
            [Tok::Ident(l), Tok::Ident(n), Tok::Punct("="), expr @ ..] if l == "let" => {
                if matches!(expr.first(), Some(Tok::Ident(t)) if t == table || c.tables.contains_key(t)) {
                    let known = c.pipeline(expr, table, &columns);
                    c.tables.insert(n.clone(), known);
                } else {
                    c.expr(expr, &BTreeSet::new());
                    c.lets.insert(n.clone());
                }
            }
            other => c.error(format!("a statement before the query that is not `let Name = …`: {other:?}")),
        }
    }
    let known = c.pipeline(last, table, &columns);
    if c.errors.is_empty() { Ok(known) } else { Err(c.errors) }
}

fn check(query: &str) -> Result<BTreeSet<String>, Vec<String>> {
    check_query("test", query, TABLE, &column_names())
}

#[test]
fn checker_rejects_a_column_that_does_not_exist() {
    // The ContainerNetworkLogs sample sums BytesSent, which is no column.
    let e = check("SightlineFlows_CL\n| summarize Sent = sum(BytesSent), Received = sum(BytesReceived) by SourceNamespace").unwrap_err();
    assert!(e.iter().any(|e| e.contains("`BytesSent`")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("`BytesReceived`")), "{e:?}");
    assert!(e.iter().all(|e| e.starts_with("test: ")), "errors name the query: {e:?}");
    // Case matters in KQL.
    assert!(check("SightlineFlows_CL | where verdict == \"DROPPED\"").is_err());
    // Azure's reserved and standard columns are not Sightline's.
    assert!(check("SightlineFlows_CL | where TenantId != \"\"").is_err());
    assert!(check("SightlineFlows_CL | summarize sum(_BilledSize)").is_err());
    // The wrong table.
    assert!(check("ContainerNetworkLogs | take 10").is_err());
}

#[test]
fn checker_accepts_aliases_members_literals_and_parameters() {
    let known = check(
        "SightlineFlows_CL // a comment naming NoSuchColumn\n\
         | where TimeGenerated {TimeRange} and Verdict in (\"DROPPED\", 'AUDIT') and DropReason !has \"NoSuchColumn\"\n\
         | extend Flows = IngressFlowCount + EgressFlowCount, Double = Flows * 2\n\
         | extend L4 = parse_json(Layer4), Src = tostring(IP.source), W = tostring(SourceWorkloads[0].name)\n\
         | where toint(L4.UDP.destination_port) == 53 and Flows > 0 and isnotempty(Layer7['dns'])\n\
         | summarize Total = sum(Flows), count(), sum(Double), arg_max(TimeGenerated, Verdict) by Src, W, bin(TimeGenerated, {TimeRange:grain})\n\
         | order by Total desc, count_ asc\n\
         | render timechart",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let expected: BTreeSet<String> = ["Total", "count_", "sum_Double", "TimeGenerated", "Verdict", "Src", "W"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(known, expected);
}

#[test]
fn checker_forgets_what_summarize_and_project_drop() {
    let e = check("SightlineFlows_CL | summarize Flows = sum(IngressFlowCount) by SourceNamespace | where Verdict == \"DROPPED\"").unwrap_err();
    assert!(e.iter().any(|e| e.contains("`Verdict`")), "{e:?}");
    let e = check("SightlineFlows_CL | project SourceNamespace, N = NodeName | where DropReason != \"\"").unwrap_err();
    assert!(e.iter().any(|e| e.contains("`DropReason`")), "{e:?}");
    assert!(check("SightlineFlows_CL | project SourceNamespace, N = NodeName | where N != \"\" and SourceNamespace != \"\"").is_ok());
    let e = check("SightlineFlows_CL | project-away Verdict | where Verdict == \"x\"").unwrap_err();
    assert!(e.iter().any(|e| e.contains("`Verdict`")), "{e:?}");
    assert!(check("SightlineFlows_CL | project-rename V = Verdict | where V == \"x\"").is_ok());
    // An alias is not visible before it is defined.
    assert!(check("SightlineFlows_CL | where Flows > 0 | extend Flows = IngressFlowCount").is_err());
}

#[test]
fn checker_follows_mv_expand_let_and_rejects_unknown_functions() {
    assert!(
        check(
            "SightlineFlows_CL\n| mv-expand p = Policies.ingress_denied_by\n| mv-expand with_itemindex=Ix Direction = pack_array(\"ingress\", \"egress\") to typeof(string) limit 10\n| extend Policy = tostring(p.name), Ns = p.namespace\n| summarize count() by Policy, Ns, Direction, Ix"
        )
        .is_ok()
    );
    assert!(check("SightlineFlows_CL | mv-expand p = Policies.ingress_denied_by | where isnotempty(q.name)").is_err());
    assert!(
        check("let threshold = 5;\nlet drops = SightlineFlows_CL | where Verdict == \"DROPPED\" | extend F = EgressFlowCount;\ndrops | where F > threshold")
            .is_ok()
    );
    assert!(check("let drops = SightlineFlows_CL | project Verdict;\ndrops | where NodeName != \"\"").is_err());
    let e = check("SightlineFlows_CL | extend X = to_string(Verdict)").unwrap_err();
    assert!(e.iter().any(|e| e.contains("unknown function `to_string`")), "{e:?}");
    let e = check("SightlineFlows_CL | join (SightlineFlows_CL) on UUID").unwrap_err();
    assert!(e.iter().any(|e| e.contains("`join` is not supported")), "{e:?}");
    // Quoted column names are columns too.
    assert!(check("SightlineFlows_CL | where ['Verdict'] == \"DROPPED\"").is_ok());
    assert!(check("SightlineFlows_CL | where ['BytesSent'] > 0").is_err());
}

#[test]
fn tokenizer_reads_strings_comments_members_and_parameters() {
    let t = tokenize("T | where A == \"x // y\" and B != 'it''s' // c\n| extend C = D.e[0].f, G = @\"a\\b\"\"c\" {P:grain} mv-expand 5m 1.5h").unwrap();
    let idents: Vec<&str> = t.iter().filter_map(|t| ident(Some(t))).collect();
    assert_eq!(idents, ["T", "where", "A", "and", "B", "extend", "C", "D", "e", "f", "G", "mv-expand"]);
    assert!(t.contains(&Tok::Str("x // y".into())));
    assert!(t.contains(&Tok::Str("a\\b\"c".into())));
    assert!(t.contains(&Tok::Param("P".into())));
    assert_eq!(t.iter().filter(|t| **t == Tok::Num).count(), 3);
    assert!(tokenize("T | where A == \"open").is_err());
}
