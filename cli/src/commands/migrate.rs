//! `shoal migrate --from DIR --to-etcd URL`: copies a cluster kept in a data dir's redb file
//! (`shoal dev`, a single `shoal server`) into etcd, so that it can grow to several API
//! servers.
//!
//! Every object is copied as it is stored (names, namespaces, uids, owner references,
//! finalizers, status; Secrets encrypted by `--encryption-provider-config` stay encrypted
//! and need the same config on the new servers), and so is every pushed module. Only
//! `resourceVersion`s change (they are etcd's revisions from then on: clients relist). The
//! source must not be in use (redb refuses a file another process holds open), and the etcd
//! prefix must be empty, so that nothing there is overwritten.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use shoal_control::store::{EtcdOptions, EtcdStore, RedbStore, Store};

use super::server::EtcdConnectionArgs;

#[derive(Args)]
pub struct MigrateCommand {
    /// The data dir of the cluster to copy (the one holding `store.redb`).
    #[arg(long)]
    from: PathBuf,
    /// etcd client URLs, comma-separated, to copy into.
    #[arg(long = "to-etcd", value_delimiter = ',', required = true)]
    to_etcd: Vec<String>,
    #[command(flatten)]
    etcd: EtcdConnectionArgs,
}

/// How many objects are written to etcd at once.
const CONCURRENCY: usize = 32;

impl MigrateCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let path = self.from.join("store.redb");
        anyhow::ensure!(
            path.is_file(),
            "{} holds no store.redb: --from takes the data dir of `shoal dev` or `shoal server`",
            self.from.display()
        );
        let source = RedbStore::open(&path).with_context(|| {
            format!(
                "opening {} (stop the server using it first)",
                path.display()
            )
        })?;
        let options = self
            .etcd
            .options_for(self.to_etcd.clone())
            .context("--to-etcd")?;
        let prefix = options.prefix.clone();
        let target = EtcdStore::connect(EtcdOptions {
            compaction_interval: std::time::Duration::ZERO,
            ..options
        })
        .await
        .context("connecting to etcd")?;
        let present = target.object_count();
        anyhow::ensure!(
            present == 0,
            "etcd already holds {present} objects under {prefix}: migrate into an empty prefix (--etcd-prefix)"
        );

        let started = Instant::now();
        let objects = source.all_objects()?;
        let count = objects.len();
        let target = &target;
        futures::stream::iter(objects)
            .map(|(key, object)| async move {
                let name = format!("{} {}/{}", key.resource, key.namespace, key.name);
                target
                    .create(key, object)
                    .await
                    .with_context(|| format!("copying {name}"))
            })
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        let digests = source.blob_digests()?;
        for digest in &digests {
            if let Some(bytes) = source.get_blob(digest).await? {
                target
                    .put_blob(digest, bytes)
                    .await
                    .with_context(|| format!("copying module {digest}"))?;
            }
        }
        println!(
            "copied {count} objects and {} modules from {} into etcd at {} under {prefix} in {:.1?}",
            digests.len(),
            self.from.display(),
            self.to_etcd.join(","),
            started.elapsed()
        );
        println!(
            "start the API servers with --etcd-servers {} --data-dir {} (or a copy of its pki/ directory)",
            self.to_etcd.join(","),
            self.from.display()
        );
        Ok(())
    }
}
