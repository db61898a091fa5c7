-- Per-key rate limits shared by every replica: one token bucket per key
-- ("" is the bootstrap key), refilled and taken from under the row's lock
-- (src/domain/ratelimit.rs). Tokens are in millionths. SQLite runs one
-- process per database and keeps its buckets in memory; the table exists
-- there too so that both schemas stay alike.
CREATE TABLE rate_buckets (
    bucket       TEXT   NOT NULL PRIMARY KEY,
    micro_tokens BIGINT NOT NULL,
    at_us        BIGINT NOT NULL
);
