//! End-to-end: a tiny `mini-vmm sweep` with the built binary writes its
//! three files, with one table row and one JSON point per depth and
//! timeout, a plot with lines, and lazy never exiting more than eager.
//! Skipped (with a visible message) when /dev/kvm cannot be opened.

mod common;

use std::path::PathBuf;

use serde_json::Value;

const DEPTHS: [u64; 2] = [1, 16];
const TIMEOUTS_US: [u64; 2] = [300, 3000];

/// A fresh, empty directory under the target directory's temporary area.
fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mini-vmm-sweep-test");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The trimmed contents of the SVG's `<text>` elements.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn count(m: &Value, name: &str) -> u64 {
    m[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {name} missing or not measured: {}", m["mode"], m[name]))
}

#[test]
fn tiny_sweep_writes_table_json_and_plot() {
    if !common::kvm_usable("the mini-vmm sweep test") {
        return;
    }
    let dir = out_dir();
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let stdout = common::mini_vmm([
        "sweep".into(),
        "--out".into(),
        dir.clone().into_os_string(),
        "--requests".into(),
        "20".into(),
        "--vcpus".into(),
        "2".into(),
        "--depths".into(),
        list(&DEPTHS).into(),
        "--timeouts-us".into(),
        list(&TIMEOUTS_US).into(),
    ] as [std::ffi::OsString; 11]);

    // The markdown: written, printed, one row per point in sweep order.
    let md = std::fs::read_to_string(dir.join("sweep.md")).expect("sweep.md");
    assert_eq!(md, stdout, "stdout is not the markdown file");
    let rows: Vec<Vec<String>> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| depth"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let expected: Vec<(u64, u64)> = TIMEOUTS_US
        .iter()
        .flat_map(|&t| DEPTHS.iter().map(move |&d| (d, t)))
        .collect();
    let got: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(got, expected, "table rows:\n{md}");
    for r in &rows {
        // depth, timeout, writes, six per-mode columns, four ratios
        // (lazy/lazy-rfc, lazy/eager, lazy/kernel, lazy/necessary).
        assert_eq!(r.len(), 13, "row {r:?}");
        assert!(
            r[3].starts_with("n/a / "),
            "kernel exits are not n/a: {r:?}"
        );
        assert_eq!(r[12], "1.000", "lazy exits off the protocol floor: {r:?}");
    }
    assert!(md.contains("Targets:"));

    // The JSON: every mode at every point, no violation, lazy <= eager.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).expect("sweep.json"))
            .expect("sweep.json is JSON");
    assert_eq!(json["violations"].as_array().map(Vec::len), Some(0));
    let points = json["points"].as_array().expect("points");
    assert_eq!(points.len(), expected.len());
    for (p, &(depth, timeout)) in points.iter().zip(&expected) {
        assert_eq!(
            (p["depth"].as_u64(), p["timeout_us"].as_u64()),
            (Some(depth), Some(timeout))
        );
        let modes = p["modes"].as_array().expect("modes");
        let by = |name: &str| {
            modes
                .iter()
                .find(|m| m["mode"] == name)
                .unwrap_or_else(|| panic!("mode {name} missing at {p}"))
        };
        let (kernel, eager, lazy) = (by("kernel"), by("eager"), by("lazy"));
        let writes = count(kernel, "deadline_writes");
        assert!(
            writes >= 20 * 2 * (depth + 1),
            "{writes} writes at depth {depth}"
        );
        assert_eq!(count(eager, "deadline_writes"), writes);
        assert_eq!(count(lazy, "deadline_writes"), writes);
        assert_eq!(count(eager, "tsc_deadline_exits"), writes);
        let (l, e) = (
            count(lazy, "tsc_deadline_exits"),
            count(eager, "tsc_deadline_exits"),
        );
        assert!(
            l <= e,
            "depth {depth}, timeout {timeout}: lazy {l} > eager {e} exits"
        );
        assert_eq!(l, count(lazy, "necessary_traps"));
        assert!(kernel["tsc_deadline_exits"].is_null());
    }

    // The plot: an SVG document with a line per series and its legend.
    let svg = std::fs::read_to_string(dir.join("sweep.svg")).expect("sweep.svg");
    assert!(svg.trim_start().starts_with("<svg"), "not SVG: {svg:.200}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline") || svg.contains("<path"));
    let texts = svg_texts(&svg);
    for label in [
        "kernel",
        "eager",
        "lazy",
        "timeout 300 us",
        "timeout 3000 us",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "legend entry {label} missing from {texts:?}"
        );
    }
}
