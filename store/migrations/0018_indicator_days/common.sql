-- The indicators' base rows, materialized: what each indicator's query reduces a
-- sensor's readings to, one row per sensor and local day (or night), kept for the
-- days that can no longer change but by a late reading. Computing a year of a large
-- fleet from the readings took seconds a request (docs/benchmarks.md); reading its
-- days from here takes a fraction of that. The hub fills and mends these tables in
-- the background (cityhub_store::indicators::materialize); requests read them for
-- the days they cover and compute the rest from the readings.

-- One row per distinct base query: `key` names the query and every setting its rows
-- depend on, so a changed setting starts a new base rather than mixing rows. Days
-- in [from_day, to_day) are materialized; no reading is older than from_day but one
-- marked in indicator_dirty.
CREATE TABLE indicator_bases (
    id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key      text NOT NULL UNIQUE,
    from_day date,
    to_day   date,
    used_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE indicator_days (
    base      integer NOT NULL REFERENCES indicator_bases ON DELETE CASCADE,
    sensor_id integer NOT NULL REFERENCES sensors ON DELETE CASCADE,
    day       date NOT NULL,
    a         double precision NOT NULL,
    b         double precision NOT NULL,
    c         double precision NOT NULL,
    PRIMARY KEY (base, sensor_id, day)
);

-- UTC dates that readings older than a day were written for since the days around
-- them were materialized: the writer marks them in the readings' transaction, the
-- materializer computes those days again and removes the marks it saw (by `gen`, so
-- a mark renewed meanwhile stays). Requests compute the days a mark may touch from
-- the readings until then.
CREATE SEQUENCE indicator_dirty_gen;
CREATE TABLE indicator_dirty (
    day date PRIMARY KEY,
    gen bigint NOT NULL
);
