//! The deployment files of `deploy/` are checked, not just written: the ECS task definition
//! against the ECS API model botocore ships, its IAM policy for the collector's permissions,
//! the EC2 systemd units with `systemd-analyze verify`.

use maille_wasm_tests::envoy::repo_root;
use std::process::Command;

#[test]
fn the_ecs_task_definition_matches_the_ecs_api_model() {
    let root = repo_root();
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("deploy/ecs/validate.py"))
        .arg(root.join("deploy/ecs/taskdef-colorgateway.json"))
        .arg("--policy")
        .arg(root.join("deploy/ecs/task-role-policy.json"))
        .output()
        .expect("run validate.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("valid against the ECS API model"), "{text}");

    // The checker refuses what ECS would: an unknown field, a missing sidecar.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let mut td: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/ecs/taskdef-colorgateway.json")).unwrap(),
    )
    .unwrap();
    td["containerDefinitions"][0]["memoryy"] = 512.into();
    std::fs::write(&bad, td.to_string()).unwrap();
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("deploy/ecs/validate.py"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("Unknown parameter in containerDefinitions[0]: \"memoryy\""));
}

#[test]
fn the_ec2_units_pass_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let units = repo_root().join("deploy/ec2");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&units).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        // A template unit is verified as an instance of it.
        let target = dir
            .path()
            .join(name.replace("@.service", "@colorgateway.service"));
        std::fs::copy(e.path(), &target).unwrap();
        files.push(target);
    }
    assert_eq!(files.len(), 3, "{files:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by make setup)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // The binaries are not installed on the test machine; anything else is a real problem.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.trim().is_empty() && !l.contains("is not executable: No such file or directory")
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // And a broken unit is caught.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        "[Service]\nExecStart=relative/path\nRestart=sometimes\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bad unit file setting") && text.contains("relative/path"),
        "{text}"
    );
}
