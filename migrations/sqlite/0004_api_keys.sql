-- Managed API keys. The plaintext (opk_<key_id>_<secret>) is shown once at
-- creation and never stored: secret_sha256 is the hex SHA-256 of the secret
-- part (256 random bits, so a fast digest is as safe as a slow hash).
-- agent_ids is a JSON array (the scope of an agent key; [] otherwise).
-- last_used_at_us is written at most about once a minute per key.
CREATE TABLE api_keys (
    key_id          TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    agent_ids       TEXT    NOT NULL,
    secret_sha256   TEXT    NOT NULL,
    rate_limit      INTEGER,
    created_at_us   INTEGER NOT NULL,
    expires_at_us   INTEGER,
    revoked_at_us   INTEGER,
    last_used_at_us INTEGER
);
