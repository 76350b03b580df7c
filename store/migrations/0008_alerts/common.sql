-- Alerts: one row per alert, its whole lifecycle (raised -> acknowledged -> cleared)
-- kept as history. At most one alert per rule and sensor is not cleared.
CREATE TABLE alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule            text NOT NULL,
    sensor_id       integer NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    metric          text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state           text NOT NULL CHECK (state IN ('open', 'acknowledged', 'cleared')),
    threshold       double precision NOT NULL,
    -- The reading that raised it, and the one that cleared it.
    raised_at       timestamptz NOT NULL,
    raised_value    double precision NOT NULL,
    acknowledged_at timestamptz,
    ack_note        text,
    cleared_at      timestamptz,
    cleared_value   double precision,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alerts_one_standing ON alerts (rule, sensor_id) WHERE state <> 'cleared';
CREATE INDEX alerts_by_state ON alerts (state, raised_at DESC);
CREATE INDEX alerts_by_sensor ON alerts (sensor_id, raised_at DESC);

-- Notifications to send, written in the transaction that changes the alert
-- (a transactional outbox): delivered at least once, across restarts.
CREATE TABLE alert_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('raised', 'acknowledged', 'cleared')),
    target          text NOT NULL,
    -- The exact bytes sent (and signed).
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE delivered_at IS NULL;

