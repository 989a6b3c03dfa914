//! The shipped systemd unit: `systemd-analyze verify` accepts it without a single warning, and it
//! keeps the properties the product relies on.

use std::process::Command;

const UNIT: &str = include_str!("../systemd/switchyard.service");
const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn directive(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_keeps_its_promises() {
    assert_eq!(directive("User"), ["switchyard"]);
    assert_eq!(directive("RuntimeDirectory"), ["switchyard"]);
    assert_eq!(directive("StateDirectory"), ["switchyard"]);
    assert_eq!(directive("ProtectSystem"), ["strict"]);
    assert_eq!(directive("NoNewPrivileges"), ["yes"]);
    assert!(directive("ExecStartPre")[0].contains("switchyard check -c"));
    assert!(directive("ExecStart")[0].contains("switchyard serve -c"));
    // Readiness and upgrades: the process `ctl upgrade` starts says READY and MAINPID itself.
    assert_eq!(directive("Type"), ["notify"]);
    assert_eq!(directive("NotifyAccess"), ["all"]);
    // Reload is the configuration reload, never a restart or a SIGQUIT hand-over.
    let reload = directive("ExecReload");
    assert_eq!(reload.len(), 1, "{reload:?}");
    assert!(reload[0].ends_with("switchyard ctl reload"), "{reload:?}");
    // No pid file dance (Type=forking): MAINPID= is how systemd follows an upgrade.
    assert!(directive("PIDFile").is_empty());
    // KillMode stays control-group: stop reaches the new process as well as a draining old one.
    assert!(directive("KillMode").is_empty() || directive("KillMode") == ["control-group"]);
    // Above the default grace period, so systemd never SIGKILLs a proxy that is draining.
    let stop = humantime::parse_duration(directive("TimeoutStopSec")[0]).unwrap();
    assert!(stop > switchyard::config::defaults::GRACE_PERIOD + std::time::Duration::from_secs(5));
}

#[test]
fn systemd_analyze_verify_passes() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        // Never a silent pass: skipping takes an explicit decision.
        assert!(
            std::env::var_os("SWITCHYARD_SKIP_SYSTEMD_VERIFY").is_some(),
            "systemd-analyze is not installed: `./dev test` installs it (apt-get install \
             systemd), or set SWITCHYARD_SKIP_SYSTEMD_VERIFY=1 to skip this check"
        );
        eprintln!("SKIPPED on request: systemd-analyze verify");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("switchyard.service");
    // verify checks that ExecStart points at an executable: use the binary under test.
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/switchyard", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("switchyard.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the unit:\n{}",
        ours.join("\n")
    );
}
