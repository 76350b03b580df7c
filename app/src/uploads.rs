//! HTTP uploads (the API's `POST /ingest/...`) handed to the ingestion pipeline.
//! The two crates do not know each other; this is where they meet.

use cityhub_api::uploads::{Upload, UploadOutcome, UploadRefused, Uploads};
use cityhub_ingest::{HttpIngest, HttpSubmission};
use cityhub_store::Claim;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub(crate) struct IngestUploads(pub(crate) HttpIngest);

impl Uploads for IngestUploads {
    fn submit(
        &self,
        u: Upload,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<UploadOutcome, UploadRefused>> + Send + '_>> {
        Box::pin(async move {
            let (reply, mut outcome) = tokio::sync::oneshot::channel();
            let claim = Claim::default();
            self.0
                .submit(HttpSubmission {
                    payload: u.payload,
                    x_sensor: u.x_sensor,
                    received_at: u.received_at,
                    source: u.source.to_owned(),
                    device: u.device,
                    origin: u.origin,
                    claim: claim.clone(),
                    reply,
                })
                .map_err(|_| UploadRefused)?;
            let result = tokio::select! {
                r = &mut outcome => r,
                _ = tokio::time::sleep(wait) => {
                    if claim.abandon() {
                        return Err(UploadRefused); // never committed now
                    }
                    // The writer claimed it and is committing: its answer is near.
                    outcome.await
                }
            };
            match result {
                Ok(Ok(o)) => Ok(UploadOutcome {
                    stored: o.stored,
                    rejected: o.rejected,
                    forbidden: o.forbidden,
                    dead_letter: o.dead_letter,
                }),
                _ => Err(UploadRefused),
            }
        })
    }
}
