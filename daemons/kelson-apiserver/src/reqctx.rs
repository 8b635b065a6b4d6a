//! The request context admission plugins read: who is asking, and where warnings go.
//!
//! Upstream threads a `context.Context` through every handler and admission plugin; the user
//! comes from `request.UserFrom(ctx)` and plugins call `warning.AddWarning(ctx, ...)` to add
//! `Warning` headers. Kelson's equivalent is a tokio task-local set around the dispatch of
//! one resource request ([`scope`]), so create/update code paths shared with the server's own
//! bootstrapping (which runs outside any request, as the privileged loopback client upstream)
//! need no extra parameters: outside a request [`user`] is `None` and plugins that judge the
//! requester (NodeRestriction, the CSR requester fields) leave the object alone.

use std::future::Future;
use std::sync::Mutex;

use crate::auth::User;

struct Ctx {
    user: User,
    warnings: Mutex<Vec<String>>,
}

tokio::task_local! {
    static CTX: Ctx;
}

/// Runs `f` as the request of `user`; returns its output and the warnings plugins added.
pub async fn scope<F: Future>(user: User, f: F) -> (F::Output, Vec<String>) {
    let ctx = Ctx {
        user,
        warnings: Mutex::new(Vec::new()),
    };
    CTX.scope(ctx, async move {
        let out = f.await;
        let warnings = CTX
            .with(|c| std::mem::take(&mut *c.warnings.lock().unwrap_or_else(|e| e.into_inner())));
        (out, warnings)
    })
    .await
}

/// The requesting user (`None` outside a request: the server itself).
pub fn user() -> Option<User> {
    CTX.try_with(|c| c.user.clone()).ok()
}

/// Adds a `Warning: 299` header to the response (dropped outside a request).
pub fn warn(msg: impl Into<String>) {
    let msg = msg.into();
    let _ = CTX.try_with(|c| {
        let mut w = c.warnings.lock().unwrap_or_else(|e| e.into_inner());
        if !w.contains(&msg) {
            w.push(msg);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn user_and_warnings_inside_the_scope_only() {
        assert!(user().is_none());
        warn("lost");
        let u = User {
            name: "n".into(),
            groups: vec![],
        };
        let (name, warnings) = scope(u, async {
            warn("a");
            warn("a");
            tokio::task::yield_now().await;
            warn("b");
            user().map(|u| u.name)
        })
        .await;
        assert_eq!(name.as_deref(), Some("n"));
        assert_eq!(warnings, vec!["a".to_string(), "b".to_string()]);
    }
}
