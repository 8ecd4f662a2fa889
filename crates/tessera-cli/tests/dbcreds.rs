//! Dynamic PostgreSQL credentials against a real PostgreSQL that checks passwords: a workload
//! gets a role that really logs in; revocation (by the admin, at the lease's end, after a
//! restart) really drops it and ends its sessions; a revocation the database refuses is retried
//! until it is done.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const APP: &str = "spiffe://example.org/prod/orders-app";

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
    stdout(o)
}

/// `psql` as `user` with `password`: (success, output).
fn psql(url: &str, user: &str, password: &str, sql: &str) -> (bool, String) {
    let url = url.replacen("postgres://", &format!("postgres://{user}@"), 1);
    let o = Command::new("psql")
        .args([url.as_str(), "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dynamic_postgres_credentials() {
    let Some((db_url, admin_user, admin_password)) = tessera_testkit::postgres_password_database()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let s = server_on(&data, None, &[]);
    let uid = stdout(&Command::new("id").arg("-u").output().unwrap())
        .trim()
        .to_owned();
    let mesh = format!(
        r#"
[[workload]]
id = "{APP}"
owner = "team-orders"
purpose = "Reads orders"
selectors = ["unix:uid:{uid}"]

[[secret_grant]]
from = "{APP}"
secrets = ["db/orders-read"]
why = "reads the orders table"
"#
    );
    let p = write(dir.path(), "mesh.toml", &mesh);
    ok(&tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]));
    let (good, _) = psql(
        &db_url,
        &admin_user,
        &admin_password,
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)",
    );
    assert!(good);
    let pw = write(dir.path(), "admin-pw", &admin_password);
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "put",
            "dba/orders-admin",
            "--value-file",
            pw.to_str().unwrap(),
            "--owner",
            "dba",
            "--purpose",
            "admin password of the orders database",
        ],
    ));
    // Declares the `orders` connection with this URL and admin user.
    let declare = |url: &str, user: &str| {
        tessera(
            &s.data,
            &[
                "db",
                "connection",
                "orders",
                "--url",
                url,
                "--admin-user",
                user,
                "--password-secret",
                "dba/orders-admin",
            ],
        )
    };
    // A wrong admin user is refused at declaration (the server logs in to check).
    let o = declare(&db_url, "nobody");
    refused(&o, "cannot log in");
    let with_password = db_url.replacen("postgres://", "postgres://postgres:x@", 1);
    let o = declare(&with_password, "postgres");
    assert!(stderr(&o).contains("holds a credential"), "{}", stderr(&o));
    // Finding 7: a credential in the query is a credential too, however it is spelled.
    for query in [
        "?user=postgres&password=x",
        "?PASSWORD=x",
        "?%70assword=x",
        "?passfile=/tmp/p",
    ] {
        let o = declare(&format!("{db_url}{query}"), "postgres");
        assert!(
            !o.status.success() && stderr(&o).contains("holds a credential"),
            "{query}: {}",
            stderr(&o)
        );
    }
    ok(&declare(&db_url, &admin_user));
    ok(&tessera(
        &s.data,
        &[
            "db",
            "role",
            "orders-read",
            "--connection",
            "orders",
            "--creation",
            "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiry}}'",
            "--creation",
            "GRANT SELECT ON orders TO \"{{name}}\"",
            "--default-ttl",
            "1h",
            "--max-ttl",
            "2h",
        ],
    ));
    // Templates are checked: a placeholder that does not exist, a role without a password.
    let bad_role = |creation: &str| {
        tessera(
            &s.data,
            &[
                "db",
                "role",
                "bad",
                "--connection",
                "orders",
                "--creation",
                creation,
            ],
        )
    };
    refused(
        &bad_role("CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' {{secret}}"),
        "unknown placeholder `secret`",
    );
    refused(
        &bad_role("CREATE ROLE \"{{name}}\""),
        "must use `{{name}}` and `{{password}}`",
    );

    let (_agent, socket) = join_agent(&s, dir.path(), "agent");
    let creds = |ttl: &str| -> Value {
        let o = Command::new(BIN)
            .args([
                "db",
                "creds",
                "orders-read",
                "--ttl",
                ttl,
                "--server",
                &s.url,
                "--id",
                APP,
                "--output",
                "json",
                "--socket",
            ])
            .arg(&socket)
            .output()
            .unwrap();
        serde_json::from_str(&ok(&o)).unwrap()
    };

    // Credentials that really log in, and only with their password.
    let c = creds("1h");
    let (user, password) = (
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
    );
    let lease = c["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        psql(&db_url, user, password, "SELECT count(*) FROM orders"),
        (true, "2\n".into())
    );
    let (good, out) = psql(&db_url, user, "wrong", "SELECT 1");
    assert!(
        !good && out.contains("password authentication failed"),
        "{out}"
    );
    let (good, out) = psql(&db_url, user, password, "DELETE FROM orders");
    assert!(
        !good && out.contains("permission denied"),
        "only what the template grants: {out}"
    );
    // A role nobody granted: refused before anything is made.
    let o = Command::new(BIN)
        .args([
            "db",
            "creds",
            "admin-all",
            "--server",
            &s.url,
            "--id",
            APP,
            "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    refused(&o, "may not read");

    // Revocation ends an open session and stops new logins.
    let url_as = db_url.replacen("postgres://", &format!("postgres://{user}@"), 1);
    let mut session = Command::new("psql")
        .args([url_as.as_str(), "-At", "-c", "SELECT pg_sleep(60)"])
        .env("PGPASSWORD", password)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the session is open", 10, || {
        psql(
            &db_url,
            &admin_user,
            &admin_password,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'"),
        )
        .1 == "1\n"
    });
    ok(&tessera(&s.data, &["db", "revoke", &lease]));
    wait_until("the session is ended", 10, || {
        session.try_wait().unwrap().is_some()
    });
    assert!(!session.wait().unwrap().success());
    let (good, _) = psql(&db_url, user, password, "SELECT 1");
    assert!(!good, "a revoked role still logs in");
    let (_, roles) = psql(
        &db_url,
        &admin_user,
        &admin_password,
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'"),
    );
    assert_eq!(roles, "0\n", "the role is dropped");
    let leases = ok(&tessera(&s.data, &["db", "leases"]));
    assert!(!leases.contains(&lease), "{leases}");

    // Renewal moves the end (and VALID UNTIL), never past the maximum.
    let c = creds("1m");
    let lease2 = c["lease_id"].as_str().unwrap().to_owned();
    let o = Command::new(BIN)
        .args([
            "db", "renew", &lease2, "--ttl", "10h", "--server", &s.url, "--id", APP, "--output",
            "json", "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    let renewed: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        renewed["expires_at"], c["max_expires_at"],
        "capped at the maximum"
    );

    // The database refuses the drop (the admin password secret is now wrong): the lease stays
    // `revoking`, says why, and the drop happens once the password is right again.
    let wrong = write(dir.path(), "wrong-pw", "not-the-password");
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "rotate",
            "dba/orders-admin",
            "--value-file",
            wrong.to_str().unwrap(),
        ],
    ));
    ok(&tessera(&s.data, &["db", "revoke", &lease2]));
    wait_until("the failure is reported", 10, || {
        ok(&tessera(&s.data, &["db", "leases"])).contains("retrying")
    });
    let (good, _) = psql(
        &db_url,
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
        "SELECT 1",
    );
    assert!(good, "not dropped yet: the database refused");
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "rotate",
            "dba/orders-admin",
            "--value-file",
            pw.to_str().unwrap(),
        ],
    ));
    wait_until("the retried drop", 15, || {
        !ok(&tessera(&s.data, &["db", "leases"])).contains(&lease2)
    });
    let (good, _) = psql(
        &db_url,
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
        "SELECT 1",
    );
    assert!(!good);

    // Finding 14: a holder that loses its grant can no longer renew, and its leases end.
    let c5 = creds("1h");
    let (user5, pass5) = (
        c5["username"].as_str().unwrap().to_owned(),
        c5["password"].as_str().unwrap().to_owned(),
    );
    let lease5 = c5["lease_id"].as_str().unwrap().to_owned();
    let ungranted = mesh.split("[[secret_grant]]").next().unwrap().to_owned();
    let p = write(dir.path(), "ungranted.toml", &ungranted);
    ok(&tessera(
        &s.data,
        &["apply", "--prune", "-f", p.to_str().unwrap()],
    ));
    let o = Command::new(BIN)
        .args([
            "db", "renew", &lease5, "--ttl", "2h", "--server", &s.url, "--id", APP, "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!o.status.success(), "renewed without a grant");
    wait_until("the ungranted holder's role is dropped", 20, || {
        !psql(&db_url, &user5, &pass5, "SELECT 1").0
    });
    let p = write(dir.path(), "mesh.toml", &mesh);
    ok(&tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]));

    // A lease that ends while the server is down is cleaned up when it starts again.
    let c4 = creds("1h");
    let c = creds("10s");
    let (user3, pass3) = (
        c["username"].as_str().unwrap().to_owned(),
        c["password"].as_str().unwrap().to_owned(),
    );
    assert!(psql(&db_url, &user3, &pass3, "SELECT 1").0);
    drop(_agent);
    drop(s);
    std::thread::sleep(Duration::from_secs(11));
    let s = server_on(&data, None, &[]);
    wait_until(
        "the expired lease's role is dropped after the restart",
        15,
        || {
            psql(
                &db_url,
                &admin_user,
                &admin_password,
                &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user3}'"),
            )
            .1 == "0\n"
        },
    );
    assert!(!psql(&db_url, &user3, &pass3, "SELECT 1").0);

    // Revoking the workload ends its leases: the role of a lease with an hour left is dropped.
    let (user4, pass4) = (
        c4["username"].as_str().unwrap(),
        c4["password"].as_str().unwrap(),
    );
    assert!(psql(&db_url, user4, pass4, "SELECT 1").0);
    // At the snapshot the revocation makes, not at the ten-second sweep.
    ok(&tessera(&s.data, &["revoke", "workload", APP]));
    wait_until("the revoked workload's role is dropped", 5, || {
        !psql(&db_url, user4, pass4, "SELECT 1").0
    });

    // Every lease event is in the audit chain, and no password is.
    let audit = ok(&tessera(
        &s.data,
        &["audit", "tail", "-n", "500", "--output", "json"],
    ));
    for kind in [
        "lease.created",
        "lease.ended",
        "lease.revoked",
        "lease.revoke_failed",
        "lease.renewed",
        "db.connection",
        "db.role",
    ] {
        assert!(
            audit.contains(&format!("\"kind\": \"{kind}\""))
                || audit.contains(&format!("\"kind\":\"{kind}\"")),
            "{kind}: {audit}"
        );
    }
    assert!(
        !audit.contains(password) && !audit.contains(&pass3) && !audit.contains(&admin_password)
    );
    ok(&tessera(&s.data, &["audit", "verify"]));
}
