//! `kelsonctl token create|list|delete`: bootstrap tokens, as `kubeadm token`.
//!
//! A bootstrap token `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`) is the kube-system
//! Secret `bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`; the API server
//! (`--enable-bootstrap-token-auth`) authenticates it as `system:bootstrap:<id>` in
//! `system:bootstrappers` plus its `auth-extra-groups`, until its `expiration`; the controller
//! manager's token cleaner deletes it after that. The token created here is what a joining
//! node needs: usable for authentication and for signing `cluster-info`, in the group
//! `system:bootstrappers:kelson:default-node-token` (kubeadm's
//! `system:bootstrappers:kubeadm:default-node-token` under our name) that the RBAC bootstrap
//! policy lets create CSRs and whose node-client CSRs the controller manager auto-approves.
//!
//! The secret part is drawn from the OS RNG (16 characters of a 36-letter alphabet: ~82 bits,
//! as upstream).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

/// The Secret type of bootstrap tokens.
pub const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The extra group of node-join tokens.
pub const DEFAULT_NODE_GROUP: &str = "system:bootstrappers:kelson:default-node-token";
const NAMESPACE: &str = "kube-system";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `kelsonctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it (`<id>.<secret>`).
    Create(CreateArgs),
    /// List bootstrap tokens.
    List(ClientArgs),
    /// Delete a bootstrap token (by `<id>` or `<id>.<secret>`).
    Delete {
        token: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Which cluster to talk to.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Admin kubeconfig (default: $KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How long the token is valid (Go duration); `0` never expires.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// A human-readable description stored with the token.
    #[arg(long)]
    pub description: Option<String>,
    /// Extra groups (must start with `system:bootstrappers:`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_NODE_GROUP)]
    pub groups: Vec<String>,
    /// Use this token (`<id>.<secret>`) instead of a random one.
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs a token subcommand.
pub async fn run(cmd: TokenCommand) -> anyhow::Result<i32> {
    match cmd {
        TokenCommand::Create(a) => {
            let ttl = kelson_kube::duration::parse_duration(&a.ttl)
                .with_context(|| format!("--ttl {:?}", a.ttl))?;
            let client = kelson_kube::client_from_kubeconfig(&a.client.kubeconfig).await?;
            let token = match a.token {
                Some(t) => {
                    parse_token(&t).context("--token must look like abcdef.0123456789abcdef")?;
                    t
                }
                None => generate(),
            };
            create(&client, &token, ttl, a.description.as_deref(), &a.groups).await?;
            println!("{token}");
            Ok(0)
        }
        TokenCommand::List(c) => {
            let client = kelson_kube::client_from_kubeconfig(&c.kubeconfig).await?;
            println!("TOKEN\tEXPIRES\tUSAGES\tDESCRIPTION\tEXTRA GROUPS");
            for s in list(&client).await? {
                let d = |k: &str| data(&s, k).unwrap_or_default();
                let usages: Vec<&str> = ["authentication", "signing"]
                    .into_iter()
                    .filter(|u| d(&format!("usage-bootstrap-{u}")) == "true")
                    .collect();
                println!(
                    "{}.{}\t{}\t{}\t{}\t{}",
                    d("token-id"),
                    d("token-secret"),
                    Some(d("expiration"))
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "<forever>".into()),
                    usages.join(","),
                    d("description"),
                    d("auth-extra-groups"),
                );
            }
            Ok(0)
        }
        TokenCommand::Delete { token, client } => {
            let id = token.split('.').next().unwrap_or_default().to_string();
            if !valid_part(&id, 6) {
                bail!("{token:?} is not a token id (6 characters of [a-z0-9])");
            }
            let kc = kelson_kube::client_from_kubeconfig(&client.kubeconfig).await?;
            let api: Api<Secret> = Api::namespaced(kc, NAMESPACE);
            api.delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                .await
                .with_context(|| format!("deleting bootstrap token {id}"))?;
            println!("bootstrap token {id} deleted");
            Ok(0)
        }
    }
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Splits `<id>.<secret>`, checking the shape upstream accepts.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    (valid_part(id, 6) && valid_part(secret, 16)).then_some((id, secret))
}

/// A random `<id>.<secret>`.
pub fn generate() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let mut part = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let id = part(6);
    let secret = part(16);
    format!("{id}.{secret}")
}

fn data(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Creates the token's Secret; `ttl` zero means no expiration.
pub async fn create(
    client: &kube::Client,
    token: &str,
    ttl: std::time::Duration,
    description: Option<&str>,
    groups: &[String],
) -> anyhow::Result<()> {
    let (id, secret) = parse_token(token).context("malformed token")?;
    for g in groups {
        if !g.starts_with("system:bootstrappers:") {
            bail!("extra group {g:?} must start with system:bootstrappers:");
        }
    }
    let mut d: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        d.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    put("token-id", id);
    put("token-secret", secret);
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    if !groups.is_empty() {
        put("auth-extra-groups", &groups.join(","));
    }
    put(
        "description",
        description.unwrap_or("Bootstrap token created by kelsonctl token create"),
    );
    if !ttl.is_zero() {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let exp = k8s_openapi::jiff::Timestamp::from_second(now + ttl.as_secs() as i64)?;
        put("expiration", &exp.to_string());
    }
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some(TOKEN_TYPE.into()),
        data: Some(d),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &s)
        .await
        .with_context(|| format!("creating bootstrap token {id}"))?;
    Ok(())
}

/// Every bootstrap token Secret.
pub async fn list(client: &kube::Client) -> anyhow::Result<Vec<Secret>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let list = api
        .list(&ListParams::default().fields(&format!("type={TOKEN_TYPE}")))
        .await;
    // Not every server supports the `type` field selector on Secrets; filter locally then.
    let items = match list {
        Ok(l) => l.items,
        Err(_) => api.list(&ListParams::default()).await?.items,
    };
    Ok(items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some(TOKEN_TYPE))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_upstream_shape() {
        let a = generate();
        let b = generate();
        assert!(parse_token(&a).is_some(), "{a}");
        assert_ne!(a, b);
        assert!(parse_token("abcdef.0123456789abcdef").is_some());
        assert!(parse_token("ABCDEF.0123456789abcdef").is_none());
        assert!(parse_token("abcde.0123456789abcdef").is_none());
        assert!(parse_token("abcdef0123456789abcdef").is_none());
    }
}
