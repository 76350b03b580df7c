-- NGSI-LD subscriptions: each as the API shows it, with the secret that signs its
-- notifications (given to its creator once) and its delivery record.
CREATE TABLE ngsi_subscriptions (
    id                text PRIMARY KEY,
    body              jsonb NOT NULL,
    secret            text NOT NULL,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_notification timestamptz,
    last_success      timestamptz,
    last_failure      timestamptz,
    times_sent        bigint NOT NULL DEFAULT 0
);

-- What each committed batch changed, as (sensor, metric) pairs in arrays (one row
-- per batch), written in the batch's own transaction while any subscription exists;
-- matched against the subscriptions after commit, which turns each row into
-- notifications in alert_outbox and deletes it in one transaction.
CREATE TABLE ngsi_changes (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    sensor_ids integer[] NOT NULL,
    metric_ids smallint[] NOT NULL,
    -- Another hub may take the row once this has passed.
    leased_until timestamptz NOT NULL DEFAULT '-infinity'
);

-- Notifications share the alerts' outbox and signed delivery.
ALTER TABLE alert_outbox
    ALTER COLUMN alert_id DROP NOT NULL,
    ADD COLUMN subscription_id text REFERENCES ngsi_subscriptions (id) ON DELETE CASCADE,
    DROP CONSTRAINT alert_outbox_event_check,
    ADD CONSTRAINT alert_outbox_event_check
        CHECK (event IN ('raised', 'acknowledged', 'cleared', 'notification')),
    ADD CONSTRAINT alert_outbox_one_source CHECK ((alert_id IS NULL) <> (subscription_id IS NULL));
