-- Webhook signatures accepted within the timestamp window (replay
-- protection), kept in the database so that a restart does not forget them
-- and every replica sees the others'. signature is the hex HMAC; a row is
-- useless once expires_at_us (its timestamp plus the tolerance) has passed,
-- and is deleted by the next webhook after that.
CREATE TABLE webhook_signatures (
    signature     TEXT   NOT NULL PRIMARY KEY,
    expires_at_us BIGINT NOT NULL
);
CREATE INDEX webhook_signatures_by_expiry ON webhook_signatures (expires_at_us);
