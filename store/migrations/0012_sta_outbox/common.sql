-- The SensorThings MQTT extension's outbox: each committed batch's new readings,
-- written in the batch's own transaction (one row per batch, as arrays, so the cost
-- per reading stays small), published to the broker after commit and deleted once
-- the broker has acknowledged every message. A broker outage loses none of them;
-- rows older than sta.mqtt_retention_hours are dropped.
CREATE TABLE sta_outbox (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    sensor_ids integer[] NOT NULL,
    metric_ids smallint[] NOT NULL,
    times timestamptz[] NOT NULL,
    vals double precision[] NOT NULL,
    -- Another hub may take the row once this has passed (one attempt's time).
    leased_until timestamptz NOT NULL DEFAULT '-infinity',
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);
