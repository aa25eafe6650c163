//! A PostgreSQL cluster of the test's own, from the installed server
//! binaries, that the test may stop and start (the shared server must
//! never be stopped).

use std::path::PathBuf;
use std::process::Command;

use super::moto::free_port;

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
        std::fs::write(self.dir.join("data").join("pg_hba.conf"), hba).unwrap();
        let admin = super::connect(&self.admin()).await;
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        // The reload is asynchronous; wait until the postmaster has it.
        for _ in 0..100 {
            let rows = admin
                .query(
                    "SELECT 1 FROM pg_hba_file_rules WHERE auth_method = 'scram-sha-256'",
                    &[],
                )
                .await
                .unwrap();
            if !rows.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("pg_hba.conf reload not seen");
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
