//! A PostgreSQL cluster of the test's own, from the installed server
//! binaries, that the test may stop and start (the shared server must
//! never be stopped).

use std::path::PathBuf;
use std::process::Command;

use super::moto::free_port;

/// The role `require_passwords` logs in as to see the new rules in force.
const HBA_PROBE: &str = "tu_hba_probe";

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    /// Extra `-c name=value` server settings, kept across `down`/`up`.
    settings: String,
}

/// The server binaries: `PG_BINDIR`, else `initdb` on PATH, else the
/// newest version in the places distributions install them (Debian/Ubuntu,
/// RHEL/Fedora's PGDG packages, Homebrew), which are not on PATH.
fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return dir.into();
    }
    if let Some(initdb) = super::find_program("initdb", &[]) {
        return initdb.parent().expect("a file has a parent").to_path_buf();
    }
    // /usr/lib/postgresql/16/bin, /usr/pgsql-16/bin, .../postgresql@16/bin
    let version = |p: &PathBuf| -> u32 {
        p.to_string_lossy()
            .rsplit(['/', '-', '@'])
            .find_map(|part| part.parse().ok())
            .unwrap_or(0)
    };
    let mut found: Vec<PathBuf> = [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
    ]
    .iter()
    .flat_map(|(root, prefix)| {
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .collect::<Vec<_>>()
    })
    .collect();
    found.sort_by_key(version);
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb) are not on PATH nor in /usr/lib/postgresql/*/bin: \
             install them (apt-get install postgresql, dnf install postgresql-server, \
             brew install postgresql@16) or set PG_BINDIR"
        )
    })
}

impl Cluster {
    /// Creates (initdb) and starts a cluster on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Cluster::start`], with server settings (`log_statement`,
    /// `password_encryption`, ...) given on the command line.
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tu-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Cluster {
            port: free_port(),
            dir,
            bindir: bindir(),
            settings: settings
                .iter()
                .map(|(k, v)| format!(" -c {k}={v}"))
                .collect(),
        };
        if super::is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&cluster.dir)
                .status()
                .unwrap();
        }
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        );
        cluster.up();
        cluster
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = super::as_postgres(self.bindir.join(program))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn down(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Superuser settings for the cluster's `postgres` database.
    pub fn admin(&self) -> tokio_postgres::Config {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
            .parse()
            .unwrap()
    }
}

impl Cluster {
    /// From now on every role but the superuser `postgres` logs in with a
    /// SCRAM password over TCP, as on RDS (the superuser keeps trust: it is
    /// the test's own hand, standing in for no one in AWS).
    pub async fn require_passwords(&self) {
        let hba = "local all postgres trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        let admin = super::connect(&self.admin()).await;
        // A role whose wrong password only a server that loaded the new
        // rules refuses: pg_hba_file_rules shows the file, not what the
        // postmaster has loaded.
        admin
            .batch_execute(&format!(
                "CREATE ROLE {HBA_PROBE} WITH LOGIN PASSWORD 'probe-right'"
            ))
            .await
            .unwrap();
        std::fs::write(self.dir.join("data").join("pg_hba.conf"), hba).unwrap();
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        let mut probe = self.admin();
        probe.user(HBA_PROBE).password("probe-wrong");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match probe.connect(tokio_postgres::NoTls).await {
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) => {
                    break;
                }
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "the server never loaded pg_hba.conf: a wrong password still gives {:?}",
                    other.map(|_| "a session")
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        admin
            .batch_execute(&format!("DROP ROLE {HBA_PROBE}"))
            .await
            .unwrap();
    }

    /// A role shaped like the RDS master user (LOGIN, CREATEROLE, CREATEDB,
    /// not a superuser) owning a new database `dbname`; its settings.
    pub async fn rds_master(
        &self,
        name: &str,
        password: &str,
        dbname: &str,
    ) -> tokio_postgres::Config {
        let admin = super::connect(&self.admin()).await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {name} WITH LOGIN CREATEROLE CREATEDB PASSWORD '{password}'"
            ))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {dbname} OWNER {name}"))
            .await
            .unwrap();
        let mut config = self.admin();
        config.user(name).password(password).dbname(dbname);
        config
    }

    /// The server's log so far (`log_statement` and friends write here).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = super::as_postgres(self.bindir.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
