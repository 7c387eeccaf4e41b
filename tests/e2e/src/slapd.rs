//! Debian's `slapd` on loopback as the corporate directory: an mdb database in a temp folder loaded with
//! `slapadd` (the base, `ou=people` with users and a service account), the `memberof` overlay so users carry
//! `memberOf`, and groups added online with `ldapadd` once slapd runs (the overlay only maintains `memberOf` for
//! changes made through slapd, not for `slapadd`). Plain `ldap://127.0.0.1:PORT` with StartTLS offered, using a
//! certificate from the test CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::ca::TestCa;
use crate::env::require;
use crate::proc::{free_port, wait_for_port, Proc};

/// The directory's base DN.
pub const BASE: &str = "dc=corp,dc=test";
/// The service account mirrorgate searches with.
pub const SERVICE_DN: &str = "cn=mirrorgate,ou=services,dc=corp,dc=test";
pub const SERVICE_PASSWORD: &str = "service-pw";
const ADMIN_DN: &str = "cn=admin,dc=corp,dc=test";
const ADMIN_PASSWORD: &str = "admin-pw";

/// A user of the directory: uid, password, and the `cn`s of its groups under `ou=groups`.
pub struct LdapUser<'a> {
    pub uid: &'a str,
    pub password: &'a str,
    pub groups: &'a [&'a str],
}

pub struct Slapd {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

/// `cn=<name>,ou=groups,dc=corp,dc=test`.
pub fn group_dn(name: &str) -> String {
    format!("cn={name},ou=groups,{BASE}")
}

impl Slapd {
    /// Loads `users` (and their groups) into a new directory in `<dir>/slapd` and starts slapd with TLS from `ca`.
    pub fn start(dir: &Path, ca: &TestCa, users: &[LdapUser<'_>]) -> anyhow::Result<Self> {
        require("slapd", "slapd");
        require("ldapadd", "ldap-utils");
        let d = dir.join("slapd");
        let db = d.join("db");
        std::fs::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
        let leaf = ca.issue("slapd", &["127.0.0.1"])?;
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\n\
             pidfile {p}/slapd.pid\nargsfile {p}/slapd.args\n\
             TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n\
             database mdb\nmaxsize 16777216\nsuffix \"{BASE}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PASSWORD}\n\
             directory {db}\noverlay memberof\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by users read by * none\n",
            p = d.display(),
            ca = ca.ca_path().display(),
            cert = leaf.cert.display(),
            key = leaf.key.display(),
            db = db.display(),
        );
        let conf_path = d.join("slapd.conf");
        std::fs::write(&conf_path, conf).context("writing slapd.conf")?;

        let mut base = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: corp\ndc: corp\n\n\
             dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=services,{BASE}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: person\ncn: mirrorgate\nsn: mirrorgate\nuserPassword: {SERVICE_PASSWORD}\n\n"
        );
        for u in users {
            base.push_str(&format!(
                "dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 userPassword: {pw}\n\n",
                uid = u.uid,
                pw = u.password
            ));
        }
        let ldif = d.join("base.ldif");
        std::fs::write(&ldif, base).context("writing base.ldif")?;
        let out = Command::new("slapadd")
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(&ldif)
            .output()
            .context("running slapadd")?;
        if !out.status.success() {
            bail!("slapadd failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let port = free_port();
        let mut slapd = Slapd {
            proc: Self::spawn(&d, &conf_path, port)?,
            port,
            dir: d,
        };
        slapd.wait_ready()?;

        // Groups through slapd, so the memberof overlay writes memberOf on their members.
        let mut names: Vec<&str> = users
            .iter()
            .flat_map(|u| u.groups.iter().copied())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut groups = String::new();
        for name in names {
            groups.push_str(&format!(
                "dn: {}\nobjectClass: groupOfNames\ncn: {name}\n",
                group_dn(name)
            ));
            for u in users.iter().filter(|u| u.groups.contains(&name)) {
                groups.push_str(&format!("member: uid={},ou=people,{BASE}\n", u.uid));
            }
            groups.push('\n');
        }
        if !groups.is_empty() {
            let path = slapd.dir.join("groups.ldif");
            std::fs::write(&path, groups).context("writing groups.ldif")?;
            let out = Command::new("ldapadd")
                .args([
                    "-x",
                    "-H",
                    &slapd.url(),
                    "-D",
                    ADMIN_DN,
                    "-w",
                    ADMIN_PASSWORD,
                    "-f",
                ])
                .arg(&path)
                .output()
                .context("running ldapadd")?;
            if !out.status.success() {
                bail!("ldapadd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(slapd)
    }

    fn spawn(dir: &Path, conf: &Path, port: u16) -> anyhow::Result<Proc> {
        let mut cmd = Command::new("slapd");
        // `-d stats`: in the foreground, one log line per operation (the scenarios count BINDs in it).
        cmd.arg("-d")
            .arg("stats")
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .arg("-f")
            .arg(conf);
        Proc::spawn("slapd", cmd, dir)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        if let Err(e) = wait_for_port(self.port, Duration::from_secs(20)) {
            self.proc.ensure_running()?;
            return Err(e);
        }
        self.proc.ensure_running()
    }

    /// `ldap://127.0.0.1:<port>`, what `[auth.ldap] url` names.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Stops slapd (SIGKILL): the directory is down.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// slapd's own log.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}
