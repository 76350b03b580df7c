-- Trust: named operator accounts, device credentials, the audit trail, and each
-- sensor's entry in the public register. Secrets are kept only as Argon2id hashes.

CREATE TABLE operators (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- The public part of the token (cho_<token_id>_<secret>): finds the account without a scan.
    token_id    text NOT NULL UNIQUE,
    token_hash  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz,
    expires_at  timestamptz,
    disabled_at timestamptz
);

-- One row per credential handed to a device (or to a network server's integration):
-- its broker user name, the topics it may publish, and the hash of its password for
-- HTTP uploads (the broker keeps its own hash of the same password).
CREATE TABLE devices (
    name           text PRIMARY KEY,
    kind           text,
    username       text NOT NULL UNIQUE,
    topics         text[] NOT NULL,
    secret_hash    text NOT NULL,
    on_broker      boolean NOT NULL,
    provisioned_at timestamptz NOT NULL DEFAULT now(),
    rotated_at     timestamptz,
    revoked_at     timestamptz
);

-- Who changed what, written in the transaction of the change.
CREATE TABLE audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    before  jsonb,
    after   jsonb
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_target ON audit (target, id);

-- The public register: purpose, who answers for the sensor, personal data and its
-- legal basis (see cityhub_core::register).
ALTER TABLE sensors ADD COLUMN register jsonb NOT NULL DEFAULT '{}';
