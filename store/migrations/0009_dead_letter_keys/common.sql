-- A dead letter keeps the first bytes of its topic with the topic's full length (an MQTT
-- topic may be 65,535 bytes), and the once-only key hashes topic and reason: a long topic
-- no longer exceeds a btree row, which refused the dead letter and stalled ingestion, and
-- two dead letters of one message that differ only in reason (two unregistered sensors
-- in one SenML pack) are both kept.
ALTER TABLE dead_letters ADD COLUMN topic_bytes integer;
UPDATE dead_letters SET topic_bytes = octet_length(topic);
ALTER TABLE dead_letters ALTER COLUMN topic_bytes SET NOT NULL;
DROP INDEX dead_letters_once;
CREATE UNIQUE INDEX dead_letters_once
    ON dead_letters (received_at, md5(topic), reason_code, md5(reason), md5(payload));
