//! PgBouncer in transaction pooling mode, TLS on its client side: our
//! stand-in for RDS Proxy. It authenticates clients with SCRAM against its
//! own user list (so a wrong password is a real 28P01) and forwards to the
//! test PostgreSQL. Certificates come from a throwaway CA made per test
//! with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::moto::{free_port, wait_for_port};

/// A CA and a server certificate for `localhost` and `127.0.0.1`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn make(dir: &Path) -> Self {
        Self::make_for(dir, "localhost", "DNS:localhost,IP:127.0.0.1")
    }

    /// A CA and a server certificate whose subject is `cn` and whose
    /// subjectAltName is `san` (e.g. `DNS:db.example`).
    pub fn make_for(dir: &Path, cn: &str, san: &str) -> Self {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl command");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tenant-users test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={cn}"),
        ]);
        std::fs::write(
            dir.join("server.ext"),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Certs {
            dir: dir.to_owned(),
        }
    }
}

/// The admin console's user, always in the user list.
const ADMIN_USER: &str = "tu_bouncer_admin";
const ADMIN_PASSWORD: &str = "admin-console-test-only";

pub struct PgBouncer {
    pub port: u16,
    pub dir: PathBuf,
    pub certs: Certs,
    pool_size: u32,
    /// The PostgreSQL server it forwards to (host, port).
    server: (String, u16),
    /// The user list it was last given (name, password).
    users: Vec<(String, String)>,
    child: Option<Child>,
}

use super::is_root;

impl PgBouncer {
    /// Starts PgBouncer for `users` (name, password) with at most
    /// `pool_size` server connections per database and user.
    pub fn start(users: &[(&str, &str)], pool_size: u32) -> Self {
        Self::start_with_cert(users, pool_size, "localhost", "DNS:localhost,IP:127.0.0.1")
    }

    /// As `start`, with a server certificate (from the same kind of test
    /// CA) for the names in `san` instead of localhost.
    pub fn start_with_cert(users: &[(&str, &str)], pool_size: u32, cn: &str, san: &str) -> Self {
        Self::launch_new(&super::admin_base(), users, pool_size, cn, san)
    }

    /// As `start`, forwarding to `server` (a cluster of the test's own)
    /// instead of the shared test server.
    pub fn start_for(
        server: &tokio_postgres::Config,
        users: &[(&str, &str)],
        pool_size: u32,
    ) -> Self {
        let san = "DNS:localhost,IP:127.0.0.1";
        Self::launch_new(server, users, pool_size, "localhost", san)
    }

    fn launch_new(
        server: &tokio_postgres::Config,
        users: &[(&str, &str)],
        pool_size: u32,
        cn: &str,
        san: &str,
    ) -> Self {
        let host = match server.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let dir =
            std::env::temp_dir().join(format!("tu-bouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs::make_for(&dir, cn, san);
        let mut bouncer = PgBouncer {
            port: free_port(),
            dir,
            certs,
            pool_size,
            server: (host, port),
            users: Vec::new(),
            child: None,
        };
        bouncer.write_users(users);
        bouncer.launch();
        bouncer
    }

    fn write_users(&mut self, users: &[(&str, &str)]) {
        self.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        let list: String = users
            .iter()
            .chain([&(ADMIN_USER, ADMIN_PASSWORD)])
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        std::fs::write(self.dir.join("userlist.txt"), list).unwrap();
    }

    fn launch(&mut self) {
        let (host, port) = self.server.clone();
        let d = self.dir.display();
        let ini = format!(
            "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\nadmin_users = {ADMIN_USER}\n\
             pool_mode = transaction\ndefault_pool_size = {}\nmax_client_conn = 500\n\
             client_tls_sslmode = require\nclient_tls_key_file = {d}/server.key\nclient_tls_cert_file = {d}/server.crt\n\
             server_tls_sslmode = disable\nignore_startup_parameters = extra_float_digits\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            self.port, self.pool_size
        );
        std::fs::write(self.dir.join("pgbouncer.ini"), ini).unwrap();
        let ini_path = self.dir.join("pgbouncer.ini");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&self.dir)
                .status()
                .unwrap();
        }
        // Debian installs it in /usr/sbin, which a non-root PATH lacks.
        let program = super::find_program("pgbouncer", &["/usr/sbin", "/usr/local/sbin"])
            .unwrap_or_else(|| {
                panic!(
                    "pgbouncer is not on PATH nor in /usr/sbin: install it \
                     (apt-get install pgbouncer, dnf install pgbouncer, brew install pgbouncer)"
                )
            });
        let mut command = super::as_postgres(program);
        command.arg(&ini_path);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }

    /// Replaces the user list and restarts on the same port: every client
    /// is disconnected, as in a proxy failover, and must log in again.
    pub fn restart_with_users(&mut self, users: &[(&str, &str)]) {
        self.stop();
        self.write_users(users);
        self.launch();
    }

    /// Replaces the user list and reloads it (SIGHUP), as RDS Proxy picks
    /// up a rotated secret: connected clients stay connected. Returns once
    /// the proxy shows it loaded the list: every new user logs in to
    /// `dbname`, and every login it no longer holds is refused (class 28).
    pub async fn reload_with_users(&mut self, dbname: &str, users: &[(&str, &str)]) {
        let old = std::mem::take(&mut self.users);
        self.write_users(users);
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).unwrap();
        assert!(signal("HUP", pid.trim()).unwrap().success());
        let gone: Vec<(String, String)> = old
            .into_iter()
            .filter(|login| !self.users.contains(login))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut pending = Vec::new();
            for (user, password) in &self.users {
                if let Err(code) = self.login(user, password, dbname).await {
                    pending.push(format!("{user} not let in yet ({code})"));
                }
            }
            for (user, password) in &gone {
                match self.login(user, password, dbname).await {
                    // A changed password: 28P01; a user it no longer holds:
                    // 08P01 "SASL authentication failed" (its mock SCRAM).
                    Err(e) if e.starts_with("28") || e.contains("authentication failed") => {}
                    other => pending.push(format!("{user} not refused yet ({other:?})")),
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PgBouncer never loaded the new user list: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One login through the proxy (TLS, verified against the test CA);
    /// when refused, the SQLSTATE and message (or the transport error).
    pub async fn login(&self, user: &str, password: &str, dbname: &str) -> Result<(), String> {
        let refused = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        match config.connect(self.tls()).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                // Logged in; the proxy has its server connection too.
                client.simple_query("SELECT 1").await.map_err(refused)?;
                Ok(())
            }
            Err(error) => Err(refused(error)),
        }
    }

    fn tls(&self) -> postgres_native_tls::MakeTlsConnector {
        let connector = native_tls::TlsConnector::builder()
            .add_root_certificate(
                native_tls::Certificate::from_pem(&std::fs::read(self.certs.ca_file()).unwrap())
                    .unwrap(),
            )
            .build()
            .unwrap();
        postgres_native_tls::MakeTlsConnector::new(connector)
    }

    /// Drops every client (and server) connection to `dbname` through the
    /// admin console (`KILL`): clients must log in again.
    pub async fn kill_clients(&self, dbname: &str) {
        let url = format!(
            "postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@localhost:{}/pgbouncer?sslmode=require",
            self.port
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        let (client, connection) = config
            .connect(self.tls())
            .await
            .expect("PgBouncer admin console");
        tokio::spawn(connection);
        // KILL also pauses the database: RESUME lets new logins in.
        for command in ["KILL", "RESUME"] {
            client
                .simple_query(&format!("{command} {dbname}"))
                .await
                .unwrap_or_else(|e| panic!("{command}: {e}"));
        }
    }

    fn stop(&mut self) {
        let told = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|pid| signal("TERM", pid.trim()).ok())
            .is_some_and(|status| status.success());
        if let Some(mut child) = self.child.take() {
            // Never wait on a child that was not told to stop.
            if !told {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
        // Wait until the port is free again.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `DATABASE_URL` through this proxy for `user`, with verify-full TLS
    /// against the test CA.
    pub fn app_env(&self, user: &str, password: &str, dbname: &str) -> Vec<(String, String)> {
        vec![
            (
                "DATABASE_URL".to_owned(),
                format!(
                    "postgres://{user}:{password}@localhost:{}/{dbname}",
                    self.port
                ),
            ),
            ("DB_SSLMODE".to_owned(), "verify-full".to_owned()),
            (
                "DB_CA_FILE".to_owned(),
                self.certs.ca_file().display().to_string(),
            ),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal with the shell's builtin `kill`: the `kill` program is in
/// procps, which a minimal system (a fresh container) does not have.
fn signal(name: &str, pid: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("sh")
        .args(["-c", &format!("kill -{name} \"$1\""), "sh", pid])
        .status()
}
