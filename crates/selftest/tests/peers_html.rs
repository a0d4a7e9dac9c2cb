//! The HTML matrix (`check --html FILE`) opened in a real headless browser (Debian's
//! `chromium`): the page renders to a screenshot of the requested size with real content, and
//! the DOM holds one cell per field and column.
//!
//! Skips (`skipped: no chromium`) when Chromium is not installed, unless
//! `VCPU_RESET_REQUIRE_CHROMIUM=1` (set by `.ci/run`). With QEMU installed the page also has
//! the `qemu-tcg` columns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vcpu_reset_selftest::check::peers::process::which;

const BIN: &str = env!("CARGO_BIN_EXE_vcpu-reset");
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vcpu-reset-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chromium() -> Option<PathBuf> {
    let found = which("chromium");
    if found.is_none() {
        if std::env::var("VCPU_RESET_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("VCPU_RESET_REQUIRE_CHROMIUM=1 but chromium is not on PATH");
        }
        eprintln!("skipped: no chromium");
    }
    found
}

/// Chromium headless on `page` with `args`, its own profile dir, killed after 120 s; returns
/// its stdout.
fn run_chromium(program: &Path, dir: &Path, page: &Path, args: &[String]) -> Vec<u8> {
    let profile = dir.join(format!("profile-{}", args.len()));
    std::fs::create_dir_all(&profile).expect("profile dir");
    let stdout = dir.join("chromium.out");
    let stderr = dir.join("chromium.err");
    let mut child = Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 120 s: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read(&stdout).expect("chromium stdout")
}

/// PNG width and height from the IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn html_matrix_renders_in_headless_chromium_with_every_cell() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = TempDir::new("html");
    let page = dir.0.join("matrix.html");
    let mut args = vec!["check", "--backend", "model", "--format", "json", "--html"];
    let page_arg = page.display().to_string();
    args.push(&page_arg);
    let with_qemu = which("qemu-system-x86_64").is_some();
    if with_qemu {
        args.extend(["--vmm", "qemu-tcg"]);
    }
    let out = Command::new(BIN).args(&args).output().expect("run check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let results = v["results"].as_array().expect("results");
    let mut columns: Vec<String> = Vec::new();
    let mut fields: Vec<&str> = Vec::new();
    for r in results {
        let c = format!(
            "{}/{}/{}",
            r["scenario"].as_str().unwrap_or_default(),
            r["view"].as_str().unwrap_or_default(),
            r["vcpu"].as_str().unwrap_or_default()
        );
        if !columns.contains(&c) {
            columns.push(c);
        }
        let f = r["field"].as_str().unwrap_or_default();
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    let findings = results.iter().filter(|r| r["verdict"] == "finding").count();
    if with_qemu {
        assert!(columns.iter().any(|c| c.starts_with("qemu-tcg:power-on")));
        assert!(findings > 0, "QEMU's findings are on the page");
    }

    // The DOM as Chromium parsed it: one cell per field and column, findings marked.
    let dom = run_chromium(&chromium, &dir.0, &page, &["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&dom);
    assert!(
        dom.contains("</html>"),
        "a whole document: {}",
        &dom[..dom.len().min(300)]
    );
    assert_eq!(
        dom.matches("<td class=\"cell").count(),
        fields.len() * columns.len(),
        "{} fields x {} columns",
        fields.len(),
        columns.len()
    );
    assert_eq!(dom.matches("<th class=\"col").count(), columns.len());
    assert_eq!(dom.matches("class=\"cell v-finding").count(), findings);
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "self-contained"
    );

    // The rendering: a screenshot of the window size with real content in it.
    let shot = dir.0.join("matrix.png");
    run_chromium(
        &chromium,
        &dir.0,
        &page,
        &[
            format!("--window-size={WIDTH},{HEIGHT}"),
            format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(png_size(&png), (WIDTH, HEIGHT));
    // A blank page compresses to a few KiB; the colour-coded matrix does not.
    assert!(png.len() > 40_000, "screenshot only {} bytes", png.len());
}
