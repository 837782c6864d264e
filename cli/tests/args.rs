//! The binary's argument handling. (Having an integration test here also makes
//! `cargo test --workspace` build the `shoal` binary the end-to-end tests run.)

use std::process::Command;

#[test]
fn help_lists_the_commands_and_bad_arguments_fail_clearly() {
    let help = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in [
        "dev", "server", "agent", "apply", "get", "describe", "delete", "logs",
    ] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["dev", "--nodes", "many"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'many'"));
}

#[test]
fn client_commands_say_how_to_get_a_kubeconfig() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["get", "pods", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/kubeconfig") && err.contains("shoal dev"),
        "{err}"
    );
}
