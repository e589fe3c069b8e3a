-- Kitchen screens: paired once with a short code, then renewing their own credential.
-- Only hashes of refresh tokens and codes are kept.
CREATE TABLE screens (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    name TEXT NOT NULL,
    -- kitchen, station or board
    kind TEXT NOT NULL,
    -- the current refresh token's hash; NULL until the screen collects its first one
    refresh_hash TEXT UNIQUE,
    -- the one before it: an answer lost in a network cut must not unpair a screen
    previous_refresh_hash TEXT,
    refresh_expires_at TIMESTAMP NOT NULL,
    paired_by TEXT NOT NULL,
    paired_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP,
    revoked_at TIMESTAMP
);
CREATE INDEX screens_school ON screens (school_id);
CREATE INDEX screens_previous_refresh ON screens (previous_refresh_hash);

-- A code a new screen shows until someone enters it, and the secret that screen asks with.
CREATE TABLE screen_pairings (
    id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL UNIQUE,
    expires_at TIMESTAMP NOT NULL,
    -- set when the code was entered: the screen it became
    screen_id TEXT REFERENCES screens (id),
    created_at TIMESTAMP NOT NULL
);
