-- How a device signs in to the broker: its password, or a client certificate whose
-- CN is its username (an mqtts listener with use_identity_as_username). A device
-- with a certificate has no password, so it cannot upload over HTTP with one.
ALTER TABLE devices ADD COLUMN auth text NOT NULL DEFAULT 'password'
    CONSTRAINT devices_auth CHECK (auth IN ('password', 'certificate'));
