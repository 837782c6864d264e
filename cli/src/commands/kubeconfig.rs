//! `shoal kubeconfig`: a kubeconfig for another user, with a client certificate signed by the
//! cluster CA (run where the server's data directory is, like `kubeadm kubeconfig user`).
//! The user has no rights until a RoleBinding or ClusterRoleBinding grants them some.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use shoal_control::auth::pki::Pki;

#[derive(Args)]
pub struct KubeconfigCommand {
    /// The user name (the certificate's CN).
    #[arg(long)]
    user: String,
    /// A group the user is in (the certificate's O; repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How long the certificate is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// The server's data directory (its `pki/` holds the CA).
    #[arg(long, default_value = "shoal-data")]
    data_dir: PathBuf,
    /// The API's URL (default: the server's own kubeconfig's).
    #[arg(long)]
    server: Option<String>,
    /// Write here (mode 0600) instead of to standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// Parses `90`, `90s`, `15m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().with_context(|| {
        format!("{text:?} is not a duration (such as 3600, 500ms, 30m, 24h or 7d)")
    })?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => anyhow::bail!("{other:?} is not a unit of time: use ms, s, m, h or d"),
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .filter(|ms| *ms > 0 && *ms <= 10 * 365 * 86_400_000)
        .with_context(|| format!("{text:?} must be more than 0 and at most 10 years"))?;
    Ok(Duration::from_millis(millis))
}

impl KubeconfigCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let ttl = parse_duration(&self.ttl)?;
        let pki_dir = self.data_dir.join("pki");
        anyhow::ensure!(
            pki_dir.join("ca.key").exists(),
            "{} has no cluster CA: pass the --data-dir of a `shoal server` that has started once",
            pki_dir.display()
        );
        let pki = Pki::load_or_create(&pki_dir)?;
        let server = match self.server {
            Some(server) => server,
            None => {
                let admin = self.data_dir.join("kubeconfig");
                let config = kube::config::Kubeconfig::read_from(&admin).with_context(|| {
                    format!(
                        "reading {} for the server URL (or pass --server)",
                        admin.display()
                    )
                })?;
                config
                    .clusters
                    .first()
                    .and_then(|c| c.cluster.as_ref())
                    .and_then(|c| c.server.clone())
                    .with_context(|| format!("{} names no server", admin.display()))?
            }
        };
        let credentials = pki.issue_client(&self.user, &self.groups, ttl)?;
        let text = crate::kubeconfig::render(&server, pki.ca_pem(), &self.user, &credentials);
        match self.output {
            Some(path) => crate::kubeconfig::write_private(&path, &text)?,
            None => print!("{text}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in [
            "",
            "0",
            "h",
            "5w",
            "-1h",
            "99999999999999999999d",
            "9999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
