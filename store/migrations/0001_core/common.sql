CREATE TABLE sensors (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    kind        text NOT NULL,
    name        text,
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    properties  jsonb NOT NULL DEFAULT '{}',
    first_seen  timestamptz,
    last_seen   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((lon IS NULL) = (lat IS NULL))
);
CREATE INDEX sensors_kind ON sensors (kind);

CREATE TABLE metrics (
    id    smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind  text NOT NULL,
    name  text NOT NULL,
    unit  text NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE latest (
    sensor_id integer NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric_id smallint NOT NULL REFERENCES metrics (id),
    time      timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (sensor_id, metric_id)
);

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason_code text NOT NULL,
    reason      text NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
