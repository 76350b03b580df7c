//! Turns each batch's changes (`ngsi_changes`, written in the batch's transaction
//! while subscriptions exist) into NGSI-LD notifications in the alerts' outbox,
//! which the delivery task sends. A batch is leased, matched against the
//! subscriptions, and replaced by its notifications in one transaction, so each is
//! queued once whatever fails, and hubs side by side share the work.

use cityhub_core::kinds::Catalog;
use cityhub_store::alerts::Notifier;
use cityhub_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a hub holds a batch of changes before another may take it.
const LEASE_S: f64 = 60.0;
/// How often subscriptions made by other hubs are noticed.
const RELOAD: Duration = Duration::from_secs(5);

pub async fn run(
    store: Store,
    catalog: Arc<Catalog>,
    notifier: Arc<Notifier>,
    cancel: CancellationToken,
) {
    let mut reloaded = tokio::time::Instant::now() - RELOAD;
    loop {
        if reloaded.elapsed() >= RELOAD {
            if let Err(e) = store.reload_ngsi_subscribed().await {
                tracing::warn!(error = %e, "Reading the NGSI-LD subscriptions failed; retrying.");
            }
            reloaded = tokio::time::Instant::now();
        }
        match step(&store, &catalog).await {
            Ok(true) => {
                notifier.wake.notify_one();
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Matching changes to NGSI-LD subscriptions failed; retrying.")
            }
        }
        tokio::select! {
            _ = store.ngsi_changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Handles the oldest batch of changes; false when there was none.
async fn step(store: &Store, catalog: &Catalog) -> Result<bool, cityhub_store::StoreError> {
    let Some(changes) = store.claim_changes(LEASE_S).await? else {
        return Ok(false);
    };
    let subs = store.subscriptions().await?;
    let out = cityhub_api::ngsi_ld::subscriptions::notifications(
        store,
        catalog,
        &subs,
        &changes,
        chrono::Utc::now(),
    )
    .await?;
    if store.finish_changes(changes.id, &out).await? && !out.is_empty() {
        tracing::debug!(
            batch = changes.id,
            notifications = out.len(),
            "NGSI-LD notifications queued."
        );
    }
    Ok(true)
}
