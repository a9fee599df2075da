//! `apex-connect connect <platform>` run as a child process against a platform simulator, then
//! `sync` with the stored OAuth tokens (needs the `frontapp` or `hubspot` feature, and their
//! simulators: `_sims`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{BIN, free_port};

const OAUTH_SECRET_VAR: &str = "APEX_TEST_OAUTH_CLIENT_SECRET";

/// A config with one OAuth connection to simulator `sim` (Front's or HubSpot's), a key, and
/// what the browser step of `connect` checks.
struct OAuthSetup<S> {
    sim: S,
    dir: tempfile::TempDir,
    config: PathBuf,
    key: String,
    platform: &'static str,
    connection: &'static str,
    client_id: String,
    client_secret: String,
    authorize_url: String,
}

#[cfg(feature = "frontapp")]
impl OAuthSetup<apex_connect::frontapp::FrontSimHandle> {
    /// `acme-front` against the Front simulator.
    async fn start() -> Self {
        use secrecy::ExposeSecret;
        let sim = apex_connect::frontapp::FrontSim::start(
            apex_connect::frontapp::FrontSimConfig::default(),
        )
        .await
        .unwrap();
        let (base, client_id, auth_url, token_url) = (
            sim.base_url().to_string(),
            sim.oauth_client_id().to_string(),
            sim.authorize_url(),
            sim.token_url(),
        );
        let client_secret = sim.oauth_client_secret().expose_secret().to_string();
        OAuthSetup::write(
            sim,
            "frontapp",
            "acme-front",
            r#"streams = ["conversations"]"#,
            &base,
            client_id,
            client_secret,
            auth_url,
            token_url,
        )
    }
}

#[cfg(feature = "hubspot")]
impl OAuthSetup<apex_connect::hubspot::HubSpotSim> {
    /// `acme-hs` against the HubSpot simulator (authorize and token under `/oauth/v1`).
    async fn start_hubspot() -> Self {
        let sim = apex_connect::hubspot::HubSpotSim::start(
            apex_connect::hubspot::HubSpotSimConfig::default(),
        )
        .await
        .unwrap();
        let base = sim.base_url().to_string();
        let (client_id, client_secret) = (
            sim.config().client_id.clone(),
            sim.config().client_secret.clone(),
        );
        OAuthSetup::write(
            sim,
            "hubspot",
            "acme-hs",
            "",
            &base,
            client_id,
            client_secret,
            format!("{base}/oauth/v1/authorize"),
            format!("{base}/oauth/v1/token"),
        )
    }
}

impl<S> OAuthSetup<S> {
    #[allow(clippy::too_many_arguments)]
    fn write(
        sim: S,
        platform: &'static str,
        connection: &'static str,
        extra: &str,
        base: &str,
        client_id: String,
        client_secret: String,
        authorize_url: String,
        token_url: String,
    ) -> Self {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("apex-connect.toml");
        std::fs::write(
            &config,
            format!(
                r#"
database = "{db}"

[[connection]]
id = "{connection}"
platform = "{platform}"
base_url = "{base}"
{extra}
env = {{ client_secret = "{OAUTH_SECRET_VAR}" }}

[connection.settings]
client_id = "{client_id}"
auth_url = "{authorize_url}"
token_url = "{token_url}"
"#,
                db = dir.path().join("state.db").display(),
            ),
        )
        .unwrap();
        let key = apex_connect::store::EncryptionKey::generate()
            .to_base64()
            .expose_secret()
            .to_string();
        OAuthSetup {
            sim,
            dir,
            config,
            key,
            platform,
            connection,
            client_id,
            client_secret,
            authorize_url,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("APEX_CONNECT_KEY", &self.key)
            .env(OAUTH_SECRET_VAR, &self.client_secret)
            .env("RUST_LOG", "warn");
        c
    }

    /// Runs a command to completion off the runtime (the simulator serves on it meanwhile).
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    async fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `apex-connect connect <platform>`: reads the authorize URL it prints, plays the browser
    /// (GET it, follow the simulator's 302 to the local callback), waits for exit 0.
    async fn connect(&self) {
        use std::io::BufRead;
        let port = free_port();
        let mut child = self
            .command(&["connect", self.platform, "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut rest = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let trimmed = line.trim();
                if trimmed.starts_with("http://") && tx.is_some() {
                    let _ = tx.take().unwrap().send(trimmed.to_string());
                } else {
                    rest.push(line);
                }
            }
            rest
        });
        let url = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("connect printed no authorize URL in time")
            .expect("connect exited without printing an authorize URL");
        let authorize = url::Url::parse(&url).unwrap();
        assert!(url.starts_with(&self.authorize_url), "{url}");
        let q: BTreeMap<String, String> = authorize.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], self.client_id);
        assert_eq!(
            q["redirect_uri"],
            format!("http://127.0.0.1:{port}/callback")
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(q.contains_key("state"));
        // The browser: the simulator consents and redirects to the local callback.
        let page = reqwest::Client::new().get(&url).send().await.unwrap();
        assert!(page.status().is_success(), "{}", page.status());
        assert_eq!(page.url().port(), Some(port));
        assert!(page.text().await.unwrap().contains("Authorized"));
        let status = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
                        .unwrap();
                    return (s, err);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("connect did not exit after the callback");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        assert!(status.0.success(), "connect failed: {}", status.1);
        let rest = reader.join().unwrap();
        let stored = format!("Tokens stored (encrypted) for {}", self.connection);
        assert!(rest.iter().any(|l| l.contains(&stored)), "{rest:?}");
    }

    fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for name in ["state.db", "state.db-wal"] {
            if let Ok(b) = std::fs::read(self.dir.path().join(name)) {
                all.extend(b);
            }
        }
        all
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[cfg(feature = "frontapp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_frontapp_then_sync_with_oauth_tokens() {
    let t = OAuthSetup::start().await;
    t.connect().await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");

    // The store holds the tokens encrypted: readable with the key, not in the file.
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(
        !contains(&t.database_bytes(), &refresh),
        "refresh token in plaintext"
    );
    {
        use apex_connect::TokenStore;
        use secrecy::ExposeSecret;
        let store = apex_connect::SqliteStore::open(
            t.dir.path().join("state.db"),
            apex_connect::store::EncryptionKey::from_base64(&t.key).unwrap(),
        )
        .await
        .unwrap();
        let stored = store
            .load(&apex_connect::ConnectionId::from("acme-front"))
            .await
            .unwrap()
            .expect("tokens stored");
        assert_eq!(
            stored.value.refresh_token.as_ref().unwrap().expose_secret(),
            refresh
        );
        assert!(
            t.sim
                .oauth()
                .validate_access_token(stored.value.access_token.expose_secret())
        );
        assert!(!contains(
            &t.database_bytes(),
            stored.value.access_token.expose_secret()
        ));
        store.close().await;
    }

    // `sync` authenticates with the stored OAuth tokens (no static token is configured).
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["status"], "active");
    let run = &conn["last_runs"][0];
    assert_eq!(run["status"], "succeeded");
    let expected = t.sim.count("conversations");
    assert!(expected > 0);
    assert_eq!(run["records_read"], expected);
    assert_eq!(run["records_applied"], expected);

    // An expired access token is refreshed once, and the rotated set saved for the next run.
    t.sim.oauth().expire_access_tokens();
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations", "--full"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");
    assert_eq!(oauth.refresh_token, 1, "{oauth:?}");
    assert_eq!(oauth.reuse_detected, 0, "{oauth:?}");
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations", "--full"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (oauth.authorization_code, oauth.refresh_token),
        (1, 1),
        "{oauth:?}"
    );
    let latest = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!contains(&t.database_bytes(), &latest));
}

#[cfg(feature = "hubspot")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hubspot_then_sync_with_oauth_tokens() {
    let t = OAuthSetup::start_hubspot().await;
    t.connect().await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(
        !contains(&t.database_bytes(), &refresh),
        "refresh token in plaintext"
    );

    // `sync` authenticates with the stored OAuth tokens: no private app token is configured.
    let sync = async |full: bool| {
        let mut args = vec!["sync", "acme-hs", "--stream", "contacts"];
        if full {
            args.push("--full");
        }
        let out = t.run(&args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sync(false).await;
    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["id"], "acme-hs", "{s}");
    assert_eq!(conn["status"], "active", "{s}");
    let run = &conn["last_runs"][0];
    assert_eq!(run["status"], "succeeded", "{s}");
    let expected = t.sim.expected("contacts").len();
    assert!(expected > 0);
    assert_eq!(run["records_read"], expected, "{s}");
    assert_eq!(run["records_applied"], expected, "{s}");

    // An expired access token is refreshed once (client credentials in the form body, as
    // HubSpot wants), and the new set is used by the next run without another refresh.
    t.sim.oauth().expire_access_tokens();
    sync(true).await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (
            oauth.authorization_code,
            oauth.refresh_token,
            oauth.reuse_detected
        ),
        (1, 1, 0),
        "{oauth:?}"
    );
    sync(true).await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (oauth.authorization_code, oauth.refresh_token),
        (1, 1),
        "{oauth:?}"
    );
    let latest = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!contains(&t.database_bytes(), &latest));
}

#[cfg(feature = "frontapp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_fails_the_sync_and_marks_needs_reauth() {
    let t = OAuthSetup::start().await;
    t.connect().await;
    t.sim.oauth().revoke_all();
    t.sim.oauth().expire_access_tokens();

    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("re-authorization"), "{err}");
    assert!(
        err.contains("apex-connect connect frontapp --connection acme-front"),
        "{err}"
    );
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!err.contains(&refresh), "{err}");

    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["status"], "needs_reauth", "{s}");
    assert!(
        conn["detail"]
            .as_str()
            .is_some_and(|d| d.contains("apex-connect connect frontapp")),
        "{s}"
    );

    // Connecting again revives it.
    t.connect().await;
    assert_eq!(t.status().await["connections"][0]["status"], "active");
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t.sim.oauth().stats().authorization_code, 2);
}
