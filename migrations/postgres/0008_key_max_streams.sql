-- Each key's own cap on event streams and blocking reads held open at
-- once; NULL means the server's OPSCORE_MAX_STREAMS_PER_KEY.
ALTER TABLE api_keys ADD COLUMN max_streams BIGINT;
