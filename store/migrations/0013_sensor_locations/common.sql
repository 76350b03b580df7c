-- Every position a sensor has had, for the SensorThings API's Locations and
-- HistoricalLocations: a row when a sensor is registered with a position and
-- each time its position changes (by its readings, the registry API or an
-- import), written by a trigger in the change's own transaction, so no path
-- that moves a sensor can forget it. `since` is when the hub learned of the
-- move: the reading time that brought it (last_seen), else the transaction's.
CREATE TABLE sensor_locations (
    id bigserial PRIMARY KEY,
    sensor_id integer NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    since timestamptz NOT NULL,
    lon double precision NOT NULL,
    lat double precision NOT NULL
);
CREATE INDEX sensor_locations_sensor ON sensor_locations (sensor_id, id);

INSERT INTO sensor_locations (sensor_id, since, lon, lat)
SELECT id, coalesce(first_seen, updated_at), lon, lat
FROM sensors WHERE lon IS NOT NULL AND lat IS NOT NULL ORDER BY id;

-- Two triggers with WHEN clauses: the function runs only for a real move, so a
-- batch that refreshes its sensors' last_seen pays a comparison per row, no call.
CREATE FUNCTION cityhub_sensor_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sensor_locations (sensor_id, since, lon, lat)
    VALUES (NEW.id,
            CASE WHEN TG_OP = 'INSERT' THEN coalesce(NEW.first_seen, now())
                 ELSE coalesce(NEW.last_seen, now()) END,
            NEW.lon, NEW.lat);
    RETURN NULL;
END $$;

CREATE TRIGGER sensors_placed AFTER INSERT ON sensors
    FOR EACH ROW WHEN (NEW.lon IS NOT NULL AND NEW.lat IS NOT NULL)
    EXECUTE FUNCTION cityhub_sensor_moved();
CREATE TRIGGER sensors_moved AFTER UPDATE OF lon, lat ON sensors
    FOR EACH ROW WHEN (NEW.lon IS NOT NULL AND NEW.lat IS NOT NULL
                       AND (NEW.lon IS DISTINCT FROM OLD.lon OR NEW.lat IS DISTINCT FROM OLD.lat))
    EXECUTE FUNCTION cityhub_sensor_moved();
