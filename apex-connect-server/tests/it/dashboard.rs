//! The dashboard: its sign-in and CSRF rules over plain HTTP, and an operator's day in a real
//! headless Chromium driven through chromedriver (WebDriver): sign in, the overview, connect
//! through OAuth against the simulator, run a sync and watch it finish, read its log, change a
//! schedule, disable and enable, retry a dead letter, sign out. Screenshots of each page are
//! saved under `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apex_connect_core::engine::CancellationToken;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::platform::{Setup, cli, note, setup_with, signed_webhook};

const TOKEN: &str = "dashboard-admin-token-0123456789";
const SCHEDULE: &str = r#"
[[connection.schedule]]
every = "1h"
"#;

struct Served {
    t: Setup,
    shutdown: CancellationToken,
    serve: tokio::task::JoinHandle<apex_connect_core::Result<()>>,
    base: String,
}

async fn serve() -> Served {
    // As the `apex-connect` binary does: sync runs' log lines are captured and stored.
    {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(apex_connect_core::RunLogLayer::new().filtered())
            .try_init();
    }
    let t = setup_with(Some(TOKEN), SCHEDULE).await;
    let shutdown = CancellationToken::new();
    let serve = {
        let (runner, cli) = (
            t.runner.clone().with_shutdown(shutdown.clone()),
            cli(&["serve", "--config", t.config()]),
        );
        tokio::spawn(async move { runner.run(cli, &mut std::io::sink()).await })
    };
    let base = format!("http://127.0.0.1:{}", t.admin_listen);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/ui/login")).send().await.is_err() {
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Served {
        t,
        shutdown,
        serve,
        base,
    }
}

impl Served {
    async fn stop(self) {
        self.shutdown.cancel();
        self.serve.await.unwrap().unwrap();
    }
}

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in over HTTP; returns the cookie header and the session's CSRF token.
async fn sign_in(http: &reqwest::Client, base: &str) -> (String, String) {
    sign_in_as(http, base, TOKEN).await
}

/// Signs in with `token` (empty: a tokenless, loopback-only dashboard); checks the cookie's
/// flags; returns the cookie header and the session's CSRF token.
pub(crate) async fn sign_in_as(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> (String, String) {
    let r = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_string();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_csrf_guard_every_page_and_action() {
    let s = serve().await;
    let (base, http) = (s.base.as_str(), no_redirects());

    // Without a session: pages send to the sign-in, actions are refused.
    let r = http.get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let disable = format!("{base}/ui/connections/acme-notes/disable");
    assert_eq!(http.post(&disable).send().await.unwrap().status(), 401);
    // The bearer API is not a way in to the pages, nor the other way round.
    let r = http
        .get(format!("{base}/ui"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // A wrong token: no cookie.
    let r = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    let (cookie, csrf) = sign_in(&http, base).await;
    let page = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let body = page.text().await.unwrap();
    assert!(
        body.contains("acme-notes") && body.contains("notes"),
        "{body}"
    );
    assert!(!body.contains(TOKEN), "the token is never in a page");

    // Without `[identity]` the entity pages say how to turn it on.
    let r = http
        .get(format!("{base}/ui/entities"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Identity resolution is off")
    );

    // A POST without the CSRF token, with a wrong one, or from another origin: refused.
    let post = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut r = http.post(&disable).header("cookie", &cookie).form(&form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(vec![], None).await, 403);
    assert_eq!(post(vec![("csrf", "0".repeat(64))], None).await, 403);
    assert_eq!(
        post(vec![("csrf", csrf.clone())], Some("http://evil.example")).await,
        403
    );
    let admin = || async {
        http.get(format!("{base}/admin/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(
        admin().await["connections"][0]["status"],
        "active",
        "nothing changed"
    );
    let origin: &'static str = Box::leak(base.to_string().into_boxed_str());
    assert_eq!(post(vec![("csrf", csrf.clone())], Some(origin)).await, 303);
    assert_eq!(admin().await["connections"][0]["status"], "disabled");

    // A bad schedule is refused with the reason; a good one is stored in its own form.
    let schedule = |text: &'static str| {
        http.post(format!("{base}/ui/connections/acme-notes/schedule"))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("stream", "notes"),
                ("schedule", text),
            ])
            .send()
    };
    let r = schedule("every banana").await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("every &lt;duration&gt;"));
    assert_eq!(schedule("every 2h").await.unwrap().status(), 303);
    assert_eq!(
        admin().await["schedules"][0]["spec"],
        "every 7200000ms jitter 0ms"
    );

    // Sign out: the cookie no longer opens anything.
    let r = http
        .post(format!("{base}/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed out");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// In Chromium.
// ---------------------------------------------------------------------------------------

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver and Chromium, or `None` outside CI when they are not installed (CI installs
/// Debian's `chromium` and `chromium-driver`: there a missing browser fails the test).
async fn driver() -> Option<(Driver, Client)> {
    let chromedriver = std::env::var_os("APEX_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find(&["chromedriver"]));
    let chrome = std::env::var_os("APEX_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find(&["chromium", "chromium-browser", "google-chrome"]));
    let (Some(chromedriver), Some(chrome)) = (chromedriver, chrome) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and chromium-driver for the dashboard's browser tests"
        );
        eprintln!("skipping: no chromedriver/chromium on PATH");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Some((driver, client))
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the page's source contains `needle` (the page refreshes itself through htmx).
async fn wait_for(c: &Client, needle: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let source = c.source().await.unwrap();
        if source.contains(needle) {
            return source;
        }
        assert!(Instant::now() < deadline, "{what}: {source}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_day_in_a_browser() {
    let Some((_driver, c)) = driver().await else {
        return;
    };
    let s = serve().await;
    let base = s.base.clone();

    // Sign in: a wrong token first.
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    shot(&c, "login").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("wrong-token-wrong-token")
        .await
        .unwrap();
    click(&c, "#signin").await;
    wait_for(&c, "not the admin token", "a wrong token is refused").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, "#signin").await;
    wait_for(
        &c,
        "data-connection=\"acme-notes\"",
        "the overview lists the connection",
    )
    .await;
    shot(&c, "overview").await;

    // Connect through OAuth: the simulator's authorization server consents and redirects to
    // the callback on the admin listener; the page comes back to the connection.
    c.goto(&format!("{base}/ui/connections/acme-notes"))
        .await
        .unwrap();
    wait_for(&c, "no stored tokens", "not connected yet").await;
    click(&c, "#connect").await;
    wait_for(&c, "tokens held (encrypted)", "connected through OAuth").await;
    assert_eq!(s.t.oauth.stats().authorization_code, 1);

    // Run a sync now and watch it finish (the runs table refreshes itself).
    click(&c, "#sync-now").await;
    wait_for(&c, ">succeeded<", "the run finishes on the page").await;
    shot(&c, "connection").await;

    // Its log.
    let run = c
        .find(Locator::Css("tr[data-run] a"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    c.goto(&format!("{base}{run}")).await.unwrap();
    let page = wait_for(&c, "Run #", "the run page").await;
    assert!(page.contains("lv-"), "captured log lines: {page}");
    shot(&c, "run").await;
    c.goto(&format!("{base}{run}?level=error")).await.unwrap();
    let errors_only = c.source().await.unwrap();
    assert!(
        !errors_only.contains("lv-info"),
        "the level filter: {errors_only}"
    );

    // Change a schedule: a bad one is explained, a good one shows its next due time.
    c.goto(&format!("{base}/ui/connections/acme-notes"))
        .await
        .unwrap();
    let input = c
        .find(Locator::Css("form.schedule input[name=schedule]"))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys("every banana").await.unwrap();
    click(&c, "form.schedule button").await;
    wait_for(&c, "id=\"form-error\"", "a bad schedule is refused").await;
    let input = c
        .find(Locator::Css("form.schedule input[name=schedule]"))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys("every 3h").await.unwrap();
    click(&c, "form.schedule button").await;
    wait_for(&c, "value=\"every 3h\"", "the schedule is stored").await;

    // Disable, then enable.
    click(&c, "#disable").await;
    wait_for(&c, ">disabled<", "disabled").await;
    click(&c, "#enable").await;
    wait_for(&c, "id=\"disable\"", "enabled again").await;

    // A dead letter (an event the platform cannot read), retried from the inbox page.
    let bad = json!({"type": "note.archived", "note": note("n9", json!("x"), 9000)});
    let (headers, body) = signed_webhook("msg_dead", &bad, "whsec-notes");
    let hook = format!("http://127.0.0.1:{}/webhooks/notes/acme-notes", s.t.listen);
    let r = reqwest::Client::new()
        .post(&hook)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.goto(&format!("{base}/ui/inbox")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.source().await.unwrap().contains("data-event=") {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
    shot(&c, "inbox").await;
    // The retry hands the event to a worker again: it fails again (the platform still
    // cannot read it) and is dead-lettered a second time.
    let dead_lettered = || async {
        let s: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/admin/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["metrics"]["inbox_work"]["dead_lettered"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(dead_lettered().await, 1);
    click(&c, "tr[data-event] form button").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead_lettered().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the retried event was not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/inbox"));

    c.goto(&format!("{base}/ui")).await.unwrap();
    wait_for(&c, ">healthy<", "the overview after a good run").await;
    wait_for(
        &c,
        "class=\"num dead\"><a href=\"/ui/inbox\">1</a>",
        "the connection's dead letter on the overview",
    )
    .await;
    shot(&c, "overview-after").await;

    // Sign out: back to the sign-in, and the pages are closed again.
    click(&c, "#logout").await;
    wait_for(&c, "Admin token", "signed out").await;
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));

    c.close().await.unwrap();
    s.stop().await;
}

/// Without a token the dashboard signs loopback peers in without one (and still uses a
/// session and CSRF tokens).
#[tokio::test]
async fn without_a_token_loopback_signs_in_without_one() {
    use apex_connect_core::store::MemoryStore;
    use apex_connect_server::listener::HttpLimits;
    use apex_connect_server::{AdminAuth, ConnectionHandle, Dashboard, ServerState};

    let state = ServerState::builder(std::sync::Arc::new(MemoryStore::new()))
        .connection(ConnectionHandle::new(
            "acme",
            std::sync::Arc::new(crate::common::memory()),
        ))
        .build();
    let dashboard = Dashboard::new(
        state,
        AdminAuth::loopback_only(),
        std::sync::Arc::new(apex_connect_core::NullSink::new()),
    );
    let base = crate::common::serve_router(dashboard.router(), HttpLimits::default()).await;
    let http = no_redirects();
    let page = http
        .get(format!("{base}/ui/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No admin token is configured") && !page.contains("id=\"token\""));
    let (cookie, _) = sign_in_as(&http, &base, "").await;
    let overview = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    assert!(
        overview
            .text()
            .await
            .unwrap()
            .contains("data-connection=\"acme\"")
    );
    let r = http
        .post(format!("{base}/ui/connections/acme/disable"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "still no POST without the CSRF token");
}
