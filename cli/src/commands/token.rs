//! `shoal token create`: a bootstrap token a new node joins with (`shoal agent --token`), kept
//! as a `bootstrap.kubernetes.io/token` Secret in `kube-system` as `kubeadm token create`
//! makes it. The token authenticates as `system:bootstrap:<id>` in `system:bootstrappers`,
//! which may only ask for a node client certificate (approved on its own); deleting the
//! Secret revokes it, and it stops working at its expiry.

use clap::{Args, Subcommand};
use serde_json::json;
use shoal_control::auth::tokens;

use super::connection::ConnectionArgs;
use super::kubeconfig::parse_duration;

#[derive(Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a bootstrap token and print it.
    Create(CreateArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// What the token is for (kept in the Secret).
    #[arg(long)]
    description: Option<String>,
    /// Print the whole `shoal agent` command that joins a node with it, CA pin included.
    #[arg(long)]
    print_join_command: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

/// The group, besides `system:bootstrappers`, that tokens made here add.
const EXTRA_GROUP: &str = "system:bootstrappers:shoal:default-node-token";

impl TokenCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let TokenAction::Create(args) = self.action;
        let ttl = parse_duration(&args.ttl)?;
        let token = tokens::generate_bootstrap_token();
        let (id, secret) = token
            .split_once('.')
            .expect("generated tokens have two parts");
        let expiration = time::OffsetDateTime::now_utc() + ttl;
        let expiration = expiration
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| anyhow::anyhow!("formatting the expiry: {e}"))?;
        let object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": tokens::bootstrap_secret_name(id), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": id,
                "token-secret": secret,
                "expiration": expiration,
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": EXTRA_GROUP,
                "description": args.description.unwrap_or_else(|| "made by shoal token create".into()),
            },
        });
        let connection = args.connection.connect().await?;
        connection
            .client
            .json_ok(
                http::Method::POST,
                "/api/v1/namespaces/kube-system/secrets",
                "application/json",
                Some(&object),
            )
            .await?;
        if !args.print_join_command {
            println!("{token}");
            return Ok(());
        }
        let path = crate::kubeconfig::locate(args.connection.kubeconfig.as_deref());
        let (server, ca) = crate::kubeconfig::cluster_of(&path)?;
        let ca = ca.ok_or_else(|| {
            anyhow::anyhow!(
                "kubeconfig {} embeds no CA certificate to pin",
                path.display()
            )
        })?;
        let hash = shoal_control::auth::pki::ca_cert_hash(&ca)
            .map_err(|e| anyhow::anyhow!("the kubeconfig's CA certificate: {e}"))?;
        println!("shoal agent --server {server} --token {token} --ca-cert-hash {hash}");
        Ok(())
    }
}
