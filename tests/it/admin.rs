//! The `apex-connect` binary's admin listener (issue 9): never on the webhook listener, behind
//! `APEX_CONNECT_ADMIN_TOKEN` read from the process environment, and a public admin address
//! without a token refused at start. The token never reaches the logs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{BIN, free_port};

const TOKEN: &str = "binary-admin-token-5f0c2a9e";

fn write_config(dir: &Path, listen: &str, admin: &str) -> std::path::PathBuf {
    let path = dir.join("apex-connect.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"{}\"\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n\
             [[connection]]\nid = \"acme\"\nplatform = \"memory\"\nstreams = [\"items\"]\n",
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_puts_the_admin_api_on_its_own_listener_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{admin_port}"),
    );
    let log = dir.path().join("serve.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("APEX_CONNECT_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let (hooks, admin) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{admin_port}"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = client.get(format!("{admin}/metrics")).send().await.is_ok()
            && client.get(format!("{hooks}/")).send().await.is_ok();
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in ["/admin/status", "/metrics"] {
        let on_hooks = client
            .get(format!("{hooks}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(on_hooks.status(), 404, "{path} on the webhook listener");
        let url = format!("{admin}{path}");
        assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
        assert_eq!(
            client
                .get(&url)
                .bearer_auth("wrong-token-wrong-token")
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            client
                .get(&url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("bearer token"), "{logged}");
    assert!(!logged.contains(TOKEN), "the token is in the log");
}

#[test]
fn serve_refuses_a_public_admin_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        &format!("0.0.0.0:{}", free_port()),
    );
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("APEX_CONNECT_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("APEX_CONNECT_ADMIN_TOKEN"), "{stderr}");
}
