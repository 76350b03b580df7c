-- Dead letters keep a bounded part of payload and reason, with the full lengths.
ALTER TABLE dead_letters
    ADD COLUMN payload_bytes integer,
    ADD COLUMN reason_bytes integer;
UPDATE dead_letters SET payload_bytes = length(payload), reason_bytes = octet_length(reason);
ALTER TABLE dead_letters
    ALTER COLUMN payload_bytes SET NOT NULL,
    ALTER COLUMN reason_bytes SET NOT NULL;

-- A batch retried after an unknown commit outcome writes its dead letters again:
-- one row per message (receive time, topic, payload) and reason.
DELETE FROM dead_letters a USING dead_letters b
WHERE a.id > b.id AND a.received_at = b.received_at AND a.topic = b.topic
  AND a.reason_code = b.reason_code AND md5(a.payload) = md5(b.payload);
CREATE UNIQUE INDEX dead_letters_once
    ON dead_letters (received_at, topic, reason_code, md5(payload));
CREATE INDEX dead_letters_reason ON dead_letters (reason_code, id DESC);
