//! `switchyard check` on the real binary: every error `serve` would refuse, located and in file
//! order, with the count line last.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `check -c path`: the exit code and stderr's lines.
fn check(path: &Path) -> (Option<i32>, Vec<String>) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(String::from).collect(),
    )
}

#[test]
fn a_bad_address_an_unknown_key_and_an_integer_duration_are_all_reported_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    // The unknown key comes first in the file and would once have hidden the other two.
    let path = write(
        dir.path(),
        "three.toml",
        r#"[routing]
stickyness = "ip"

[pools.blue]
backends = ["10.0.0.1:8000", "10.0.0.300:8000"]
[pools.green]
backends = ["10.0.1.1:8000"]

[health]
interval = 2
"#,
    );
    let f = path.display();
    let (code, lines) = check(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_eq!(
        lines,
        [
            format!("{f}:2:1: unknown key `stickyness` in [routing]; did you mean `sticky`?"),
            format!(
                "{f}:5:30: pool `blue` backend `10.0.0.300:8000` is neither an IP:port address \
                 nor a host:port name; write e.g. 10.0.0.1:8000, [::1]:8000 or \
                 app-green.internal:8000"
            ),
            format!(
                "{f}:10:12: [health] interval must be a duration string such as \"2s\", not an \
                 integer"
            ),
            format!("{f}: 3 error(s); nothing was started"),
        ]
    );
}

#[test]
fn a_backend_in_both_pools_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "both.toml",
        "[pools.blue]\nbackends = [\"10.0.0.1:8000\", \"10.0.0.2:8000\"]\n\
         [pools.green]\nbackends = [\"10.0.0.2:8000\"]\n",
    );
    let f = path.display();
    let (code, lines) = check(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_eq!(
        lines,
        [
            format!(
                "{f}:4:13: backend 10.0.0.2:8000 is in pool `green` and already in pool `blue` \
                 (line 2); a backend belongs to one pool, or a flip would not move traffic off it"
            ),
            format!("{f}: 1 error(s); nothing was started"),
        ]
    );
}

#[test]
fn unreadable_token_and_missing_preview_files_are_refused_then_accepted_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin.token");
    let preview = dir.path().join("preview.token");
    // A directory where the token file should be: unreadable as a file even for root, under
    // whom tests may run (a mode-000 file would still be readable).
    std::fs::create_dir(&tokens).unwrap();
    let text = format!(
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n\
         [admin]\nsocket = \"{d}/admin.sock\"\nlisten = \"127.0.0.1:9902\"\ntoken_file = \"{t}\"\n\
         [routing]\npreview_token_file = \"{p}\"\n",
        d = dir.path().display(),
        t = tokens.display(),
        p = preview.display(),
    );
    let path = write(dir.path(), "side.toml", &text);
    let f = path.display();
    let (code, lines) = check(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let token_error = format!(
        "{f}:8:14: [admin] token_file: cannot read admin token file {}: Is a directory",
        tokens.display()
    );
    assert!(lines[0].starts_with(&token_error), "{lines:#?}");
    let preview_error = format!(
        "{f}:10:22: [routing] preview_token_file: cannot read the preview token file {}: No such \
         file or directory",
        preview.display()
    );
    assert!(lines[1].starts_with(&preview_error), "{lines:#?}");
    assert_eq!(lines[2], format!("{f}: 2 error(s); nothing was started"));

    // With the files in place, the same configuration passes.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::write(&tokens, "deploy:0123456789abcdef\n").unwrap();
    std::fs::write(&preview, "fedcba9876543210\n").unwrap();
    let (code, lines) = check(&path);
    assert_eq!(code, Some(0), "{lines:#?}");
}
