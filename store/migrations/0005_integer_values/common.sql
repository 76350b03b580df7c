-- Nearly every sensor reading has at most three decimals. Those are stored as integer
-- thousandths (value_milli), the rest as they are (value): TimescaleDB compresses
-- integers with delta-of-delta encoding to about 1 byte, where the XOR encoding of
-- decimal fractions in a float takes 5-8. The writer stores a value as thousandths only
-- when value_milli::float8 / 1000 gives back exactly the same float, so reading is
-- lossless. `observations` stays what every reader sees: one float value per row.
ALTER TABLE observations RENAME TO observations_data;
ALTER TABLE observations_data ALTER COLUMN value DROP NOT NULL;
ALTER TABLE observations_data ADD COLUMN value_milli bigint;
CREATE VIEW observations AS
SELECT time, sensor_id, metric_id, coalesce(value, value_milli::float8 / 1000) AS value
FROM observations_data;
