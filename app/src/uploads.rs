//! HTTP uploads (the API's `POST /ingest/...`) handed to the ingestion pipeline.
//! The two crates do not know each other; this is where they meet.

use cityhub_api::uploads::{Upload, UploadOutcome, UploadRefused, Uploads};
use cityhub_ingest::{HttpIngest, HttpSubmission};
use std::future::Future;
use std::pin::Pin;

pub(crate) struct IngestUploads(pub(crate) HttpIngest);

impl Uploads for IngestUploads {
    fn submit(
        &self,
        u: Upload,
    ) -> Pin<Box<dyn Future<Output = Result<UploadOutcome, UploadRefused>> + Send + '_>> {
        Box::pin(async move {
            let (reply, outcome) = tokio::sync::oneshot::channel();
            self.0
                .submit(HttpSubmission {
                    payload: u.payload,
                    x_sensor: u.x_sensor,
                    received_at: u.received_at,
                    source: u.source.to_owned(),
                    reply,
                })
                .await
                .map_err(|_| UploadRefused)?;
            match outcome.await {
                Ok(Ok(o)) => Ok(UploadOutcome {
                    stored: o.stored,
                    rejected: o.rejected,
                }),
                _ => Err(UploadRefused),
            }
        })
    }
}
